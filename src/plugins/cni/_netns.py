"""Network namespaces kept by a bind mount of nsfs on a file, as containerd's ``pkg/netns``."""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import threading
from pathlib import Path

import anyio
import anyio.to_thread

from corral.kernel import FailedPrecondition

NETNS_PREFIX = "cni-"
_MNT_DETACH = 2
_CLONE_NEWNET = 0x40000000
_MS_BIND = 4096


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


def _bind_new_netns(path: Path) -> str:
    """In a thread of its own, as containerd's pkg/netns does on a locked OS thread: unshare the
    thread's network namespace and bind it on ``path``; the thread then ends, the mount keeps the
    namespace. "" on success, else what failed."""
    failed: list[str] = []

    def body() -> None:
        libc = _libc()
        if libc.unshare(_CLONE_NEWNET) != 0:
            failed.append(f"unshare: {os.strerror(ctypes.get_errno())}")
            return
        own = f"/proc/self/task/{threading.get_native_id()}/ns/net".encode()
        if libc.mount(own, str(path).encode(), None, _MS_BIND, None) != 0:
            failed.append(f"mount: {os.strerror(ctypes.get_errno())}")

    thread = threading.Thread(target=body, name="netns", daemon=True)
    thread.start()
    thread.join()
    return failed[0] if failed else ""


async def create_netns(directory: Path, name: str = "") -> Path:
    """A new network namespace kept at ``directory/name`` (a fresh ``cni-…`` name by default)."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o755)
    path = directory / (name or netns_name())
    path.touch(mode=0o444, exist_ok=False)
    with anyio.CancelScope(shield=True):
        problem = await anyio.to_thread.run_sync(_bind_new_netns, path)
    if problem:
        with contextlib.suppress(OSError):
            path.unlink()
        raise FailedPrecondition(f"failed to create network namespace {path}: {problem}")
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
