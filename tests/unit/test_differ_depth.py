"""Deep trees cost the differ what their names cost, not one descriptor or one path copy per level.

A layer can name a path 10,000 levels deep and a container can make one; the issue measured
Apply at 10,000 levels growing the daemon from 47 MB to 530 MB, and at 20,000 levels running
out of descriptors (one per level). Here memory is the peak of Python's allocations during the
work (tracemalloc) and descriptors are capped by RLIMIT_NOFILE a little above what is open.
"""

from __future__ import annotations

import hashlib
import io
import os
import resource
import tarfile
import tempfile
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import pytest
from deep_trees import deep_tree

from corral.plugins.core.trees import remove_tree
from corral.plugins.differs.apply import WhiteoutMode, apply_layer
from corral.plugins.differs.compare import directory_changes, overlay_changes, write_layer

DEPTH = 10_000
SPARE_DESCRIPTORS = 64 + 32
"""Descriptors the work may open beyond those open before it: a tree's cache of 64 open directories,
its root and a walk's own, with room for what other threads of the test process open meanwhile
(a depth-proportional leak would need thousands)."""
MEMORY_LIMIT = 24 << 20
"""Peak allocations allowed: the names of one deep path are 20 KB; a copy per level would be 100 MB."""

T = TypeVar("T")


@contextmanager
def descriptors_capped(spare: int = SPARE_DESCRIPTORS) -> Iterator[None]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    in_use = len(os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (in_use + spare, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def peak_memory(work: Callable[[], T]) -> tuple[T, int]:
    tracemalloc.start()
    try:
        result = work()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.fixture
def scratch(tmp_path: Path) -> Iterator[Path]:
    """A directory in memory when the machine has one (tens of thousands of mkdirs), else tmp_path."""
    where = Path(tempfile.mkdtemp(dir="/dev/shm")) if os.path.isdir("/dev/shm") else tmp_path / "deep"
    where.mkdir(exist_ok=True)
    try:
        yield where
    finally:
        # pytest's own clean-up is shutil.rmtree, which recurses once per level.
        remove_tree(where)


def leaf_of(root: Path, depth: int) -> bytes:
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            child = os.open("a", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = child
        leaf = os.open("f", os.O_RDONLY, dir_fd=fd)
        try:
            return os.read(leaf, 100)
        finally:
            os.close(leaf)
    finally:
        os.close(fd)


def layer(depth: int, *, every_level: bool) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        if every_level:
            for level in range(1, depth + 1):
                info = tarfile.TarInfo("/".join(["a"] * level))
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
        info = tarfile.TarInfo("/".join(["a"] * depth) + "/f")
        info.size = 6
        tar.addfile(info, io.BytesIO(b"bottom"))
    return out.getvalue()


@pytest.mark.parametrize(
    ("depth", "every_level"), [(2 * DEPTH, False), (2_000, True)], ids=["20k-levels", "2k-entries"]
)
def test_a_deep_path_applies_in_bounded_memory_and_descriptors(
    scratch: Path, depth: int, every_level: bool
) -> None:
    raw = layer(depth, every_level=every_level)
    with descriptors_capped():
        applied, peak = peak_memory(
            lambda: apply_layer(io.BytesIO(raw), scratch, whiteouts=WhiteoutMode.REMOVE)
        )
    assert applied.digest == "sha256:" + hashlib.sha256(raw).hexdigest()
    assert leaf_of(scratch, depth) == b"bottom"
    assert peak < MEMORY_LIMIT + (len(raw) if every_level else 0), f"{peak >> 20} MiB"


class Discard:
    """A sink that keeps only the size and digest of the layer (its names alone are 100 MB)."""

    def __init__(self) -> None:
        self.size = 0
        self.hash = hashlib.sha256()

    def __call__(self, data: bytes) -> None:
        self.size += len(data)
        self.hash.update(data)


def test_a_deep_tree_diffs_in_bounded_memory_and_descriptors(scratch: Path) -> None:
    lower, upper = scratch / "lower", scratch / "upper"
    lower.mkdir()
    upper.mkdir()
    deep_tree(upper, DEPTH, name="a", leaf="f")
    sink = Discard()
    with descriptors_capped():
        (digest, size), peak = peak_memory(
            lambda: write_layer(directory_changes(str(lower), str(upper)), sink)
        )
    assert digest == "sha256:" + sink.hash.hexdigest() and size == sink.size
    # Every level is in the layer under its whole name: 10,000 entries averaging 10 KB of name.
    assert size > DEPTH * DEPTH
    assert peak < MEMORY_LIMIT, f"{peak >> 20} MiB"


def test_a_deep_overlay_upper_directory_diffs_in_bounded_memory_and_descriptors(scratch: Path) -> None:
    deep_tree(scratch, DEPTH, name="a", leaf="f")
    sink = Discard()
    with descriptors_capped():
        (_, size), peak = peak_memory(lambda: write_layer(overlay_changes(str(scratch)), sink))
    assert size > DEPTH * DEPTH
    assert peak < MEMORY_LIMIT, f"{peak >> 20} MiB"


def test_a_deep_tree_survives_diff_then_apply(scratch: Path) -> None:
    depth = 1_500
    lower, upper, target = scratch / "lower", scratch / "upper", scratch / "target"
    for d in (lower, upper, target):
        d.mkdir()
    deep_tree(upper, depth, name="a", leaf="f")
    out = io.BytesIO()
    write_layer(directory_changes(str(lower), str(upper)), out.write)
    with descriptors_capped():
        apply_layer(io.BytesIO(out.getvalue()), target, whiteouts=WhiteoutMode.REMOVE)
    assert leaf_of(target, depth) == b"bottom"
