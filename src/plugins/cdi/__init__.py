"""CDI, the Container Device Interface: vendor specs in ``/etc/cdi`` and ``/var/run/cdi`` (JSON or
YAML) describe devices by fully qualified name (``vendor.com/class=name``); a container that asks
for one gets its edits — device nodes, mounts, environment, hooks, extra groups — in its OCI spec.

``Registry`` reads and validates the specs and injects devices; ``DeviceInjector`` is what the
``io.corral.cdi.v1`` plugin's instance offers to the tasks service, CRI and NRI.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from corral.plugins.cdi._registry import DeviceInfo, Registry, apply_edits, complete_device_node
from corral.plugins.cdi._spec import (
    ANNOTATION_PREFIX,
    Device,
    Spec,
    SpecError,
    devices_from_annotations,
    parse_qualified_name,
    parse_spec,
    read_spec,
)

__all__ = [
    "ANNOTATION_PREFIX",
    "Device",
    "DeviceInfo",
    "DeviceInjector",
    "Registry",
    "Spec",
    "SpecError",
    "annotation_key",
    "apply_edits",
    "complete_device_node",
    "devices_from_annotations",
    "parse_qualified_name",
    "parse_spec",
    "read_spec",
]


@runtime_checkable
class DeviceInjector(Protocol):
    """Devices by fully qualified name, injected into an OCI spec (a dict of its JSON)."""

    def inject(self, spec: dict[str, Any], devices: Sequence[str]) -> None: ...

    def inject_annotated(self, spec: dict[str, Any]) -> list[str]: ...

    def devices(self) -> list[DeviceInfo]: ...

    def errors(self) -> dict[str, list[str]]: ...


def annotation_key(plugin: str, device_id: str) -> str:
    """``cdi.k8s.io/<plugin>_<device id>``, the key a request for devices is annotated with."""
    name = f"{plugin}_{device_id.replace('/', '_')}"
    if not plugin or not device_id or len(name) > 63:
        raise SpecError(f"invalid CDI annotation name {name!r}")
    return ANNOTATION_PREFIX + name
