"""io.containerd.grpc.v1.cri — runtime.v1.RuntimeService and runtime.v1.ImageService.

Thin adapters over the CRI plugins (``corral.plugins.cri``). Pod sandboxes go through the sandbox
store and the pod sandbox controller (``corral.plugins.cri.sandboxes``), containers through
``corral.plugins.cri.containers``, stats through ``corral.plugins.cri.stats``. The calls in NOT_YET
(checkpoints, metrics descriptors …) and the streaming ones (exec, attach, port forwarding) are not
served yet: each answers Unimplemented naming itself, never a silent success (the streaming ones
after finding what they name, as containerd's).
The section ``[plugins."io.containerd.grpc.v1.cri"]`` is containerd 2.x's server config.
"""

from __future__ import annotations

import base64
import enum
from collections.abc import AsyncIterator, Mapping
from datetime import datetime
from typing import Any

import anyio
import betterproto2

from corral.api.grpc import GRPCServices
from corral.api.sandbox_wire import pod_spec_from_config, userns_fields
from corral.api.types.containerd.runc import v1 as runc_pb
from corral.api.types.runtime import v1 as pb
from corral.api.wire import RUNC_OPTIONS_TYPE_URL
from corral.kernel import CorralError, InitContext, Registration, Unimplemented
from corral.plugins import types
from corral.plugins.cdi import DeviceInjector
from corral.plugins.cri import AuthConfig, CRIImage, CRIImageService, CRIRuntimeService, ServerConfig
from corral.plugins.cri import split_v2_section as _split
from corral.plugins.cri.config import proto_field_name
from corral.plugins.cri.containers import (
    ContainerFilter,
    ContainerSpec,
    CRIContainer,
    CRIContainers,
    HostMount,
)
from corral.plugins.cri.errors import worded
from corral.plugins.cri.resources import HugepageLimit, ResourceUpdate
from corral.plugins.cri.sandboxes import CRISandbox, PodSandboxes, SandboxFilter, invalid
from corral.plugins.cri.signals import cri_signal_name
from corral.plugins.cri.spec import DeviceRequest, SecurityProfile
from corral.plugins.cri.stats import (
    ContainerStatsFilter,
    ContainerUsage,
    CpuSample,
    CRIStats,
    PodStatsFilter,
    PodUsage,
)
from corral.plugins.events.types import optional_publisher
from corral.plugins.metadata import AnyValue, Metadata, SandboxStore
from corral.plugins.nri import NRIService
from corral.plugins.runtimes import PlatformRuntime
from corral.plugins.sandbox import Controller, PodSandboxSpec
from corral.plugins.sandbox.controllers import SandboxControllers

NOT_YET = (
    "checkpoint_container",
    "list_metric_descriptors",
    "list_pod_sandbox_metrics",
    "update_pod_sandbox_resources",
)


def _rpc_name(method: str) -> str:
    return "".join(part.capitalize() for part in method.split("_"))


def _not_yet(method: str) -> Unimplemented:
    return Unimplemented(f"{_rpc_name(method)} is not served yet by corral's CRI")


def _wire_image(image: CRIImage) -> pb.Image:
    uid, username = image.user
    return pb.Image(
        id=image.id,
        repo_tags=image.repo_tags,
        repo_digests=image.repo_digests,
        size=image.size,
        uid=None if uid is None else pb.Int64Value(value=uid),
        username=username,
        pinned=image.pinned,
    )


def _auth(auth: pb.AuthConfig | None) -> AuthConfig | None:
    if auth is None:
        return None
    return AuthConfig(
        username=auth.username,
        password=auth.password,
        auth=auth.auth,
        server_address=auth.server_address,
        identity_token=auth.identity_token,
        registry_token=auth.registry_token,
    )


