"""The sandbox controller service's logic: every sandbox controller by name, with containerd's
rules (``plugins/services/sandbox/controller_service.go``): the name must be given and known, and
Create, Start and Wait publish ``/sandboxes/create``, ``/sandboxes/start`` and ``/sandboxes/exit``.
The gRPC plugin ``io.containerd.grpc.v1.sandbox-controllers`` serves it, as containerd's does
(a service plugin would sit in a cycle: the transfer service needs every service, a pod sandbox
controller needs the transfer service to import its pause image)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from corral.kernel import CorralError, InvalidArgument, NotFound
from corral.plugins.core import namespace_required
from corral.plugins.events.types import (
    Publisher,
    SandboxCreate,
    SandboxExit,
    SandboxStart,
)
from corral.plugins.images.oci import Platform
from corral.plugins.metadata import Sandbox
from corral.plugins.sandbox import (
    Controller,
    ControllerInstance,
    ControllerStatus,
    CreateOptions,
    ExitStatus,
    Metric,
    note_pod_network,
    pod_network_note,
)


def _worded(kind: type[CorralError], message: str) -> CorralError:
    """An error of ``kind`` whose text is exactly ``message`` (Go's ``%w: …`` puts the kind first)."""
    err = kind.__new__(kind)
    Exception.__init__(err, message)
    err.detail = message
    return err


def wrapped(exc: CorralError, prefix: str) -> CorralError:
    """errgrpc.ToGRPCf: the same kind, its text after ``prefix: `` (a pod network note kept)."""
    err = _worded(type(exc), f"{prefix}: {exc}")
    note = pod_network_note(exc)
    if note is not None:
        note_pod_network(err, note)
    return err


class SandboxControllers:
    """The controller service's logic, without the wire."""

    def __init__(self, controllers: Mapping[str, Controller], publisher: Publisher | None) -> None:
        self.controllers = dict(controllers)
        self._publisher = publisher

    def controller(self, name: str) -> Controller:
        if not name:
            raise _worded(InvalidArgument, "invalid argument: sandbox controller name can not be empty")
        found = self.controllers.get(name)
        if found is None:
            raise _worded(NotFound, f"not found: failed to get sandbox controller by {name}")
        return found

    async def _publish(self, event: SandboxCreate | SandboxStart | SandboxExit) -> None:
        if self._publisher is not None:
            await self._publisher.publish(event, namespace=namespace_required())

    async def create(self, sandboxer: str, sandbox: Sandbox, options: CreateOptions) -> None:
        await self.controller(sandboxer).create(sandbox, options)
        await self._publish(SandboxCreate(sandbox.id))

    async def start(self, sandboxer: str, sandbox_id: str) -> ControllerInstance:
        try:
            ctrl = self.controller(sandboxer)
        except CorralError as exc:
            raise wrapped(exc, f'failed to get sandbox controller for "{sandboxer}"') from None
        try:
            instance = await ctrl.start(sandbox_id)
        except CorralError as exc:
            raise wrapped(exc, f'failed to start sandbox "{sandbox_id}"') from None
        await self._publish(SandboxStart(sandbox_id))
        return instance

    async def platform(self, sandboxer: str, sandbox_id: str) -> Platform:
        return await self.controller(sandboxer).platform(sandbox_id)

    async def stop(self, sandboxer: str, sandbox_id: str, grace: float | None) -> None:
        await self.controller(sandboxer).stop(sandbox_id, grace)

    async def wait(self, sandboxer: str, sandbox_id: str) -> ExitStatus:
        status = await self.controller(sandboxer).wait(sandbox_id)
        await self._publish(SandboxExit(sandbox_id, status.exit_status, status.exited_at))
        return status

    async def status(self, sandboxer: str, sandbox_id: str, verbose: bool) -> ControllerStatus:
        return await self.controller(sandboxer).status(sandbox_id, verbose)

    async def shutdown(self, sandboxer: str, sandbox_id: str) -> None:
        await self.controller(sandboxer).shutdown(sandbox_id)

    async def metrics(self, sandboxer: str, sandbox_id: str) -> Metric:
        return await self.controller(sandboxer).metrics(sandbox_id)

    async def update(self, sandboxer: str, sandbox_id: str, sandbox: Sandbox, fields: Sequence[str]) -> None:
        await self.controller(sandboxer).update(sandbox_id, sandbox, fields)
