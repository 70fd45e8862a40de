"""Running containers: `ctr run --rm busybox /bin/true` through runc's shim, one at a time and four
at a time, against each daemon (the image imported once per daemon, by the same `ctr`)."""

from __future__ import annotations

import itertools
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.daemons import Ctr, Daemon
from benchmarks.registry import Metric, Sample, Target, scenario

IMAGE = "docker.io/library/busybox:latest"
PARALLEL = 4
PARALLEL_RUNS = 8
MS = 1000.0

_imported: set[str] = set()
_serial = itertools.count()


def busybox_archive(target: Target) -> Path:
    """The busybox image's OCI archive in the work dir, built on first use."""
    archive = target.workdir / "busybox.tar"
    if not archive.exists():
        from corral.plugins.images.build import build_busybox_image

        build_busybox_image(archive)
    return archive


def _ensure_image(target: Target, daemon: Daemon) -> None:
    key = str(daemon.socket)
    if key not in _imported:
        target.ctr.check(daemon.socket, "images", "import", str(busybox_archive(target)))
        _imported.add(key)


def _run(ctr: Ctr, daemon: Daemon) -> float:
    return ctr.time(daemon.socket, "run", "--rm", IMAGE, f"bench-{next(_serial)}", "/bin/true")


@scenario(
    "ctr-run",
    needs="running",
    warmup=1,
    metrics=(
        Metric("run-latency", f"`ctr run --rm {IMAGE} ID /bin/true` (runc shim)", "ms"),
        Metric(
            "run-parallel",
            f"{PARALLEL_RUNS} `ctr run --rm … /bin/true`, {PARALLEL} at a time: tasks per second",
            "tasks/s",
            higher_is_better=True,
        ),
    ),
)
def ctr_run(target: Target) -> Sample:
    """One container run to its end, then a burst of them four at a time; nothing is left after."""
    daemon, ctr = target.daemon(), target.ctr
    _ensure_image(target, daemon)
    latency = _run(ctr, daemon)
    began = time.perf_counter()
    with ThreadPoolExecutor(PARALLEL) as pool:
        list(pool.map(lambda _: _run(ctr, daemon), range(PARALLEL_RUNS)))
    rate = PARALLEL_RUNS / (time.perf_counter() - began)
    return {"run-latency": latency * MS, "run-parallel": rate}


IDLE_CONTAINERS = 20
SETTLE_SECONDS = 2.0


@scenario(
    "idle-rss",
    needs="fresh",
    runs_divisor=3,
    metrics=(
        Metric("rss-idle-0", "RSS of a fresh daemon with the image imported, no containers", "MiB"),
        Metric(
            "rss-idle-20",
            f"RSS with {IDLE_CONTAINERS} running containers (`ctr run -d … sleep`), the daemon alone",
            "MiB",
        ),
    ),
)
def idle_rss(target: Target) -> Sample:
    """A fresh daemon runs twenty idle containers; its own VmRSS (not the shims') before and after."""
    ctr = target.ctr
    with target.spawn() as daemon:
        ctr.check(daemon.socket, "images", "import", str(busybox_archive(target)))
        time.sleep(SETTLE_SECONDS)
        before = daemon.rss_kib()
        ids = [f"idle-{n}" for n in range(IDLE_CONTAINERS)]
        try:
            for cid in ids:
                ctr.check(daemon.socket, "run", "-d", IMAGE, cid, "sleep", "1000")
            time.sleep(SETTLE_SECONDS)
            after = daemon.rss_kib()
        finally:
            for cid in ids:
                ctr.ok(daemon.socket, "tasks", "delete", "--force", cid)
                ctr.ok(daemon.socket, "containers", "rm", cid)
    return {"rss-idle-0": before / 1024.0, "rss-idle-20": after / 1024.0}