class ImageServiceGRPC(pb.ImageServiceBase):
    def __init__(self, images: CRIImageService) -> None:
        self._images = images

    async def list_images(self, message: pb.ListImagesRequest) -> pb.ListImagesResponse:
        wanted = message.filter.image.image if message.filter and message.filter.image else ""
        if wanted:
            found = await self._images.status(wanted)
            images = [found] if found is not None else []
        else:
            images = await self._images.list()
        return pb.ListImagesResponse(images=[_wire_image(i) for i in images])

    async def image_status(self, message: pb.ImageStatusRequest) -> pb.ImageStatusResponse:
        name = message.image.image if message.image else ""
        image = await self._images.status(name)
        if image is None:
            return pb.ImageStatusResponse()
        info = image.verbose_info() if message.verbose else {}
        return pb.ImageStatusResponse(image=_wire_image(image), info=info)

    async def pull_image(self, message: pb.PullImageRequest) -> pb.PullImageResponse:
        spec = message.image or pb.ImageSpec()
        handler = spec.runtime_handler
        if not handler and message.sandbox_config is not None:
            handler = message.sandbox_config.annotations.get("io.containerd.cri.runtime-handler", "")
        image_id = await self._images.pull(spec.image, auth=_auth(message.auth), runtime_handler=handler)
        return pb.PullImageResponse(image_ref=image_id)

    async def remove_image(self, message: pb.RemoveImageRequest) -> pb.RemoveImageResponse:
        await self._images.remove(message.image.image if message.image else "")
        return pb.RemoveImageResponse()

    async def image_fs_info(self, message: pb.ImageFsInfoRequest) -> pb.ImageFsInfoResponse:
        return pb.ImageFsInfoResponse(
            image_filesystems=[
                pb.FilesystemUsage(
                    timestamp=u.timestamp,
                    fs_id=pb.FilesystemIdentifier(mountpoint=u.mountpoint),
                    used_bytes=pb.UInt64Value(value=u.used_bytes),
                    inodes_used=pb.UInt64Value(value=u.inodes_used),
                )
                for u in await self._images.filesystems()
            ]
        )


def _pod_metadata(pod: PodSandboxSpec) -> pb.PodSandboxMetadata:
    return pb.PodSandboxMetadata(name=pod.name, uid=pod.uid, namespace=pod.namespace, attempt=pod.attempt)


def _wire_state(state: str) -> pb.PodSandboxState:
    return (
        pb.PodSandboxState.SANDBOX_READY if state == "SANDBOX_READY" else pb.PodSandboxState.SANDBOX_NOTREADY
    )


def _nanos(cri: CRISandbox) -> int:
    return int(cri.created_at.timestamp() * 1_000_000_000)


def _wire_pod(cri: CRISandbox) -> pb.PodSandbox:
    return pb.PodSandbox(
        id=cri.id,
        metadata=_pod_metadata(cri.pod),
        state=_wire_state(cri.state),
        created_at=_nanos(cri),
        labels=dict(cri.pod.labels),
        annotations=dict(cri.pod.annotations),
        runtime_handler=cri.runtime_handler,
    )


def _wire_pod_status(cri: CRISandbox) -> pb.PodSandboxStatus:
    pod = cri.pod
    return pb.PodSandboxStatus(
        id=cri.id,
        metadata=_pod_metadata(pod),
        state=_wire_state(cri.state),
        created_at=_nanos(cri),
        network=pb.PodSandboxNetworkStatus(
            ip=cri.ip, additional_ips=[pb.PodIp(ip=ip) for ip in cri.additional_ips]
        ),
        linux=pb.LinuxPodSandboxStatus(
            namespaces=pb.Namespace(
                options=pb.NamespaceOption(
                    network=pb.NamespaceMode[pod.network_mode],
                    pid=pb.NamespaceMode[pod.pid_mode],
                    ipc=pb.NamespaceMode[pod.ipc_mode],
                    userns_options=_wire_userns(pod.userns_mode, pod.uid_mappings, pod.gid_mappings),
                )
            )
        ),
        labels=dict(pod.labels),
        annotations=dict(pod.annotations),
        runtime_handler=cri.runtime_handler,
    )


