"""The example third-party snapshotter passes corral's snapshotter conformance suite, run by its own tests."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "corral-snapshotter-example"


def test_example_snapshotter_distribution_tests_pass() -> None:
    # Run from source, not installed: the example must work as an author's checkout would.
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(EXAMPLE / "src"), env.get("PYTHONPATH")) if p)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(EXAMPLE / "tests")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = f"{result.stdout}\n{result.stderr}"
    assert result.returncode == 0, f"example tests failed:\n{output}"
    summary = result.stdout.strip().splitlines()[-1]
    assert re.search(r"\b[1-9]\d* passed\b", summary), f"no tests passed: {summary}"
    assert not re.search(r"\b(failed|error|errors)\b", summary), f"example tests failed: {summary}"
