"""The daemons under test, each a context manager that starts it in fresh temp dirs and stops it.

Both kinds are started the same way (exec, then poll ``ctr version`` until it answers) so their
start-up times compare; both are stopped with SIGTERM and waited for. Nothing here touches the
system daemon's socket or directories: every path lives under the work dir it is given.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from pathlib import Path
from types import TracebackType
from typing import IO, ClassVar

from benchmarks.timing import PollTimeout, poll_until, time_command

CORRAL = "corral"
CONTAINERD = "containerd"
KINDS = (CORRAL, CONTAINERD)

CONTAINERD_BIN = "/usr/bin/containerd"
READY_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0


class DaemonError(RuntimeError):
    """A daemon did not come up (or would not go down); the message carries its log's tail."""


def corrald_binary() -> str:
    """The ``corrald`` script next to the running interpreter (the project's .venv), else on PATH."""
    beside = Path(sys.executable).parent / "corrald"
    if beside.exists():
        return str(beside)
    found = shutil.which("corrald")
    if found is None:
        raise DaemonError("corrald not found next to the interpreter nor on PATH")
    return found


def ctr_binary() -> str | None:
    return shutil.which("ctr") or ("/usr/bin/ctr" if Path("/usr/bin/ctr").exists() else None)


def containerd_version(binary: str) -> str:
    """``1.6.20~ds1`` from ``containerd github.com/containerd/containerd 1.6.20~ds1 <revision>``."""
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True, timeout=30).stdout
    parts = out.split()
    return parts[2] if len(parts) >= 3 else out.strip()


def _toml_str(value: str | Path) -> str:
    # A JSON string with only ASCII is a valid TOML basic string.
    return json.dumps(str(value), ensure_ascii=True)


class Ctr:
    """The one client both daemons are driven by."""

    CONNECT_TIMEOUT = "2s"
    """Bounds ctr's dial; without it ctr retries a refused dial with a 1 s backoff for up to 10 s."""

    def __init__(self, binary: str) -> None:
        self.binary = binary

    def argv(self, address: Path, *args: str) -> list[str]:
        return [self.binary, "-a", str(address), "--connect-timeout", self.CONNECT_TIMEOUT, *args]

    def ok(self, address: Path, *args: str) -> bool:
        proc = subprocess.run(
            self.argv(address, *args),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=60,
        )
        return proc.returncode == 0

    def time(self, address: Path, *args: str, stdin: Path | None = None, timeout: float = 60.0) -> float:
        """Wall seconds of one ``ctr -a ADDRESS ARGS... [< STDIN]``, spawn to exit; raises if it fails."""
        return time_command(self.argv(address, *args), stdin=stdin, timeout=timeout)

    def check(self, address: Path, *args: str, timeout: float = 60.0) -> str:
        """Run ``ctr -a ADDRESS ARGS...`` untimed (set-up, clean-up); its stdout, or raise if it fails."""
        proc = subprocess.run(
            self.argv(address, *args), stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout
        )
        if proc.returncode != 0:
            err = proc.stderr.decode(errors="replace").strip()
            raise subprocess.CalledProcessError(proc.returncode, proc.args, stderr=err)
        return proc.stdout.decode(errors="replace")


