"""io.containerd.grpc.v1.sandbox-controllers — containerd.services.sandbox.v1.Controller.

The CRI's PodSandboxConfig that a Create carries in its options is decoded at this edge
(``corral.api.sandbox_wire``) into the record a pod sandbox controller reads."""

from __future__ import annotations

from corral.api.grpc import GRPCServices
from corral.api.sandbox_wire import pod_spec_from_any, sandbox_from_wire
from corral.api.types.containerd import types as ctypes
from corral.api.types.containerd.services.sandbox import v1 as pb
from corral.api.types.google import protobuf
from corral.api.wire import any_from_wire, any_to_wire, mounts_from_wire
from corral.kernel import InitContext, InvalidArgument, Registration, SkipPlugin
from corral.plugins import types
from corral.plugins.events.types import optional_publisher
from corral.plugins.metadata import Sandbox
from corral.plugins.sandbox import Controller, CreateOptions
from corral.plugins.sandbox.controllers import SandboxControllers


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
