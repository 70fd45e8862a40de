"""The v2 runtime's pure parts: runtime names to shim binaries, what `start` prints, bundles."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest
from deep_trees import deep_tree

from corral.kernel import InvalidArgument, NotFound, Unimplemented
from corral.plugins.metadata import AnyValue
from corral.plugins.runtimes import SPEC_TYPE_URL
from corral.plugins.runtimes.shim import binary_name, resolve_runtime
from corral.plugins.runtimes.shim._binary import parse_start_output, read_bootstrap
from corral.plugins.runtimes.shim._bundle import load_bundles, new_bundle, remove_orphan_work


@pytest.mark.parametrize(
    ("runtime", "binary"),
    [
        ("io.containerd.runc.v2", "containerd-shim-runc-v2"),
        ("io.containerd.runsc.v1", "containerd-shim-runsc-v1"),
        ("io.containerd.wasmtime.v1", "containerd-shim-wasmtime-v1"),
        ("runc", ""),
        ("io..v2", ""),
    ],
)
def test_a_runtime_name_names_its_shim_binary(runtime: str, binary: str) -> None:
    assert binary_name(runtime) == binary


def test_a_runtime_resolves_on_the_search_path_or_as_an_absolute_path(tmp_path: Path) -> None:
    shim = tmp_path / "containerd-shim-fake-v9"
    shim.write_text("#!/bin/sh\n")
    shim.chmod(0o755)
    assert resolve_runtime("io.example.fake.v9", search_path=str(tmp_path)) == str(shim)
    assert resolve_runtime(str(shim)) == str(shim)
    with pytest.raises(NotFound, match="binary not installed"):
        resolve_runtime("io.example.absent.v9", search_path=str(tmp_path))
    with pytest.raises(NotFound, match="invalid custom binary path"):
        resolve_runtime(str(tmp_path / "missing"))
    with pytest.raises(InvalidArgument, match="correct runtime name"):
        resolve_runtime("relative/containerd-shim-fake-v9")
    with pytest.raises(InvalidArgument, match="correct runtime name"):
        resolve_runtime("runc")
    with pytest.raises(InvalidArgument, match="no runtime name"):
        resolve_runtime("")


def test_start_output_is_a_bare_address_or_json_bootstrap_params() -> None:
    assert parse_start_output(b"unix:///run/containerd/s/abc\n") == (
        "ttrpc",
        "unix:///run/containerd/s/abc",
        2,
    )
    assert parse_start_output(b'{"version":2,"address":"unix:///s","protocol":"ttrpc"}') == (
        "ttrpc",
        "unix:///s",
        2,
    )
    with pytest.raises(Unimplemented, match="unsupported shim version"):
        parse_start_output(b'{"version":3,"address":"unix:///s","protocol":"grpc"}')
    with pytest.raises(Exception, match="no address"):
        parse_start_output(b"  \n")


def spec() -> AnyValue:
    return AnyValue(SPEC_TYPE_URL, json.dumps({"ociVersion": "1.0.2", "root": {"path": "rootfs"}}).encode())


def test_a_bundle_is_laid_out_as_the_shim_expects_and_removed_whole(tmp_path: Path) -> None:
    root, state = tmp_path / "root", tmp_path / "state"
    bundle = new_bundle(root, state, "ns1", "t1", spec())
    assert bundle.path == state / "ns1" / "t1"
    assert json.loads((bundle.path / "config.json").read_text())["root"]["path"] == "rootfs"
    assert stat.S_ISFIFO(os.lstat(bundle.path / "log").st_mode)
    assert os.readlink(bundle.path / "work") == str(root / "ns1" / "t1")
    assert (root / "ns1" / "t1").is_dir() and bundle.rootfs.is_dir()
    assert stat.S_IMODE(bundle.path.stat().st_mode) == 0o700

    bundle.write("bootstrap.json", '{"version":2,"address":"unix:///x","protocol":"ttrpc"}')
    assert read_bootstrap(bundle) == ("ttrpc", "unix:///x", 2)
    assert load_bundles(state) == [bundle]

    bundle.delete()
    assert list((state / "ns1").iterdir()) == []
    assert list((root / "ns1").iterdir()) == []


def test_a_bundle_is_refused_for_a_bad_id_or_spec_and_leaves_nothing(tmp_path: Path) -> None:
    root, state = tmp_path / "root", tmp_path / "state"
    with pytest.raises(InvalidArgument):
        new_bundle(root, state, "ns1", "bad id", spec())
    with pytest.raises(InvalidArgument, match="not JSON"):
        new_bundle(root, state, "ns1", "t2", AnyValue(SPEC_TYPE_URL, b"{nope"))
    assert not (state / "ns1" / "t2").exists()
    assert load_bundles(state) == []


def test_an_address_file_alone_is_read_as_a_v2_ttrpc_shim(tmp_path: Path) -> None:
    bundle = new_bundle(tmp_path / "root", tmp_path / "state", "ns", "t", None)
    assert read_bootstrap(bundle) is None
    (bundle.path / "address").write_text("unix:///run/containerd/s/abc")
    assert read_bootstrap(bundle) == ("ttrpc", "unix:///run/containerd/s/abc", 2)


def test_loading_bundles_finishes_an_interrupted_delete(tmp_path: Path) -> None:
    state = tmp_path / "state"
    keep = new_bundle(tmp_path / "root", state, "ns", "keep", None)
    half = state / "ns" / ".gone"
    (half / "rootfs").mkdir(parents=True)
    assert load_bundles(state) == [keep]
    assert not half.exists()


def test_bundles_and_work_directories_of_any_depth_are_removed(tmp_path: Path) -> None:
    """What a runtime leaves in a task's work directory can be deeper than the interpreter's
    recursion limit: a delete, the replacement of a leftover, an interrupted delete and an orphan
    all still remove it whole."""
    root, state = tmp_path / "root", tmp_path / "state"
    levels = 3 * sys.getrecursionlimit()
    bundle = new_bundle(root, state, "ns", "t", None)
    deep_tree(root / "ns" / "t", levels)
    deep_tree(bundle.path, levels)
    bundle.delete()
    assert list((state / "ns").iterdir()) == [] and list((root / "ns").iterdir()) == []

    deep_tree(root / "ns" / "again", levels)
    again = new_bundle(root, state, "ns", "again", None)
    assert list((root / "ns" / "again").iterdir()) == []  # the leftover work directory replaced

    deep_tree(state / "ns" / ".half", levels)
    deep_tree(root / "ns" / "orphan", levels)
    assert load_bundles(state) == [again]
    remove_orphan_work(root, {("ns", "again")})
    assert sorted(p.name for p in (state / "ns").iterdir()) == ["again"]
    assert sorted(p.name for p in (root / "ns").iterdir()) == ["again"]


def test_a_user_namespaced_bundle_is_reachable_by_the_containers_root_gid(tmp_path: Path) -> None:
    from corral.plugins.runtimes.shim._bundle import remapped_gid

    maps = {"linux": {"gidMappings": [{"containerID": 1000, "hostID": 7000, "size": 10},
                                      {"containerID": 0, "hostID": 666, "size": 1000}]}}  # fmt: skip
    assert remapped_gid(maps) == 666
    assert remapped_gid({"linux": {}}) == 0
    assert remapped_gid({}) == 0
    if os.geteuid() != 0:
        return
    value = AnyValue(SPEC_TYPE_URL, json.dumps(maps).encode())
    bundle = new_bundle(tmp_path / "root", tmp_path / "state", "ns", "userns", value)
    st = bundle.path.stat()
    assert (stat.S_IMODE(st.st_mode), st.st_gid) == (0o710, 666)
    plain = new_bundle(tmp_path / "root", tmp_path / "state", "ns", "plain", spec())
    assert stat.S_IMODE(plain.path.stat().st_mode) == 0o700
