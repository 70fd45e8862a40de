"""The CDI devices this host offers, from the spec directories, and their injection into OCI specs.

As the reference library's Cache: a later directory has priority over an earlier one (so
``/var/run/cdi`` overrides ``/etc/cdi``); the same device in two specs of one priority is a
conflict and neither is offered; a file that does not parse or validate is reported by its path and
leaves every other spec usable. Specs are read again when a directory's contents change.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from corral.kernel import FailedPrecondition, InvalidArgument, NotFound
from corral.plugins.cdi._spec import (
    Device,
    Spec,
    SpecError,
    devices_from_annotations,
    parse_qualified_name,
    read_spec,
)

OCISpec = dict[str, Any]


@dataclass(frozen=True)
class DeviceInfo:
    """One offered device and the spec file it comes from."""

    name: str
    spec_path: str


def _host_node(path: str) -> tuple[str, int, int, int] | None:
    """(type, major, minor, permission bits) of a device node on the host, or None."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    mode = st.st_mode
    if stat.S_ISBLK(mode):
        kind = "b"
    elif stat.S_ISCHR(mode):
        kind = "c"
    elif stat.S_ISFIFO(mode):
        kind = "p"
    else:
        return None
    return kind, os.major(st.st_rdev), os.minor(st.st_rdev), stat.S_IMODE(mode)


def complete_device_node(node: dict[str, Any]) -> dict[str, Any]:
    """A deviceNodes entry with what is missing (type, major, minor, fileMode) filled in from its
    host node, as the library's fillMissingInfo; FailedPrecondition when that cannot be done."""
    node = dict(node)
    minimal = node.get("type", "") != "" and (node.get("major", 0) != 0 or node.get("type") == "p")
    host = node.get("hostPath") or node["path"]
    info = _host_node(host)
    if info is None:
        if not minimal:
            raise FailedPrecondition(f"failed to stat CDI host device {host!r}: not a device node")
        return node
    kind, major, minor, mode = info
    node.setdefault("fileMode", mode)
    if minimal:
        return node
    if not node.get("type"):
        node["type"] = kind
    if node["type"] == "u" and kind == "c":
        node["type"] = "c"
    if node["type"] != kind:
        raise FailedPrecondition(
            f"CDI device ({node['path']!r}, {host!r}), host type mismatch ({node['type']}, {kind})"
        )
    if kind != "p" and not node.get("major"):
        node["major"], node["minor"] = major, minor
    return node


def _mount_depth(m: dict[str, Any]) -> int:
    return os.path.normpath(str(m.get("destination", ""))).count("/")


