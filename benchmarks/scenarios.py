"""The measurements. Adding one is adding a decorated function here.

Values are returned in the unit their ``Metric`` declares: milliseconds for times, MiB for memory.
"""

from __future__ import annotations

import functools
import gc
import random

from benchmarks.daemons import CORRAL
from benchmarks.registry import Metric, Sample, Target, scenario
from benchmarks.timing import time_call
from corral.kernel import InitContext, Registration, resolve_order

MS = 1000.0
KIB_PER_MIB = 1024.0


@scenario(
    "startup",
    needs="fresh",
    metrics=(
        Metric("startup", "Start-up: exec to first answered `ctr version`", "ms"),
        Metric("rss", "RSS right after start-up (VmRSS)", "MiB"),
    ),
)
def startup(target: Target) -> Sample:
    """Exec the daemon in fresh temp dirs, poll `ctr version` until it answers, then stop it."""
    with target.spawn() as daemon:
        return {"startup": daemon.startup_seconds * MS, "rss": daemon.rss_after_start_kib / KIB_PER_MIB}


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
