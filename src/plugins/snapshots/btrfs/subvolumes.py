"""btrfs subvolumes and snapshots (Debian's ``btrfs-progs``), the mount a path lives on, and the
disk a snapshot adds to its parent. Blocking calls, for worker threads."""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import stat
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

from corral.kernel import Internal
from corral.plugins.core.trees import remove_tree
from corral.plugins.snapshots import Usage

FILESYSTEMS = Path("/proc/filesystems")
BTRFS = "btrfs"
SUBVOLUME_ROOT_INODE = 256
"""BTRFS_FIRST_FREE_OBJECTID: the inode number of every subvolume's root directory."""
BTRFS_IOC_INO_LOOKUP = 0xD0009412
"""_IOWR(0x94, 18, struct btrfs_ioctl_ino_lookup_args): with objectid 256, the subvolume's id."""
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class MountEntry:
    """One line of mountinfo: where, what file system, from which source."""

    point: str
    fstype: str
    source: str


def kernel_has_btrfs() -> bool:
    try:
        return any(line.split()[-1:] == ["btrfs"] for line in FILESYSTEMS.read_text().splitlines())
    except OSError:
        return False


def load_btrfs_module() -> bool:
    """``modprobe btrfs`` when the kernel lacks it and modprobe is there; whether it has it now."""
    if kernel_has_btrfs():
        return True
    modprobe = shutil.which("modprobe")
    if modprobe is not None:
        subprocess.run([modprobe, "-q", "btrfs"], capture_output=True, timeout=30, check=False)
    return kernel_has_btrfs()


def mount_of(path: Path) -> MountEntry:
    """The mount ``path`` lives on (the deepest mount point above it), as containerd's mount.Lookup."""
    target = os.path.realpath(path)
    best: MountEntry | None = None
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as info:
        for line in info:
            fields = line.split()
            point = _unescape(fields[4])
            after = fields.index("-")
            entry = MountEntry(point, fields[after + 1], _unescape(fields[after + 2]))
            inside = target == point or target.startswith(point.rstrip("/") + "/")
            if inside and (best is None or len(point) >= len(best.point)):
                best = entry
    if best is None:
        raise Internal(f"no mount found for {target}")
    return best


def _unescape(field: str) -> str:
    # mountinfo writes space, tab, newline and backslash as three-digit octal escapes.
    out, i = [], 0
    while i < len(field):
        code = field[i + 1 : i + 4]
        if field[i] == "\\" and len(code) == 3 and code.isdigit():
            out.append(chr(int(code, 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def _btrfs(*args: str) -> None:
    tool = shutil.which(BTRFS) or BTRFS
    result = subprocess.run([tool, *args], capture_output=True, timeout=300, check=False)
    if result.returncode != 0:
        message = (result.stderr or result.stdout).decode(errors="replace").strip()
        raise Internal(f"btrfs {' '.join(args[:2])}: {message or f'exit status {result.returncode}'}")


def create_subvolume(path: Path) -> None:
    """``btrfs subvolume create``: an empty subvolume, its root mode 0755 whatever the umask."""
    _btrfs("subvolume", "create", str(path))
    os.chmod(path, 0o755)


def snapshot_subvolume(source: Path, target: Path, *, readonly: bool) -> None:
    """``btrfs subvolume snapshot [-r]``: ``target`` shares every extent of ``source``."""
    _btrfs("subvolume", "snapshot", *(["-r"] if readonly else []), str(source), str(target))


def is_subvolume(path: Path) -> bool:
    try:
        return os.lstat(path).st_ino == SUBVOLUME_ROOT_INODE and stat.S_ISDIR(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


def delete_subvolume(path: Path) -> None:
    """Delete the subvolume (or leftover plain directory) at ``path``; a missing path is fine."""
    if not os.path.lexists(path):
        return
    if not is_subvolume(path):
        remove_tree(path)
        return
    try:
        _btrfs("subvolume", "delete", str(path))
    except Internal:
        if os.path.lexists(path):  # gone meanwhile (another remove or cleanup) is what was asked
            raise


def subvolume_id(path: Path) -> int:
    """The id of the subvolume whose root is ``path`` (what a ``subvolid=`` mount option names)."""
    fd = os.open(path, _DIR)
    try:
        args = bytearray(4096)
        struct.pack_into("<QQ", args, 0, 0, SUBVOLUME_ROOT_INODE)
        fcntl.ioctl(fd, BTRFS_IOC_INO_LOOKUP, args)
        return int(struct.unpack_from("<Q", args, 0)[0])
    finally:
        os.close(fd)


# -- usage --------------------------------------------------------------------------------------


def _open_dir(top: int, parts: tuple[str, ...]) -> int | None:
    """The directory ``parts`` below ``top``, one component at a time, never following a symlink."""
    fd = os.dup(top)
    for name in parts:
        try:
            inner = os.open(name, _DIR, dir_fd=fd)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                return None
            raise
        os.close(fd)
        fd = inner
    return fd


def _changed(st: os.stat_result, below: os.stat_result | None) -> bool:
    if below is None or stat.S_IFMT(st.st_mode) != stat.S_IFMT(below.st_mode):
        return True
    if (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns) != (
        below.st_mode,
        below.st_uid,
        below.st_gid,
        below.st_mtime_ns,
    ):
        return True
    if stat.S_ISDIR(st.st_mode):
        return False
    # A snapshot keeps inode numbers: a replaced file has a new one.
    return (st.st_size, st.st_ino, st.st_rdev) != (below.st_size, below.st_ino, below.st_rdev)


def diff_usage(lower: Path | None, upper: Path) -> Usage:
    """The disk ``upper`` adds to ``lower`` (its parent snapshot): blocks and inodes of what is new
    or changed, hard links once, as containerd's fs.DiffUsage. Without recursion, at any depth."""
    seen: set[tuple[int, int]] = set()
    size = 0
    top = os.open(upper, _DIR)
    bottom = os.open(lower, _DIR) if lower is not None else None
    try:
        pending: list[tuple[str, ...]] = [()]
        while pending:
            parts = pending.pop()
            here = _open_dir(top, parts)
            if here is None:
                continue  # removed while we walked an active snapshot
            there = _open_dir(bottom, parts) if bottom is not None else None
            try:
                with os.scandir(here) as entries:
                    names = [entry.name for entry in entries]
                for name in names:
                    try:
                        st = os.stat(name, dir_fd=here, follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    below = None
                    if there is not None:
                        try:
                            below = os.stat(name, dir_fd=there, follow_symlinks=False)
                        except FileNotFoundError:
                            below = None
                    if _changed(st, below) and (st.st_dev, st.st_ino) not in seen:
                        seen.add((st.st_dev, st.st_ino))
                        size += st.st_blocks * 512
                    if stat.S_ISDIR(st.st_mode):
                        pending.append((*parts, name))
            finally:
                os.close(here)
                if there is not None:
                    os.close(there)
    finally:
        os.close(top)
        if bottom is not None:
            os.close(bottom)
    return Usage(size=size, inodes=len(seen))