def apply_edits(spec: OCISpec, edits: Sequence[dict[str, Any]]) -> None:
    """Every edit of ``edits`` written into ``spec``, in order (the library's ContainerEdits.Apply)."""
    for e in edits:
        process = spec.setdefault("process", {})
        if e.get("env"):
            env = list(process.get("env") or [])
            for item in e["env"]:
                key = item.split("=", 1)[0]
                env = [x for x in env if x.split("=", 1)[0] != key]
                env.append(item)
            process["env"] = env
        linux = spec.setdefault("linux", {})
        user = process.get("user") or {}
        for raw in e.get("deviceNodes") or []:
            node = complete_device_node(raw)
            device: dict[str, Any] = {"path": node["path"], "type": node.get("type", ""),
                                      "major": node.get("major", 0), "minor": node.get("minor", 0)}  # fmt: skip
            for key in ("fileMode", "uid", "gid"):
                if node.get(key) is not None:
                    device[key] = node[key]
            if "uid" not in device and user.get("uid", 0) > 0:
                device["uid"] = user["uid"]
            if "gid" not in device and user.get("gid", 0) > 0:
                device["gid"] = user["gid"]
            linux["devices"] = [d for d in linux.get("devices") or [] if d.get("path") != device["path"]]
            linux["devices"].append(device)
            if device["type"] in ("b", "c"):
                access = {"": "rwm", "none": ""}.get(node.get("permissions", ""), node.get("permissions", ""))
                linux.setdefault("resources", {}).setdefault("devices", []).append(
                    {"allow": True, "type": device["type"], "major": device["major"], "minor": device["minor"],
                     "access": access}
                )  # fmt: skip
        for dev in e.get("netDevices") or []:
            linux.setdefault("netDevices", {})[dev["hostInterfaceName"]] = {"name": dev["name"]}
        if e.get("mounts"):
            mounts = list(spec.get("mounts") or [])
            for m in e["mounts"]:
                mounts = [x for x in mounts if x.get("destination") != m["containerPath"]]
                mount: dict[str, Any] = {"source": m["hostPath"], "destination": m["containerPath"]}
                if m.get("options"):
                    mount["options"] = list(m["options"])
                if m.get("type"):
                    mount["type"] = m["type"]
                mounts.append(mount)
            spec["mounts"] = sorted(mounts, key=_mount_depth)
        for h in e.get("hooks") or []:
            hook: dict[str, Any] = {"path": h["path"]}
            for key in ("args", "env", "timeout"):
                if h.get(key) is not None:
                    hook[key] = h[key]
            spec.setdefault("hooks", {}).setdefault(h["hookName"], []).append(hook)
        if e.get("intelRdt") is not None:
            rdt = e["intelRdt"]
            linux["intelRdt"] = {k: v for k, v in rdt.items() if v}
        for gid in e.get("additionalGids") or []:
            if gid == 0:
                continue
            user = process.setdefault("user", {})
            gids = user.setdefault("additionalGids", [])
            if gid not in gids:
                gids.append(gid)