def _profile(profile: pb.SecurityProfile | None) -> SecurityProfile | None:
    if profile is None:
        return None
    return SecurityProfile(pb.SecurityProfileProfileType(profile.profile_type).name, profile.localhost_ref)


def _mount(m: pb.Mount) -> HostMount:
    return HostMount(
        m.container_path,
        m.host_path,
        m.readonly,
        pb.MountPropagation(m.propagation).name,
        recursive_read_only=m.recursive_read_only,
        selinux_relabel=m.selinux_relabel,
        image=m.image.image if m.image else "",
        image_sub_path=m.image_sub_path,
    )


def _wire_userns(
    mode: str, uids: tuple[tuple[int, int, int], ...], gids: tuple[tuple[int, int, int], ...]
) -> pb.UserNamespace | None:
    if not mode:
        return None
    return pb.UserNamespace(
        mode=pb.NamespaceMode[mode],
        uids=[pb.IdMapping(container_id=c, host_id=h, length=n) for c, h, n in uids],
        gids=[pb.IdMapping(container_id=c, host_id=h, length=n) for c, h, n in gids],
    )


def container_spec_from_config(config: pb.ContainerConfig) -> ContainerSpec:
    """The record of a CRI ContainerConfig that CreateContainer works from."""
    meta = config.metadata or pb.ContainerMetadata()
    linux = config.linux or pb.LinuxContainerConfig()
    security = linux.security_context or pb.LinuxContainerSecurityContext()
    caps = security.capabilities or pb.Capability()
    res = linux.resources or pb.LinuxContainerResources()
    namespaces = security.namespace_options or pb.NamespaceOption()
    return ContainerSpec(
        name=meta.name,
        attempt=meta.attempt,
        image=config.image.image if config.image else "",
        command=tuple(config.command),
        args=tuple(config.args),
        working_dir=config.working_dir,
        envs=tuple((e.key, e.value) for e in config.envs),
        mounts=tuple(_mount(m) for m in config.mounts),
        labels=dict(config.labels),
        annotations=dict(config.annotations),
        log_path=config.log_path,
        tty=config.tty,
        cdi_devices=tuple(d.name for d in config.CDI_devices),
        privileged=security.privileged,
        run_as_user=security.run_as_user.value if security.run_as_user is not None else None,
        run_as_group=security.run_as_group.value if security.run_as_group is not None else None,
        readonly_rootfs=security.readonly_rootfs,
        add_capabilities=tuple(caps.add_capabilities),
        drop_capabilities=tuple(caps.drop_capabilities),
        no_new_privs=security.no_new_privs,
        cpu_period=res.cpu_period,
        cpu_quota=res.cpu_quota,
        cpu_shares=res.cpu_shares,
        memory_limit=res.memory_limit_in_bytes,
        run_as_username=security.run_as_username,
        supplemental_groups=tuple(security.supplemental_groups),
        supplemental_groups_policy=pb.SupplementalGroupsPolicy(security.supplemental_groups_policy).name,
        masked_paths=tuple(security.masked_paths),
        readonly_paths=tuple(security.readonly_paths),
        seccomp=_profile(security.seccomp),
        seccomp_profile_path=security.seccomp_profile_path,
        apparmor=_profile(security.apparmor),
        apparmor_profile=security.apparmor_profile,
        pid_mode=pb.NamespaceMode(namespaces.pid).name,
        target_id=namespaces.target_id,
        devices=tuple(DeviceRequest(d.container_path, d.host_path, d.permissions) for d in config.devices),
        has_resources=linux.resources is not None,
        oom_score_adj=res.oom_score_adj,
        cpuset_cpus=res.cpuset_cpus,
        cpuset_mems=res.cpuset_mems,
        hugepage_limits=tuple((h.page_size, h.limit) for h in res.hugepage_limits),
        unified=dict(res.unified),
        memory_swap_limit=res.memory_swap_limit_in_bytes,
        **userns_fields((security.namespace_options or pb.NamespaceOption()).userns_options),
    )


