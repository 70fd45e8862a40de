"""corral's snapshotter conformance suite, run on this distribution's snapshotter.

Copy this file for your own snapshotter and change the import of ``PLUGIN``; the rest stays.
Checks that mount snapshots need root: without it they are skipped, and under CI (``CI=true``,
which runs as root) they fail instead, so CI cannot pass by skipping them.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from corral.plugins.snapshots import conformance

from corral_snapshotter_example import registration as PLUGIN  # your plugin's registration here

ON_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def skip(reason: str) -> None:
    if ON_CI:
        pytest.fail(f"under CI every check must run: {reason}")
    pytest.skip(reason)


@pytest.mark.parametrize("check", conformance.CHECKS, ids=conformance.check_name)
def test_conforms(check: conformance.Check, tmp_path: Path) -> None:
    conformance.run(check, PLUGIN, tmp_path, skip=skip)
