"""The measurements. Adding one is adding a decorated function here.

Values are returned in the unit their ``Metric`` declares: milliseconds for times, MiB for memory,
MiB/s or blobs/s for rates. The content-store scenarios' inputs come from ``benchmarks.content``.
"""

from __future__ import annotations

import functools
import gc
import itertools
import random
import statistics
import time

from benchmarks import content
from benchmarks.daemons import CORRAL, CorralDaemonWithCRI, FloorDaemon, corrald_binary
from benchmarks.registry import Metric, Sample, Target, scenario
from benchmarks.timing import time_call
from corral.kernel import InitContext, Registration, resolve_order

MS = 1000.0
_serial = itertools.count(1)
KIB_PER_MIB = 1024.0
BYTES_PER_MIB = float(content.MIB)


@scenario(
    "startup",
    needs="fresh",
    metrics=(
        Metric("startup", "Start-up: exec to first answered `ctr version`", "ms"),
        Metric("startup-cpu", "Start-up: CPU time (user + system) at the first answer", "ms"),
        Metric("rss", "RSS right after start-up (VmRSS)", "MiB"),
    ),
)
def startup(target: Target) -> Sample:
    """Exec the daemon in fresh temp dirs, poll `ctr version` until it answers, then stop it."""
    with target.spawn() as daemon:
        return {
            "startup": daemon.startup_seconds * MS,
            "startup-cpu": daemon.cpu_after_start_seconds * MS,
            "rss": daemon.rss_after_start_kib / KIB_PER_MIB,
        }


@scenario(
    "startup-with-cri",
    needs="fresh",
    kinds=(CORRAL,),
    metrics=(
        Metric("startup-cri", "Start-up with corral's CRI plugins on (its defaults)", "ms"),
        Metric(
            "startup-cri-cpu", "Start-up with corral's CRI plugins on: CPU time at the first answer", "ms"
        ),
    ),
)
def startup_with_cri(target: Target) -> Sample:
    """As ``startup``, with the config's CRI plugins left on (containerd's stay off)."""
    with CorralDaemonWithCRI(
        corrald_binary(), target.workdir / f"corral-cri-{next(_serial):03d}", target.ctr
    ) as d:
        return {"startup-cri": d.startup_seconds * MS, "startup-cri-cpu": d.cpu_after_start_seconds * MS}


@scenario(
    "startup-floor",
    needs="fresh",
    kinds=(CORRAL,),
    metrics=(
        Metric(
            "startup-floor",
            "Start-up floor: a Python process that only answers `ctr version` (asyncio, structlog and"
            " corral's HTTP/2 transport; no kernel, no plugins)",
            "ms",
        ),
    ),
)
def startup_floor(target: Target) -> Sample:
    """As ``startup``, for ``benchmarks.floor``: what any Python daemon on this interpreter pays."""
    with FloorDaemon(corrald_binary(), target.workdir / f"floor-{next(_serial):03d}", target.ctr) as d:
        return {"startup-floor": d.startup_seconds * MS}


@scenario("ctr-version", needs="running", warmup=1, metrics=(Metric("ctr-version", "`ctr version`", "ms"),))
def ctr_version(target: Target) -> Sample:
    """Wall time of `ctr version` against a running daemon (ctr's own start-up included)."""
    return {"ctr-version": target.ctr.time(target.daemon().socket, "version") * MS}


@scenario(
    "ctr-plugins-ls", needs="running", warmup=1, metrics=(Metric("ctr-plugins-ls", "`ctr plugins ls`", "ms"),)
)
def ctr_plugins_ls(target: Target) -> Sample:
    """Wall time of `ctr plugins ls` against a running daemon."""
    return {"ctr-plugins-ls": target.ctr.time(target.daemon().socket, "plugins", "ls") * MS}


SYNTHETIC_PLUGINS = 10_000
SYNTHETIC_TYPES = 100
SYNTHETIC_REQUIRES = 2


async def _noop(_ctx: InitContext) -> None:
    return None


@functools.cache
def synthetic_registrations() -> tuple[Registration, ...]:
    """10,000 registrations over 100 types; each type requires up to two lower-numbered types.

    Generated from ``random.Random(0)``, so every run orders the same graph. Requiring only types
    with a smaller index than one's own makes a cycle impossible.
    """
    rng = random.Random(0)
    regs = []
    for i in range(SYNTHETIC_PLUGINS):
        own = i % SYNTHETIC_TYPES
        lower = sorted(rng.sample(range(own), k=min(SYNTHETIC_REQUIRES, own)))
        regs.append(
            Registration(
                type=f"io.bench.t{own}.v1",
                id=f"p{i}",
                init=_noop,
                requires=tuple(f"io.bench.t{t}.v1" for t in lower),
            )
        )
    return tuple(regs)


