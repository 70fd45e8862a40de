"""A real corrald in temporary directories, and the real ctr pointed at it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from corral.api.client import connect

BIN = Path(sys.executable).parent


async def _answers(address: str) -> bool:
    try:
        async with connect(address) as client:
            await client.version()
    except (OSError, RuntimeError):
        return False
    return True


@dataclass
class Daemon:
    """corrald started with ``config`` (TOML text) and extra ``pythonpath`` entries."""

    base: Path
    config: str = "version = 3\n"
    pythonpath: Sequence[Path] = ()
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def socket(self) -> str:
        return str(self.base / "state" / "corral.sock")

    @property
    def config_path(self) -> Path:
        return self.base / "config.toml"

    def environ(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.pythonpath:
            env["PYTHONPATH"] = os.pathsep.join(str(p) for p in self.pythonpath)
        env["CORRAL_ADDRESS"] = self.socket
        env.update(self.env)
        return env

    def command(self) -> list[str]:
        return [
            str(BIN / "corrald"), "--config", str(self.config_path),
            "--root", str(self.base / "root"), "--state", str(self.base / "state"), "--address", self.socket,
        ]  # fmt: skip

    def start(self, *, wait: bool = True) -> Daemon:
        self.base.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(textwrap.dedent(self.config))
        log = (self.base / "corrald.log").open("ab")
        self.proc = subprocess.Popen(self.command(), env=self.environ(), stdout=log, stderr=log)
        if wait:
            try:
                self.wait_ready()
            except BaseException:
                self.stop()
                raise
        return self

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"corrald exited {self.proc.returncode}:\n{self.log()}")
            if os.path.exists(self.socket) and anyio.run(_answers, self.socket):
                return
            time.sleep(0.05)
        raise AssertionError(f"corrald did not answer within {timeout}s:\n{self.log()}")

    def log(self) -> str:
        path = self.base / "corrald.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        code = self.proc.returncode
        self.proc = None
        return code

    def restart(self) -> Daemon:
        self.stop()
        return self.start()

    def ctr(
        self, *args: str, check: bool = True, namespace: str = "default"
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            ["ctr", "-a", self.socket, "-n", namespace, *args], capture_output=True, text=True, timeout=60
        )
        if check and result.returncode != 0:
            raise AssertionError(f"ctr {' '.join(args)} failed ({result.returncode}): {result.stderr}")
        return result

    def corral(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(BIN / "corral"), "-a", self.socket, *args],
            capture_output=True, text=True, timeout=60, env=self.environ(),
        )  # fmt: skip
        if check and result.returncode != 0:
            raise AssertionError(f"corral {' '.join(args)} failed ({result.returncode}): {result.stderr}")
        return result


def run_corrald_once(
    base: Path, config: str, pythonpath: Sequence[Path] = ()
) -> subprocess.CompletedProcess[str]:
    """Run corrald expecting it to exit on its own (bad config, failed required plugin)."""
    d = Daemon(base, config, pythonpath)
    base.mkdir(parents=True, exist_ok=True)
    d.config_path.write_text(textwrap.dedent(config))
    return subprocess.run(d.command(), env=d.environ(), capture_output=True, text=True, timeout=60)


def pip_install(project: Path, target: Path) -> Path:
    """A real ``pip install`` of a plugin distribution into its own directory (put it on PYTHONPATH)."""
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(project)],
        check=True, capture_output=True,
    )  # fmt: skip
    return target


def write_plugin_project(
    root: Path, distribution: str, module: str, source: str, entry_points: dict[str, str]
) -> Path:
    """A minimal plugin distribution on disk, as a third party would write it."""
    root.mkdir(parents=True, exist_ok=True)
    eps = "\n".join(f'"{uri}" = "{value}"' for uri, value in entry_points.items())
    (root / "pyproject.toml").write_text(
        textwrap.dedent(
            f"""\
            [build-system]
            requires = ["hatchling"]
            build-backend = "hatchling.build"

            [project]
            name = "{distribution}"
            version = "0.0.1"

            [project.entry-points."corral.plugins"]
            """
        )
        + eps
        + "\n"
        + f'\n[tool.hatch.build.targets.wheel]\ninclude = ["{module}.py"]\n'
    )
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    return root
