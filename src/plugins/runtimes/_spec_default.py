"""containerd's Linux default spec, the option type, and the few dict helpers every option shares.

A spec is the JSON-ready dict of the OCI runtime spec (runtime-spec 1.2.1). Where the Go struct
has ``omitempty``, an empty value is left out of the dict, so ``json.dumps`` of it is what
containerd would marshal.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Callable
from pathlib import Path
from typing import Any

from corral.kernel import InvalidArgument

Spec = dict[str, Any]
SpecOpt = Callable[[Spec], None]

OCI_VERSION = "1.2.1"
DEFAULT_ROOTFS_PATH = "rootfs"
DEFAULT_UNIX_ENV = ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",)
RWM = "rwm"

DEFAULT_CAPABILITIES = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
)

DEFAULT_NAMESPACES = ("pid", "ipc", "uts", "mount", "network")

DEFAULT_MASKED_PATHS = (
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
    "/proc/scsi",
)

DEFAULT_READONLY_PATHS = (
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
)

# (destination, type, source, options) in containerd's order.
DEFAULT_MOUNTS: tuple[tuple[str, str, str, tuple[str, ...]], ...] = (
    ("/proc", "proc", "proc", ("nosuid", "noexec", "nodev")),
    ("/dev", "tmpfs", "tmpfs", ("nosuid", "strictatime", "mode=755", "size=65536k")),
    ("/dev/pts", "devpts", "devpts",
     ("nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5")),
    ("/dev/shm", "tmpfs", "shm", ("nosuid", "noexec", "nodev", "mode=1777", "size=65536k")),
    ("/dev/mqueue", "mqueue", "mqueue", ("nosuid", "noexec", "nodev")),
    ("/sys", "sysfs", "sysfs", ("nosuid", "noexec", "nodev", "ro")),
    ("/run", "tmpfs", "tmpfs", ("nosuid", "strictatime", "mode=755", "size=65536k")),
)  # fmt: skip


def clean_path(path: str) -> str:
    """Go's ``filepath.Clean``: lexical, and a leading ``//`` is one slash."""
    cleaned = posixpath.normpath(path)
    return "/" + cleaned.lstrip("/") if cleaned.startswith("//") else cleaned


def default_mounts() -> list[dict[str, Any]]:
    return [
        {"destination": dst, "type": kind, "source": src, "options": list(options)}
        for dst, kind, src, options in DEFAULT_MOUNTS
    ]


def default_spec(namespace: str, container_id: str) -> Spec:
    """containerd's ``populateDefaultUnixSpec`` for container ``container_id`` in ``namespace``."""
    if not namespace:
        raise InvalidArgument("a namespace is required for the default spec")
    if not container_id:
        raise InvalidArgument("a container id is required for the default spec")
    return {
        "ociVersion": OCI_VERSION,
        "process": {
            "user": {"uid": 0, "gid": 0},
            "cwd": "/",
            "capabilities": {
                "bounding": list(DEFAULT_CAPABILITIES),
                "effective": list(DEFAULT_CAPABILITIES),
                "permitted": list(DEFAULT_CAPABILITIES),
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": True,
        },
        "root": {"path": DEFAULT_ROOTFS_PATH},
        "mounts": default_mounts(),
        "linux": {
            "resources": {"devices": [{"allow": False, "access": RWM}]},
            "cgroupsPath": clean_path(f"/{namespace}/{container_id}"),
            "namespaces": [{"type": kind} for kind in DEFAULT_NAMESPACES],
            "maskedPaths": list(DEFAULT_MASKED_PATHS),
            "readonlyPaths": list(DEFAULT_READONLY_PATHS),
        },
    }


def with_default_spec(namespace: str, container_id: str) -> SpecOpt:
    """Reset the spec to the default one; use first, then the other options."""

    def opt(spec: Spec) -> None:
        spec.clear()
        spec.update(default_spec(namespace, container_id))

    return opt


def apply_opts(spec: Spec, *opts: SpecOpt) -> Spec:
    """Apply ``opts`` in order (later ones see what earlier ones did); returns ``spec``."""
    for opt in opts:
        opt(spec)
    return spec


def generate_spec(namespace: str, container_id: str, *opts: SpecOpt) -> Spec:
    """containerd's ``GenerateSpec``: the default spec with ``opts`` applied in order."""
    return apply_opts(default_spec(namespace, container_id), *opts)


def compose(*opts: SpecOpt) -> SpecOpt:
    """One option that applies ``opts`` in order."""

    def composed(spec: Spec) -> None:
        apply_opts(spec, *opts)

    return composed


def spec_json(spec: Spec) -> bytes:
    """The spec as the runtime reads it (``config.json``)."""
    return json.dumps(spec, separators=(",", ":"), ensure_ascii=False).encode()


def read_spec(path: str | Path) -> Spec:
    """A ``config.json`` read back into a spec dict."""
    loaded = json.loads(Path(path).read_bytes())
    if not isinstance(loaded, dict):
        raise InvalidArgument(f"{path}: a runtime spec is a JSON object")
    return loaded


# The helpers below are containerd's setProcess/setLinux/...: they create a section when absent.


def section(parent: dict[str, Any], key: str) -> dict[str, Any]:
    value = parent.get(key)
    if value is None:
        value = parent[key] = {}
    return value


def put(parent: dict[str, Any], key: str, value: Any) -> None:
    """Set ``key``, or drop it when the value is one ``omitempty`` leaves out."""
    if value is None or value == "" or value is False or (isinstance(value, list | dict) and not value):
        parent.pop(key, None)
    else:
        parent[key] = value


def process(spec: Spec) -> dict[str, Any]:
    proc = section(spec, "process")
    proc.setdefault("user", {"uid": 0, "gid": 0})
    proc.setdefault("cwd", "")
    return proc


def linux(spec: Spec) -> dict[str, Any]:
    return section(spec, "linux")


def resources(spec: Spec) -> dict[str, Any]:
    """``linux.resources``; the Linux section is created too (containerd's setResources needs it)."""
    return section(linux(spec), "resources")
