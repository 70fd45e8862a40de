"""The erofs snapshotter: the snapshotter conformance suite, plus what EROFS layers promise."""

from __future__ import annotations

from pathlib import Path

import pytest
import tooling

from corral.plugins.snapshots import conformance as cf
from corral.plugins.snapshots.erofs import plugin as erofs_plugin


def unable(reason: str) -> None:
    if tooling.ON_CI:
        pytest.fail(f"under CI every check runs: {reason}")
    pytest.skip(reason)


@pytest.mark.parametrize("check", cf.CHECKS, ids=cf.check_name)
def test_erofs_conforms(check: cf.Check, tmp_path: Path) -> None:
    cf.run(check, erofs_plugin.registration, tmp_path, skip=unable)
