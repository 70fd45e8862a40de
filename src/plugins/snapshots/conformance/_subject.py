"""What the checks run against: a snapshotter plugin, opened on a root as corrald would open it."""

from __future__ import annotations

import functools
import inspect
import os
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio

from corral.kernel import DaemonConfig, Kernel, Registration, Status, builtin_candidate
from corral.plugins.snapshots import Snapshotter

Opener = Callable[[Path], Snapshotter | Awaitable[Snapshotter]]
"""Opens the snapshotter under test on an empty or earlier-used root directory. A module-level
function (or a ``Registration``): the crash checks open it again in child processes."""
Plugin = Registration | Opener
"""What the suite tests: a plugin's registration (started by a kernel, as corrald starts it) or an opener."""


class CheckSkipped(Exception):
    """The check cannot run here (it needs root, or the plugin skipped itself); ``str()`` says why."""


@dataclass(frozen=True)
class Subject:
    """The snapshotter under test and a scratch directory the suite may fill (roots, mounts' files)."""

    plugin: Plugin
    scratch: Path

    def new_root(self) -> Path:
        """A fresh, empty directory for a snapshotter root."""
        return Path(tempfile.mkdtemp(prefix="root-", dir=self.scratch))

    @asynccontextmanager
    async def open(self, root: Path | None = None) -> AsyncIterator[Snapshotter]:
        """The snapshotter on ``root`` (a fresh root when None), closed when the block ends."""
        async with open_snapshotter(self.plugin, root or self.new_root()) as snapshotter:
            yield snapshotter


@asynccontextmanager
async def open_snapshotter(plugin: Plugin, root: Path) -> AsyncIterator[Snapshotter]:
    """Open ``plugin`` on ``root``: a registration under a kernel whose daemon root is ``root``."""
    if isinstance(plugin, Registration):
        config = DaemonConfig(root=str(root / "root"), state=str(root / "state"))
        kernel = Kernel(config, candidates=[builtin_candidate(plugin, distribution="(conformance)")])
        async with kernel.running():
            record = kernel.get(plugin.uri)
            assert record is not None
            if record.status is Status.SKIP:
                raise CheckSkipped(f"{plugin.uri} skipped itself: {record.reason}")
            assert record.ok, f"{plugin.uri} did not start: {record.status.value}: {record.reason}"
            instance = record.instance
            assert isinstance(instance, Snapshotter), f"{plugin.uri} is not a Snapshotter: {instance!r}"
            yield instance  # the kernel closes it
        return
    opened = plugin(root)
    snapshotter = await opened if inspect.isawaitable(opened) else opened
    assert isinstance(snapshotter, Snapshotter), f"{plugin!r} opened {snapshotter!r}, not a Snapshotter"
    try:
        yield snapshotter
    finally:
        await close(snapshotter)


async def close(snapshotter: object) -> None:
    """Call the snapshotter's ``aclose`` or ``close``, as the kernel does at stop, if it has one."""
    closer = getattr(snapshotter, "aclose", None) or getattr(snapshotter, "close", None)
    if closer is not None:
        result = closer()
        if inspect.isawaitable(result):
            await result


Check = Callable[[Subject], Awaitable[None]]

_needs_root: set[Check] = set()


def needs_root(check: Check) -> Check:
    """Mark a check that mounts snapshots (or makes device nodes): without root it is skipped, saying so."""

    @functools.wraps(check)
    async def run(subject: Subject) -> None:
        if os.geteuid() != 0:
            raise CheckSkipped(f"{check.__name__} mounts snapshots, which needs root (effective uid 0)")
        await check(subject)

    _needs_root.add(run)
    return run


def check_name(check: Check) -> str:
    """The check's name without its ``check_`` prefix: a test id."""
    return check.__name__.removeprefix("check_")


def run(check: Check, plugin: Plugin, scratch: Path, *, skip: Callable[[str], object] | None = None) -> None:
    """Run one check on ``plugin`` in an event loop of its own; blocks until it is done.

    A failure raises (an AssertionError saying what is wrong). A check that cannot run here calls
    ``skip(reason)`` (pass ``pytest.skip``), or raises ``CheckSkipped`` when no ``skip`` is given.
    """
    try:
        anyio.run(check, Subject(plugin, scratch))
    except CheckSkipped as exc:
        if skip is None:
            raise
        skip(str(exc))
