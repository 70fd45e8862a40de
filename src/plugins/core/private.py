"""What only the daemon may read: files and sqlite databases created owner-only, and repaired so."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path


def connect_private(path: Path) -> sqlite3.Connection:
    """Open (creating it 0600 first) a sqlite file only its owner may read; its WAL and shared
    memory files take the same mode, as sqlite makes them."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        if os.fstat(fd).st_mode & 0o077:
            os.fchmod(fd, 0o600)  # made by an older version with the umask's mode
    finally:
        os.close(fd)
    for companion in (f"{path}-wal", f"{path}-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.chmod(companion, 0o600)
    return sqlite3.connect(path, check_same_thread=False, isolation_level=None)


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
