"""A task's bundle: ``<state>/<ns>/<id>`` with config.json, the shim's log FIFO and a ``work`` link.

Laid out as containerd's runtime/v2/bundle.go lays it out, because the shim reads it: the last
path element must be the task id (``delete`` finds the bundle as ``Dir(cwd)/id``), ``config.json``
is the container's OCI spec, ``rootfs`` is where the shim mounts the snapshot, and ``work``
points at ``<root>/<ns>/<id>`` for the runtime's persistent files.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from corral.kernel import InvalidArgument
from corral.plugins.core import validate_identifier
from corral.plugins.core.idmap import remove_scratch
from corral.plugins.core.trees import remove_tree
from corral.plugins.metadata import AnyValue
from corral.plugins.runtimes import SPEC_TYPE_URL

CONFIG_FILE = "config.json"
LOG_FIFO = "log"
ADDRESS_FILE = "address"
BINARY_FILE = "shim-binary-path"
BOOTSTRAP_FILE = "bootstrap.json"
IDMAPPED_DIR = "idmapped"
"""Where a task's create bind-mounts idmapped layers for the shim (detached once it has mounted)."""

log = structlog.get_logger("corral.runtime.v2")

_MNT_DETACH = 2
_libc = ctypes.CDLL(None, use_errno=True)  # the C library the interpreter links (find_library runs ldconfig)


@dataclass(frozen=True)
class Bundle:
    id: str
    namespace: str
    path: Path

    @property
    def rootfs(self) -> Path:
        return self.path / "rootfs"

    def read(self, name: str) -> str | None:
        try:
            return (self.path / name).read_text()
        except FileNotFoundError:
            return None

    def write(self, name: str, text: str) -> None:
        """Written whole or not at all: a crash never leaves half a file for recovery to read."""
        tmp = self.path / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, self.path / name)

    def delete(self) -> None:
        """Unmount what is left under rootfs, then remove the bundle and its work directory."""
        work: str | None
        try:
            work = os.readlink(self.path / "work")
        except OSError:
            work = None
        unmount_recursive(self.rootfs)
        with contextlib.suppress(FileNotFoundError):
            self.rootfs.rmdir()
        remove_scratch(self.path / IDMAPPED_DIR)
        _atomic_delete(self.path)
        if work is not None:
            _atomic_delete(Path(work))


def new_bundle(root: Path, state: Path, namespace: str, task_id: str, spec: AnyValue | None) -> Bundle:
    """Create the bundle (AlreadyExists-safe: a leftover work directory is replaced)."""
    validate_identifier(task_id)
    bundle = Bundle(task_id, namespace, state / namespace / task_id)
    work = root / namespace / task_id
    bundle.path.parent.mkdir(mode=0o711, parents=True, exist_ok=True)
    bundle.path.mkdir(mode=0o700)
    try:
        bundle.rootfs.mkdir(mode=0o711)
        work.parent.mkdir(mode=0o711, parents=True, exist_ok=True)
        remove_tree(work)  # a leftover of a task that was never deleted
        work.mkdir(mode=0o711)
        (bundle.path / "work").symlink_to(work)
        if spec is not None and spec.value:
            if spec.type_url == SPEC_TYPE_URL:
                gid = remapped_gid(_parse_spec(spec.value))
                if gid:
                    # The container's root (a remapped gid) must reach the rootfs inside the bundle.
                    os.chown(bundle.path, -1, gid)
                    bundle.path.chmod(0o710)
            (bundle.path / CONFIG_FILE).write_bytes(spec.value)
        os.mkfifo(bundle.path / LOG_FIFO, 0o700)
    except BaseException:
        bundle.delete()
        raise
    return bundle


def _parse_spec(value: bytes) -> Any:
    try:
        return json.loads(value)
    except ValueError as exc:
        raise InvalidArgument(f"container spec is not JSON: {exc}") from None


def remapped_gid(spec: Any) -> int:
    """The host gid of the container's gid 0 under a user namespace, else 0 (bundle_linux.go)."""
    linux = spec.get("linux") if isinstance(spec, dict) else None
    mappings = linux.get("gidMappings") if isinstance(linux, dict) else None
    for mapping in mappings or ():
        if isinstance(mapping, dict) and mapping.get("containerID") == 0:
            return int(mapping.get("hostID", 0))
    return 0


def load_bundles(state: Path) -> list[Bundle]:
    """Every bundle under ``state``, by namespace directory then task id (dot-names skipped)."""
    found: list[Bundle] = []
    if not state.is_dir():
        return found
    for ns_dir in sorted(state.iterdir()):
        if not ns_dir.is_dir() or ns_dir.name.startswith("."):
            continue
        for task_dir in sorted(ns_dir.iterdir()):
            if task_dir.name.startswith("."):
                # A delete interrupted after its rename: finish it.
                if task_dir.is_dir() and not task_dir.is_symlink():
                    unmount_recursive(task_dir / "rootfs")
                    remove_scratch(task_dir / IDMAPPED_DIR)
                    _remove_quietly(task_dir)
                continue
            if task_dir.is_dir():
                found.append(Bundle(task_dir.name, ns_dir.name, task_dir))
    return found


def remove_orphan_work(root: Path, live: set[tuple[str, str]]) -> None:
    """Work directories whose bundle is gone (containerd's cleanupWorkDirs)."""
    if not root.is_dir():
        return
    for ns_dir in root.iterdir():
        if not ns_dir.is_dir():
            continue
        for work in ns_dir.iterdir():
            if (ns_dir.name, work.name) not in live:
                _remove_quietly(work)


def _atomic_delete(path: Path) -> None:
    hidden = path.parent / f".{path.name}"
    try:
        os.rename(path, hidden)
    except FileNotFoundError:
        return
    _remove_quietly(hidden)


def _remove_quietly(path: Path) -> None:
    """Remove a tree of any depth; what cannot be removed now is left for the next start, which
    finishes every hidden bundle it finds."""
    try:
        remove_tree(path)
    except OSError as exc:
        log.warning("bundle_remove_incomplete", path=str(path), error=str(exc))


def mounts_under(target: Path) -> list[str]:
    """Mount points at or below ``target``, deepest first (from /proc/self/mountinfo)."""
    prefix = os.path.realpath(target) if target.exists() else str(target)
    points: list[str] = []
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return points
    for line in lines:
        fields = line.split()
        if len(fields) < 5:
            continue
        point = fields[4].encode().decode("unicode_escape")
        if point == prefix or point.startswith(prefix + "/"):
            points.append(point)
    return sorted(set(points), key=lambda p: p.count("/"), reverse=True)


def unmount_recursive(target: Path) -> None:
    """containerd's mount.UnmountRecursive: every mount under ``target``, deepest first."""
    for _ in range(8):
        points = mounts_under(target)
        if not points:
            return
        for point in points:
            if _libc.umount2(point.encode(), 0) != 0:
                err = ctypes.get_errno()
                if err == errno.EBUSY:
                    _libc.umount2(point.encode(), _MNT_DETACH)
