"""The btrfs snapshotter on a loop-mounted btrfs: the snapshotter conformance suite, and its skip."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import tooling
from loop_filesystems import all_loop_backing_files, loop_btrfs

from corral.plugins.snapshots import conformance as cf
from corral.plugins.snapshots.btrfs import plugin as btrfs_plugin


def unable(reason: str) -> None:
    if tooling.ON_CI:
        pytest.fail(f"under CI every check runs: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def btrfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    before = all_loop_backing_files()
    with loop_btrfs(tmp_path_factory.mktemp("btrfs")) as mounted:
        yield mounted
    assert all_loop_backing_files() == before, "a loop device was left attached"


@pytest.fixture
def scratch(btrfs: Path, request: pytest.FixtureRequest) -> Path:
    path = btrfs / request.node.name.replace("/", "_")[:100]
    path.mkdir()
    return path


@pytest.mark.parametrize("check", cf.CHECKS, ids=cf.check_name)
def test_btrfs_conforms(check: cf.Check, scratch: Path) -> None:
    cf.run(check, btrfs_plugin.registration, scratch, skip=unable)
