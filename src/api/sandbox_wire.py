"""The sandbox API's wire: sandbox records to and from ``containerd.types.Sandbox``, and the CRI's
PodSandboxConfig decoded into the record a pod sandbox controller works from (for the sandbox
controller service and for CRI's RunPodSandbox alike)."""

from __future__ import annotations

from typing import Any

from corral.api.types.containerd import types as ctypes
from corral.api.types.runtime import v1 as cri
from corral.api.wire import any_from_wire, any_to_wire, extensions_from_wire, extensions_to_wire
from corral.kernel import InvalidArgument
from corral.plugins.metadata import AnyValue, Sandbox, SandboxRuntime
from corral.plugins.sandbox import POD_SANDBOX_CONFIG_TYPE_URL, PodPortMapping, PodSandboxSpec

__all__ = [
    "pod_spec_from_any",
    "pod_spec_from_config",
    "sandbox_from_wire",
    "sandbox_to_wire",
    "userns_fields",
]

_PREFIX = "type.googleapis.com/"


def sandbox_to_wire(s: Sandbox) -> ctypes.Sandbox:
    """containerd's sandbox.ToProto."""
    return ctypes.Sandbox(
        sandbox_id=s.id,
        runtime=ctypes.SandboxRuntime(name=s.runtime.name, options=any_to_wire(s.runtime.options)),
        spec=any_to_wire(s.spec),
        labels=dict(s.labels),
        created_at=s.created_at,
        updated_at=s.updated_at,
        extensions=extensions_to_wire(s.extensions),
        sandboxer=s.sandboxer,
    )


def sandbox_from_wire(s: ctypes.Sandbox | None) -> Sandbox:
    """containerd's sandbox.FromProto (which a request without a sandbox would crash)."""
    if s is None:
        raise InvalidArgument("sandbox is required")
    runtime = s.runtime
    return Sandbox(
        id=s.sandbox_id,
        runtime=SandboxRuntime(
            runtime.name if runtime else "", any_from_wire(runtime.options if runtime else None)
        ),
        labels=dict(s.labels),
        spec=any_from_wire(s.spec),
        sandboxer=s.sandboxer,
        extensions=extensions_from_wire(s.extensions),
        created_at=s.created_at,
        updated_at=s.updated_at,
    )


def pod_spec_from_config(config: cri.PodSandboxConfig) -> PodSandboxSpec:
    """The record of a CRI PodSandboxConfig that a pod sandbox controller works from."""
    meta = config.metadata or cri.PodSandboxMetadata()
    linux = config.linux or cri.LinuxPodSandboxConfig()
    security = linux.security_context or cri.LinuxSandboxSecurityContext()
    modes = security.namespace_options or cri.NamespaceOption()
    dns = config.dns_config
    return PodSandboxSpec(
        name=meta.name,
        uid=meta.uid,
        namespace=meta.namespace,
        attempt=meta.attempt,
        hostname=config.hostname,
        log_directory=config.log_directory,
        dns_servers=tuple(dns.servers) if dns else (),
        dns_searches=tuple(dns.searches) if dns else (),
        dns_options=tuple(dns.options) if dns else (),
        has_dns_config=dns is not None,
        port_mappings=tuple(
            PodPortMapping(p.container_port, p.host_port, cri.Protocol(p.protocol).name, p.host_ip)
            for p in config.port_mappings
        ),
        labels=dict(config.labels),
        annotations=dict(config.annotations),
        cgroup_parent=linux.cgroup_parent,
        sysctls=dict(linux.sysctls),
        network_mode=cri.NamespaceMode(modes.network).name,
        pid_mode=cri.NamespaceMode(modes.pid).name,
        ipc_mode=cri.NamespaceMode(modes.ipc).name,
        privileged=security.privileged,
        run_as_user=security.run_as_user.value if security.run_as_user is not None else None,
        run_as_group=security.run_as_group.value if security.run_as_group is not None else None,
        supplemental_groups=tuple(security.supplemental_groups),
        **userns_fields(modes.userns_options),
    )


def userns_fields(userns: cri.UserNamespace | None) -> dict[str, Any]:
    """A CRI UserNamespace as the record's ``userns_mode``, ``uid_mappings``, ``gid_mappings``."""
    if userns is None:
        return {}
    return {
        "userns_mode": cri.NamespaceMode(userns.mode).name,
        "uid_mappings": tuple((m.container_id, m.host_id, m.length) for m in userns.uids),
        "gid_mappings": tuple((m.container_id, m.host_id, m.length) for m in userns.gids),
    }


def pod_spec_from_any(options: AnyValue | None) -> PodSandboxSpec | None:
    """The PodSandboxConfig in a Create's options (typeurl's name, with or without the
    ``type.googleapis.com/`` prefix); None for other options; InvalidArgument if it does not decode."""
    if options is None or options.type_url.removeprefix(_PREFIX) != POD_SANDBOX_CONFIG_TYPE_URL:
        return None
    try:
        return pod_spec_from_config(cri.PodSandboxConfig.parse(options.value))
    except Exception as exc:
        raise InvalidArgument(f"failed to unmarshal PodSandboxConfig: {exc}") from None
