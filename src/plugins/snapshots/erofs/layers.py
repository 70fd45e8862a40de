"""EROFS layer blobs: the on-disk contract between the erofs snapshotter and a differ that writes its
layers, and the system calls around them (mkfs.erofs, mounting, inode flags, fs-verity).

A snapshot directory the erofs snapshotter made holds the marker ``.erofslayer``; a differ that
finds it may write the layer as one EROFS image ``layer.erofs`` beside ``fs`` (as containerd's erofs
differ does) instead of unpacking into ``fs``. Blobs are written under a temporary name and renamed,
so ``layer.erofs`` is always a whole image.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import shutil
import struct
import subprocess
import uuid
from collections.abc import Sequence
from functools import cache
from pathlib import Path

from corral.kernel import FailedPrecondition, Internal, InvalidArgument
from corral.plugins.core import Mount
from corral.plugins.core.private import fsync_dir

LAYER_MARKER = ".erofslayer"
"""In a snapshot directory of the erofs snapshotter: a differ may write ``layer.erofs`` here."""
LAYER_BLOB = "layer.erofs"
UPPER = "fs"
"""The snapshot's own directory: the upper directory while active, the blob's mount point once committed."""
WORK = "work"
UPPER_CONVERTED = ".upper-converted"
"""Present while a commit publishes the blob it made from ``fs``: a blob beside it is the commit's,
not a differ's, and is made again if the commit did not finish."""
TEMPORARY_BLOB = "layer.erofs.new"
APPLY_SCRATCH = "erofs-apply-"
"""A differ's scratch directory in a snapshot directory (the unpacked layer mkfs.erofs images)."""
SCRATCH_PREFIXES = (TEMPORARY_BLOB, APPLY_SCRATCH)
DIRECTORY_LAYER = ".directory-layer"
"""A committed layer mkfs.erofs could not encode (erofs-utils 1.5 refuses 255-byte names): its
``fs`` stays a plain directory, an overlay lower directory like any other."""

FILESYSTEMS = Path("/proc/filesystems")
MKFS = "mkfs.erofs"
EROFS_SUPER_OFFSET = 1024
EROFS_SUPER_MAGIC = 0xE0F5E1E2
MS_RDONLY = 1
MNT_DETACH = 2

FS_IOC_GETFLAGS = 0x80086601
FS_IOC_SETFLAGS = 0x40086602
FS_IMMUTABLE_FL = 0x00000010
FS_VERITY_FL = 0x00100000
FS_IOC_ENABLE_VERITY = 0x40806685
FS_VERITY_HASH_ALG_SHA256 = 1


def layer_directory(mounts: Sequence[Mount], *, writable: bool = True) -> Path | None:
    """The erofs snapshot directory that ``mounts`` show, or None when they are not one's.

    As containerd's ``MountsToLayer``: a bind mount's source, an overlay's upper directory (its top
    lower one when read-only), an EROFS mount's image; the directory must hold ``.erofslayer``.
    ``writable`` (applying a layer) refuses read-only mounts: a layer is never written into the
    committed snapshot beneath a view."""
    if len(mounts) != 1:
        return None
    m = mounts[0]
    read_only = "ro" in m.options
    if m.type in ("bind", "erofs"):
        layer = Path(m.source).parent
        read_only = read_only or m.type == "erofs"
    elif m.type == "overlay":
        options = dict(o.partition("=")[::2] for o in m.options)
        if options.get("upperdir"):
            layer = Path(options["upperdir"]).parent
        else:
            read_only = True
            lowers = [d for d in options.get("lowerdir", "").split(":") if d]
            if not lowers:
                return None
            layer = Path(lowers[0]).parent
    else:
        return None
    if not (layer / LAYER_MARKER).is_file():
        return None
    if writable and read_only:
        raise InvalidArgument(f"cannot apply a layer to a read-only mount of snapshot {layer.name}")
    return layer


def overlay_lowers(mounts: Sequence[Mount]) -> tuple[str, ...]:
    """The lower directories of an overlay mount, top first (none for anything else)."""
    if len(mounts) != 1 or mounts[0].type != "overlay":
        return ()
    for option in mounts[0].options:
        if option.startswith("lowerdir="):
            return tuple(d for d in option.removeprefix("lowerdir=").split(":") if d)
    return ()


# -- mkfs.erofs -----------------------------------------------------------------------------------


def mkfs_path() -> str | None:
    return shutil.which(MKFS)


@cache
def mkfs_reads_tar(mkfs: str) -> bool:
    """Whether this mkfs.erofs converts a tar stream itself (``--tar=f``, erofs-utils 1.7 and later)."""
    try:
        result = subprocess.run([mkfs, "--help"], capture_output=True, text=True, timeout=30, check=False)
    except OSError:
        return False
    return "--tar=" in result.stdout + result.stderr and "--aufs" in result.stdout + result.stderr


