"""Running one snapshotter call in a child process, to kill it where a crash would hurt (or where it hangs).

A *zygote* process imports corral and the plugin under test once; each call is a fork of it, so a
child starts in milliseconds. A child leads a process group of its own: killing the group kills
the cp or mount it started too. While its call runs, a child counts the filesystem and process
calls it makes (Python's audit events: open, rename, mkdir, remove, subprocess, …), each a point a
crash could land on, and can SIGKILL itself at the n-th: a crash exactly there.

The protocol is lines on the zygote's stdout: ``child PID`` (forked), ``armed`` (the call starts),
``returned EVENTS SECONDS`` or ``error MESSAGE`` (the call ended), ``exit CODE`` (reaped; -9 is
SIGKILL). Jobs go to the zygote's stdin as pickles.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
from anyio.streams.buffered import BufferedByteReceiveStream

from corral.plugins.snapshots.conformance._subject import Plugin, open_snapshotter

CRASH_EVENTS = frozenset(
    {
        "open",
        "os.chmod",
        "os.chown",
        "os.link",
        "os.listdir",
        "os.mkdir",
        "os.remove",
        "os.removexattr",
        "os.rename",
        "os.rmdir",
        "os.scandir",
        "os.setxattr",
        "os.symlink",
        "os.truncate",
        "os.utime",
        "os.posix_spawn",
        "os.fork",
        "os.exec",
        "shutil.copyfile",
        "shutil.copymode",
        "shutil.copystat",
        "shutil.copytree",
        "shutil.move",
        "shutil.rmtree",
        "sqlite3.connect",
        "subprocess.Popen",
    }
)
"""The audit events a child counts as points to crash at: what touches files or starts processes."""


@dataclass(frozen=True)
class Job:
    """One call in a child: ``operation(*args)`` on the snapshotter opened on ``root``."""

    root: str
    operation: str
    args: tuple[str, ...]
    kill_at: int = 0
    """Kill the child at the n-th counted event of the call (0: never)."""
    kill_after: bool = False
    """Kill the child once the call returned, before the snapshotter is closed."""


@dataclass(frozen=True)
class Outcome:
    """How a child's call ended."""

    exit_code: int
    events: int = 0
    """Events counted during the call, when it returned."""
    seconds: float = 0.0
    """How long the call took, when it returned."""
    returned: bool = False
    error: str = ""
    timed_out: bool = False

    @property
    def killed(self) -> bool:
        return self.exit_code == -signal.SIGKILL


class Children:
    """A zygote for one plugin; ``run`` forks a child per job. Use ``async with Children.start(plugin)``."""

    def __init__(self, process: anyio.abc.Process) -> None:
        self._process = process
        assert process.stdout is not None and process.stdin is not None
        self._lines = BufferedByteReceiveStream(process.stdout)
        self._stdin = process.stdin

    @classmethod
    @asynccontextmanager
    async def start(cls, plugin: Plugin) -> AsyncIterator[Children]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        code = "from corral.plugins.snapshots.conformance._children import serve; serve()"
        process = await anyio.open_process([sys.executable, "-c", code], env=env, stderr=None)
        try:
            try:
                await process.stdin.send(pickle.dumps(plugin))  # type: ignore[union-attr]
            except Exception as exc:
                raise AssertionError(f"cannot hand {plugin!r} to a child process: {exc}") from exc
            yield cls(process)
        finally:
            with anyio.CancelScope(shield=True):
                await process.stdin.aclose()  # type: ignore[union-attr]
                with anyio.move_on_after(10):
                    await process.wait()
                if process.returncode is None:
                    process.kill()
                    await process.wait()

    async def run(self, job: Job, *, kill_after_seconds: float | None = None, limit: float = 60.0) -> Outcome:
        """Run ``job`` in a new child; with ``kill_after_seconds``, SIGKILL it that long after its call
        starts. A child still running after ``limit`` seconds is killed and reported as timed out."""
        await self._stdin.send(pickle.dumps(job))
        pid = 0
        fields: dict[str, Any] = {}
        async with anyio.create_task_group() as tg:
            with anyio.move_on_after(limit) as deadline:
                while True:
                    word, _, rest = (await self._line()).partition(" ")
                    if word == "child":
                        pid = int(rest)
                    elif word == "armed" and kill_after_seconds is not None:
                        tg.start_soon(_kill_later, pid, kill_after_seconds)
                    elif word == "returned":
                        events, seconds = rest.split()
                        fields.update(returned=True, events=int(events), seconds=float(seconds))
                    elif word == "error":
                        fields["error"] = rest
                    elif word == "exit":
                        fields["exit_code"] = int(rest)
                        break
            tg.cancel_scope.cancel()
        if deadline.cancelled_caught:
            _kill_group(pid)
            while not (line := await self._line()).startswith("exit "):
                pass
            return Outcome(exit_code=int(line.split()[1]), timed_out=True)
        return Outcome(**fields)

    async def _line(self) -> str:
        try:
            return (await self._lines.receive_until(b"\n", 1 << 20)).decode(errors="replace")
        except anyio.EndOfStream:
            raise AssertionError("the child-process zygote died (its stderr says why)") from None


