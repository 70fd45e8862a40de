"""A busy node: many small calls in a row, many clients at once, and a restart after a crash.

The sequential calls are made by one Python gRPC client (grpclib, corral's own stubs) over one
connection to either daemon, since one ``ctr`` process makes one call; the client's own cost is
the same on both sides, so the ratio understates the daemons' difference rather than inflating it.
Everything else is driven by ``ctr``. The RSS row is read after every other scenario that uses the
long-lived daemons has run (``python -m benchmarks`` registers this module last).
"""

from __future__ import annotations

import hashlib
import itertools
import os
import signal
import statistics
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import anyio

from benchmarks import content
from benchmarks.daemons import Daemon
from benchmarks.registry import Metric, Sample, Target, scenario
from corral.api.client import connect
from corral.api.edge import NAMESPACE_HEADER
from corral.api.types.containerd.services.namespaces import v1 as namespaces_pb
from corral.api.types.containerd.services.version import v1 as version_pb
from corral.api.types.google import protobuf

MS = 1000.0
NAMESPACE = "bench"
SEQUENTIAL_CALLS = 2000
CONCURRENT_CTR = 200
CONCURRENT_INGESTS = 32
INGEST_BYTES = 8 << 20
CRASH_BLOBS = 20
CONCURRENT_TIMEOUT = 300.0

_serial = itertools.count(1)


async def _sequential(socket: Path) -> list[float]:
    """Seconds of each of SEQUENTIAL_CALLS unary calls, Version and Namespaces.List in turn."""
    async with connect(str(socket), NAMESPACE) as client:
        metadata = {NAMESPACE_HEADER: NAMESPACE}
        version = version_pb.VersionStub(client.channel, metadata=metadata)
        namespaces = namespaces_pb.NamespacesStub(client.channel, metadata=metadata)
        await version.version(protobuf.Empty())  # the connection is open before the clock starts
        times = []
        for i in range(SEQUENTIAL_CALLS):
            start = time.perf_counter()
            if i % 2:
                await namespaces.list(namespaces_pb.ListNamespacesRequest())
            else:
                await version.version(protobuf.Empty())
            times.append(time.perf_counter() - start)
    return times


@scenario(
    "rpc-sequential",
    needs="running",
    warmup=1,
    metrics=(
        Metric("seq", "2,000 sequential small RPCs (Version, Namespaces.List), one connection", "ms"),
        Metric("seq-p95", "Sequential small RPCs: 95th percentile per call", "ms"),
    ),
)
def rpc_sequential(target: Target) -> Sample:
    """2,000 unary calls in a row over one connection, from one Python gRPC client."""
    times = anyio.run(_sequential, target.daemon().socket)
    return {"seq": sum(times) * MS, "seq-p95": statistics.quantiles(times, n=20)[-1] * MS}


def _concurrent(commands: Sequence[tuple[Sequence[str], Path | None]], timeout: float) -> float:
    """Wall seconds from starting every command at once to the last one's exit; any failure raises."""
    handles = []
    procs: list[subprocess.Popen[bytes]] = []
    start = time.perf_counter()
    try:
        for argv, stdin in commands:
            source = stdin.open("rb") if stdin is not None else None
            if source is not None:
                handles.append(source)
            procs.append(
                subprocess.Popen(
                    argv,
                    stdin=source if source is not None else subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                )
            )
        deadline = start + timeout
        failures = []
        for proc in procs:
            _, err = proc.communicate(timeout=max(1.0, deadline - time.perf_counter()))
            if proc.returncode != 0:
                failures.append(err.decode(errors="replace").strip())
        elapsed = time.perf_counter() - start
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for handle in handles:
            handle.close()
    if failures:
        raise RuntimeError(f"{len(failures)} of {len(procs)} concurrent calls failed: {failures[0]}")
    return elapsed


