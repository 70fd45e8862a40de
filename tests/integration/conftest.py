from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from containerd_daemon import Containerd
from harness import Daemon
from tooling import require_root, require_tool


@pytest.fixture
def ctr() -> str:
    return require_tool("ctr")


@pytest.fixture
def daemon(tmp_path: Path, ctr: str) -> Iterator[Daemon]:
    d = Daemon(tmp_path / "corral").start()
    try:
        yield d
    finally:
        d.stop()


NO_COLLECTIONS = """
[plugins."io.containerd.gc.v1.scheduler"]
  deletion_threshold = 1000000
  mutation_threshold = 1000000
  startup_delay = "0s"
"""
"""Both daemons collect garbage a moment after a deletion, each on its own clock, and containerd
100 ms after it starts: where what a step lists depends on it, neither collects."""


def _both(tmp_path: Path, extra: str = "") -> Iterator[tuple[Daemon, Containerd]]:
    require_root()
    require_tool("ctr")
    require_tool("containerd")
    ours = Daemon(tmp_path / "corral", config="version = 3\n" + extra).start()
    try:
        theirs = Containerd(tmp_path / "containerd").start(extra)
        try:
            yield ours, theirs
        finally:
            theirs.stop()
    finally:
        ours.stop()


@pytest.fixture
def both(tmp_path: Path) -> Iterator[tuple[Daemon, Containerd]]:
    """corrald and Debian's containerd, each on its own temporary directories, for the tests
    that drive both with the same ctr commands."""
    yield from _both(tmp_path)


@pytest.fixture
def still(tmp_path: Path) -> Iterator[tuple[Daemon, Containerd]]:
    """corrald and containerd, neither collecting garbage on its own."""
    yield from _both(tmp_path, NO_COLLECTIONS)


# The corrald that containerd 2.x's ctr drives, for the transfer tests.
from containerd2 import corral  # noqa: E402, F401

# The node (a network namespace) the CRI tests run corrald in, and a daemon base user-namespaced pods
# can traverse.
from cri_node import node, open_base  # noqa: E402, F401

# The registry fixtures (plain HTTP, TLS, Basic auth, Bearer tokens) for every integration test that pushes or pulls.
from registry_fixture import (  # noqa: E402, F401
    auth_registry,
    busybox_layout,
    registry,
    start_registries,
    tls_registry,
    token_registry,
)
