"""What the hardlink snapshotter promises beyond the conformance suite, and how it plugs into corral.

These look at the snapshots' directories on disk rather than mounting them, so they need no root.
"""

from __future__ import annotations

import importlib
import os
import re
import tomllib
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from corral.kernel import (
    ConfigError,
    DaemonConfig,
    Kernel,
    PluginRecord,
    Registration,
    Status,
    builtin_candidate,
)
from corral.plugins.core import Mount, namespace
from corral.plugins.metadata import NamespacedSnapshots
from corral.plugins.metadata.sqlite import registration as sqlite_metadata
from corral.plugins.snapshots import Kind, Usage

from corral_snapshotter_example import HardlinkSnapshotter, registration

URI = "io.containerd.snapshotter.v1.hardlink"
METADATA = "io.containerd.metadata.v1.sqlite"
PYPROJECT = Path(__file__).parents[1] / "pyproject.toml"

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def snapshotter(tmp_path: Path) -> AsyncIterator[HardlinkSnapshotter]:
    sn = HardlinkSnapshotter(tmp_path / "root")
    try:
        yield sn
    finally:
        await sn.aclose()


def tree_root(mounts: list[Mount]) -> Path:
    """The directory behind a snapshot's single bind mount."""
    (m,) = mounts
    assert m.type == "bind"
    return Path(m.source)


async def commit_base(sn: HardlinkSnapshotter) -> Path:
    """A committed snapshot "base" holding a file, a symlink and a directory; returns its tree."""
    root = tree_root(await sn.prepare("base-active"))
    (root / "etc").mkdir()
    (root / "etc" / "hostname").write_text("base\n")
    (root / "link").symlink_to("etc/hostname")
    await sn.commit("base", "base-active")
    return root


async def test_a_view_hard_links_its_parents_files_and_owns_no_data(snapshotter: HardlinkSnapshotter) -> None:
    base = await commit_base(snapshotter)
    view = tree_root(await snapshotter.view("look", "base"))
    assert view != base
    assert (view / "etc" / "hostname").stat().st_ino == (base / "etc" / "hostname").stat().st_ino
    assert (view / "etc" / "hostname").stat().st_nlink == 2  # what readers of a view see
    assert os.readlink(view / "link") == "etc/hostname"
    assert (view / "etc").stat().st_ino != (base / "etc").stat().st_ino  # directories are its own
    assert await snapshotter.usage("look") == Usage()


async def test_views_mount_read_only_because_their_files_are_the_parents(
    snapshotter: HardlinkSnapshotter,
) -> None:
    await commit_base(snapshotter)
    (view,) = await snapshotter.view("look", "base")
    assert (view.type, view.options) == ("bind", ("rbind", "ro"))
    (active,) = await snapshotter.prepare("work", "base")
    assert (active.type, active.options) == ("bind", ("rbind", "rw"))


async def test_prepare_copies_its_parent_so_writes_stay_in_the_child(
    snapshotter: HardlinkSnapshotter,
) -> None:
    # Cloned where the filesystem can, a plain copy where it cannot: never the parent's inodes.
    base = await commit_base(snapshotter)
    child = tree_root(await snapshotter.prepare("child", "base"))
    assert (child / "etc" / "hostname").read_text() == "base\n"
    assert (child / "etc" / "hostname").stat().st_ino != (base / "etc" / "hostname").stat().st_ino
    (child / "etc" / "hostname").write_text("child\n")
    assert (base / "etc" / "hostname").read_text() == "base\n"
    second = tree_root(await snapshotter.prepare("second", "base"))  # after a fallback, still a copy
    assert (second / "etc" / "hostname").read_text() == "base\n"


async def test_removing_a_view_leaves_its_parents_files(snapshotter: HardlinkSnapshotter) -> None:
    base = await commit_base(snapshotter)
    view = tree_root(await snapshotter.view("look", "base"))
    await snapshotter.remove("look")
    assert not view.exists()
    assert (base / "etc" / "hostname").read_text() == "base\n"
    assert (base / "etc" / "hostname").stat().st_nlink == 1
    assert (await snapshotter.stat("base")).kind is Kind.COMMITTED


# -- in a kernel -------------------------------------------------------------------------------------


def make_kernel(tmp_path: Path, section: Mapping[str, Any]) -> Kernel:
    """A kernel given the plugins directly (no entry points): corral's metadata store and this one."""
    config = DaemonConfig(
        root=str(tmp_path / "daemon-root"), state=str(tmp_path / "state"), plugins={URI: dict(section)}
    )
    candidates = [
        builtin_candidate(sqlite_metadata, distribution="corral"),
        builtin_candidate(registration, distribution="corral-snapshotter-example"),
    ]
    return Kernel(config, candidates=candidates)


def record(kernel: Kernel, uri: str) -> PluginRecord:
    rec = kernel.get(uri)
    assert rec is not None, f"{uri} unknown to the kernel"
    return rec


async def test_the_kernel_starts_it_under_the_configured_root(tmp_path: Path) -> None:
    async with make_kernel(tmp_path, {"root_path": str(tmp_path / "snaps")}).running() as kernel:
        rec = record(kernel, URI)
        assert rec.status is Status.OK, rec.reason
        assert isinstance(rec.instance, HardlinkSnapshotter)
        assert rec.meta.exports == {"root": str(tmp_path / "snaps")}
        assert (tmp_path / "snaps" / "metadata.db").exists()


async def test_without_root_path_it_lives_under_the_daemon_root(tmp_path: Path) -> None:
    async with make_kernel(tmp_path, {}).running() as kernel:
        assert record(kernel, URI).meta.exports == {"root": str(tmp_path / "daemon-root" / URI)}


async def test_clients_reach_it_by_name_through_the_metadata_store(tmp_path: Path) -> None:
    async with make_kernel(tmp_path, {}).running() as kernel:
        snapshots = record(kernel, METADATA).instance.view(NamespacedSnapshots).get("hardlink")
        with namespace("default"):
            await snapshots.prepare("container")
            assert (await snapshots.stat("container")).kind is Kind.ACTIVE


async def test_a_relative_root_path_is_a_config_error_naming_its_section(tmp_path: Path) -> None:
    kernel = make_kernel(tmp_path, {"root_path": "snaps"})
    with pytest.raises(ConfigError, match=re.escape(f'plugins."{URI}": root_path must be an absolute path')):
        async with kernel.running():
            pass


def test_every_entry_point_is_named_by_the_uri_of_the_registration_it_points_at() -> None:
    entry_points = tomllib.loads(PYPROJECT.read_text())["project"]["entry-points"]["corral.plugins"]
    assert entry_points == {URI: "corral_snapshotter_example.plugin:registration"}
    for name, value in entry_points.items():
        module, _, attr = value.partition(":")
        reg = getattr(importlib.import_module(module), attr)
        assert isinstance(reg, Registration), value
        assert reg.uri == name
