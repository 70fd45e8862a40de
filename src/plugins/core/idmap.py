"""ID mappings and idmapped mounts, after containerd's ``internal/userns`` and ``core/mount``.

An ``IDMap`` is a user namespace's uid and gid ranges (``container:host:size``, several ranges
allowed). A snapshotter that can remap ids hands out mounts with ``uidmap=``/``gidmap=`` options,
as containerd 2.x's overlay snapshotter does; ``resolve_idmapped`` turns such mounts into ones any
mounter understands (a runtime shim of containerd 1.6 or mount(8)): each overlay lower directory,
or a bind mount's source, is bind-mounted idmapped (``mount_setattr(MOUNT_ATTR_IDMAP)``) under a
scratch directory. Those idmapped mounts are detached once the real mount is made; the mount keeps
what it uses.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.to_thread

from corral.kernel import FailedPrecondition, InvalidArgument
from corral.plugins.core.mount import Mount, mount

__all__ = [
    "GID_MAPPING_LABEL",
    "UID_MAPPING_LABEL",
    "IDMap",
    "IDMapping",
    "detach",
    "idmapped_bind",
    "remove_scratch",
    "resolve_idmapped",
    "supports_idmapped_overlay",
    "user_namespace",
    "without_idmap",
]

UID_MAPPING_LABEL = "containerd.io/snapshot/uidmapping"
GID_MAPPING_LABEL = "containerd.io/snapshot/gidmapping"
"""containerd's snapshot labels asking a snapshotter for ids remapped (``0:100000:65536,…``)."""

INVALID_ID = (1 << 32) - 1
HELPER_LIFETIME = 60
"""Seconds the process holding a new user namespace lives at most (it is killed once used)."""

_SYS_OPEN_TREE = 428
_SYS_MOVE_MOUNT = 429
_SYS_MOUNT_SETATTR = 442
_OPEN_TREE_CLONE = 1
_OPEN_TREE_CLOEXEC = os.O_CLOEXEC
_AT_EMPTY_PATH = 0x1000
_AT_RECURSIVE = 0x8000
_MOVE_MOUNT_F_EMPTY_PATH = 0x4
_MOUNT_ATTR_RDONLY = 0x1
_MOUNT_ATTR_IDMAP = 0x100000
_MS_PRIVATE = 1 << 18
_MNT_DETACH = 2


@dataclass(frozen=True)
class IDMapping:
    """One range: ``size`` ids from ``container_id`` inside are ``host_id``… outside."""

    container_id: int
    host_id: int
    size: int

    def __str__(self) -> str:
        return f"{self.container_id}:{self.host_id}:{self.size}"

    @classmethod
    def parse(cls, text: str) -> IDMapping:
        """containerd's deserializeLinuxIDMapping: ``container:host:size``."""
        parts = text.split(":")
        try:
            if len(parts) != 3:
                raise ValueError
            container_id, host_id, size = (int(p) for p in parts)
        except ValueError:
            raise InvalidArgument(f"input value {text} unparsable") from None
        if not (0 <= container_id < INVALID_ID and 0 <= host_id < INVALID_ID and 0 <= size < INVALID_ID):
            raise InvalidArgument(f'invalid mapping "{text}"')
        return cls(container_id, host_id, size)

    def to_spec(self) -> dict[str, int]:
        return {"containerID": self.container_id, "hostID": self.host_id, "size": self.size}


def _to_host(container_id: int, ranges: Sequence[IDMapping]) -> int:
    for m in ranges:
        if m.container_id <= container_id < m.container_id + m.size:
            host = m.host_id + container_id - m.container_id
            if host < INVALID_ID:
                return host
            break
    raise InvalidArgument(f"container ID {container_id} cannot be mapped to a host ID")


