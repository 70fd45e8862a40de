"""User namespace mappings: containerd's parseUsernsIDs and sameUsernsConfig checks, the snapshot
labels and mount options that carry a mapping, and the overlay snapshotter's ``remap-ids``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from corral.kernel import FailedPrecondition, InvalidArgument
from corral.plugins.core.idmap import GID_MAPPING_LABEL, UID_MAPPING_LABEL, IDMap, IDMapping
from corral.plugins.cri.userns import container_idmap
from corral.plugins.sandbox.userns import prepare_remapped, remapped_snapshot_id, userns_idmap
from corral.plugins.snapshots.native import NativeSnapshotter
from corral.plugins.snapshots.overlayfs import OverlaySnapshotter

UIDS = ((0, 100000, 1000), (1000, 300000, 64536))
GIDS = ((0, 200000, 65536),)


def test_a_pod_mapping_of_several_ranges_maps_ids_to_the_host_range_by_range() -> None:
    idmap = userns_idmap("POD", UIDS, GIDS)
    assert idmap is not None
    assert idmap.root() == (100000, 200000)
    assert idmap.to_host(999, 5) == (100999, 200005)
    assert idmap.to_host(1000, 0) == (300000, 200000)
    with pytest.raises(InvalidArgument, match="container ID 65536 cannot be mapped"):
        idmap.to_host(65536, 0)
    assert idmap.labels() == {
        UID_MAPPING_LABEL: "0:100000:1000,1000:300000:64536",
        GID_MAPPING_LABEL: "0:200000:65536",
    }
    assert IDMap.from_labels(idmap.labels()) == idmap
    assert idmap.options() == ("uidmap=0:100000:1000,1000:300000:64536", "gidmap=0:200000:65536")


@pytest.mark.parametrize(
    ("mode", "uids", "gids", "why"),
    [
        ("POD", (), (), 'can\'t use user namespace mode "POD" without UID and GID mappings'),
        ("POD", UIDS, (), 'can\'t use user namespace mode "POD" without UID and GID mappings'),
        ("NODE", UIDS, GIDS, 'can\'t use user namespace mode "NODE" with mappings. Got 2 UID mappings and 1 GID'),
        ("CONTAINER", (), (), 'unsupported user namespace mode: "CONTAINER"'),
        ("POD", ((0, 1, 0),), GIDS, "UID mapping: invalid mapping length: 0"),
        ("POD", UIDS, ((0, 1, 10), (5, 100, 10)), "GID mapping: gid map ranges overlap on the container side"),
        ("POD", ((1, 100000, 10),), GIDS, "container UID/GID mapping entries of 0 are required but not found"),
    ],
)  # fmt: skip
def test_user_namespace_options_containerd_refuses_are_invalid_arguments(
    mode: str, uids: tuple[tuple[int, int, int], ...], gids: tuple[tuple[int, int, int], ...], why: str
) -> None:
    with pytest.raises(InvalidArgument) as err:
        userns_idmap(mode, uids, gids)
    assert err.value.detail.startswith(why), err.value.detail


def test_no_mode_and_node_mode_are_the_hosts_user_namespace() -> None:
    assert userns_idmap("", (), ()) is None
    assert userns_idmap("NODE", (), ()) is None


def test_a_container_must_ask_for_its_pods_user_namespace_exactly() -> None:
    pod = ("POD", UIDS, GIDS)
    assert container_idmap(pod, pod) == userns_idmap(*pod)
    assert container_idmap(("", (), ()), ("", (), ())) is None
    for other in [
        ("", (), ()),
        ("POD", (*UIDS[:1], (1000, 300001, 64536)), GIDS),
        ("POD", UIDS[::-1], GIDS),
    ]:
        with pytest.raises(
            InvalidArgument, match="user namespace config for sandbox is different from container"
        ):
            container_idmap(pod, other)


@pytest.mark.anyio
@pytest.mark.skipif(os.geteuid() != 0, reason="chown and bind mounts need root")
async def test_a_snapshotter_that_cannot_idmap_gets_containerds_chowned_copy_of_the_image(
    tmp_path: Path,
) -> None:
    snapshotter = NativeSnapshotter(tmp_path / "native")
    layer = await snapshotter.prepare("layer-active")
    root = Path(layer[0].source)
    (root / "bin").mkdir()
    (root / "bin" / "su").write_text("#!/bin/sh\n")
    (root / "bin" / "su").chmod(0o4755)
    os.link(root / "bin" / "su", root / "bin" / "su-link")
    (root / "home").mkdir()
    os.lchown(root / "home", 1000, 1000)
    await snapshotter.commit("layer", "layer-active")
    idmap = IDMap.parse("0:100000:1000,1000:300000:64536", "0:200000:65536")

    with pytest.raises(FailedPrecondition, match='snapshotter "native" doesn\'t support idmap mounts'):
        await prepare_remapped(snapshotter, "native", "refused", "layer", idmap, chown=False)
    assert [i.name async for i in snapshotter.walk()] == ["layer"]

    mounts = await prepare_remapped(snapshotter, "native", "c1", "layer", idmap, chown=True)
    remapped = remapped_snapshot_id("layer", idmap)
    assert (await snapshotter.stat("c1")).parent == remapped
    rootfs = Path(mounts[0].source)
    su, home = (rootfs / "bin" / "su").stat(), (rootfs / "home").stat()
    assert (su.st_uid, su.st_gid, su.st_mode & 0o7777, su.st_nlink) == (100000, 200000, 0o4755, 2)
    assert (home.st_uid, home.st_gid) == (300000, 201000)
    # A second container with the same mappings shares the chowned copy.
    await prepare_remapped(snapshotter, "native", "c2", "layer", idmap, chown=True)
    assert sorted([i.name async for i in snapshotter.walk()]) == sorted(["layer", remapped, "c1", "c2"])
    await snapshotter.aclose()


def test_mapping_text_is_parsed_as_containerd_parses_it() -> None:
    assert IDMapping.parse("0:100:5") == IDMapping(0, 100, 5)
    for bad in ("0:100", "a:b:c", "0:-1:5"):
        with pytest.raises(InvalidArgument):
            IDMapping.parse(bad)


@pytest.mark.anyio
@pytest.mark.skipif(os.geteuid() != 0, reason="chown of the new layer needs root")
async def test_the_overlay_snapshotter_remaps_labelled_snapshots_when_it_can(tmp_path: Path) -> None:
    snapshotter = OverlaySnapshotter(tmp_path / "sn")
    snapshotter.remap_ids = True
    await snapshotter.prepare("base-active")
    await snapshotter.commit("base", "base-active")
    labels = IDMap.parse("0:100000:65536", "0:200000:65536").labels()
    mounts = await snapshotter.prepare("mapped", "base", labels)
    assert mounts[0].options[:2] == ("uidmap=0:100000:65536", "gidmap=0:200000:65536")
    assert await snapshotter.mounts("mapped") == mounts
    upper = next(o for o in mounts[0].options if o.startswith("upperdir=")).removeprefix("upperdir=")
    st = Path(upper).stat()
    assert (st.st_uid, st.st_gid) == (100000, 200000)  # the layer's root is the namespace's root
    plain = await snapshotter.prepare("plain", "base")
    assert not any(o.startswith(("uidmap=", "gidmap=")) for o in plain[0].options)
    with pytest.raises(InvalidArgument, match="failed to find root pair"):
        await snapshotter.prepare("rootless", "base", IDMap.parse("1:100000:10", "0:1:1").labels())
    assert [i.name async for i in snapshotter.walk()].count("rootless") == 0
    snapshotter.remap_ids = False  # a kernel that cannot: the labels stay, no options
    assert not any(o.startswith("uidmap=") for o in (await snapshotter.mounts("mapped"))[0].options)
    await snapshotter.aclose()
