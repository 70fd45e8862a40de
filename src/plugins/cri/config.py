"""The CRI plugins' config sections, in containerd 2.x's shape, and the move from 1.x's.

containerd 2.x splits what 1.x kept under ``[plugins."io.containerd.grpc.v1.cri"]`` into three
sections: ``io.containerd.cri.v1.images`` (pulls, snapshotter, registry hosts),
``io.containerd.cri.v1.runtime`` (runtime handlers, CNI, container defaults) and
``io.containerd.grpc.v1.cri`` (the streaming server). A version-2 config is split the same way on
load (``split_v2_section``), so an operator's 1.x CRI section loads unchanged. Keys corral accepts
but does not act on yet are marked ``inert`` and named by ``corral config validate``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from corral.kernel import inert
from corral.plugins.cni import DEFAULT_BIN_DIRS

__all__ = [
    "DEFAULT_CNI_BIN_DIRS",
    "RUNC_OPTIONS",
    "RUNC_RUNTIME_TYPES",
    "CNIConfig",
    "ContainerdConfig",
    "ImageConfig",
    "ImageDecryption",
    "RegistryConfig",
    "RuntimeConfig",
    "RuntimeHandler",
    "RuntimePlatform",
    "ServerConfig",
    "X509KeyPairStreaming",
    "proto_field_name",
    "runc_options",
    "split_v2_section",
]

GRPC_CRI = "io.containerd.grpc.v1.cri"
CRI_IMAGES = "io.containerd.cri.v1.images"
CRI_RUNTIME = "io.containerd.cri.v1.runtime"

_NO_PODS = "not acted on by corral's CRI pods and containers yet"
_NO_STREAMING = "no CRI streaming server yet (Exec, Attach and PortForward are not built)"
_REMOVED = "removed in containerd 2.0; accepted so a 1.x config loads"

RUNC_RUNTIME_TYPES = ("io.containerd.runc.v2", "io.containerd.runc.v1")
DEFAULT_CNI_BIN_DIRS = DEFAULT_BIN_DIRS
"""containerd's ``/opt/cni/bin``, then Debian's ``/usr/lib/cni``."""
RUNC_OPTIONS: Mapping[str, type] = {
    "NoPivotRoot": bool, "NoNewKeyring": bool, "ShimCgroup": str, "IoUid": int, "IoGid": int,
    "BinaryName": str, "Root": str, "CriuPath": str, "SystemdCgroup": bool, "CriuImagePath": str,
    "CriuWorkPath": str, "TaskApiAddress": str, "TaskApiVersion": int,
}  # fmt: skip
"""The fields of the runc shim's Options (``containerd.runc.v1.Options``), by their Go names."""