@dataclass(frozen=True)
class IDMap:
    """A user namespace's uid and gid ranges (containerd's ``userns.IDMap``)."""

    uids: tuple[IDMapping, ...]
    gids: tuple[IDMapping, ...]

    def root(self) -> tuple[int, int]:
        """The host uid and gid of the namespace's root (containerd's RootPair)."""
        return _to_host(0, self.uids), _to_host(0, self.gids)

    def to_host(self, uid: int, gid: int) -> tuple[int, int]:
        return _to_host(uid, self.uids), _to_host(gid, self.gids)

    def labels(self) -> dict[str, str]:
        """The snapshot labels asking for this remapping (containerd's WithUserNSRemapperLabels)."""
        return {
            UID_MAPPING_LABEL: ",".join(map(str, self.uids)),
            GID_MAPPING_LABEL: ",".join(map(str, self.gids)),
        }

    @classmethod
    def from_labels(cls, labels: dict[str, str] | Sequence[tuple[str, str]]) -> IDMap | None:
        found = dict(labels)
        uids, gids = found.get(UID_MAPPING_LABEL, ""), found.get(GID_MAPPING_LABEL, "")
        if not uids and not gids:
            return None
        return cls.parse(uids, gids)

    @classmethod
    def parse(cls, uidmap: str, gidmap: str) -> IDMap:
        """Comma-separated ranges, as the labels and the ``uidmap=``/``gidmap=`` options carry them."""
        return cls(
            tuple(IDMapping.parse(m) for m in uidmap.split(",") if m),
            tuple(IDMapping.parse(m) for m in gidmap.split(",") if m),
        )

    def options(self) -> tuple[str, str]:
        return f"uidmap={','.join(map(str, self.uids))}", f"gidmap={','.join(map(str, self.gids))}"


# -- syscalls -------------------------------------------------------------------------------------


class _MountAttr(ctypes.Structure):
    _fields_ = (
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    )


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return libc


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise FailedPrecondition(f"{what}: {os.strerror(err)}")
    return result


def idmapped_bind(source: Path, target: Path, userns_fd: int, *, readonly: bool = False) -> None:
    """Bind ``source`` (recursively) at ``target``, its ids shifted by the user namespace
    ``userns_fd`` (containerd's IDMapMountWithAttrs)."""
    libc = _libc()
    tree = _check(
        libc.syscall(
            _SYS_OPEN_TREE,
            ctypes.c_int(-1),
            os.fsencode(source),
            ctypes.c_uint(_OPEN_TREE_CLONE | _OPEN_TREE_CLOEXEC | _AT_RECURSIVE),
        ),
        f"unable to open tree for {target}",
    )
    try:
        attr = _MountAttr(
            _MOUNT_ATTR_IDMAP | (_MOUNT_ATTR_RDONLY if readonly else 0), 0, _MS_PRIVATE, userns_fd
        )
        _check(
            libc.syscall(
                _SYS_MOUNT_SETATTR,
                ctypes.c_int(tree),
                b"",
                ctypes.c_uint(_AT_EMPTY_PATH | _AT_RECURSIVE),
                ctypes.byref(attr),
                ctypes.c_size_t(ctypes.sizeof(attr)),
            ),
            f"unable to shift GID/UID or set mount attrs for {target}",
        )
        _check(
            libc.syscall(
                _SYS_MOVE_MOUNT,
                ctypes.c_int(tree),
                b"",
                ctypes.c_int(-100),  # AT_FDCWD
                os.fsencode(target),
                ctypes.c_uint(_MOVE_MOUNT_F_EMPTY_PATH),
            ),
            f"unable to attach mount tree to {target}",
        )
    finally:
        os.close(tree)


def detach(target: Path) -> None:
    """Unmount ``target`` lazily; what still uses the mount keeps it. Not mounted is fine."""
    if _libc().umount2(os.fsencode(target), _MNT_DETACH) != 0:
        err = ctypes.get_errno()
        if err not in (22, 2):  # EINVAL: not a mount point; ENOENT
            raise FailedPrecondition(f"failed to unmount {target}: {os.strerror(err)}")


# -- user namespaces ------------------------------------------------------------------------------


def _write_maps(pid: int, idmap: IDMap) -> None:
    for name, ranges in (("uid_map", idmap.uids), ("gid_map", idmap.gids)):
        text = "".join(f"{m.container_id} {m.host_id} {m.size}\n" for m in ranges)
        try:
            Path(f"/proc/{pid}/{name}").write_text(text)
        except OSError as exc:
            raise InvalidArgument(f"failed to write {name} {text.strip()!r}: {exc.strerror}") from None


