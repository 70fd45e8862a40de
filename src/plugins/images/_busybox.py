"""A minimal busybox root filesystem from Debian's ``busybox-static``, and an image of it."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from corral.kernel import FailedPrecondition, InvalidArgument, NotFound
from corral.plugins.images._builder import BuiltImage, build_image
from corral.plugins.images._layers import Compression, layer_from_directory
from corral.plugins.images._platforms import Platform

BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox")
BUSYBOX_IMAGE_NAME = "docker.io/library/busybox:latest"

APPLETS = (
    "[", "ash", "basename", "cat", "chmod", "chown", "cp", "cut", "date", "df", "dirname", "dmesg",
    "du", "echo", "env", "false", "find", "free", "grep", "head", "hostname", "id", "ifconfig", "ip",
    "kill", "ln", "ls", "mkdir", "mknod", "mount", "mv", "nc", "nproc", "nslookup", "pidof", "ping",
    "printf", "ps", "pwd", "readlink", "rm", "rmdir", "sed", "seq", "sh", "sleep", "sort", "stat",
    "sync", "tail", "tee", "test", "top", "touch", "tr", "true", "umount", "uname", "uniq", "wc",
    "wget", "which", "whoami", "xargs", "yes",
)  # fmt: skip
"""Linked to ``/bin/busybox`` when the binary has them."""

PASSWD = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
GROUP = "root:x:0:\nnogroup:x:65534:\n"


def find_busybox(busybox: str | os.PathLike[str] | None = None) -> Path:
    """The static busybox binary: ``busybox`` if given, else Debian's ``busybox-static`` one.

    NotFound when there is none; FailedPrecondition when it is dynamically linked (Debian's
    ``busybox`` package), since a container has no libraries to load it with.
    """
    if busybox is not None:
        candidates = [Path(busybox)]
    else:
        found = shutil.which("busybox")
        candidates = [Path(p) for p in BUSYBOX_CANDIDATES] + ([Path(found)] if found else [])
    for path in candidates:
        if path.is_file():
            if not is_static_elf(path):
                raise FailedPrecondition(f"{path} is dynamically linked: install Debian's busybox-static")
            return path
    raise NotFound("no busybox binary: install Debian's busybox-static")


def is_static_elf(path: Path) -> bool:
    """An ELF executable without a program interpreter (PT_INTERP) needs no dynamic loader."""
    with path.open("rb") as file:
        ident = file.read(64)
        if len(ident) < 52 or ident[:4] != b"\x7fELF":
            raise InvalidArgument(f"{path} is not an ELF executable")
        wide, order = ident[4] == 2, "<" if ident[5] == 1 else ">"
        if wide:
            (phoff,) = struct.unpack_from(order + "Q", ident, 32)
            phentsize, phnum = struct.unpack_from(order + "HH", ident, 54)
        else:
            (phoff,) = struct.unpack_from(order + "I", ident, 28)
            phentsize, phnum = struct.unpack_from(order + "HH", ident, 42)
        file.seek(phoff)
        table = file.read(phentsize * phnum)
    kinds = (struct.unpack_from(order + "I", table, i * phentsize)[0] for i in range(phnum))
    return 3 not in kinds


def busybox_applets(busybox: Path) -> list[str]:
    """The applets of ``APPLETS`` that this binary was built with (``busybox --list``)."""
    listed = subprocess.run([str(busybox), "--list"], capture_output=True, check=True, text=True, timeout=30)
    available = set(listed.stdout.split())
    return [applet for applet in APPLETS if applet in available]


def busybox_rootfs(dest: str | os.PathLike[str], *, busybox: str | os.PathLike[str] | None = None) -> Path:
    """Lay out a minimal busybox root filesystem at ``dest`` (created; must be empty if it exists).

    ``/bin/busybox`` with a symlink per applet, ``/etc/passwd`` and ``/etc/group`` (root and
    nobody), empty ``/proc``, ``/sys``, ``/dev``, ``/root`` and a sticky ``/tmp``. Every mode is
    set explicitly, so the umask does not change the tree.
    """
    binary = find_busybox(busybox)
    root = Path(dest)
    root.mkdir(parents=True, exist_ok=True)
    if any(root.iterdir()):
        raise InvalidArgument(f"{root} is not empty")
    for name, mode in (("bin", 0o755), ("etc", 0o755), ("dev", 0o755), ("proc", 0o555), ("sys", 0o555),
                       ("root", 0o700), ("tmp", 0o1777)):  # fmt: skip
        (root / name).mkdir()
        (root / name).chmod(mode)
    shutil.copyfile(binary, root / "bin" / "busybox")
    (root / "bin" / "busybox").chmod(0o755)
    for applet in busybox_applets(binary):
        (root / "bin" / applet).symlink_to("busybox")
    for name, text in (("passwd", PASSWD), ("group", GROUP)):
        (root / "etc" / name).write_text(text)
        (root / "etc" / name).chmod(0o644)
    root.chmod(0o755)
    return root


@dataclass(frozen=True)
class BusyboxImage:
    """A built busybox image and its archive."""

    image: BuiltImage
    archive: bytes
    path: Path | None
    names: tuple[str, ...]

    @property
    def digest(self) -> str:
        """The manifest digest."""
        return self.image.digest

    @property
    def diff_ids(self) -> tuple[str, ...]:
        return self.image.diff_ids


def build_busybox_image(
    dest: str | os.PathLike[str] | None = None,
    *,
    archive_format: str = "oci",
    names: Sequence[str] = (BUSYBOX_IMAGE_NAME,),
    compression: Compression = Compression.GZIP,
    busybox: str | os.PathLike[str] | None = None,
    platform: Platform | None = None,
    cmd: Sequence[str] = ("sh",),
) -> BusyboxImage:
    """A one-layer busybox image as an archive: ``archive_format`` ``oci`` (with docker's
    ``manifest.json``, as containerd exports), ``oci-bare`` (without it) or ``docker`` (a
    ``docker save`` archive). Written to ``dest`` when given; the same inputs give the same bytes.
    """
    if archive_format not in ("oci", "oci-bare", "docker"):
        raise InvalidArgument(f"archive format {archive_format!r} is not one of oci, oci-bare, docker")
    with tempfile.TemporaryDirectory(prefix="busybox-rootfs-") as scratch:
        rootfs = busybox_rootfs(Path(scratch) / "rootfs", busybox=busybox)
        layer = layer_from_directory(rootfs, compression=compression)
    image = build_image([layer], platform=platform, cmd=cmd, history=["busybox rootfs"])
    if archive_format == "docker":
        data = image.docker_archive(names)
    else:
        data = image.oci_archive(names, skip_manifest_json=archive_format == "oci-bare")
    path = None
    if dest is not None:
        path = Path(dest)
        path.write_bytes(data)
    return BusyboxImage(image, data, path, tuple(names))
