"""io.containerd.grpc.v1.sandbox-controllers — containerd.services.sandbox.v1.Controller.

The CRI's PodSandboxConfig that a Create carries in its options is decoded here, at the edge, into
the record a pod sandbox controller reads (``pod_spec_from_config``, which CRI uses too)."""

from __future__ import annotations

from corral.api.grpc import GRPCServices
from corral.api.grpc.sandboxes import sandbox_from_wire
from corral.api.types.containerd import types as ctypes
from corral.api.types.containerd.services.sandbox import v1 as pb
from corral.api.types.google import protobuf
from corral.api.types.runtime import v1 as cri
from corral.api.wire import any_from_wire, any_to_wire, mounts_from_wire
from corral.kernel import InitContext, InvalidArgument, Registration, SkipPlugin
from corral.plugins import types
from corral.plugins.events.types import optional_publisher
from corral.plugins.metadata import AnyValue, Sandbox
from corral.plugins.sandbox import (
    POD_SANDBOX_CONFIG_TYPE_URL,
    Controller,
    CreateOptions,
    PodPortMapping,
    PodSandboxSpec,
)
from corral.plugins.sandbox.controllers import SandboxControllers

_PREFIX = "type.googleapis.com/"


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
    )


def pod_spec_from_any(options: AnyValue | None) -> PodSandboxSpec | None:
    """The PodSandboxConfig in a Create's options (typeurl's name, with or without the
    ``type.googleapis.com/`` prefix); None for other options; InvalidArgument if it does not decode."""
    if options is None or options.type_url.removeprefix(_PREFIX) != POD_SANDBOX_CONFIG_TYPE_URL:
        return None
    try:
        return pod_spec_from_config(cri.PodSandboxConfig.parse(options.value))
    except Exception as exc:
        raise InvalidArgument(f"failed to unmarshal PodSandboxConfig: {exc}") from None


class SandboxControllerGRPC(pb.ControllerBase):
    def __init__(self, local: SandboxControllers) -> None:
        self._local = local

    async def create(self, message: pb.ControllerCreateRequest) -> pb.ControllerCreateResponse:
        sandbox = (
            sandbox_from_wire(message.sandbox) if message.sandbox is not None else Sandbox(message.sandbox_id)
        )
        options = any_from_wire(message.options)
        create = CreateOptions(
            rootfs=tuple(mounts_from_wire(message.rootfs)),
            options=options,
            netns_path=message.netns_path,
            annotations=dict(message.annotations),
            pod=pod_spec_from_any(options),
        )
        await self._local.create(message.sandboxer, sandbox, create)
        return pb.ControllerCreateResponse(sandbox_id=message.sandbox_id)

    async def start(self, message: pb.ControllerStartRequest) -> pb.ControllerStartResponse:
        inst = await self._local.start(message.sandboxer, message.sandbox_id)
        return pb.ControllerStartResponse(
            sandbox_id=inst.sandbox_id, pid=inst.pid, created_at=inst.created_at, labels=dict(inst.labels)
        )

    async def platform(self, message: pb.ControllerPlatformRequest) -> pb.ControllerPlatformResponse:
        p = await self._local.platform(message.sandboxer, message.sandbox_id)
        return pb.ControllerPlatformResponse(
            platform=ctypes.Platform(os=p.os, architecture=p.architecture, variant=p.variant)
        )

    async def stop(self, message: pb.ControllerStopRequest) -> pb.ControllerStopResponse:
        await self._local.stop(message.sandboxer, message.sandbox_id, float(message.timeout_secs) or None)
        return pb.ControllerStopResponse()

    async def wait(self, message: pb.ControllerWaitRequest) -> pb.ControllerWaitResponse:
        status = await self._local.wait(message.sandboxer, message.sandbox_id)
        return pb.ControllerWaitResponse(exit_status=status.exit_status, exited_at=status.exited_at)

    async def status(self, message: pb.ControllerStatusRequest) -> pb.ControllerStatusResponse:
        st = await self._local.status(message.sandboxer, message.sandbox_id, message.verbose)
        return pb.ControllerStatusResponse(
            sandbox_id=st.sandbox_id,
            pid=st.pid,
            state=st.state,
            info=dict(st.info),
            created_at=st.created_at,
            exited_at=st.exited_at,
            extra=any_to_wire(st.extra) or protobuf.Any(),
            address=st.address,
            version=st.version,
        )

    async def shutdown(self, message: pb.ControllerShutdownRequest) -> pb.ControllerShutdownResponse:
        await self._local.shutdown(message.sandboxer, message.sandbox_id)
        return pb.ControllerShutdownResponse()

    async def metrics(self, message: pb.ControllerMetricsRequest) -> pb.ControllerMetricsResponse:
        m = await self._local.metrics(message.sandboxer, message.sandbox_id)
        return pb.ControllerMetricsResponse(
            metrics=ctypes.Metric(timestamp=m.timestamp, id=m.id, data=any_to_wire(m.data))
        )

    async def update(self, message: pb.ControllerUpdateRequest) -> pb.ControllerUpdateResponse:
        if message.sandbox is None:
            raise InvalidArgument("sandbox can not be nil")
        await self._local.update(
            message.sandboxer, message.sandbox_id, sandbox_from_wire(message.sandbox), list(message.fields)
        )
        return pb.ControllerUpdateResponse()


async def init(ic: InitContext) -> GRPCServices:
    controllers: dict[str, Controller] = {}
    controllers.update(ic.get_by_type(types.POD_SANDBOX, Controller))
    controllers.update(ic.get_by_type(types.SANDBOX_CONTROLLER, Controller))
    if not controllers:
        raise SkipPlugin("no sandbox controllers initialized")
    local = SandboxControllers(controllers, optional_publisher(ic.get_by_type(types.EVENT)))
    return GRPCServices((SandboxControllerGRPC(local),))


registration = Registration(
    type=types.GRPC,
    id="sandbox-controllers",
    init=init,
    requires=(types.POD_SANDBOX,),
    after=(types.SANDBOX_CONTROLLER, types.EVENT),
)