@asynccontextmanager
async def user_namespace(idmap: IDMap, *, net: bool = False) -> AsyncIterator[int]:
    """A process in a new user namespace with ``idmap`` (and, with ``net``, a network namespace it
    owns) for the block: its pid, to open ``/proc/<pid>/ns/{user,net}`` from. It is killed after."""
    unshare = shutil.which("unshare") or "/usr/bin/unshare"
    sleep = shutil.which("sleep") or "/bin/sleep"
    # Not "infinity": a daemon killed meanwhile must not leave it (and its namespaces) for good.
    argv = [unshare, "--user", *(["--net"] if net else []), "--", sleep, str(HELPER_LIFETIME)]
    own = os.stat("/proc/self/ns/user").st_ino
    process = await anyio.open_process(argv, stdin=None, stdout=None, stderr=None)
    try:
        with anyio.fail_after(10):
            while True:
                try:
                    if os.stat(f"/proc/{process.pid}/ns/user").st_ino != own:
                        break
                except FileNotFoundError:
                    raise FailedPrecondition("failed to start a process in a new user namespace") from None
                if process.returncode is not None:
                    raise FailedPrecondition("failed to start a process in a new user namespace")
                await anyio.sleep(0.002)
        _write_maps(process.pid, idmap)
        yield process.pid
    finally:
        with anyio.CancelScope(shield=True):
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()


# -- mounts with uidmap=/gidmap= options ----------------------------------------------------------


def _split(options: Sequence[str]) -> tuple[IDMap | None, list[str]]:
    uidmap = gidmap = ""
    rest = []
    for o in options:
        if o.startswith("uidmap="):
            uidmap = o.removeprefix("uidmap=")
        elif o.startswith("gidmap="):
            gidmap = o.removeprefix("gidmap=")
        else:
            rest.append(o)
    if not uidmap or not gidmap:  # containerd remaps only when both are given
        return None, list(options) if (uidmap or gidmap) else rest
    return IDMap.parse(uidmap, gidmap), rest


def without_idmap(mounts: Sequence[Mount]) -> tuple[Mount, ...]:
    """``mounts`` with their ``uidmap=``/``gidmap=`` options left out: the files as they are on the
    host, for reading (a container's /etc/passwd), not for a container to run on."""
    return tuple(
        Mount(
            m.type,
            m.source,
            tuple(o for o in m.options if not o.startswith(("uidmap=", "gidmap="))),
            m.target,
        )
        for m in mounts
    )


@asynccontextmanager
async def resolve_idmapped(mounts: Sequence[Mount], scratch: Path) -> AsyncIterator[tuple[Mount, ...]]:
    """``mounts`` with every ``uidmap=``/``gidmap=`` pair resolved into idmapped bind mounts under
    ``scratch`` (made and removed here): overlay lower directories replaced by idmapped ones, a
    bind source by its idmapped self. The idmapped mounts are detached when the block ends, so
    mount the result inside it."""
    if not any(o.startswith(("uidmap=", "gidmap=")) for m in mounts for o in m.options):
        yield tuple(mounts)
        return
    made: list[Path] = []
    out: list[Mount] = []
    try:
        for i, m in enumerate(mounts):
            idmap, options = _split(m.options)
            if idmap is None:
                out.append(Mount(m.type, m.source, tuple(options), m.target))
                continue
            async with user_namespace(idmap) as pid:
                fd = os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
                try:
                    out.append(await anyio.to_thread.run_sync(_remap, m, options, scratch / str(i), fd, made))
                finally:
                    os.close(fd)
        yield tuple(out)
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(_undo, made, scratch)


