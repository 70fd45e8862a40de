"""CDI spec files as the Container Device Interface defines them: parsed (JSON or YAML, unknown keys
refused as the reference library's strict decoding does) and validated — cdiVersion, kind
``vendor/class``, device names, and every container edit.

Names follow ``tags.cncf.io/container-device-interface/pkg/parser``: a vendor and a class start with
a letter, end with a letter or digit and hold letters, digits, ``_ - .`` between; a device name
starts and ends with a letter or digit and may also hold ``:``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

VERSIONS = ("0.1.0", "0.2.0", "0.3.0", "0.4.0", "0.5.0", "0.6.0", "0.7.0", "0.8.0", "1.0.0", "1.1.0")
HOOK_NAMES = ("prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop")
ANNOTATION_PREFIX = "cdi.k8s.io/"

_SPEC_KEYS = {"cdiVersion", "kind", "annotations", "devices", "containerEdits"}
_DEVICE_KEYS = {"name", "annotations", "containerEdits"}
_EDIT_KEYS = {"env", "deviceNodes", "netDevices", "hooks", "mounts", "intelRdt", "additionalGids"}
_NODE_KEYS = {"path", "hostPath", "type", "major", "minor", "fileMode", "permissions", "uid", "gid"}
_MOUNT_KEYS = {"hostPath", "containerPath", "options", "type"}
_HOOK_KEYS = {"hookName", "path", "args", "env", "timeout"}
_NET_KEYS = {"hostInterfaceName", "name"}
_RDT_KEYS = {"closID", "l3CacheSchema", "memBwSchema", "schemata", "enableMonitoring"}


class SpecError(ValueError):
    """A spec file that cannot be used, with the reason (the file is named by whoever reports it)."""


def _letter(c: str) -> bool:
    return c.isascii() and c.isalpha()


def _alnum(c: str) -> bool:
    return c.isascii() and c.isalnum()


def _check_name(name: str, what: str, inner: str, first: Any) -> None:
    if not name:
        raise SpecError(f"invalid {what}. empty name")
    if not first(name[0]):
        raise SpecError(
            f"invalid {what}. {name!r}, should start with "
            + ("letter" if first is _letter else "a letter or digit")
        )
    if len(name) == 1:
        return
    for c in name[1:-1]:
        if not (_alnum(c) or c in inner):
            raise SpecError(f"invalid {what}. invalid character {c!r} in name {name!r}")
    if not _alnum(name[-1]):
        raise SpecError(f"invalid {what}. {name!r}, should end with a letter or digit")


def validate_vendor(vendor: str) -> None:
    _check_name(vendor, "vendor", "_-.", _letter)


def validate_class(class_: str) -> None:
    _check_name(class_, "class", "_-.", _letter)


def validate_device_name(name: str) -> None:
    _check_name(name, "device name", "_-.:", _alnum)


def parse_qualified_name(device: str) -> tuple[str, str, str]:
    """``vendor.com/class=name`` → its parts; SpecError for anything not fully qualified."""
    qualifier, sep, name = device.partition("=")
    vendor, slash, class_ = qualifier.partition("/")
    if device.startswith("/") or not sep or not slash or not vendor or not class_:
        raise SpecError(f"unqualified device {device!r}, missing vendor/class")
    if not name:
        raise SpecError(f"unqualified device {device!r}, missing device name")
    try:
        validate_vendor(vendor)
        validate_class(class_)
        validate_device_name(name)
    except SpecError as exc:
        raise SpecError(f"invalid device {device!r}: {exc}") from None
    return vendor, class_, name


@dataclass(frozen=True)
class Device:
    """One device of a spec: its qualified name and its own edits (the spec's are applied with it)."""

    qualified_name: str
    name: str
    edits: dict[str, Any]
    annotations: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Spec:
    path: str
    priority: int
    version: str
    kind: str
    vendor: str
    class_: str
    devices: dict[str, Device]
    edits: dict[str, Any]


def _keys(value: Any, allowed: set[str], where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise SpecError(f"{where}: expected an object")
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise SpecError(f'{where}: unknown field "{unknown[0]}"')
    return value


def _strings(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise SpecError(f"{where}: expected a list of strings")
    return value


def _validate_env(env: list[str], where: str) -> None:
    for v in env:
        if v.find("=") <= 0:
            raise SpecError(f"{where}: invalid environment variable {v!r}")


def _required_version(edits: list[dict[str, Any]]) -> str:
    """The earliest cdiVersion that has every feature these edits use."""
    needed = "0.3.0"
    for e in edits:
        if e.get("netDevices"):
            return "1.1.0"
        if (e.get("intelRdt") or {}).get("schemata") or (e.get("intelRdt") or {}).get("enableMonitoring"):
            return "1.1.0"
        if e.get("intelRdt") or e.get("additionalGids"):
            needed = max(needed, "0.7.0", key=VERSIONS.index)
        if any(n.get("hostPath") for n in e.get("deviceNodes") or []):
            needed = max(needed, "0.5.0", key=VERSIONS.index)
        if any(m.get("type") for m in e.get("mounts") or []):
            needed = max(needed, "0.4.0", key=VERSIONS.index)
    return needed


def validate_edits(value: Any, where: str) -> dict[str, Any]:
    """One ``containerEdits`` object, checked as the CDI library's ContainerEdits.Validate."""
    if value is None:
        return {}
    edits = _keys(value, _EDIT_KEYS, where)
    _validate_env(_strings(edits.get("env"), f"{where}.env"), f"{where}.env")
    for i, raw in enumerate(edits.get("deviceNodes") or []):
        node = _keys(raw, _NODE_KEYS, f"{where}.deviceNodes[{i}]")
        path = node.get("path")
        if not isinstance(path, str) or not path:
            raise SpecError(f"{where}.deviceNodes[{i}]: invalid (empty) device path")
        if node.get("type", "") not in ("", "b", "c", "u", "p"):
            raise SpecError(f"{where}: device {path!r}: invalid type {node['type']!r}")
        permissions = node.get("permissions", "")
        if permissions not in ("", "none") and (not isinstance(permissions, str) or permissions.strip("rwm")):
            raise SpecError(f"{where}: device {path!r}: invalid permissions {permissions!r}")
        for number in ("major", "minor", "fileMode", "uid", "gid"):
            if number in node and (not isinstance(node[number], int) or isinstance(node[number], bool)):
                raise SpecError(f"{where}: device {path!r}: {number} must be an integer")
    for i, raw in enumerate(edits.get("hooks") or []):
        hook = _keys(raw, _HOOK_KEYS, f"{where}.hooks[{i}]")
        if hook.get("hookName") not in HOOK_NAMES:
            raise SpecError(f"{where}: invalid hook name {hook.get('hookName')!r}")
        if not hook.get("path"):
            raise SpecError(f"{where}: invalid hook {hook['hookName']!r} with empty path")
        _strings(hook.get("args"), f"{where}.hooks[{i}].args")
        _validate_env(
            _strings(hook.get("env"), f"{where}.hooks[{i}].env"),
            f"{where}: invalid hook {hook['hookName']!r}",
        )
    for i, raw in enumerate(edits.get("mounts") or []):
        mount = _keys(raw, _MOUNT_KEYS, f"{where}.mounts[{i}]")
        if not mount.get("hostPath"):
            raise SpecError(f"{where}: invalid mount, empty host path")
        if not mount.get("containerPath"):
            raise SpecError(f"{where}: invalid mount, empty container path")
        _strings(mount.get("options"), f"{where}.mounts[{i}].options")
    hosts: set[str] = set()
    names: set[str] = set()
    for i, raw in enumerate(edits.get("netDevices") or []):
        dev = _keys(raw, _NET_KEYS, f"{where}.netDevices[{i}]")
        if not dev.get("hostInterfaceName"):
            raise SpecError(f"{where}: invalid linux net device, empty HostInterfaceName")
        if not dev.get("name"):
            raise SpecError(f"{where}: invalid linux net device, empty Name")
        if dev["hostInterfaceName"] in hosts or dev["name"] in names:
            raise SpecError(f"{where}: invalid linux net device, duplicate {dev['hostInterfaceName']!r}")
        hosts.add(dev["hostInterfaceName"])
        names.add(dev["name"])
    if edits.get("intelRdt") is not None:
        rdt = _keys(edits["intelRdt"], _RDT_KEYS, f"{where}.intelRdt")
        clos = rdt.get("closID", "")
        if clos != "/" and (len(clos) >= 4096 or clos in (".", "..") or "/" in clos or "\n" in clos):
            raise SpecError(f"{where}: invalid ClosID")
    gids = edits.get("additionalGids") or []
    if not isinstance(gids, list) or not all(isinstance(g, int) and 0 <= g < 1 << 32 for g in gids):
        raise SpecError(f"{where}.additionalGids: expected a list of uint32")
    return edits


def parse_spec(data: bytes | str, path: str, priority: int = 0) -> Spec:
    """A spec file's content, validated; SpecError says what is wrong with it."""
    import yaml  # here: a daemon with no spec files starts without PyYAML's import

    try:
        text = data.decode() if isinstance(data, bytes) else data
        raw = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise SpecError(f"failed to unmarshal CDI Spec: {exc}") from None
    if raw is None:
        raise SpecError("failed to parse CDI Spec, no Spec data")
    spec = _keys(raw, _SPEC_KEYS, "spec")
    version = str(spec.get("cdiVersion", "")).removeprefix("v")
    if version not in VERSIONS:
        raise SpecError(f"invalid version {spec.get('cdiVersion', '')!r}")
    kind = spec.get("kind", "")
    if not isinstance(kind, str):
        raise SpecError("kind: expected a string")
    vendor, slash, class_ = kind.partition("/")
    if not slash or not vendor or not class_:
        vendor, class_ = "", kind
    validate_vendor(vendor)
    validate_class(class_)
    _annotations(spec.get("annotations"), kind)
    edits = validate_edits(spec.get("containerEdits"), "containerEdits")
    devices: dict[str, Device] = {}
    all_edits = [edits]
    raw_devices = spec.get("devices")
    if not isinstance(raw_devices, list):
        raise SpecError("invalid spec, no devices")
    for i, raw_device in enumerate(raw_devices):
        dev = _keys(raw_device, _DEVICE_KEYS, f"devices[{i}]")
        name = dev.get("name", "")
        if not isinstance(name, str):
            raise SpecError(f"devices[{i}].name: expected a string")
        try:
            validate_device_name(name)
            qualified = f"{vendor}/{class_}={name}"
            annotations = _annotations(dev.get("annotations"), qualified)
            if dev.get("containerEdits") is None or not any(dev["containerEdits"].values()):
                raise SpecError("invalid device, empty device edits")
            device_edits = validate_edits(dev["containerEdits"], "containerEdits")
        except SpecError as exc:
            raise SpecError(f"failed add device {name!r}: {exc}") from None
        if name in devices:
            raise SpecError(f"invalid spec, multiple device {name!r}")
        devices[name] = Device(qualified, name, device_edits, annotations)
        all_edits.append(device_edits)
    if not devices:
        raise SpecError("invalid spec, no devices")
    required = _required_version(all_edits)
    if VERSIONS.index(required) > VERSIONS.index(version):
        raise SpecError(f"the spec version must be at least v{required}")
    return Spec(path, priority, version, kind, vendor, class_, devices, edits)


def _annotations(value: Any, owner: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise SpecError(f"invalid annotations of {owner!r}: expected a map of strings")
    return dict(value)


def read_spec(path: Path, priority: int = 0) -> Spec:
    return parse_spec(path.read_bytes(), str(path), priority)


def devices_from_annotations(annotations: dict[str, str]) -> list[str]:
    """Devices requested with ``cdi.k8s.io/<plugin>_<id>`` annotations (comma-separated names),
    in key order; SpecError for a value that is not a fully qualified name."""
    devices = []
    for key in sorted(annotations):
        if not key.startswith(ANNOTATION_PREFIX):
            continue
        for device in annotations[key].split(","):
            try:
                parse_qualified_name(device)
            except SpecError:
                raise SpecError(f"invalid CDI device name {device!r}") from None
            devices.append(device)
    return devices