async def _kill_later(pid: int, seconds: float) -> None:
    await anyio.sleep(seconds)
    _kill_group(pid)


def _kill_group(pid: int) -> None:
    if pid:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)


# -- in the zygote and its children ----------------------------------------------------------------


def serve() -> None:
    """The zygote: read the plugin, then fork a child for each job until stdin closes."""
    jobs = sys.stdin.buffer
    plugin = pickle.load(jobs)  # imports the plugin's modules here, once, not in every child
    anyio.run(anyio.sleep, 0)  # and the event loop's: it leaves no thread behind to fork with
    while True:
        try:
            job = pickle.load(jobs)
        except EOFError:
            return
        pid = os.fork()
        if pid == 0:
            _child(plugin, job)  # never returns
        _say(1, f"child {pid}")
        _, status = os.waitpid(pid, 0)
        _say(1, f"exit {os.waitstatus_to_exitcode(status)}")


def _say(fd: int, line: str) -> None:
    os.write(fd, (line.replace("\n", " ") + "\n").encode())


def _child(plugin: Plugin, job: Job) -> None:
    code = 1
    try:
        os.setpgid(0, 0)
        report = os.dup(1)
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 0)
        os.dup2(devnull, 1)  # what the plugin prints must not garble the protocol
        try:
            anyio.run(_call, plugin, job, report)
            code = 0
        except BaseException as exc:
            _say(report, f"error {type(exc).__name__}: {exc}")
    finally:
        os._exit(code)


class _Tripwire:
    """An audit hook that counts crash events while armed, and kills the process group at the n-th."""

    def __init__(self, kill_at: int) -> None:
        self.kill_at = kill_at
        self.count = 0
        self.armed = False

    def __call__(self, event: str, args: tuple[Any, ...]) -> None:
        if not self.armed or event not in CRASH_EVENTS:
            return
        self.count += 1
        if self.count == self.kill_at:
            self.armed = False
            os.killpg(0, signal.SIGKILL)


async def _call(plugin: Plugin, job: Job, report: int) -> None:
    async with open_snapshotter(plugin, Path(job.root)) as snapshotter:
        call = getattr(snapshotter, job.operation)
        tripwire = _Tripwire(job.kill_at)
        sys.addaudithook(tripwire)
        _say(report, "armed")
        started = time.monotonic()
        tripwire.armed = True
        try:
            await call(*job.args)
        finally:
            tripwire.armed = False
        _say(report, f"returned {tripwire.count} {time.monotonic() - started:.6f}")
        if job.kill_after:
            os.killpg(0, signal.SIGKILL)