def stop_signal_from_config(config: pb.ContainerConfig | None) -> str:
    """The request's stop signal by its CRI enum name ("" for RUNTIME_DEFAULT; an unknown value as
    its number, which CreateContainer refuses)."""
    value = int(config.stop_signal) if config is not None else 0
    names = {int(s): s.name or "" for s in pb.Signal}
    return "" if value == 0 else names.get(value, str(value))


def resource_update_from(res: pb.LinuxContainerResources | None) -> ResourceUpdate:
    res = res or pb.LinuxContainerResources()
    return ResourceUpdate(
        cpu_period=res.cpu_period,
        cpu_quota=res.cpu_quota,
        cpu_shares=res.cpu_shares,
        memory_limit=res.memory_limit_in_bytes,
        memory_swap_limit=res.memory_swap_limit_in_bytes,
        cpuset_cpus=res.cpuset_cpus,
        cpuset_mems=res.cpuset_mems,
        hugepage_limits=tuple(HugepageLimit(h.page_size, h.limit) for h in res.hugepage_limits),
        unified=dict(res.unified),
    )


def _wire_stop_signal(c: CRIContainer) -> pb.Signal:
    """containerd's toCRISignal: a name the enum has, else RUNTIME_DEFAULT; SIGTERM for none."""
    if not c.stop_signal:
        return pb.Signal.SIGTERM
    try:
        return pb.Signal[cri_signal_name(c.stop_signal)]
    except KeyError:
        return pb.Signal.RUNTIME_DEFAULT


def _ns(at: object) -> int:
    return int(at.timestamp() * 1_000_000_000) if isinstance(at, datetime) else 0


def _wire_container(c: CRIContainer) -> pb.Container:
    return pb.Container(
        id=c.id,
        pod_sandbox_id=c.sandbox_id,
        metadata=pb.ContainerMetadata(name=c.spec.name, attempt=c.spec.attempt),
        image=pb.ImageSpec(image=c.image_id),
        image_ref=c.image_id,
        image_id=c.image_id,
        state=pb.ContainerState[c.state],
        created_at=_ns(c.created_at),
        labels=dict(c.spec.labels),
        annotations=dict(c.spec.annotations),
    )


def _wire_container_status(c: CRIContainer) -> pb.ContainerStatus:
    return pb.ContainerStatus(
        id=c.id,
        metadata=pb.ContainerMetadata(name=c.spec.name, attempt=c.spec.attempt),
        state=pb.ContainerState[c.state],
        created_at=_ns(c.created_at),
        started_at=_ns(c.started_at),
        finished_at=_ns(c.finished_at),
        exit_code=c.exit_code,
        image=pb.ImageSpec(image=c.image_ref),
        image_ref=c.image_id,
        image_id=c.image_id,
        reason=c.reason,
        message=c.message,
        labels=dict(c.spec.labels),
        annotations=dict(c.spec.annotations),
        mounts=[
            pb.Mount(
                container_path=m.container_path,
                host_path=m.host_path,
                readonly=m.readonly,
                propagation=pb.MountPropagation[m.propagation],
                image=pb.ImageSpec(image=m.image) if m.image else None,
                image_sub_path=m.image_sub_path,
            )
            for m in c.spec.mounts
        ],
        log_path=c.log_path,
        resources=pb.ContainerResources(linux=pb.LinuxContainerResources.from_dict(dict(c.resources))),
        stop_signal=_wire_stop_signal(c),
    )


def _u64(value: int) -> pb.UInt64Value:
    return pb.UInt64Value(value=value)


def _wire_cpu(cpu: CpuSample | None) -> pb.CpuUsage | None:
    if cpu is None:
        return None
    return pb.CpuUsage(
        timestamp=cpu.timestamp,
        usage_core_nano_seconds=_u64(cpu.usage_core_nano_seconds),
        usage_nano_cores=None if cpu.usage_nano_cores is None else _u64(cpu.usage_nano_cores),
    )