def proto_field_name(go_name: str) -> str:
    """A runc Options field's Go name as its protobuf field name: ``BinaryName`` → ``binary_name``."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", go_name).lower()


def runc_options(handler: RuntimeHandler) -> dict[str, bool | int | str]:
    """containerd's GenerateRuntimeOptions for a runc handler: its ``options`` table decoded into
    the runc shim's Options, keyed by the Go field names. Keys match without regard to case and
    unknown keys are ignored, as go-toml's decoding does; a value of the wrong type is a
    ValueError naming the key."""
    fields = {name.lower(): name for name in RUNC_OPTIONS}
    out: dict[str, bool | int | str] = {}
    for key, value in handler.options.items():
        name = fields.get(key.lower())
        if name is None:
            continue
        kind = RUNC_OPTIONS[name]
        integer = isinstance(value, int) and not isinstance(value, bool) and value >= 0
        if (
            (kind is bool and isinstance(value, bool))
            or (kind is int and integer)
            or (kind is str and isinstance(value, str))
        ):
            out[name] = value
        else:
            wanted = {bool: "a boolean", int: "a non-negative integer", str: "a string"}[kind]
            raise ValueError(f"options.{key} must be {wanted}, not {value!r}")
    return out


@dataclass(frozen=True)
class RuntimeHandler:
    """``containerd.runtimes.<handler>``: what a pod's ``runtime_handler`` names."""

    runtime_type: str = ""
    """The shim (``io.containerd.runc.v2``); listed by Status and read by RuntimeConfig."""
    snapshotter: str = ""
    """Images pulled for this handler are unpacked here ("" is the images section's snapshotter)."""
    options: Mapping[str, Any] = field(default_factory=dict)
    """For a runc handler, the runc shim's Options (``BinaryName``, ``Root``, ``SystemdCgroup``,
    ``NoPivotRoot``, ``ShimCgroup``, ``IoUid``/``IoGid``, ``Criu*``…; names matched without regard to
    case, others ignored, as containerd's TOML decoding does), sent with every pod and container of
    this handler; ``SystemdCgroup`` is also RuntimeConfig's cgroup driver."""
    sandboxer: str = "podsandbox"
    """The sandbox controller that runs this handler's pods (``podsandbox``: the pause container)."""
    runtime_path: str = field(default="", metadata=inert(_NO_PODS))
    pod_annotations: tuple[str, ...] = ()
    """Pod annotations (Go ``path.Match`` patterns) copied into the pod's containers' specs."""
    container_annotations: tuple[str, ...] = ()
    """Container annotations (patterns) copied into the container's spec; no others are."""
    privileged_without_host_devices: bool = False
    """A privileged container of this handler gets no host devices (nor the rule allowing all)."""
    privileged_without_host_devices_all_devices_allowed: bool = False
    """With privileged_without_host_devices: the rule allowing every device is still given."""
    cgroup_writable: bool = False
    """The container's /sys/fs/cgroup is mounted read-write, so it can make sub-cgroups (containerd 2.1)."""
    base_runtime_spec: str = field(default="", metadata=inert(_NO_PODS))
    cni_conf_dir: str = field(default="", metadata=inert(_NO_PODS))
    cni_max_conf_num: int = field(default=0, metadata=inert(_NO_PODS))
    io_type: str = field(default="", metadata=inert(_NO_PODS))
    platform: str = field(default="", metadata=inert(_NO_PODS))
    treat_ro_mounts_as_rro: bool = field(default=False, metadata=inert(_NO_PODS))
    runtime_engine: str = field(default="", metadata=inert(_REMOVED))
    runtime_root: str = field(default="", metadata=inert(_REMOVED))

    def __post_init__(self) -> None:
        if self.runtime_type in RUNC_RUNTIME_TYPES:
            runc_options(self)  # a wrong type is the config's error, not the first pod's


def _default_runtimes() -> dict[str, RuntimeHandler]:
    return {"runc": RuntimeHandler(runtime_type="io.containerd.runc.v2")}


@dataclass(frozen=True)
class ContainerdConfig:
    default_runtime_name: str = "runc"
    runtimes: Mapping[str, RuntimeHandler] = field(default_factory=_default_runtimes)
    ignore_blockio_not_enabled_errors: bool = field(default=False, metadata=inert(_NO_PODS))
    ignore_rdt_not_enabled_errors: bool = field(default=False, metadata=inert(_NO_PODS))
    no_pivot: bool = field(default=False, metadata=inert(_REMOVED))
    default_runtime: RuntimeHandler = field(default_factory=RuntimeHandler, metadata=inert(_REMOVED))
    untrusted_workload_runtime: RuntimeHandler = field(
        default_factory=RuntimeHandler, metadata=inert(_REMOVED)
    )

    def __post_init__(self) -> None:
        # containerd decodes the section into its defaults' map: a configured handler joins runc
        object.__setattr__(self, "runtimes", {**_default_runtimes(), **self.runtimes})
        if self.default_runtime_name not in self.runtimes:
            raise ValueError(
                f"no corresponding runtime configured in `containerd.runtimes` for "
                f'`containerd` `default_runtime_name = "{self.default_runtime_name}"`'
            )


@dataclass(frozen=True)
class CNIConfig:
    conf_dir: str = "/etc/cni/net.d"
    """Where network configs are looked for; none there is NetworkReady false in Status."""
    max_conf_num: int = 1
    """How many config files are loaded (in name order); 0 or less means all of them."""
    bin_dirs: tuple[str, ...] = DEFAULT_CNI_BIN_DIRS
    """Where CNI plugin binaries are looked for, in order; the pod sandbox controller runs them."""
    bin_dir: str = ""
    """Deprecated in containerd 2.0 for ``bin_dirs``: when set, the one directory (and setting both
    to something of their own is an error, as in containerd)."""
    setup_serially: bool = field(default=False, metadata=inert(_NO_PODS))
    conf_template: str = ""
    """A Go template of a CNI conflist (``.PodCIDR``, ``.PodCIDRRanges``, ``.Routes``): written as
    ``conf_dir/10-containerd-net.conflist`` when the kubelet sends the node's pod CIDR and no network
    config is there yet."""
    ip_pref: str = field(default="", metadata=inert(_NO_PODS))
    use_internal_loopback: bool = field(default=False, metadata=inert(_NO_PODS))

    def __post_init__(self) -> None:
        if self.bin_dir:
            if self.bin_dirs not in ((), DEFAULT_CNI_BIN_DIRS):
                raise ValueError("`cni.bin_dir` and `cni.bin_dirs` cannot be set at the same time")
            object.__setattr__(self, "bin_dirs", (self.bin_dir,))
            object.__setattr__(self, "bin_dir", "")


