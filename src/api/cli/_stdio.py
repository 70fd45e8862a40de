"""A process's stdio as the client provides it: FIFOs in a private directory, copied to and from
this terminal (containerd's cio, as ctr uses it), and a terminal put in raw mode for ``-t``."""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import signal
import sys
import termios
import threading
import tty
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import anyio
import anyio.abc
import anyio.from_thread
import anyio.lowlevel

FIFO_ROOT = Path("/run/corral/fifo")
CHUNK = 32 * 1024


def fifo_root() -> Path:
    """Where FIFO directories go: /run/corral/fifo as root, the user's runtime directory otherwise."""
    if os.geteuid() == 0:
        return FIFO_ROOT
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    return Path(runtime) / "corral" / "fifo" if runtime else Path(f"/tmp/corral-{os.getuid()}") / "fifo"


class ProcessStdio:
    """The FIFOs of one process: ``stdin`` (when asked for), ``stdout``, and ``stderr`` unless a
    terminal joins it to stdout. ``paths`` is what Tasks/Create or Exec is given."""

    def __init__(self, name: str, *, stdin: bool, terminal: bool) -> None:
        self.directory = fifo_root() / secrets.token_hex(8)
        self.terminal = terminal
        self.directory.mkdir(mode=0o700, parents=True)
        self.stdin = str(self.directory / f"{name}-stdin") if stdin else ""
        self.stdout = str(self.directory / f"{name}-stdout")
        self.stderr = "" if terminal else str(self.directory / f"{name}-stderr")
        for path in (self.stdin, self.stdout, self.stderr):
            if path:
                os.mkfifo(path, 0o600)
        self._stdin_fd = os.open(self.stdin, os.O_RDWR | os.O_NONBLOCK) if self.stdin else -1
        # Readers are open before the shim opens its writers (it gives up if none comes); a read
        # end with no writer reads as EOF, so copying starts only once the process is created.
        self._output_fds = [
            (os.open(path, os.O_RDONLY | os.O_NONBLOCK), target)
            for path, target in ((self.stdout, 1), (self.stderr, 2))
            if path
        ]

    def remove(self) -> None:
        for fd, _ in self._output_fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._output_fds = []
        if self._stdin_fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._stdin_fd)
            self._stdin_fd = -1
        shutil.rmtree(self.directory, ignore_errors=True)

    async def copy_output(self, tg: anyio.abc.TaskGroup) -> anyio.Event:
        """Copy stdout (and stderr) to ours until the shim closes them; the event is set when done.
        Call it once the process is created: the shim's writers are open by then."""
        done = anyio.Event()
        remaining = len(self._output_fds)

        async def copy(fd: int, target: int) -> None:
            nonlocal remaining
            try:
                await _copy_fd(fd, target)
            finally:
                remaining -= 1
                if not remaining:
                    done.set()

        for fd, target in self._output_fds:
            tg.start_soon(copy, fd, target)
        return done

    async def copy_input(self, on_eof: Callable[[], Awaitable[None]]) -> None:
        """Copy our stdin into the process's until it ends, then close it there (``on_eof``).

        On a daemon thread: stdin may be a file or /dev/null (which the event loop cannot poll),
        and a read blocked on a terminal must not keep this process from exiting."""
        if self._stdin_fd < 0:
            return
        fd = self._stdin_fd
        ended = anyio.Event()
        token = anyio.lowlevel.current_token()

        def pump() -> None:
            os.set_blocking(fd, True)
            source = sys.stdin.fileno()
            while True:
                try:
                    data = os.read(source, CHUNK)
                except OSError:
                    data = b""
                if not data:
                    break
                try:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view) :]
                except OSError:
                    return
            with contextlib.suppress(Exception):
                anyio.from_thread.run_sync(ended.set, token=token)

        threading.Thread(target=pump, name="stdin", daemon=True).start()
        await ended.wait()
        os.close(fd)
        self._stdin_fd = -1
        await on_eof()


async def _copy_fd(fd: int, target: int) -> None:
    while True:
        await anyio.wait_readable(fd)
        try:
            data = os.read(fd, CHUNK)
        except BlockingIOError:
            continue
        if not data:
            return
        await _write_all(target, data)


async def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except BlockingIOError:
            await anyio.wait_writable(fd)
            continue
        except OSError as exc:
            if exc.errno == errno.EPIPE:
                return
            raise
        view = view[n:]


@contextlib.contextmanager
def raw_terminal(enabled: bool) -> Iterator[None]:
    """Our terminal in raw mode for the block (a ``-t`` process owns it), restored afterwards."""
    if not enabled or not sys.stdin.isatty():
        yield
        return
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def terminal_size() -> tuple[int, int]:
    size = shutil.get_terminal_size((80, 24))
    return size.columns, size.lines


async def follow_resizes(resize: Callable[[int, int], Awaitable[None]]) -> None:
    """Send our terminal's size now and after every SIGWINCH."""
    with anyio.open_signal_receiver(signal.SIGWINCH) as signals:
        await resize(*terminal_size())
        async for _ in signals:
            with contextlib.suppress(Exception):
                await resize(*terminal_size())


async def forward_signals(kill: Callable[[int], Awaitable[None]]) -> None:
    """SIGINT and SIGTERM to the process rather than to us (ctr's --sig-proxy)."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        async for signum in signals:
            with contextlib.suppress(Exception):
                await kill(int(signum))