class Registry:
    """The devices of the spec directories, read again whenever a directory changes."""

    def __init__(self, spec_dirs: Sequence[str], *, log: Any = None) -> None:
        self.spec_dirs = [str(d) for d in spec_dirs]
        self._log = log
        self._devices: dict[str, Device] = {}
        self._owners: dict[str, Spec] = {}
        self._specs: dict[str, Spec] = {}
        self._errors: dict[str, list[str]] = {}
        self._seen: tuple[Any, ...] | None = None

    def _fingerprint(self) -> tuple[Any, ...]:
        marks: list[Any] = []
        for directory in self.spec_dirs:
            try:
                entries = sorted(os.scandir(directory), key=lambda e: e.name)
            except OSError:
                marks.append((directory, None))
                continue
            for entry in entries:
                try:
                    st = entry.stat()
                except OSError:
                    continue
                marks.append((entry.path, st.st_mtime_ns, st.st_size, st.st_ino))
        return tuple(marks)

    def refresh(self, force: bool = False) -> None:
        """Read the spec directories again if anything in them changed (or when forced)."""
        fingerprint = self._fingerprint()
        if not force and fingerprint == self._seen:
            return
        self._seen = fingerprint
        specs: dict[str, Spec] = {}
        devices: dict[str, Device] = {}
        owners: dict[str, Spec] = {}
        conflicts: set[str] = set()
        errors: dict[str, list[str]] = {}
        for priority, directory in enumerate(self.spec_dirs):
            try:
                names = sorted(os.listdir(directory))
            except OSError:
                continue
            for name in names:
                path = Path(directory) / name
                if path.suffix not in (".json", ".yaml") or not path.is_file():
                    continue
                try:
                    spec = read_spec(path, priority)
                except (SpecError, OSError, UnicodeDecodeError) as exc:
                    errors.setdefault(str(path), []).append(f"failed to load CDI Spec: {exc}")
                    continue
                specs[str(path)] = spec
                for device in spec.devices.values():
                    other = owners.get(device.qualified_name)
                    if other is not None and spec.priority == other.priority:
                        name = device.qualified_name
                        message = f"conflicting device {name!r} (specs {spec.path!r}, {other.path!r})"
                        for p in (spec.path, other.path):
                            errors.setdefault(p, []).append(message)
                        conflicts.add(name)
                        continue
                    owners[device.qualified_name] = spec
                    devices[device.qualified_name] = device
        for name in conflicts:
            devices.pop(name, None)
            owners.pop(name, None)
        self._specs, self._errors = specs, errors
        if self._log is not None:
            for bad, reasons in errors.items():
                self._log.warning("cdi_spec_invalid", path=bad, error="; ".join(reasons))
            self._log.info("cdi_specs_loaded", specs=len(specs), devices=len(devices))
        self._devices = devices
        self._owners = owners

    def devices(self) -> list[DeviceInfo]:
        self.refresh()
        return [DeviceInfo(name, self._owners[name].path) for name in sorted(self._devices)]

    def errors(self) -> dict[str, list[str]]:
        """Each spec file that could not be used, with why."""
        self.refresh()
        return {path: list(reasons) for path, reasons in sorted(self._errors.items())}

    def inject(self, spec: OCISpec, devices: Sequence[str]) -> None:
        """Apply the edits of ``devices`` (fully qualified names) and their specs to ``spec``.

        InvalidArgument for a malformed name; NotFound naming every device no spec offers (with the
        spec errors that may explain it); FailedPrecondition when two requested devices want the
        same container path or environment variable with different contents. ``spec`` is changed
        only when every device resolves.
        """
        if not devices:
            return
        self.refresh()
        for name in devices:
            try:
                parse_qualified_name(name)
            except SpecError as exc:
                raise InvalidArgument(str(exc)) from None
        unresolved = [d for d in devices if d not in self._devices]
        if unresolved:
            hint = "".join(
                f"; {path}: {'; '.join(reasons)}" for path, reasons in sorted(self._errors.items())
            )
            raise NotFound(f"unresolvable CDI devices {', '.join(unresolved)}{hint}")
        edits: list[dict[str, Any]] = []
        seen_specs: set[str] = set()
        for name in dict.fromkeys(devices):
            spec_of = self._owners[name]
            if spec_of.path not in seen_specs:
                seen_specs.add(spec_of.path)
                edits.append(spec_of.edits)
            edits.append(self._devices[name].edits)
        _refuse_conflicts(list(dict.fromkeys(devices)), self._devices)
        trial: OCISpec = _deep_copy(spec)
        apply_edits(trial, edits)
        spec.clear()
        spec.update(trial)

    def inject_annotated(self, spec: OCISpec) -> list[str]:
        """Inject the devices the spec's ``cdi.k8s.io/*`` annotations request; the names injected."""
        try:
            devices = devices_from_annotations(dict(spec.get("annotations") or {}))
        except SpecError as exc:
            raise InvalidArgument(str(exc)) from None
        self.inject(spec, devices)
        return devices


def _deep_copy(spec: OCISpec) -> OCISpec:
    copied: OCISpec = json.loads(json.dumps(spec))
    return copied


def _refuse_conflicts(names: list[str], devices: dict[str, Device]) -> None:
    """Two requested devices that put different things at one place: refused, naming both."""
    claims: dict[tuple[str, str], tuple[str, Any]] = {}
    for name in names:
        edits = devices[name].edits
        wanted: list[tuple[tuple[str, str], Any]] = []
        for node in edits.get("deviceNodes") or []:
            wanted.append(
                (
                    ("device node", node["path"]),
                    (node.get("hostPath") or node["path"], node.get("major"), node.get("minor")),
                )
            )
        for m in edits.get("mounts") or []:
            wanted.append((("mount", m["containerPath"]), (m["hostPath"], tuple(m.get("options") or ()))))
        for item in edits.get("env") or []:
            key, _, value = item.partition("=")
            wanted.append((("environment variable", key), value))
        for place, what in wanted:
            other = claims.get(place)
            if other is not None and other[0] != name and other[1] != what:
                raise FailedPrecondition(
                    f"conflicting CDI devices {other[0]} and {name}: both set {place[0]} {place[1]}"
                )
            claims.setdefault(place, (name, what))
