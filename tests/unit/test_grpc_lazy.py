"""gRPC plugins served from the start-up index: the same paths, statuses and answers, imported at first use."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# In a child process each: which modules a start imports is the point of these tests.
_PROGRAM = """
import json, sys, anyio
from pathlib import Path
from corral.api.client import connect
from corral.api.edge import NAMESPACE_HEADER
from corral.api.grpc import lazy
from corral.api.grpc.server import build_mapping, serve_unix
from corral.api.types.containerd.services.namespaces import v1 as namespaces_pb
from corral.api.types.containerd.services.version import v1 as version_pb
from corral.api.types.google import protobuf
from corral.kernel import DaemonConfig, Kernel, discover

tmp, index = Path(sys.argv[1]), Path(sys.argv[2])
config = DaemonConfig(root=str(tmp / "root"), state=str(tmp / "state"), disabled_plugins=sys.argv[3:])
sock = str(tmp / "grpc.sock")


async def main():
    kernel = Kernel(config, candidates=lazy.lazy_candidates(discover(), index))
    async with kernel.running():
        mapping = build_mapping(kernel.records())
        before = sorted(m for m in sys.modules if m.startswith("corral.api.grpc."))
        async with serve_unix(mapping, sock), connect(sock, "lazy-test") as client:
            md = {NAMESPACE_HEADER: "lazy-test"}
            version = await version_pb.VersionStub(client.channel, metadata=md).version(protobuf.Empty())
            stub = namespaces_pb.NamespacesStub(client.channel, metadata=md)
            try:
                await stub.create(namespaces_pb.CreateNamespaceRequest(
                    namespace=namespaces_pb.Namespace(name="n1", labels={"a": "b"})))
                answer = await stub.list(namespaces_pb.ListNamespacesRequest())
                listed = [(n.name, n.labels) for n in answer.namespaces]
            except Exception as exc:
                listed = [exc.status.name, exc.message]
            try:
                await stub.delete(namespaces_pb.DeleteNamespaceRequest(name="missing"))
                missing = None
            except Exception as exc:
                missing = [exc.status.name, exc.message]
        lazy_plugins = sorted(
            r.uri for r in kernel.records() if isinstance(r.instance, lazy.LazyServices))
        loaded = sorted(
            r.uri for r in kernel.records() if isinstance(r.instance, lazy.LazyServices) and r.instance.loaded)
        saved = lazy.save_index(kernel.records(), index, force=True)
        print(json.dumps({
            "paths": sorted((p, h.cardinality.name) for p, h in mapping.items()),
            "status": sorted((r.uri, r.status.value, r.reason.replace(str(tmp), "TMP")) for r in kernel.records()),
            "version": version.version,
            "namespaces": listed,
            "missing": missing,
            "lazy": lazy_plugins,
            "loaded": loaded,
            "saved": saved,
            "grpc_modules": before,
        }))

