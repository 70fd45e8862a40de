"""A corrald for the fuzzer, with a few real objects for random requests to meet."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "integration"))

from grpc_bodies import PAYLOADS
from harness import Daemon
from tooling import require_root, require_tool

from corral.api.client import connect

NAMESPACES = ("default", "fuzz")
SNAPSHOTTERS = ("overlayfs", "native")
ROOT_LABEL = {"containerd.io/gc.root": "fuzz"}


async def seed_objects(socket: str) -> None:
    """Blobs of every payload, a committed snapshot with a child, and a lease, in each namespace;
    named as the fuzzer names things (k0…k3), so its requests find them."""
    for ns in NAMESPACES:
        async with connect(socket, ns) as client:
            for i, payload in enumerate(PAYLOADS):
                await client.ingest(f"seed-{i}", payload, labels=ROOT_LABEL)
            for snapshotter in SNAPSHOTTERS:
                await client.snapshot_prepare(snapshotter, "k0", labels=ROOT_LABEL)
                await client.snapshot_commit(snapshotter, "k1", "k0", labels=ROOT_LABEL)
                await client.snapshot_prepare(snapshotter, "k2", "k1", labels=ROOT_LABEL)
            await client.create_lease("k0")


@pytest.fixture
def fuzz_daemon(tmp_path: Path) -> Iterator[Daemon]:
    require_root()
    require_tool("ctr")
    d = Daemon(tmp_path / "corral").start()
    try:
        anyio.run(seed_objects, d.socket)
        yield d
    finally:
        d.stop()


@pytest.fixture
def sandbox(tmp_path: Path) -> Path:
    """The one real directory fuzzed mounts may name (empty, small: a Diff of it is cheap)."""
    path = tmp_path / "sandbox"
    for name in ("a", "b", "u", "w"):
        (path / name).mkdir(parents=True)
    (path / "a" / "file").write_text("fuzz")
    return path