@scenario(
    "ctr-version-concurrent",
    needs="running",
    warmup=1,
    metrics=(Metric("conc-version", "200 concurrent `ctr version`: first start to last exit", "ms"),),
)
def ctr_version_concurrent(target: Target) -> Sample:
    """200 `ctr version` processes started at once."""
    daemon = target.daemon()
    argv = target.ctr.argv(daemon.socket, "version")
    return {"conc-version": _concurrent([(argv, None)] * CONCURRENT_CTR, CONCURRENT_TIMEOUT) * MS}


def _blobs(workdir: Path, count: int, size: int) -> list[content.Blob]:
    n = next(_serial)
    directory = workdir / f"load-blobs-{n:04d}"
    directory.mkdir()
    blobs = []
    for i in range(count):
        data = hashlib.shake_256(b"corral-bench load %d %d" % (n, i)).digest(size)
        path = directory / f"{i:03d}.bin"
        path.write_bytes(data)
        digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
        blobs.append(content.Blob(path=path, digest=digest, size=size, ref=f"bench-load-{n}-{i}"))
    os.sync()  # the kernel's write-back of the inputs stays out of the timed calls
    return blobs


def _remove_files(blobs: list[content.Blob]) -> None:
    for blob in blobs:
        blob.path.unlink(missing_ok=True)
    if blobs:
        blobs[0].path.parent.rmdir()


@scenario(
    "ingest-concurrent",
    needs="running",
    warmup=1,
    metrics=(
        Metric("conc-ingest", "32 concurrent 8 MiB `ctr content ingest`: first start to last exit", "ms"),
        Metric("conc-ingest-rate", "Concurrent ingests: throughput", "MiB/s", higher_is_better=True),
    ),
)
def ingest_concurrent(target: Target) -> Sample:
    """32 distinct 8 MiB blobs ingested by 32 `ctr` processes at once; then removed (untimed)."""
    daemon = target.daemon()
    blobs = _blobs(target.workdir, CONCURRENT_INGESTS, INGEST_BYTES)
    try:
        commands = [
            (
                target.ctr.argv(
                    daemon.socket, "content", "ingest", "--expected-digest", blob.digest, blob.ref
                ),
                blob.path,
            )
            for blob in blobs
        ]
        seconds = _concurrent(commands, CONCURRENT_TIMEOUT)
        content.remove(target.ctr, daemon, [b.digest for b in blobs])
    finally:
        _remove_files(blobs)
    total = CONCURRENT_INGESTS * INGEST_BYTES / content.MIB
    return {"conc-ingest": seconds * MS, "conc-ingest-rate": total / seconds}


@scenario(
    "rss-after-load",
    needs="running",
    metrics=(Metric("rss-load", "RSS after every scenario above has run on the long-lived daemon", "MiB"),),
)
def rss_after_load(target: Target) -> Sample:
    """VmRSS of the long-lived daemon once the other scenarios are done."""
    return {"rss-load": target.daemon().rss_kib() / 1024.0}


def _crash_and_restart(daemon: Daemon, target: Target) -> float:
    """kill -9 the daemon while it holds content, start it again on the same dirs; seconds to ready."""
    blobs = _blobs(target.workdir, CRASH_BLOBS, 4096)
    try:
        for blob in blobs:
            content.ingest(target.ctr, daemon, blob)
    finally:
        _remove_files(blobs)
    os.kill(daemon.pid, signal.SIGKILL)
    return daemon.restart()


@scenario(
    "restart-after-kill",
    needs="fresh",
    metrics=(Metric("restart", "Restart after `kill -9`: exec to first answered `ctr version`", "ms"),),
)
def restart_after_kill(target: Target) -> Sample:
    """Start, ingest 20 blobs, kill -9, start again on the same directories (timed), stop."""
    with target.spawn() as daemon:
        seconds = _crash_and_restart(daemon, target)
        if not target.ctr.ok(daemon.socket, "content", "ls"):
            raise RuntimeError(f"{daemon.kind}: `ctr content ls` failed after the restart")
    return {"restart": seconds * MS}