def _wire_memory(u: ContainerUsage | PodUsage) -> pb.MemoryUsage | None:
    stats = u.cgroup
    if stats is None or stats.memory_usage is None:
        return None
    return pb.MemoryUsage(
        timestamp=u.timestamp,
        working_set_bytes=_u64(stats.working_set),
        available_bytes=_u64(stats.available),
        usage_bytes=_u64(stats.memory_usage),
        rss_bytes=_u64(stats.rss),
        page_faults=_u64(stats.page_faults),
        major_page_faults=_u64(stats.major_page_faults),
    )


def _wire_container_stats(u: ContainerUsage) -> pb.ContainerStats:
    c, layer = u.container, u.writable_layer
    return pb.ContainerStats(
        attributes=pb.ContainerAttributes(
            id=c.id,
            metadata=pb.ContainerMetadata(name=c.spec.name, attempt=c.spec.attempt),
            labels=dict(c.spec.labels),
            annotations=dict(c.spec.annotations),
        ),
        cpu=_wire_cpu(u.cpu),
        memory=_wire_memory(u),
        writable_layer=pb.FilesystemUsage(
            timestamp=layer.timestamp,
            fs_id=pb.FilesystemIdentifier(mountpoint=layer.mountpoint),
            used_bytes=_u64(layer.used_bytes),
            inodes_used=_u64(layer.inodes_used),
        ),
    )


def _wire_pod_stats(u: PodUsage) -> pb.PodSandboxStats:
    network = None
    if u.interfaces is not None:
        interfaces = [
            pb.NetworkInterfaceUsage(
                name=i.name,
                rx_bytes=_u64(i.rx_bytes),
                rx_errors=_u64(i.rx_errors),
                tx_bytes=_u64(i.tx_bytes),
                tx_errors=_u64(i.tx_errors),
            )
            for i in u.interfaces
        ]
        default = u.default_interface
        network = pb.NetworkUsage(
            timestamp=u.timestamp,
            default_interface=None if default is None else interfaces[u.interfaces.index(default)],
            interfaces=interfaces,
        )
    return pb.PodSandboxStats(
        attributes=pb.PodSandboxAttributes(
            id=u.pod.id,
            metadata=_pod_metadata(u.pod.pod),
            labels=dict(u.pod.pod.labels),
            annotations=dict(u.pod.pod.annotations),
        ),
        linux=pb.LinuxPodSandboxStats(
            cpu=_wire_cpu(u.cpu),
            memory=_wire_memory(u),
            network=network,
            process=pb.ProcessUsage(timestamp=u.timestamp, process_count=_u64(u.process_count)),
            containers=[_wire_container_stats(c) for c in u.containers],
        ),
    )


