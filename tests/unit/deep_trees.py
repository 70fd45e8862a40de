"""Directory trees deeper than any path may be long, for the tests of what must remove or walk them."""

from __future__ import annotations

import os
from pathlib import Path


def deep_tree(top: Path, depth: int, *, name: str = "d", leaf: str = "file") -> Path:
    """``top/name/name/…/name/leaf`` (the leaf holding ``bottom``), ``depth`` directories below
    ``top`` (made if missing), built level by level through descriptors: the path itself is far
    past PATH_MAX. Returns ``top``."""
    top.mkdir(exist_ok=True)
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            os.mkdir(name, dir_fd=fd)
            child = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
        end = os.open(leaf, os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(end, b"bottom")
        os.close(end)
    finally:
        os.close(fd)
    return top