def layer_uuid(digest: str) -> str:
    """The filesystem UUID containerd gives the blob of a layer: SHA-1 name-based, over its digest."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"erofs:blobs/{digest}"))


def directory_argv(
    mkfs: str, blob: Path, source: Path, extra: Sequence[str] = (), fs_uuid: str = ""
) -> list[str]:
    """containerd's ``ConvertErofs``: an image of the directory ``source``."""
    argv = [mkfs, "--quiet", "-Enoinline_data", *extra]
    if fs_uuid:
        argv += ["-U", fs_uuid]
    return [*argv, str(blob), str(source)]


def tar_argv(mkfs: str, blob: Path, extra: Sequence[str] = (), fs_uuid: str = "") -> list[str]:
    """containerd's ``ConvertTarErofs``: an image of the tar on stdin, AUFS whiteouts made overlay's."""
    argv = [mkfs, "--tar=f", "--aufs", "--quiet", "-Enoinline_data", *extra]
    if fs_uuid:
        argv += ["-U", fs_uuid]
    return [*argv, str(blob)]


def check_mkfs(result: subprocess.CompletedProcess[bytes]) -> None:
    if result.returncode != 0:
        output = (result.stderr + result.stdout).decode(errors="replace").strip()
        raise Internal(f"erofs apply failed: {output or f'exit status {result.returncode}'}")


def holds_files(directory: Path) -> bool:
    with os.scandir(directory) as entries:
        return any(True for _ in entries)


def check_applicable(layer: Path, fs_uuid: str = "") -> None:
    """A layer image goes only to a snapshot holding nothing yet: one layer per snapshot, as a
    differ's image and files written beside it could not both be committed. The image of the same
    layer (its UUID, ``fs_uuid``) may be made again: an apply cut short is repeated."""
    blob = layer / LAYER_BLOB
    applied = blob.exists() and not (layer / UPPER_CONVERTED).exists()
    if applied and (not fs_uuid or image_uuid(blob) != fs_uuid):
        raise FailedPrecondition(f"snapshot {layer.name} already holds an applied EROFS layer")
    if holds_files(layer / UPPER):
        raise FailedPrecondition(
            f"snapshot {layer.name} already holds files: an EROFS layer cannot go beside them"
        )


def temporary_blob(layer: Path) -> Path:
    """Where a new blob for ``layer`` is written before it is published; nothing is left there."""
    path = layer / TEMPORARY_BLOB
    path.unlink(missing_ok=True)
    return path


def publish_blob(written: Path, layer: Path) -> Path:
    """Make the whole image ``written`` the layer's blob (fsynced, renamed): what a differ calls."""
    with open(written, "rb+") as f:
        os.fsync(f.fileno())
    blob = layer / LAYER_BLOB
    os.rename(written, blob)
    (layer / UPPER_CONVERTED).unlink(missing_ok=True)
    fsync_dir(layer)
    return blob


def image_uuid(blob: Path) -> str:
    """The filesystem UUID in the image's superblock ("" when it is not an image)."""
    with open(blob, "rb") as f:
        f.seek(EROFS_SUPER_OFFSET)
        header = f.read(64)
    if len(header) < 64 or struct.unpack_from("<I", header)[0] != EROFS_SUPER_MAGIC:
        return ""
    return str(uuid.UUID(bytes=header[48:64]))


def inode_count(blob: Path) -> int:
    """The inodes the image holds, from its superblock (``inos``; hard links once)."""
    with open(blob, "rb") as f:
        f.seek(EROFS_SUPER_OFFSET)
        header = f.read(24)
    if len(header) < 24:
        raise Internal(f"{blob} is not an EROFS image: too short")
    magic, _, _, _, _, _, inodes = struct.unpack("<IIIBBHQ", header)
    if magic != EROFS_SUPER_MAGIC:
        raise Internal(f"{blob} is not an EROFS image (magic {magic:#x})")
    return int(inodes)


# -- the kernel -----------------------------------------------------------------------------------


def kernel_has_erofs() -> bool:
    """Whether the running kernel has EROFS registered (``/proc/filesystems``), as containerd checks."""
    try:
        return "\terofs\n" in FILESYSTEMS.read_text()
    except OSError:
        return False


def load_erofs_module() -> bool:
    """``modprobe erofs`` when the kernel lacks it and modprobe is there; whether it has it now."""
    if kernel_has_erofs():
        return True
    modprobe = shutil.which("modprobe")
    if modprobe is not None:
        subprocess.run([modprobe, "-q", "erofs"], capture_output=True, timeout=30, check=False)
    return kernel_has_erofs()