@scenario(
    "kernel-order",
    needs="none",
    kinds=(CORRAL,),
    metrics=(Metric("kernel-order", "Kernel ordering: `resolve_order`, 10,000 registrations", "ms"),),
)
def kernel_order(target: Target) -> Sample:
    """`corral.kernel.resolve_order` over 10,000 synthetic registrations, in-process."""
    regs = synthetic_registrations()  # built (and cached) outside the timed call
    gc.collect()
    result: list[int] = []
    elapsed = time_call(lambda: result.append(len(resolve_order(regs).order)))
    if result != [len(regs)]:
        raise RuntimeError(f"resolve_order returned {result} plugins, expected {len(regs)}")
    return {"kernel-order": elapsed * MS}


@scenario(
    "content-ingest",
    needs="running",
    warmup=1,
    metrics=(
        Metric(
            "ingest", "Content ingest, 256 MiB: `ctr content ingest --expected-digest D REF < FILE`", "ms"
        ),
        Metric("ingest-rate", "Content ingest, 256 MiB: throughput", "MiB/s", higher_is_better=True),
    ),
)
def content_ingest(target: Target) -> Sample:
    """Ingest a blob never seen before (8 fresh bytes + a 256 MiB body), then `ctr content rm` it."""
    daemon = target.daemon()
    blob = content.fresh_big_blob(target.workdir)  # written and fsynced before the clock starts
    try:
        seconds = content.ingest(target.ctr, daemon, blob, timeout=content.BIG_TIMEOUT)
        content.remove(target.ctr, daemon, [blob.digest])
    finally:
        blob.path.unlink(missing_ok=True)
    return {"ingest": seconds * MS, "ingest-rate": blob.size / BYTES_PER_MIB / seconds}


@scenario(
    "content-get",
    needs="running",
    warmup=1,
    metrics=(
        Metric("get", "Content read, 256 MiB: `ctr content get D > /dev/null`", "ms"),
        Metric("get-rate", "Content read, 256 MiB: throughput", "MiB/s", higher_is_better=True),
    ),
)
def content_get(target: Target) -> Sample:
    """Read a stored 256 MiB blob (ingested once per daemon, untimed) with `ctr content get`."""
    daemon = target.daemon()
    digest = content.stored_big_blob(target.ctr, daemon, target.workdir)
    seconds = content.get(target.ctr, daemon, digest)
    return {"get": seconds * MS, "get-rate": content.BIG_BLOB_BYTES / BYTES_PER_MIB / seconds}


VERSION_PROBES = 21
"""`ctr version` calls per small-blob run, for the baseline its per-call cost is compared with."""


@scenario(
    "content-small",
    needs="running",
    runs_divisor=5,
    metrics=(
        Metric("small", "Ingest 1,000 distinct 4 KiB blobs, one `ctr content ingest` each", "ms"),
        Metric("small-rate", "Small-blob ingest rate", "blobs/s", higher_is_better=True),
        Metric("small-call", "Small-blob ingest: per `ctr content ingest` call", "ms"),
        Metric("small-extra", "Small-blob ingest: per call, beyond a `ctr version` call", "ms"),
    ),
)
def content_small(target: Target) -> Sample:
    """Ingest 1,000 new 4 KiB blobs sequentially, one ctr process each; then remove them (untimed)."""
    daemon = target.daemon()
    batch = content.fresh_small_blobs(target.workdir)
    try:
        # The floor every ctr call pays (exec, dial, one round trip), measured in the same run.
        version = statistics.median(target.ctr.time(daemon.socket, "version") for _ in range(VERSION_PROBES))
        start = time.perf_counter()
        for blob in batch.blobs:
            content.ingest(target.ctr, daemon, blob)
        seconds = time.perf_counter() - start
        content.remove(target.ctr, daemon, [b.digest for b in batch.blobs])
    finally:
        batch.remove_files()
    count = len(batch.blobs)
    per_call = seconds / count
    return {
        "small": seconds * MS,
        "small-rate": count / seconds,
        "small-call": per_call * MS,
        "small-extra": (per_call - version) * MS,
    }
