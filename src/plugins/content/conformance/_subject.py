"""What the checks run against: a content store plugin, opened on a root as corrald would open it."""

from __future__ import annotations

import functools
import inspect
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio

from corral.kernel import DaemonConfig, Kernel, Registration, Status, builtin_candidate
from corral.plugins.content import ContentStore

Opener = Callable[[Path], ContentStore | Awaitable[ContentStore]]
"""Opens the store under test on an empty or earlier-used root directory. For a durable store, a
module-level function (or a ``Registration``): the crash checks open it again in child processes."""
Plugin = Registration | Opener
"""What the suite tests: a plugin's registration (started by a kernel, as corrald starts it) or an opener."""


class CheckSkipped(Exception):
    """The check cannot run here, or does not apply to this store; ``str()`` says why."""


@dataclass(frozen=True)
class Subject:
    """The store under test, a scratch directory for its roots, and whether it keeps anything
    across a restart (an in-memory fake does not: the crash checks skip it)."""

    plugin: Plugin
    scratch: Path
    durable: bool = True

    def new_root(self) -> Path:
        return Path(tempfile.mkdtemp(prefix="root-", dir=self.scratch))

    @asynccontextmanager
    async def open(self, root: Path | None = None) -> AsyncIterator[ContentStore]:
        """The store on ``root`` (a fresh root when None), closed when the block ends."""
        async with open_store(self.plugin, root or self.new_root()) as store:
            yield store


@asynccontextmanager
async def open_store(plugin: Plugin, root: Path) -> AsyncIterator[ContentStore]:
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
            assert isinstance(record.instance, ContentStore), f"{plugin.uri} is not a ContentStore"
            yield record.instance  # the kernel closes it
        return
    opened = plugin(root)
    store = await opened if inspect.isawaitable(opened) else opened
    assert isinstance(store, ContentStore), f"{plugin!r} opened {store!r}, not a ContentStore"
    try:
        yield store
    finally:
        closer = getattr(store, "aclose", None) or getattr(store, "close", None)
        if closer is not None:
            result = closer()
            if inspect.isawaitable(result):
                await result


Check = Callable[[Subject], Awaitable[None]]


def durable_only(check: Check) -> Check:
    """Mark a check of what must survive a restart: a store that keeps nothing is skipped."""

    @functools.wraps(check)
    async def run(subject: Subject) -> None:
        if not subject.durable:
            raise CheckSkipped(f"{check.__name__}: this store keeps nothing across a restart")
        await check(subject)

    return run


def check_name(check: Check) -> str:
    """The check's name without its ``check_`` prefix: a test id."""
    return check.__name__.removeprefix("check_")


def run(
    check: Check,
    plugin: Plugin,
    scratch: Path,
    *,
    durable: bool = True,
    skip: Callable[[str], object] | None = None,
) -> None:
    """Run one check on ``plugin`` in an event loop of its own; blocks until it is done.

    ``durable=False`` for a store that keeps nothing across a restart (an in-memory fake). A check
    that cannot run calls ``skip(reason)`` (pass ``pytest.skip``), or raises ``CheckSkipped``.
    """
    try:
        anyio.run(check, Subject(plugin, scratch, durable))
    except CheckSkipped as exc:
        if skip is None:
            raise
        skip(str(exc))
