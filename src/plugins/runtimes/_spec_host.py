"""What options read from the host: device nodes under /dev and the caller's capabilities."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

from corral.kernel import InvalidArgument, NotFound

# Capability numbers 0..40 (kernel 5.9), the names containerd knows.
KNOWN_CAPABILITIES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER",
    "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE", "CAP_SYS_RESOURCE", "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
)  # fmt: skip

# Directories under /dev that hold no device nodes to hand a container (containerd's list).
_SKIPPED_DEV_DIRS = frozenset({"pts", "shm", "fd", "mqueue", ".lxc", ".lxd-mounts", ".udev"})


def capabilities_from_bitmap(bits: int) -> list[str]:
    """Names of the known capabilities set in ``bits``; unknown numbers are left out."""
    return [name for number, name in enumerate(KNOWN_CAPABILITIES) if bits >> number & 1]


def current_capabilities(status: Path = Path("/proc/self/status")) -> list[str]:
    """The caller's effective capabilities (``CapEff``), as containerd's ``cap.Current``."""
    for line in status.read_text().splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "CapEff":
            return capabilities_from_bitmap(int(value.strip(), 16))
    raise NotFound(f"{status} has no CapEff line")


def device_from_path(path: str) -> dict[str, Any] | None:
    """A spec device for the node at ``path`` (not following a symlink); None when it is no device."""
    st = os.lstat(path)
    if stat.S_ISBLK(st.st_mode):
        kind = "b"
    elif stat.S_ISCHR(st.st_mode):
        kind = "c"
    elif stat.S_ISFIFO(st.st_mode):
        kind = "p"
    else:
        return None
    return {
        "path": path,
        "type": kind,
        "major": os.major(st.st_rdev),
        "minor": os.minor(st.st_rdev),
        "fileMode": st.st_mode & 0o7777,
        "uid": st.st_uid,
        "gid": st.st_gid,
    }


def devices_under(path: str, container_path: str = "") -> list[dict[str, Any]]:
    """containerd's ``getDevices``: one device, or every device node below a directory, by name."""
    try:
        is_dir = stat.S_ISDIR(os.stat(path).st_mode)
    except OSError as e:
        raise NotFound(f"error stating device path: {e}") from None
    if not is_dir:
        device = device_from_path(path)
        if device is None:
            raise InvalidArgument(
                f"get device path: {path!r} containerPath: {container_path!r}: not a device node"
            )
        if container_path:
            device["path"] = container_path
        return [device]
    found: list[dict[str, Any]] = []
    for entry in sorted(os.scandir(path), key=lambda e: e.name.encode("utf-8", "surrogateescape")):
        child = os.path.join(path, entry.name)
        if entry.is_dir(follow_symlinks=False):
            if entry.name in _SKIPPED_DEV_DIRS:
                continue
            sub = os.path.join(container_path, entry.name) if container_path else ""
            found.extend(devices_under(child, sub))
            continue
        if entry.name == "console":
            continue
        try:
            device = device_from_path(child)
        except FileNotFoundError:
            continue
        if device is None or device["type"] == "p":
            continue
        if container_path:
            device["path"] = os.path.join(container_path, entry.name)
        found.append(device)
    return found


def host_devices() -> list[dict[str, Any]]:
    """Every device node under the host's /dev, for privileged containers."""
    return devices_under("/dev")