anyio.run(main)
"""


def _start(tmp: Path, index: Path, *disabled: str) -> dict[str, object]:
    tmp.mkdir()
    out = subprocess.run(
        [sys.executable, "-c", _PROGRAM, str(tmp), str(index), *disabled],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result: dict[str, object] = json.loads(out.stdout.splitlines()[-1])
    return result


@pytest.mark.skipif(os.geteuid() != 0, reason="a whole kernel's snapshotters need root")
def test_a_second_start_serves_the_same_from_the_index_and_imports_a_plugin_at_its_first_call(
    tmp_path: Path,
) -> None:
    index = tmp_path / "index.json"
    eager = _start(tmp_path / "first", index)
    assert eager["lazy"] == [] and eager["saved"] is True
    entries = json.loads(index.read_text())["plugins"]
    assert "io.containerd.grpc.v1.version" in entries
    assert "io.containerd.grpc.v1.events" not in entries  # it also serves ttrpc: always eager

    lazy = _start(tmp_path / "second", index)
    assert "io.containerd.grpc.v1.content" in lazy["lazy"]  # type: ignore[operator]
    assert lazy["loaded"] == ["io.containerd.grpc.v1.namespaces", "io.containerd.grpc.v1.version"]
    assert "corral.api.grpc.content" not in lazy["grpc_modules"]  # type: ignore[operator]
    assert "corral.api.grpc.content" in eager["grpc_modules"]  # type: ignore[operator]
    for key in ("paths", "status", "version", "namespaces", "missing"):
        assert lazy[key] == eager[key], key
    assert lazy["missing"] == ["NOT_FOUND", 'namespace "missing": not found']
    assert lazy["saved"] is False  # nothing changed: the index is not rewritten


@pytest.mark.skipif(os.geteuid() != 0, reason="a whole kernel's snapshotters need root")
def test_an_entry_whose_files_changed_or_version_differs_is_started_eagerly(tmp_path: Path) -> None:
    index = tmp_path / "index.json"
    _start(tmp_path / "first", index)
    data = json.loads(index.read_text())
    content = data["plugins"]["io.containerd.grpc.v1.content"]
    name = next(iter(content["files"]))
    content["files"][name][0] += 1  # as if the file were edited
    data["plugins"]["io.containerd.grpc.v1.version"]["version"] = "0.0.0-other"
    index.write_text(json.dumps(data))

    again = _start(tmp_path / "second", index)
    assert "io.containerd.grpc.v1.content" not in again["lazy"]  # type: ignore[operator]
    assert "io.containerd.grpc.v1.version" not in again["lazy"]  # type: ignore[operator]
    assert "io.containerd.grpc.v1.leases" in again["lazy"]  # type: ignore[operator]
    assert again["saved"] is True  # the stale entries are written anew
    fixed = json.loads(index.read_text())["plugins"]
    assert fixed["io.containerd.grpc.v1.version"]["version"] != "0.0.0-other"


@pytest.mark.skipif(os.geteuid() != 0, reason="a whole kernel's snapshotters need root")
def test_a_plugin_whose_lookups_would_fail_now_starts_eagerly_and_fails_as_without_the_index(
    tmp_path: Path,
) -> None:
    index = tmp_path / "index.json"
    _start(tmp_path / "first", index)
    disabled = "io.containerd.service.v1.namespaces-service"
    with_index = _start(tmp_path / "second", index, disabled)
    without = _start(tmp_path / "third", tmp_path / "none.json", disabled)
    for key in ("status", "paths", "namespaces", "missing"):
        assert with_index[key] == without[key], key
    assert with_index["missing"][0] == "UNIMPLEMENTED"  # type: ignore[index]
    status = {uri: (state, reason) for uri, state, reason in with_index["status"]}  # type: ignore[attr-defined]
    assert status["io.containerd.grpc.v1.namespaces"][0] != "ok"
    assert disabled in status["io.containerd.grpc.v1.namespaces"][1]
    assert "io.containerd.grpc.v1.namespaces" not in with_index["lazy"]  # type: ignore[operator]
    # Every plugin that could look the disabled one up starts eagerly; the others stay lazy.
    assert "io.containerd.grpc.v1.content" not in with_index["lazy"]  # type: ignore[operator]
    assert "io.containerd.grpc.v1.version" in with_index["lazy"]  # type: ignore[operator]


def test_a_missing_or_foreign_index_changes_nothing(tmp_path: Path) -> None:
    from corral.api.grpc import lazy
    from corral.kernel import discover

    cands = discover()
    assert lazy.lazy_candidates(cands, tmp_path / "none.json") == cands
    foreign = tmp_path / "foreign.json"
    foreign.write_text(json.dumps({"format": 1, "corral": "0.0.0-other", "plugins": {}}))
    assert lazy.read_index(foreign) == {}
    foreign.write_text("{not json")
    assert lazy.read_index(foreign) == {}
