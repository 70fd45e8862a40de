"""corral's snapshotter conformance suite, run against the hardlink snapshotter.

This is the file to copy for your own snapshotter: change ``open_snapshotter`` (and
``plant_leftover``, if your backend keeps snapshots under a root), keep the rest.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from corral.plugins.snapshots import Snapshotter
from corral.plugins.snapshots import conformance as cf

from corral_snapshotter_example import HardlinkSnapshotter

pytestmark = pytest.mark.anyio

ON_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def require_root() -> None:
    """The mounting checks need root: without it they are skipped on a laptop and fail under CI."""
    if os.geteuid() != 0:
        if ON_CI:
            pytest.fail("CI runs as root; this check mounts snapshots, which needs root")
        pytest.skip("needs root: this check mounts snapshots; it runs under CI")


def open_snapshotter(root: Path) -> HardlinkSnapshotter:
    return HardlinkSnapshotter(root)


@pytest.fixture
def make_snapshotter(tmp_path: Path) -> cf.SnapshotterFactory:
    """A fresh, empty snapshotter each time the suite asks, closed when the check is done with it."""
    roots = itertools.count()

    @asynccontextmanager
    async def factory() -> AsyncIterator[Snapshotter]:
        snapshotter = open_snapshotter(tmp_path / f"root-{next(roots)}")
        try:
            yield snapshotter
        finally:
            await snapshotter.aclose()

    return factory


def plant_leftover(snapshotter: Snapshotter) -> Path:
    """What a crash between a remove's record and its directory leaves: a directory with no record."""
    assert isinstance(snapshotter, HardlinkSnapshotter)
    leftover = snapshotter.snapshots / "987654"
    (leftover / "etc").mkdir(parents=True)
    (leftover / "etc" / "hostname").write_text("left behind\n")
    return leftover


@pytest.mark.parametrize("check", cf.CHECKS, ids=lambda check: check.__name__.removeprefix("check_"))
async def test_conforms(check: cf.Check, make_snapshotter: cf.SnapshotterFactory) -> None:
    if check in cf.MOUNTING_CHECKS:
        require_root()
    await check(make_snapshotter)


async def test_cleanup_removes_leftovers_and_keeps_live_snapshots(
    make_snapshotter: cf.SnapshotterFactory,
) -> None:
    await cf.check_cleanup_removes_leftovers_only(make_snapshotter, plant_leftover)
