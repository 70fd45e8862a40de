"""Debian's containerd on a private root, state and socket (CRI off), driven by the same ctr."""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Containerd:
    base: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def socket(self) -> str:
        return str(self.base / "containerd.sock")

    @property
    def root(self) -> Path:
        return self.base / "root"

    def start(self) -> Containerd:
        self.base.mkdir(parents=True, exist_ok=True)
        config = self.base / "config.toml"
        config.write_text(
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
            ]) + "\n"
        )  # fmt: skip
        log = (self.base / "containerd.log").open("ab")
        self.proc = subprocess.Popen(["containerd", "--config", str(config)], stdout=log, stderr=log)
        deadline = time.monotonic() + 30
        while self.ctr("version", check=False).returncode != 0:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(
                    f"containerd did not start:\n{(self.base / 'containerd.log').read_text()}"
                )
            time.sleep(0.1)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def ctr(
        self, *args: str, check: bool = True, namespace: str = "default"
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            ["ctr", "-a", self.socket, "-n", namespace, *args], capture_output=True, text=True, timeout=120
        )
        if check and result.returncode != 0:
            raise AssertionError(f"ctr {' '.join(args)} failed ({result.returncode}): {result.stderr}")
        return result
