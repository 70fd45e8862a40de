"""Tools the tests drive are required under CI, optional on a laptop."""

from __future__ import annotations

import os
import shutil

import pytest

ON_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_tool(name: str) -> str:
    """The path of a tool a test drives; missing under CI is a failure, elsewhere a skip."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (the README's test command installs it as root)"
        if ON_CI:
            pytest.fail(message)
        pytest.skip(message)
    return path


def require_root() -> None:
    if os.geteuid() != 0:
        if ON_CI:
            pytest.fail("CI runs as root; this test needs root")
        pytest.skip("needs root (real mounts, runc); runs under CI")