_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p)
_libc.umount2.argtypes = (ctypes.c_char_p, ctypes.c_int)


def mount_blob(blob: Path, target: Path, *, file_backed: bool = True) -> None:
    """Mount the image ``blob`` read-only at ``target``: file-backed where the kernel can (6.12 and
    later), else through a loop device that goes with the mount (mount(8)'s autoclear)."""
    if file_backed:
        if _libc.mount(os.fsencode(blob), os.fsencode(target), b"erofs", MS_RDONLY, None) == 0:
            return
        error = ctypes.get_errno()
        if error != errno.ENOTBLK:
            raise FailedPrecondition(f"mounting EROFS layer {blob} on {target}: {os.strerror(error)}")
    mount = shutil.which("mount") or "/bin/mount"
    result = subprocess.run(
        [mount, "-t", "erofs", "-o", "ro,loop", str(blob), str(target)], capture_output=True, timeout=60
    )
    if result.returncode != 0:
        raise FailedPrecondition(
            f"mounting EROFS layer {blob} on {target}: {result.stderr.decode(errors='replace').strip()}"
        )


def unmount_detached(target: Path) -> bool:
    """Detach whatever is mounted at ``target`` (overlays built on it keep their own reference);
    whether something was. A loop device under it goes with its last mount."""
    unmounted = False
    while _libc.umount2(os.fsencode(target), MNT_DETACH) == 0:
        unmounted = True
    error = ctypes.get_errno()
    if error not in (errno.EINVAL, errno.ENOENT):
        raise OSError(error, os.strerror(error), str(target))
    return unmounted


def mount_points_under(directory: Path) -> list[Path]:
    """Mount points at or below ``directory``, deepest first, from this process's mountinfo."""
    prefix = os.path.realpath(directory)
    found = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as info:
        for line in info:
            point = _unescape(line.split()[4])
            if point == prefix or point.startswith(prefix + "/"):
                found.append(Path(point))
    return sorted(set(found), key=lambda p: len(p.parts), reverse=True)


def _unescape(field: str) -> str:
    # mountinfo writes space, tab, newline and backslash as octal escapes (\040 …).
    if "\\" not in field:
        return field
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1 : i + 4].isdigit() and len(field[i + 1 : i + 4]) == 3:
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


# -- inode flags and fs-verity ----------------------------------------------------------------------


def _flags(fd: int) -> int:
    buffer = bytearray(8)
    fcntl.ioctl(fd, FS_IOC_GETFLAGS, buffer)
    return int(struct.unpack("<i", buffer[:4])[0])


def set_immutable(path: Path, enable: bool) -> None:
    """Set or clear ``FS_IMMUTABLE_FL`` (``chattr +i``): an immutable blob cannot be changed or removed."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        old = _flags(fd)
        new = old | FS_IMMUTABLE_FL if enable else old & ~FS_IMMUTABLE_FL
        if new != old:
            fcntl.ioctl(fd, FS_IOC_SETFLAGS, struct.pack("<i", new) + bytes(4))
    finally:
        os.close(fd)


def clear_immutable(path: Path) -> None:
    """Clear the immutable flag where it is set; a file system without inode flags has none to clear."""
    try:
        set_immutable(path, False)
    except FileNotFoundError:
        return
    except OSError as exc:
        if exc.errno not in (errno.ENOTTY, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL):
            raise


def enable_verity(path: Path) -> None:
    """Turn fs-verity on for ``path`` (SHA-256, 4 KiB blocks); already on is fine."""
    if verity_enabled(path):
        return
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        # struct fsverity_enable_arg: version, hash_algorithm, block_size, salt_size, salt_ptr,
        # sig_size, reserved, sig_ptr, reserved[11].
        arg = struct.pack("<IIIIQIIQ88x", 1, FS_VERITY_HASH_ALG_SHA256, 4096, 0, 0, 0, 0, 0)
        fcntl.ioctl(fd, FS_IOC_ENABLE_VERITY, arg)
    finally:
        os.close(fd)


def verity_enabled(path: Path) -> bool:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return bool(_flags(fd) & FS_VERITY_FL)
    except OSError as exc:
        if exc.errno in (errno.ENOTTY, errno.EOPNOTSUPP, errno.ENOTSUP):
            return False
        raise
    finally:
        os.close(fd)


def verity_supported(directory: Path) -> bool:
    """Whether files under ``directory`` can have fs-verity: tried on a scratch file."""
    probe = directory / f".verity-probe-{os.getpid()}"
    try:
        probe.write_bytes(b"corral fs-verity probe\n")
        enable_verity(probe)
        return verity_enabled(probe)
    except OSError:
        return False
    finally:
        probe.unlink(missing_ok=True)