class RuntimeServiceGRPC(pb.RuntimeServiceBase):
    def __init__(
        self, runtime: CRIRuntimeService, pods: PodSandboxes, containers: CRIContainers, stats: CRIStats
    ) -> None:
        self._runtime = runtime
        self._pods = pods
        self._containers = containers
        self._stats = stats

    async def create_container(self, message: pb.CreateContainerRequest) -> pb.CreateContainerResponse:
        config = message.config
        has_meta = config is not None and config.metadata is not None
        pod = message.sandbox_config
        container_id = await self._containers.create(
            message.pod_sandbox_id,
            container_spec_from_config(config) if config is not None and has_meta else None,
            pod_config_has_metadata=pod is not None and pod.metadata is not None,
            config=_go_json(config) if config is not None else None,
            stop_signal=stop_signal_from_config(config),
        )
        return pb.CreateContainerResponse(container_id=container_id)

    async def start_container(self, message: pb.StartContainerRequest) -> pb.StartContainerResponse:
        await self._containers.start(message.container_id)
        return pb.StartContainerResponse()

    async def stop_container(self, message: pb.StopContainerRequest) -> pb.StopContainerResponse:
        await self._containers.stop(message.container_id, float(message.timeout))
        return pb.StopContainerResponse()

    async def remove_container(self, message: pb.RemoveContainerRequest) -> pb.RemoveContainerResponse:
        await self._containers.remove(message.container_id)
        return pb.RemoveContainerResponse()

    async def container_status(self, message: pb.ContainerStatusRequest) -> pb.ContainerStatusResponse:
        c = await self._containers.status(message.container_id)
        info = await self._containers.verbose_info(c) if message.verbose else {}
        return pb.ContainerStatusResponse(status=_wire_container_status(c), info=info)

    async def list_containers(self, message: pb.ListContainersRequest) -> pb.ListContainersResponse:
        f = message.filter
        wanted = ContainerFilter(
            id=f.id,
            state=None if f.state is None else f.state.state.name,
            pod_sandbox_id=f.pod_sandbox_id,
            labels=dict(f.label_selector),
        ) if f is not None else None  # fmt: skip
        found = await self._containers.list(wanted)
        return pb.ListContainersResponse(containers=[_wire_container(c) for c in found])

    async def exec_sync(self, message: pb.ExecSyncRequest) -> pb.ExecSyncResponse:
        result = await self._containers.exec_sync(
            message.container_id, list(message.cmd), float(message.timeout)
        )
        return pb.ExecSyncResponse(stdout=result.stdout, stderr=result.stderr, exit_code=result.exit_code)

    async def update_container_resources(
        self, message: pb.UpdateContainerResourcesRequest
    ) -> pb.UpdateContainerResourcesResponse:
        await self._containers.update_resources(message.container_id, resource_update_from(message.linux))
        return pb.UpdateContainerResourcesResponse()

    async def reopen_container_log(
        self, message: pb.ReopenContainerLogRequest
    ) -> pb.ReopenContainerLogResponse:
        await self._containers.reopen_log(message.container_id)
        return pb.ReopenContainerLogResponse()

    async def container_stats(self, message: pb.ContainerStatsRequest) -> pb.ContainerStatsResponse:
        usage = await self._stats.container(message.container_id)
        return pb.ContainerStatsResponse(stats=_wire_container_stats(usage))

    async def list_container_stats(
        self, message: pb.ListContainerStatsRequest
    ) -> pb.ListContainerStatsResponse:
        f = message.filter
        wanted = ContainerStatsFilter(
            id=f.id, pod_sandbox_id=f.pod_sandbox_id, labels=dict(f.label_selector)
        ) if f is not None else None  # fmt: skip
        found = await self._stats.containers(wanted)
        return pb.ListContainerStatsResponse(stats=[_wire_container_stats(u) for u in found])

    async def pod_sandbox_stats(self, message: pb.PodSandboxStatsRequest) -> pb.PodSandboxStatsResponse:
        return pb.PodSandboxStatsResponse(
            stats=_wire_pod_stats(await self._stats.pod(message.pod_sandbox_id))
        )

    async def list_pod_sandbox_stats(
        self, message: pb.ListPodSandboxStatsRequest
    ) -> pb.ListPodSandboxStatsResponse:
        f = message.filter
        wanted = PodStatsFilter(id=f.id, labels=dict(f.label_selector)) if f is not None else None
        found = await self._stats.pods(wanted)
        return pb.ListPodSandboxStatsResponse(stats=[_wire_pod_stats(u) for u in found])

    async def run_pod_sandbox(self, message: pb.RunPodSandboxRequest) -> pb.RunPodSandboxResponse:
        config = message.config
        if config is None or config.metadata is None:
            raise invalid("sandbox config must include metadata")
        sandbox_id = await self._pods.run(
            pod_spec_from_config(config), bytes(config), runtime_handler=message.runtime_handler
        )
        return pb.RunPodSandboxResponse(pod_sandbox_id=sandbox_id)

    async def stop_pod_sandbox(self, message: pb.StopPodSandboxRequest) -> pb.StopPodSandboxResponse:
        await self._pods.stop(message.pod_sandbox_id)
        return pb.StopPodSandboxResponse()

    async def remove_pod_sandbox(self, message: pb.RemovePodSandboxRequest) -> pb.RemovePodSandboxResponse:
        await self._pods.remove(message.pod_sandbox_id)
        return pb.RemovePodSandboxResponse()

    async def pod_sandbox_status(self, message: pb.PodSandboxStatusRequest) -> pb.PodSandboxStatusResponse:
        cri = await self._pods.status(message.pod_sandbox_id, verbose=message.verbose)
        return pb.PodSandboxStatusResponse(status=_wire_pod_status(cri), info=dict(cri.info))

    async def list_pod_sandbox(self, message: pb.ListPodSandboxRequest) -> pb.ListPodSandboxResponse:
        f = message.filter
        wanted = SandboxFilter(
            id=f.id,
            state=None if f.state is None else f.state.state.name,
            labels=dict(f.label_selector),
        ) if f is not None else None  # fmt: skip
        return pb.ListPodSandboxResponse(items=[_wire_pod(p) for p in await self._pods.list(wanted)])

    async def version(self, message: pb.VersionRequest) -> pb.VersionResponse:
        return pb.VersionResponse(**self._runtime.version())

    async def status(self, message: pb.StatusRequest) -> pb.StatusResponse:
        status = self._runtime.status(verbose=message.verbose)
        return pb.StatusResponse(
            status=pb.RuntimeStatus(
                conditions=[
                    pb.RuntimeCondition(type=c.type, status=c.status, reason=c.reason, message=c.message)
                    for c in status.conditions
                ]
            ),
            info=dict(status.info),
            runtime_handlers=[
                pb.RuntimeHandler(
                    name=h.name,
                    features=pb.RuntimeHandlerFeatures(
                        recursive_read_only_mounts=h.recursive_read_only_mounts,
                        user_namespaces=h.user_namespaces,
                    ),
                )
                for h in status.handlers
            ],
            features=pb.RuntimeFeatures(supplemental_groups_policy=False),
        )

    async def runtime_config(self, message: pb.RuntimeConfigRequest) -> pb.RuntimeConfigResponse:
        driver = self._runtime.cgroup_driver()
        return pb.RuntimeConfigResponse(
            linux=pb.LinuxRuntimeConfiguration(
                cgroup_driver=pb.CgroupDriver.SYSTEMD if driver == "systemd" else pb.CgroupDriver.CGROUPFS
            )
        )

    async def update_runtime_config(
        self, message: pb.UpdateRuntimeConfigRequest
    ) -> pb.UpdateRuntimeConfigResponse:
        config = message.runtime_config
        network = config.network_config if config is not None else None
        await anyio.to_thread.run_sync(
            self._runtime.update_runtime_config, network.pod_cidr if network else ""
        )
        return pb.UpdateRuntimeConfigResponse()

    # Streaming (exec, attach, port forwarding through a streaming server) is not served yet; as
    # containerd's, what the request names is looked up first, so a missing one is NotFound.
    async def exec(self, message: pb.ExecRequest) -> pb.ExecResponse:
        try:
            await self._containers.get(message.container_id)
        except CorralError as exc:
            raise worded(
                type(exc), f'failed to find container "{message.container_id}" in store: {exc}'
            ) from None
        raise _not_yet("exec")

    async def attach(self, message: pb.AttachRequest) -> pb.AttachResponse:
        try:
            await self._containers.get(message.container_id)
        except CorralError as exc:
            raise worded(type(exc), f"failed to find container in store: {exc}") from None
        raise _not_yet("attach")

    async def port_forward(self, message: pb.PortForwardRequest) -> pb.PortForwardResponse:
        try:
            await self._pods.get(message.pod_sandbox_id)
        except CorralError as exc:
            raise worded(type(exc), f'failed to find sandbox "{message.pod_sandbox_id}": {exc}') from None
        raise _not_yet("port_forward")

    async def get_container_events(
        self, message: pb.GetEventsRequest
    ) -> AsyncIterator[pb.ContainerEventResponse]:
        raise _not_yet("get_container_events")
        yield pb.ContainerEventResponse()  # pragma: no cover - makes this an async generator


