"""containerd 2.x's own ctr and containerd, from Debian's package, unpacked into ``.cache/``.

``ctr`` 2.x imports and exports through the Transfer service by default (``--local`` is the old
client-side path), so these binaries are what drives corral's transfer service. Missing and not
downloadable: a skip on a laptop, a failure under CI.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from harness import Daemon
from tooling import ON_CI, require_root

DEB = "containerd_2.1.9+ds1-5_amd64.deb"
URL = f"http://deb.debian.org/debian/pool/main/c/containerd/{DEB}"
CACHE = Path(__file__).resolve().parents[2] / ".cache"
UNPACKED = CACHE / "containerd-2.1.9"


def _unavailable(message: str) -> None:
    if ON_CI:
        pytest.fail(message)
    pytest.skip(message)


def containerd2_bin() -> Path:
    """The directory holding containerd 2.x's ``ctr`` and ``containerd``, fetched once."""
    bin_dir = UNPACKED / "usr" / "bin"
    if (bin_dir / "ctr").exists():
        return bin_dir
    if shutil.which("dpkg-deb") is None or shutil.which("curl") is None:
        _unavailable("containerd 2.x's ctr needs curl and dpkg-deb to fetch")
    CACHE.mkdir(exist_ok=True)
    deb = CACHE / DEB
    if not deb.exists():
        partial = deb.with_suffix(".partial")
        fetched = subprocess.run(["curl", "-fsSL", "-o", str(partial), URL], capture_output=True, text=True)
        if fetched.returncode != 0:
            partial.unlink(missing_ok=True)
            _unavailable(f"cannot download {URL}: {fetched.stderr.strip()}")
        partial.replace(deb)
    scratch = UNPACKED.with_suffix(".partial")
    shutil.rmtree(scratch, ignore_errors=True)
    subprocess.run(["dpkg-deb", "-x", str(deb), str(scratch)], check=True)
    shutil.rmtree(UNPACKED, ignore_errors=True)
    scratch.replace(UNPACKED)
    return bin_dir


@pytest.fixture
def corral(tmp_path: Path) -> Iterator[Daemon]:
    """A corrald for containerd 2.x's ctr to drive (root: the transfer paths unpack and mount)."""
    require_root()
    containerd2_bin()
    d = Daemon(tmp_path / "corral").start()
    try:
        yield d
    finally:
        d.stop()


def lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    """The non-blank lines of a ctr's output, stripped."""
    return [line.strip() for line in result.stdout.splitlines() if line.strip()]


def ctr2(
    address: str, *args: str, check: bool = True, namespace: str = "default"
) -> subprocess.CompletedProcess[str]:
    """containerd 2.x's ctr against ``address``."""
    result = subprocess.run(
        [str(containerd2_bin() / "ctr"), "-a", address, "-n", namespace, *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"ctr {' '.join(args)} failed ({result.returncode}): {result.stderr}")
    return result


@dataclass
class Containerd2:
    """Debian's containerd 2.x in temporary directories, for side-by-side runs."""

    base: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def socket(self) -> str:
        return str(self.base / "containerd.sock")

    def start(self) -> Containerd2:
        self.base.mkdir(parents=True, exist_ok=True)
        config = self.base / "config.toml"
        config.write_text(
            textwrap.dedent(
                f"""\
                version = 3
                root = "{self.base}/root"
                state = "{self.base}/state"
                disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.cri.v1.images",
                  "io.containerd.cri.v1.runtime", "io.containerd.nri.v1.nri"]
                [grpc]
                  address = "{self.socket}"
                [ttrpc]
                  address = "{self.socket}.ttrpc"
                [debug]
                  address = "{self.base}/debug.sock"
                """
            )
        )
        log = (self.base / "containerd.log").open("ab")
        binary = containerd2_bin() / "containerd"
        self.proc = subprocess.Popen([str(binary), "--config", str(config)], stdout=log, stderr=log)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"containerd exited {self.proc.returncode}")
            if os.path.exists(self.socket) and ctr2(self.socket, "version", check=False).returncode == 0:
                return self
            time.sleep(0.1)
        raise AssertionError("containerd 2.x did not answer within 20s")

    def ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return ctr2(self.socket, *args, check=check)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
