"""``python -m benchmarks.server_cpu``: each daemon's own CPU time per call, side by side.

A daemon's user + system time (``/proc/PID/stat``) is read before and after a batch of calls made
by one client over one connection, so what is counted is the server's work alone, whatever the
machine's load does to wall times:

- ``version``: ``Version`` unary calls from corral's Python gRPC client (grpclib);
- ``read``: 32 KiB ``Content.Read`` calls (offsets cycling over a 1 MiB blob), the same client;
- ``ctr-get``: one ``ctr content get`` of a 64 MiB blob (grpc-go, 32 KiB per call, 2,048 calls),
  per call.

Prints one line per figure, in microseconds, with the corral/containerd ratio.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import anyio

from benchmarks import content
from benchmarks.daemons import (
    CONTAINERD_BIN,
    ContainerdDaemon,
    CorralDaemon,
    Ctr,
    Daemon,
    corrald_binary,
    ctr_binary,
    read_cpu_seconds,
)
from corral.api.client import connect
from corral.api.edge import NAMESPACE_HEADER
from corral.api.types.containerd.services.content import v1 as content_pb
from corral.api.types.containerd.services.version import v1 as version_pb
from corral.api.types.google import protobuf

NAMESPACE = "default"  # where `ctr content ingest` puts the blobs
CHUNK = 32 << 10
SMALL_BLOB = 1 << 20
GET_BLOB = 64 << 20


async def _calls(daemon: Daemon, digest: str, versions: int, reads: int) -> dict[str, float]:
    async with connect(str(daemon.socket), NAMESPACE) as client:
        metadata = {NAMESPACE_HEADER: NAMESPACE}
        version = version_pb.VersionStub(client.channel, metadata=metadata)
        store = content_pb.ContentStub(client.channel, metadata=metadata)
        for _ in range(50):  # warm: connection, lazily started plugins, caches
            await version.version(protobuf.Empty())
            async for _chunk in store.read(content_pb.ReadContentRequest(digest=digest, size=CHUNK)):
                pass
        out: dict[str, float] = {}
        before = read_cpu_seconds(daemon.pid)
        for _ in range(versions):
            await version.version(protobuf.Empty())
        out["version"] = (read_cpu_seconds(daemon.pid) - before) / versions
        before = read_cpu_seconds(daemon.pid)
        for i in range(reads):
            offset = (i * CHUNK) % SMALL_BLOB
            got = 0
            async for chunk in store.read(
                content_pb.ReadContentRequest(digest=digest, offset=offset, size=CHUNK)
            ):
                got += len(chunk.data)
            if got != CHUNK:
                raise RuntimeError(f"read {got} bytes at {offset}, expected {CHUNK}")
        out["read"] = (read_cpu_seconds(daemon.pid) - before) / reads
    return out


def _blob(ctr: Ctr, daemon: Daemon, workdir: Path, size: int, name: str) -> str:
    """A random blob ingested and labelled a GC root (again if a collection took it in between)."""
    path = workdir / name
    data = os.urandom(size)
    path.write_bytes(data)
    blob = content.Blob(path=path, digest="sha256:" + hashlib.sha256(data).hexdigest(), size=size, ref=name)
    try:
        for attempt in range(5):
            content.ingest(ctr, daemon, blob, timeout=content.BIG_TIMEOUT)
            try:
                ctr.check(daemon.socket, "content", "label", blob.digest, f"{content.GC_ROOT}=corral-bench")
            except subprocess.CalledProcessError:
                if attempt == 4:
                    raise
            else:
                return blob.digest
    finally:
        path.unlink()
    raise AssertionError("unreachable")


def measure(daemon: Daemon, ctr: Ctr, workdir: Path, versions: int, reads: int) -> dict[str, float]:
    small = _blob(ctr, daemon, workdir, SMALL_BLOB, "small.bin")
    big = _blob(ctr, daemon, workdir, GET_BLOB, "big.bin")
    out = anyio.run(_calls, daemon, small, versions, reads)
    ctr.time(daemon.socket, "content", "get", big, timeout=content.BIG_TIMEOUT)  # warm
    before = read_cpu_seconds(daemon.pid)
    seconds = ctr.time(daemon.socket, "content", "get", big, timeout=content.BIG_TIMEOUT)
    out["ctr-get"] = (read_cpu_seconds(daemon.pid) - before) / (GET_BLOB // CHUNK)
    out["ctr-get-rate"] = GET_BLOB / (1 << 20) / seconds
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.server_cpu", description=__doc__)
    p.add_argument("--versions", type=int, default=5000)
    p.add_argument("--reads", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=1, help="each daemon this many times, in turn (A B, B A, …)")
    p.add_argument(
        "--corrald",
        action="append",
        default=[],
        metavar="LABEL=PATH",
        help="a corrald to measure under LABEL (repeatable; default: this tree's as `corral`)",
    )
    p.add_argument("--no-containerd", action="store_true")
    args = p.parse_args(argv)
    ctr_path = ctr_binary()
    if ctr_path is None:
        print("ctr not found", file=sys.stderr)
        return 2
    ctr = Ctr(ctr_path)
    kinds: list[tuple[str, type[Daemon], str]] = [
        (label, CorralDaemon, path)
        for label, _, path in (spec.partition("=") for spec in args.corrald or [f"corral={corrald_binary()}"])
    ]
    if not args.no_containerd:
        kinds.append(("containerd", ContainerdDaemon, CONTAINERD_BIN))
    samples: dict[str, list[dict[str, float]]] = {label: [] for label, _, _ in kinds}
    with tempfile.TemporaryDirectory(prefix="corral-cpu-") as tmp:
        for round_ in range(args.rounds):
            order = kinds if round_ % 2 == 0 else kinds[::-1]
            for label, cls, binary in order:
                work = Path(tmp) / f"{label}-{round_}"
                work.mkdir()
                with cls(binary, work, ctr) as daemon:
                    samples[label].append(measure(daemon, ctr, work, args.versions, args.reads))
    base = "containerd" if "containerd" in samples else None
    for key in ("version", "read", "ctr-get", "ctr-get-rate"):
        rate = key.endswith("rate")
        row = {label: statistics.median(s[key] for s in runs) for label, runs in samples.items()}
        cells = "  ".join(f"{label} {v * (1.0 if rate else 1e6):8.1f}" for label, v in row.items())
        ratios = ""
        if base and row[base]:
            ratios = "  " + " ".join(
                f"{label}/{base} {v / row[base]:.2f}" for label, v in row.items() if label != base
            )
        print(f"{key:13s} {'MiB/s' if rate else 'µs/call':8s} {cells}{ratios}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