def _refuse(method: str) -> Any:
    async def refuse(self: RuntimeServiceGRPC, message: object) -> Any:
        raise _not_yet(method)

    refuse.__name__ = method
    return refuse


for _method in NOT_YET:
    setattr(RuntimeServiceGRPC, _method, _refuse(_method))


def _runc_options(options: Mapping[str, bool | int | str]) -> AnyValue:
    """The runc shim's Options, from the Go field names ``runc_options`` keys them by."""
    message = runc_pb.Options(**{proto_field_name(name): value for name, value in options.items()})  # type: ignore[arg-type]
    return AnyValue(RUNC_OPTIONS_TYPE_URL, bytes(message))


def _go_json(message: pb.ContainerConfig) -> dict[str, Any]:
    """A ContainerConfig as Go's encoding/json shows the CRI's generated struct (containerd's
    verbose info): proto field names, zero values left out, enums as numbers."""

    def plain(value: Any) -> Any:
        if isinstance(value, dict):
            return {("CDI_devices" if k == "cdi_devices" else k): plain(v) for k, v in value.items()}
        if isinstance(value, list):
            return [plain(v) for v in value]
        if isinstance(value, enum.Enum):
            return int(value.value)
        if isinstance(value, bytes):
            return base64.b64encode(value).decode()
        return value

    raw = message.to_dict(output_format=betterproto2.OutputFormat.PYTHON, casing=betterproto2.Casing.SNAKE)
    out: dict[str, Any] = plain(raw)
    return out


