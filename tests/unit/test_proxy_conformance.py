"""The shipped snapshotter conformance suite passes through a proxy: every call crosses the Snapshots
API on a unix socket to corral's native snapshotter served by ``serve_snapshotter``."""

from __future__ import annotations

from pathlib import Path

import pytest
import tooling

from corral.api.proxy.conformance import ContentOverProxy, OverProxy
from corral.plugins.content import conformance as content_cf
from corral.plugins.content import local
from corral.plugins.snapshots import conformance as cf
from corral.plugins.snapshots import native


def unable(reason: str) -> None:
    if tooling.ON_CI:
        pytest.fail(f"under CI every check runs: {reason}")
    pytest.skip(reason)


@pytest.mark.parametrize("check", cf.CHECKS, ids=cf.check_name)
def test_native_served_over_the_snapshots_api_conforms(check: cf.Check, tmp_path: Path) -> None:
    cf.run(check, OverProxy(native.registration), tmp_path, skip=unable)


@pytest.mark.parametrize("check", content_cf.CHECKS, ids=content_cf.check_name)
def test_the_local_content_store_served_over_the_content_api_conforms(
    check: content_cf.Check, tmp_path: Path
) -> None:
    content_cf.run(check, ContentOverProxy(local.registration), tmp_path, skip=unable)
