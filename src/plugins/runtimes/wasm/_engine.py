"""Running one WASI module with wasmtime: compiled once per module file, an instance per task.

Each task gets its own wasmtime ``Engine`` (cheap: the module is deserialised from the compiled
artefact, not recompiled) so that a kill can interrupt exactly that task: every store runs with an
epoch deadline of one tick, and killing a task bumps its engine's epoch, which traps the guest at
its next loop header or call. A guest blocked inside a WASI call (a read of an idle stdin, a long
``poll_oneoff`` sleep) traps when the call returns; the task is reported exited at the kill, not then.
"""

from __future__ import annotations

import collections
import os
import signal
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import wasmtime

EXIT_TRAPPED = 134
"""A guest that traps (``unreachable``, out-of-bounds access …) exits as an aborted process would."""


@dataclass(frozen=True)
class Invocation:
    """What one task runs: the module (a host path inside the rootfs), its argv and env, and stdio
    (paths of FIFOs or files, empty for none)."""

    module: Path
    rootfs: Path
    args: Sequence[str]
    env: Sequence[tuple[str, str]]
    stdin: str = ""
    stdout: str = ""
    stderr: str = ""


def _config() -> wasmtime.Config:
    config = wasmtime.Config()
    config.epoch_interruption = True
    return config


class ModuleCache:
    """Compiled modules by file identity (device, inode, size, mtime): a module is compiled once and
    each task deserialises the artefact into its own engine. Bounded; least recently used goes first."""

    def __init__(self, capacity: int = 64) -> None:
        self._engine = wasmtime.Engine(_config())
        self._capacity = capacity
        self._compiled: collections.OrderedDict[tuple[int, int, int, int], bytes] = collections.OrderedDict()
        self._lock = threading.Lock()
        self.compilations = 0

    def cached(self, path: Path) -> bytes | None:
        """The artefact if this file (unchanged) was compiled already: cheap enough for the event loop."""
        st = os.stat(path)
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        with self._lock:
            if (found := self._compiled.get(key)) is not None:
                self._compiled.move_to_end(key)
            return found

    def artefact(self, path: Path) -> bytes:
        if (found := self.cached(path)) is not None:
            return found
        st = os.stat(path)
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        compiled = bytes(wasmtime.Module(self._engine, path.read_bytes()).serialize())
        with self._lock:
            self.compilations += 1
            self._compiled[key] = compiled
            while len(self._compiled) > self._capacity:
                self._compiled.popitem(last=False)
        return compiled


class Instance:
    """One task's guest: made on the event loop's side, run in a worker thread, killed from anywhere."""

    def __init__(self, cache: ModuleCache, invocation: Invocation) -> None:
        self.invocation = invocation
        self._cache = cache
        self._engine = wasmtime.Engine(_config())
        self._killed_by = 0

    def kill(self, signum: int) -> None:
        """Trap the guest at its next epoch check (thread-safe)."""
        if not self._killed_by:
            self._killed_by = signum
        self._engine.increment_epoch()

    def run(self) -> tuple[int, str]:
        """Blocking: run ``_start`` to the end. The exit status, and what to tell the task's stderr.

        The store (and with it the preopened rootfs and the stdio descriptors) is closed before this
        returns, so the rootfs can be unmounted as soon as the task has exited."""
        if self._killed_by:
            return 128 + self._killed_by, ""
        store = wasmtime.Store(self._engine)
        try:
            status, diagnostic = self._run_in(store)
        finally:
            store.close()
        return (128 + self._killed_by, "") if self._killed_by else (status, diagnostic)

    def _run_in(self, store: wasmtime.Store) -> tuple[int, str]:
        inv = self.invocation
        try:
            module = wasmtime.Module.deserialize(self._engine, self._cache.artefact(inv.module))
            store.set_epoch_deadline(1)
            store.set_wasi(_wasi_config(inv))
            linker = wasmtime.Linker(self._engine)
            linker.define_wasi()
            instance = linker.instantiate(store, module)
            start = instance.exports(store).get("_start")
            if not isinstance(start, wasmtime.Func):
                return 1, f"{inv.args[0] if inv.args else inv.module}: module exports no _start function\n"
            start(store)
        except wasmtime.ExitTrap as exit_:
            return exit_.code, ""
        except wasmtime.Trap as trap:
            return EXIT_TRAPPED, f"wasm trap: {trap.message}\n"
        except wasmtime.WasmtimeError as err:
            return 1, f"wasm: {err}\n"
        return 0, ""


def _wasi_config(inv: Invocation) -> wasmtime.WasiConfig:
    """argv, env, the rootfs preopened as ``/``, and stdio. A FIFO is handed over through a
    descriptor of our own opened read-write (which never blocks), so that wasmtime's open cannot
    hang on a peer that went away; ours is closed as soon as wasmtime holds its own."""
    wasi = wasmtime.WasiConfig()
    wasi.argv = list(inv.args)
    wasi.env = [list(pair) for pair in inv.env]
    wasi.preopen_dir(str(inv.rootfs), "/")
    held: list[int] = []
    try:
        for path, setter in (
            (inv.stdin, "stdin_file"),
            (inv.stdout, "stdout_file"),
            (inv.stderr, "stderr_file"),
        ):
            if not path:
                continue
            fd = open_stdio(path)
            held.append(fd)
            setattr(wasi, setter, f"/proc/self/fd/{fd}")
    finally:
        for fd in held:
            os.close(fd)
    return wasi


def stdio_file(uri: str) -> str | None:
    """The path of a ``file://`` stdio URI (a log file, as runc's shim takes it), else None (a FIFO).

    Raises ValueError for a URI this runtime cannot serve (``binary://`` logging drivers, or a file
    URI without an absolute path)."""
    if "://" not in uri:
        return None
    scheme, _, rest = uri.partition("://")
    if scheme != "file":
        raise ValueError(f"{uri}: the wasm runtime takes FIFOs and file:// logs, not {scheme}://")
    if not rest.startswith("/"):
        raise ValueError(f"{uri}: a file:// log needs an absolute path")
    return rest


def open_stdio(uri: str) -> int:
    """A descriptor for one of the task's stdio: a FIFO opened read-write (never blocks), or a
    ``file://`` log opened for appending (made, with its directory, if missing)."""
    path = stdio_file(uri)
    if path is None:
        return os.open(uri, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)


def write_diagnostic(path: str, text: str) -> None:
    """A line for the task's stderr (a trap, a missing module), if it has one and anyone listens."""
    if not path or not text:
        return
    try:
        fd = (
            os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            if stdio_file(path) is None
            else open_stdio(path)
        )
    except (OSError, ValueError):
        return
    try:
        os.write(fd, text.encode())
    except OSError:
        pass
    finally:
        os.close(fd)


SUPPORTED_SIGNALS = frozenset({signal.SIGKILL, signal.SIGTERM, signal.SIGINT})
"""A guest has no signal handlers: these end it; others are refused, as runwasi refuses them."""