async def init(ic: InitContext) -> GRPCServices:
    runtime = ic.get_by_id(types.CRI, "runtime", CRIRuntimeService)
    images = ic.get_by_id(types.CRI, "images", CRIImageService)
    for handler, snapshotter in runtime.runtime_snapshotters().items():
        images.set_runtime_snapshotter(handler, snapshotter)
    controllers: dict[str, Controller] = {}
    controllers.update(ic.get_by_type(types.POD_SANDBOX, Controller))
    controllers.update(ic.get_by_type(types.SANDBOX_CONTROLLER, Controller))
    stores = ic.get_by_type(types.SANDBOX_STORE, SandboxStore)
    nri = next(iter(ic.get_by_type(types.NRI, NRIService).values()), None)
    pods = PodSandboxes(
        runtime.config,
        store=next(iter(stores.values()), None),
        controllers=SandboxControllers(controllers, optional_publisher(ic.get_by_type(types.EVENT))),
        nri=None if nri is None else nri.events,
        encode_runc_options=_runc_options,
    )
    containers = CRIContainers(
        pods=pods,
        images=images,
        metadata=ic.get_single(types.METADATA, Metadata),
        runtime=ic.get_by_id(types.RUNTIME_V2, "task", PlatformRuntime),
        state=ic.state,
        nri=None if nri is None else nri.events,
        cdi=next(iter(ic.get_by_type(types.CDI, DeviceInjector).values()), None),
    )
    containers.serve_in(await ic.task_group("cri-containers"))
    stats = CRIStats(
        containers=containers, pods=pods, images=images, metadata=ic.get_single(types.METADATA, Metadata)
    )
    return GRPCServices((RuntimeServiceGRPC(runtime, pods, containers, stats), ImageServiceGRPC(images)))


registration = Registration(
    type=types.GRPC,
    id="cri",
    init=init,
    requires=(types.CRI,),
    after=(
        types.METADATA,
        types.RUNTIME_V2,
        types.SANDBOX_STORE,
        types.POD_SANDBOX,
        types.SANDBOX_CONTROLLER,
        types.NRI,
        types.CDI,
        types.EVENT,
    ),
    config=ServerConfig,
    migrate=_split,
    description="the kubelet's CRI (runtime.v1) on corrald's socket: runtime status, images, pods and containers",
)