def _accepts(path: Path) -> bool:
    """Whether something listens on the unix socket (cheap gate before spawning ctr)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(str(path))
        except OSError:
            return False
    return True


def read_cpu_seconds(pid: int) -> float:
    """User plus system CPU time a live process has used, from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def read_rss_kib(pid: int) -> int:
    """VmRSS of a live process, in KiB, from /proc/PID/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise DaemonError(f"pid {pid}: no VmRSS in /proc/{pid}/status")


class Daemon(ABC):
    """One daemon in its own work dir: ``root/``, ``state/``, a config and a log.

    ``with Daemon(...) as d:`` starts it and returns once ``ctr version`` answers, recording how
    long that took (``startup_seconds``, measured from just before exec) and the VmRSS right then
    (``rss_after_start_kib``) and the CPU time it had used (``cpu_after_start_seconds``).
    Leaving the block sends SIGTERM and waits.
    """

    kind: ClassVar[str]
    label: ClassVar[str]
    socket_name: ClassVar[str]

    def __init__(self, binary: str, workdir: Path, ctr: Ctr, *, ready_timeout: float = READY_TIMEOUT) -> None:
        self.binary = binary
        self.workdir = workdir
        self.ctr = ctr
        self.ready_timeout = ready_timeout
        self.root = workdir / "root"
        self.state = workdir / "state"
        self.config_path = workdir / "config.toml"
        self.log_path = workdir / "daemon.log"
        self.startup_seconds = float("nan")
        self.rss_after_start_kib = 0
        self.cpu_after_start_seconds = float("nan")
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def socket(self) -> Path:
        """The gRPC socket ``ctr -a`` talks to."""
        return self.state / self.socket_name

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise DaemonError(f"{self.kind}: not started")
        return self._proc.pid

    @abstractmethod
    def write_config(self) -> None:
        """Write ``self.config_path``."""

    def argv(self) -> list[str]:
        """The command line that runs the daemon on this work dir (both kinds take the same flags)."""
        return [
            self.binary,
            "--root",
            str(self.root),
            "--state",
            str(self.state),
            "--address",
            str(self.socket),
            "--config",
            str(self.config_path),
        ]

    def rss_kib(self) -> int:
        return read_rss_kib(self.pid)

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def start(self) -> Daemon:
        if self._proc is not None:
            raise DaemonError(f"{self.kind}: already started")
        for d in (self.root, self.state):
            d.mkdir(parents=True, exist_ok=False)
        self.write_config()
        self._log = self.log_path.open("wb")
        self.startup_seconds = self._launch()
        return self

    def restart(self) -> float:
        """Start again on the same directories after the process died (a ``kill -9``, say): the
        seconds from exec to the first answered ``ctr version``."""
        if self._proc is None:
            raise DaemonError(f"{self.kind}: not started")
        self._proc.wait(timeout=STOP_TIMEOUT)
        return self._launch()

    def _launch(self) -> float:
        argv = self.argv()
        t0 = time.perf_counter()
        self._proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a terminal's Ctrl-C reaches us, and we stop it in order
        )
        try:
            seconds = poll_until(self._answers, start=t0, timeout=self.ready_timeout, give_up=self._exited)
            self.rss_after_start_kib = self.rss_kib()
            self.cpu_after_start_seconds = read_cpu_seconds(self.pid)
        except BaseException as exc:
            self.stop()
            if isinstance(exc, PollTimeout):
                raise DaemonError(
                    f"{self.kind} did not answer `ctr version`: {exc}\n$ {' '.join(argv)}\n{self.log_tail()}"
                ) from None
            raise
        return seconds

    def _answers(self) -> bool:
        return _accepts(self.socket) and self.ctr.ok(self.socket, "version")

    def _exited(self) -> str | None:
        if self._proc is not None and (code := self._proc.poll()) is not None:
            return f"exited with status {code} before answering"
        return None

    def stop(self) -> None:
        """SIGTERM, wait; SIGKILL its process group only if it ignores that for STOP_TIMEOUT."""
        proc, self._proc = self._proc, None
        try:
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
        finally:
            if self._log is not None:
                self._log.close()
                self._log = None

    def __enter__(self) -> Daemon:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


CORRAL_CRI_PLUGINS = (
    "io.containerd.grpc.v1.cri",
    "io.containerd.cri.v1.images",
    "io.containerd.cri.v1.runtime",
)
"""corral's CRI, split as containerd 2.x splits it; containerd 1.6's is the one plugin
``io.containerd.grpc.v1.cri``. Both daemons are measured with their CRI off (see ContainerdDaemon)."""


class CorralDaemon(Daemon):
    kind = CORRAL
    label = "corrald"
    socket_name = "corral.sock"
    with_cri: ClassVar[bool] = False

    def write_config(self) -> None:
        # An explicit, almost empty config, so /etc/corral/config.toml is never read; the CRI off,
        # as containerd's is.
        lines = ["version = 3"]
        if not self.with_cri:
            lines.append(f"disabled_plugins = {json.dumps(list(CORRAL_CRI_PLUGINS))}")
        self.config_path.write_text("\n".join(lines) + "\n")


class CorralDaemonWithCRI(CorralDaemon):
    """corrald on its defaults: its CRI plugins on (no counterpart measured for containerd)."""

    with_cri = True


class FloorDaemon(CorralDaemon):
    """``benchmarks.floor`` started as corrald is: the interpreter, asyncio and corral's HTTP/2
    transport answering ``ctr version``, nothing else."""

    label = "floor"

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "benchmarks.floor", *super().argv()[1:]]


class ContainerdDaemon(Daemon):
    kind = CONTAINERD
    label = "containerd"
    socket_name = "containerd.sock"

    def write_config(self) -> None:
        # CRI is off (it would dominate start-up and wants a CNI setup). Every listener and the
        # opt plugin's directory (default /opt/containerd) are moved into the work dir.
        self.config_path.write_text(
            "\n".join(
                [
                    "version = 2",
                    'disabled_plugins = ["io.containerd.grpc.v1.cri"]',
                    "",
                    "[grpc]",
                    f"  address = {_toml_str(self.socket)}",
                    "",
                    "[ttrpc]",
                    f"  address = {_toml_str(self.state / (self.socket_name + '.ttrpc'))}",
                    "",
                    "[debug]",
                    '  address = ""',
                    "",
                    "[metrics]",
                    '  address = ""',
                    "",
                    '[plugins."io.containerd.internal.v1.opt"]',
                    f"  path = {_toml_str(self.root / 'opt')}",
                    "",
                ]
            )
        )
