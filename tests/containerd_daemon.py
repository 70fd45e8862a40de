"""Debian's containerd on a private root, state and socket (CRI off), driven by the same ctr.

The one way the tests start the reference daemon: pass ``config`` to add TOML (proxy plugins, plugin
sections) after the defaults."""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tooling import require_tool

START_TIMEOUT = 30.0


@dataclass
class Containerd:
    base: Path
    namespace: str = "default"
    proc: subprocess.Popen[bytes] | None = None

    @property
    def socket(self) -> str:
        return str(self.base / "containerd.sock")

    @property
    def root(self) -> Path:
        return self.base / "root"

    @property
    def log(self) -> Path:
        return self.base / "containerd.log"

    def start(self, config: str = "") -> Containerd:
        binary = require_tool("containerd")
        self.base.mkdir(parents=True, exist_ok=True)
        path = self.base / "config.toml"
        path.write_text(
            "\n".join([
                "version = 2",
                f'root = "{self.root}"',
                f'state = "{self.base / "state"}"',
                'disabled_plugins = ["io.containerd.grpc.v1.cri"]',
                "[grpc]", f'  address = "{self.socket}"',
                "[ttrpc]", f'  address = "{self.socket}.ttrpc"',
                "[debug]", '  address = ""',
                "[metrics]", '  address = ""',
                '[plugins."io.containerd.internal.v1.opt"]', f'  path = "{self.base / "opt"}"',
            ]) + "\n" + config
        )  # fmt: skip
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [binary, "--config", str(path)], stdout=log, stderr=log, start_new_session=True
            )
        deadline = time.monotonic() + START_TIMEOUT
        while self.ctr("version", check=False).returncode != 0:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"containerd did not start:\n{self.log.read_text()[-4000:]}")
            time.sleep(0.1)
        return self

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def ctr(
        self, *args: str, check: bool = True, namespace: str | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        ns = self.namespace if namespace is None else namespace
        result = subprocess.run(
            [require_tool("ctr"), "-a", self.socket, "-n", ns, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"ctr {' '.join(args)} failed ({result.returncode}): {result.stderr}")
        return result