def _remap(m: Mount, options: list[str], base: Path, userns_fd: int, made: list[Path]) -> Mount:
    base.mkdir(parents=True, exist_ok=True, mode=0o700)
    if m.type == "overlay":
        lower = next((o for o in options if o.startswith("lowerdir=")), None)
        if lower is None:
            raise InvalidArgument("failed to parse overlay lowerdir's from given options")
        mapped = []
        for j, directory in enumerate(lower.removeprefix("lowerdir=").split(":")):
            target = base / str(j)
            target.mkdir(mode=0o700)
            idmapped_bind(Path(directory), target, userns_fd, readonly=True)
            made.append(target)
            mapped.append(str(target))
        rest = [o for o in options if o is not lower]
        return Mount(m.type, m.source, (*rest, "lowerdir=" + ":".join(mapped)), m.target)
    target = base / "0"
    target.mkdir(mode=0o700)
    idmapped_bind(Path(m.source), target, userns_fd, readonly="ro" in options)
    made.append(target)
    return Mount(m.type, str(target), tuple(options), m.target)


def _undo(made: list[Path], scratch: Path) -> None:
    for target in reversed(made):
        with contextlib.suppress(FailedPrecondition):
            detach(target)
    remove_scratch(scratch)


def remove_scratch(scratch: Path) -> None:
    """Detach whatever idmapped mounts a killed daemon left under ``scratch``, then remove it."""
    if not scratch.exists():
        return
    for path in sorted(scratch.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if os.path.ismount(path):
            with contextlib.suppress(FailedPrecondition):
                detach(path)
    for path in sorted(scratch.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            path.rmdir()
    with contextlib.suppress(OSError):
        scratch.rmdir()


_SUPPORTED: bool | None = None


async def supports_idmapped_overlay(base: Path | None = None) -> bool:
    """Whether this kernel mounts an overlay over idmapped lower directories with the ids shifted
    (containerd's overlayutils.SupportsIDMappedMounts); probed once a boot, in a temporary directory."""
    global _SUPPORTED
    if _SUPPORTED is None:
        key = _probe_key(base)
        _SUPPORTED = _cached_probe(key)
        if _SUPPORTED is None:
            try:
                _SUPPORTED = await _probe(base)
            except Exception:
                _SUPPORTED = False
            _cache_probe(key, _SUPPORTED)
    return _SUPPORTED


PROBE_CACHE = Path("/run/corral/idmapped-overlay")
"""Where the probe's answer is kept for the rest of the boot (lines of ``<boot id> <kernel
release> <device> 0|1``), so a restarted daemon spawns nothing to ask again."""


def _probe_key(base: Path | None) -> str:
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        device = os.stat(base if base is not None else tempfile.gettempdir()).st_dev
    except OSError:
        return ""
    return f"{boot} {os.uname().release} {device}"


def _cached_probe(key: str) -> bool | None:
    if not key:
        return None
    try:
        lines = PROBE_CACHE.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        found, _, answer = line.rpartition(" ")
        if found == key and answer in ("0", "1"):
            return answer == "1"
    return None


def _cache_probe(key: str, supported: bool) -> None:
    if not key:
        return
    try:
        PROBE_CACHE.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with PROBE_CACHE.open("a") as out:
            out.write(f"{key} {int(supported)}\n")
    except OSError:
        pass  # not root, or a read-only /run: the next start probes again


async def _probe(base: Path | None) -> bool:
    idmap = IDMap((IDMapping(0, 666, 1),), (IDMapping(0, 666, 1),))
    with tempfile.TemporaryDirectory(prefix="ovl-idmapped-check-", dir=base) as scratch:
        root = Path(scratch)
        for name in ("lower", "upper", "work", "merged"):
            (root / name).mkdir()
        (root / "lower" / "file").touch()
        os.lchown(root / "upper", 666, 666)
        options = (f"lowerdir={root / 'lower'}", f"upperdir={root / 'upper'}", f"workdir={root / 'work'}")
        mounts = [Mount("overlay", "overlay", (*options, *idmap.options()))]
        async with resolve_idmapped(mounts, root / "idmapped") as resolved:
            await mount(resolved[0], root / "merged")
        try:
            st = os.stat(root / "merged" / "file")
            return (st.st_uid, st.st_gid) == (666, 666)
        finally:
            detach(root / "merged")
