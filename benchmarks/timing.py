"""Timing helpers: wall-clock around calls and subprocesses, polling, and summaries."""

from __future__ import annotations

import contextlib
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

POLL_INTERVAL = 0.01
"""Seconds to sleep between polls while waiting for a daemon to answer."""


class PollTimeout(TimeoutError):
    """A condition polled for never became true."""


def time_call(fn: Callable[[], object]) -> float:
    """Seconds ``fn()`` took, by ``time.perf_counter``."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def time_command(argv: Sequence[str], *, timeout: float = 60.0, stdin: Path | None = None) -> float:
    """Seconds a command took from spawn to exit; output is discarded, a failure raises.

    ``stdin`` is a file to feed it (``< FILE``); opening it is not timed. Without it, /dev/null.
    """
    with contextlib.ExitStack() as stack:
        source: IO[bytes] | int = (
            subprocess.DEVNULL if stdin is None else stack.enter_context(stdin.open("rb"))
        )
        start = time.perf_counter()
        proc = subprocess.run(
            list(argv),
            stdin=source,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=timeout,
        )
        elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip()
        raise subprocess.CalledProcessError(proc.returncode, list(argv), stderr=err)
    return elapsed


def poll_until(
    attempt: Callable[[], bool],
    *,
    start: float,
    timeout: float,
    interval: float = POLL_INTERVAL,
    give_up: Callable[[], str | None] = lambda: None,
) -> float:
    """Call ``attempt`` until it returns true; return seconds since ``start`` (a perf_counter value).

    ``give_up`` is checked before each attempt: a non-None string aborts with that message (e.g.
    the daemon exited). Raises ``PollTimeout`` after ``timeout`` seconds.
    """
    while True:
        reason = give_up()
        if reason is not None:
            raise PollTimeout(reason)
        if attempt():
            return time.perf_counter() - start
        if time.perf_counter() - start > timeout:
            raise PollTimeout(f"not ready after {timeout:.0f}s")
        time.sleep(interval)


@dataclass(frozen=True)
class Summary:
    """Robust summary of one metric's samples."""

    median: float
    minimum: float
    maximum: float
    mean: float
    stdev: float
    n: int

    @classmethod
    def of(cls, samples: Sequence[float]) -> Summary:
        if not samples:
            raise ValueError("no samples")
        return cls(
            median=statistics.median(samples),
            minimum=min(samples),
            maximum=max(samples),
            mean=statistics.fmean(samples),
            stdev=statistics.stdev(samples) if len(samples) > 1 else 0.0,
            n=len(samples),
        )
