"""The shipped snapshotter conformance suite passes through a proxy: every call crosses the Snapshots
API on a unix socket to corral's native snapshotter served by ``serve_snapshotter``."""

from __future__ import annotations

from pathlib import Path

import pytest
import tooling

from corral.api.proxy.conformance import OverProxy
from corral.plugins.snapshots import conformance as cf
from corral.plugins.snapshots import native


def unable(reason: str) -> None:
    if tooling.ON_CI:
        pytest.fail(f"under CI every check runs: {reason}")
    pytest.skip(reason)


@pytest.mark.parametrize("check", cf.CHECKS, ids=cf.check_name)
def test_native_served_over_the_snapshots_api_conforms(check: cf.Check, tmp_path: Path) -> None:
    cf.run(check, OverProxy(native.registration), tmp_path, skip=unable)
