"""Network namespaces kept by a bind mount of nsfs on a file, as containerd's ``pkg/netns``."""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import shutil
from pathlib import Path

import anyio

from corral.kernel import FailedPrecondition

NETNS_PREFIX = "cni-"
_MNT_DETACH = 2


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(
        None, use_errno=True
    )  # the C library the interpreter links (find_library runs ldconfig)


def netns_name() -> str:
    """containerd's ``cni-<uuid>`` name."""
    h = secrets.token_hex(16)
    return f"{NETNS_PREFIX}{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def is_mounted_netns(path: Path) -> bool:
    """Whether ``path`` is a bind mount of a network namespace (its nsfs file is there)."""
    try:
        own = os.stat(path)
        parent = os.stat(path.parent)
    except OSError:
        return False
    # An nsfs bind mount has another device than the directory it sits in.
    return own.st_dev != parent.st_dev and own.st_size == 0 and own.st_ino != 0


async def create_netns(directory: Path, name: str = "") -> Path:
    """A new network namespace kept at ``directory/name`` (a fresh ``cni-…`` name by default)."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o755)
    path = directory / (name or netns_name())
    path.touch(mode=0o444, exist_ok=False)
    unshare = shutil.which("unshare") or "/usr/bin/unshare"
    done = await anyio.run_process([unshare, f"--net={path}", "true"], check=False)
    if done.returncode != 0:
        with contextlib.suppress(OSError):
            path.unlink()
        raise FailedPrecondition(
            f"failed to create network namespace {path}: {done.stderr.decode(errors='replace').strip()}"
        )
    return path


def remove_netns(path: Path) -> None:
    """Unmount (lazily, so a process still inside keeps it until it leaves) and remove the file.
    A path that is gone already is fine."""
    if not path.exists():
        return
    libc = _libc()
    if libc.umount2(str(path).encode(), _MNT_DETACH) != 0:
        err = ctypes.get_errno()
        if err not in (22, 2):  # EINVAL: not a mount point (a file left half-made); ENOENT
            raise FailedPrecondition(f"failed to unmount network namespace {path}: {os.strerror(err)}")
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