@dataclass(frozen=True)
class RuntimeConfig:
    """``[plugins."io.containerd.cri.v1.runtime"]``."""

    containerd: ContainerdConfig = field(default_factory=ContainerdConfig)
    cni: CNIConfig = field(default_factory=CNIConfig)
    enable_selinux: bool = field(default=False, metadata=inert(_NO_PODS))
    selinux_category_range: int = field(default=1024, metadata=inert(_NO_PODS))
    max_container_log_line_size: int = field(default=16384, metadata=inert(_NO_PODS))
    disable_apparmor: bool = field(default=False, metadata=inert(_NO_PODS))
    restrict_oom_score_adj: bool = False
    """A container's oom_score_adj is raised to the daemon's own when it asks for less."""
    disable_proc_mount: bool = field(default=False, metadata=inert(_NO_PODS))
    unset_seccomp_profile: str = field(default="", metadata=inert(_NO_PODS))
    tolerate_missing_hugetlb_controller: bool = True
    """Without a hugetlb cgroup controller, a container's hugepage limits are dropped (else refused)."""
    disable_hugetlb_controller: bool = True
    """A container's hugepage limits are dropped (containerd's default)."""
    device_ownership_from_security_context: bool = field(default=False, metadata=inert(_NO_PODS))
    ignore_image_defined_volumes: bool = field(default=False, metadata=inert(_NO_PODS))
    netns_mounts_under_state_dir: bool = field(default=False, metadata=inert(_NO_PODS))
    enable_unprivileged_ports: bool = field(default=True, metadata=inert(_NO_PODS))
    enable_unprivileged_icmp: bool = field(default=True, metadata=inert(_NO_PODS))
    enable_cdi: bool = field(default=True, metadata=inert(_NO_PODS))
    cdi_spec_dirs: tuple[str, ...] = field(default=("/etc/cdi", "/var/run/cdi"), metadata=inert(_NO_PODS))
    drain_exec_sync_io_timeout: timedelta = field(default=timedelta(0), metadata=inert(_NO_PODS))
    ignore_deprecation_warnings: tuple[str, ...] = ()
    """Deprecation ids left out of Status's ContainerdHasNoDeprecationWarnings condition."""
    systemd_cgroup: bool = field(default=False, metadata=inert(_REMOVED))
    disable_cgroup: bool = field(default=False, metadata=inert(_REMOVED))


@dataclass(frozen=True)
class RuntimePlatform:
    snapshotter: str = ""
    """The snapshotter this handler's images are unpacked into ("" is the section's)."""
    platform: str = field(default="", metadata=inert("CRI pulls are for this host's platform"))


@dataclass(frozen=True)
class RegistryConfig:
    config_path: str = ""
    """certs.d-style host directories, ``:``-separated ("" is containerd's
    ``/etc/containerd/certs.d:/etc/docker/certs.d``)."""
    mirrors: Mapping[str, Any] = field(
        default_factory=dict, metadata=inert("deprecated in containerd; use config_path hosts.toml")
    )
    configs: Mapping[str, Any] = field(
        default_factory=dict, metadata=inert("deprecated in containerd; use config_path hosts.toml")
    )
    auths: Mapping[str, Any] = field(
        default_factory=dict, metadata=inert("deprecated in containerd; use config_path hosts.toml")
    )
    headers: Mapping[str, Any] = field(
        default_factory=dict, metadata=inert("no extra registry headers are sent yet")
    )


@dataclass(frozen=True)
class ImageDecryption:
    key_model: str = field(default="node", metadata=inert("encrypted images are not supported"))


