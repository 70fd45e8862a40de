"""An event loop that looks for the next event a moment longer before it sleeps.

Clients such as ``ctr content get`` work in lock step: a 32 KiB Read, its answer, the next Read
some tens of microseconds later. A loop that blocks in ``epoll_wait`` as soon as it has nothing to
do is put to sleep and woken for every one of them; on a busy machine each wake-up waits for a
CPU, and that wait, not the work, sets the rate. After a turn that handled I/O, this loop polls
without blocking for up to ``SPIN_SECONDS`` before it blocks, as Go's scheduler spins before it
parks a thread. An idle daemon never spins: the spin follows only a turn that had events.
"""

from __future__ import annotations

import asyncio
import selectors
import time
from typing import Any

SPIN_SECONDS = 0.001


class SpinningSelector(selectors.DefaultSelector):
    """``select(timeout)`` that, after a call that returned events, polls for ``SPIN_SECONDS``
    before it blocks."""

    def __init__(self) -> None:
        super().__init__()
        self._busy = False

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if self._busy and (timeout is None or timeout > 0):
            deadline = time.perf_counter() + SPIN_SECONDS
            while True:
                ready: list[Any] = super().select(0)
                if ready:
                    return ready
                if time.perf_counter() >= deadline:
                    break
        ready = super().select(timeout)
        self._busy = bool(ready)
        return ready


def new_event_loop() -> asyncio.AbstractEventLoop:
    return asyncio.SelectorEventLoop(SpinningSelector())
