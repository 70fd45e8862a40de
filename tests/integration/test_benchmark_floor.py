"""The start-up floor the benchmarks measure is a real server: ``ctr version`` gets its answer."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from tooling import require_tool

from corral import __version__

REPO = Path(__file__).resolve().parents[2]


def test_the_floor_answers_ctr_version_as_corrald_would(tmp_path: Path) -> None:
    ctr = require_tool("ctr")
    sock = tmp_path / "floor.sock"
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.floor", "--address", str(sock)], cwd=REPO)
    try:
        deadline = time.monotonic() + 20
        while True:
            done = subprocess.run([ctr, "-a", str(sock), "version"], capture_output=True, text=True)
            if done.returncode == 0 or time.monotonic() > deadline or proc.poll() is not None:
                break
            time.sleep(0.05)
        assert done.returncode == 0, done.stderr
        server = done.stdout.split("Server:", 1)[1]
        assert f"Version:  {__version__}" in server and "Revision: floor" in server
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0


def test_the_floor_imports_what_corrald_imports_first_and_no_more() -> None:
    """Not structlog's rich tracebacks (corrald keeps them out), and none of corrald's own layers."""
    probe = (
        "import sys, benchmarks.floor; "
        "print(' '.join(m for m in ('structlog', 'rich', 'corral.kernel', 'corral.api.types')"
        " if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, check=True)
    assert done.stdout.split() == ["structlog"]