@dataclass(frozen=True)
class ImageConfig:
    """``[plugins."io.containerd.cri.v1.images"]``."""

    snapshotter: str = "overlayfs"
    max_concurrent_downloads: int = 3
    """Layers of one pull fetched at a time."""
    pinned_images: Mapping[str, str] = field(
        default_factory=lambda: {"sandbox": "registry.k8s.io/pause:3.10"}
    )
    """Images pulled under these names are labelled pinned (and reported pinned)."""
    runtime_platform: Mapping[str, RuntimePlatform] = field(default_factory=dict)
    """Per runtime handler: the snapshotter its images are unpacked into."""
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    image_decryption: ImageDecryption = field(default_factory=ImageDecryption)
    disable_snapshot_annotations: bool = field(default=True, metadata=inert("no remote snapshotters"))
    discard_unpacked_layers: bool = field(default=False, metadata=inert("layers are kept after unpack"))
    concurrent_layer_fetch_buffer: int = field(default=0, metadata=inert("layers are fetched whole"))
    image_pull_progress_timeout: timedelta = field(
        default=timedelta(minutes=5), metadata=inert("pulls are bounded by the registry client's timeouts")
    )
    image_pull_with_sync_fs: bool = field(default=False, metadata=inert("unpack does not syncfs"))
    stats_collect_period: int = field(default=10, metadata=inert("snapshot usage is read on each call"))
    use_local_image_pull: bool = field(default=False, metadata=inert("corral pulls one way only"))

    def __post_init__(self) -> None:
        if self.max_concurrent_downloads < 1:
            raise ValueError("max_concurrent_downloads must be at least 1")


@dataclass(frozen=True)
class X509KeyPairStreaming:
    tls_cert_file: str = field(default="", metadata=inert(_NO_STREAMING))
    tls_key_file: str = field(default="", metadata=inert(_NO_STREAMING))


@dataclass(frozen=True)
class ServerConfig:
    """``[plugins."io.containerd.grpc.v1.cri"]`` in containerd 2.x: the streaming server."""

    disable_tcp_service: bool = field(default=True, metadata=inert(_NO_STREAMING))
    stream_server_address: str = field(default="127.0.0.1", metadata=inert(_NO_STREAMING))
    stream_server_port: str = field(default="0", metadata=inert(_NO_STREAMING))
    stream_idle_timeout: timedelta = field(default=timedelta(hours=4), metadata=inert(_NO_STREAMING))
    enable_tls_streaming: bool = field(default=False, metadata=inert(_NO_STREAMING))
    x509_key_pair_streaming: X509KeyPairStreaming = field(default_factory=X509KeyPairStreaming)


_SERVER_KEYS = (
    "disable_tcp_service",
    "stream_server_address",
    "stream_server_port",
    "stream_idle_timeout",
    "enable_tls_streaming",
    "x509_key_pair_streaming",
)
_IMAGE_KEYS = (
    "registry",
    "image_decryption",
    "max_concurrent_downloads",
    "image_pull_progress_timeout",
    "image_pull_with_sync_fs",
    "stats_collect_period",
)
_IMAGE_CONTAINERD_KEYS = ("snapshotter", "disable_snapshot_annotations", "discard_unpacked_layers")


def split_v2_section(version: int, plugins: dict[str, Any]) -> None:
    """containerd 2.x's three config migrations in one: a version-2 CRI section's keys go to the
    images, runtime and server sections as containerd moves them (a key already set there wins).
    Idempotent, so each CRI plugin may carry it and the order they run in does not matter."""
    if version >= 3:
        return
    source = plugins.get(GRPC_CRI)
    if not isinstance(source, dict) or all(key in _SERVER_KEYS for key in source):
        return
    images: dict[str, Any] = plugins.setdefault(CRI_IMAGES, {})
    runtime: dict[str, Any] = plugins.setdefault(CRI_RUNTIME, {})
    server = {key: source[key] for key in _SERVER_KEYS if key in source}
    if "sandbox_image" in source:
        images.setdefault("pinned_images", {})["sandbox"] = source["sandbox_image"]
    for key in _IMAGE_KEYS:
        if key in source:
            images[key] = source[key]
    for key, value in source.items():
        if key in ("cni", "containerd", "sandbox_image", *_IMAGE_KEYS, *_SERVER_KEYS):
            continue
        runtime.setdefault(key, value)
    cni = source.get("cni")
    if isinstance(cni, dict):
        target = runtime.setdefault("cni", {})
        for key, value in cni.items():
            if key == "bin_dir":
                if not target.get("bin_dirs") and value:
                    target["bin_dirs"] = [value]
            else:
                target.setdefault(key, value)
    containerd = source.get("containerd")
    if isinstance(containerd, dict):
        for key in _IMAGE_CONTAINERD_KEYS:
            if key in containerd:
                images[key] = containerd[key]
        target = runtime.setdefault("containerd", {})
        for key, value in containerd.items():
            if key not in _IMAGE_CONTAINERD_KEYS:
                target.setdefault(key, value)
        for handler in target.get("runtimes", {}).values():
            if isinstance(handler, dict) and "sandbox_mode" in handler:
                handler.setdefault("sandboxer", handler.pop("sandbox_mode"))
    plugins[GRPC_CRI] = server
