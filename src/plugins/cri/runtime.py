"""io.containerd.cri.v1.runtime — the CRI runtime section: handlers, CNI, and the node's status.

What the RuntimeService answers before any pod exists: Version, Status (RuntimeReady always, as
a plugin serving requests means the daemon is up; NetworkReady false with containerd's reason
while no CNI network config is found; ContainerdHasNoDeprecationWarnings) with the runtime
handlers, and RuntimeConfig (the cgroup driver the default handler's options ask for).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from corral import __version__
from corral.kernel import FailedPrecondition, InitContext, InvalidArgument, Registration, encode
from corral.plugins import types
from corral.plugins.cni import conf_files
from corral.plugins.core.idmap import supports_idmapped_overlay
from corral.plugins.cri.config import RUNC_RUNTIME_TYPES, RuntimeConfig, runc_options, split_v2_section
from corral.plugins.cri.errors import worded
from corral.plugins.cri.podcidr import TemplateError, pod_cidr_routes, write_cni_config
from corral.plugins.runtimes import spec as specs

__all__ = [
    "CNI_NOT_INITIALIZED",
    "NETWORK_NOT_READY_REASON",
    "CRIRuntimeService",
    "Condition",
    "HandlerFeatures",
    "NetworkConfigs",
    "RuntimeStatus",
    "load_network_configs",
]

log = structlog.get_logger("corral.cri.runtime")

CRI_VERSION = "v1"
KUBE_API_VERSION = "0.1.0"
RUNTIME_NAME = "corral"
RUNTIME_READY = "RuntimeReady"
NETWORK_READY = "NetworkReady"
NO_DEPRECATION_WARNINGS = "ContainerdHasNoDeprecationWarnings"
NETWORK_NOT_READY_REASON = "NetworkPluginNotReady"
CNI_NOT_INITIALIZED = "cni plugin not initialized"


@dataclass(frozen=True)
class Condition:
    type: str
    status: bool
    reason: str = ""
    message: str = ""


@dataclass(frozen=True)
class HandlerFeatures:
    name: str
    recursive_read_only_mounts: bool = False
    user_namespaces: bool = False


@dataclass(frozen=True)
class RuntimeStatus:
    conditions: tuple[Condition, ...]
    handlers: tuple[HandlerFeatures, ...]
    info: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class NetworkConfigs:
    """The CNI network configs found, or why none could be loaded."""

    files: tuple[Path, ...]
    networks: tuple[Mapping[str, Any], ...]
    error: str = ""


def load_network_configs(conf_dir: str, max_conf_num: int) -> NetworkConfigs:
    """libcni's ``ConfFiles`` and go-cni's default-config load: the files of ``conf_dir`` with a
    CNI extension, in name order, the first ``max_conf_num`` of them (all when 0 or less); a
    file that is not a network config (list) fails the load."""
    try:
        names = [path.name for path in conf_files(Path(conf_dir))]
    except OSError:  # not a directory, not readable: no network config either
        names = []
    if not names:
        return NetworkConfigs((), (), _load_failed(f"no network config found in {conf_dir}"))
    chosen = names if max_conf_num <= 0 else names[:max_conf_num]
    files, networks = [], []
    for name in chosen:
        path = Path(conf_dir) / name
        try:
            network = json.loads(path.read_bytes())
        except (OSError, ValueError) as exc:
            return NetworkConfigs((), (), _load_failed(f"failed to load CNI config file {path}: {exc}"))
        problem = _network_problem(network, name.endswith(".conflist"))
        if problem:
            return NetworkConfigs(
                (), (), f"failed to load cni config {path}: {problem}: {CNI_NOT_INITIALIZED}"
            )
        files.append(path)
        networks.append(network)
    return NetworkConfigs(tuple(files), tuple(networks))


def _load_failed(why: str) -> str:
    """go-cni's wording of a failed load, as containerd's Status reports it."""
    return f"cni config load failed: {why}: {CNI_NOT_INITIALIZED}: failed to load cni config"


def _network_problem(network: Any, is_list: bool) -> str:
    if not isinstance(network, dict):
        return "not a JSON object"
    if is_list:
        plugins = network.get("plugins")
        if not isinstance(plugins, list) or not plugins:
            return "error parsing configuration list: no plugins in list"
        if not network.get("name"):
            return "error parsing configuration list: no name"
        return ""
    if not network.get("type"):
        return "error parsing configuration: missing 'type'"
    return ""


def _systemd_running() -> bool:
    return os.path.isdir("/run/systemd/system")


class CRIRuntimeService:
    user_namespaces = False
    """Whether runc handlers run pods with user namespaces: the kernel mounts idmapped overlay
    layers (corrald idmaps them itself, so runc need not; ``corral.plugins.cri.userns``)."""

    def __init__(self, config: RuntimeConfig) -> None:
        self.config = config

    def _features(self, name: str) -> HandlerFeatures:
        handler = self.config.containerd.runtimes[name or self.config.containerd.default_runtime_name]
        return HandlerFeatures(
            name,
            recursive_read_only_mounts=_rro(handler.runtime_type),
            user_namespaces=self.user_namespaces and handler.runtime_type in RUNC_RUNTIME_TYPES,
        )

    def version(self) -> dict[str, str]:
        return {
            "version": KUBE_API_VERSION,
            "runtime_name": RUNTIME_NAME,
            "runtime_version": __version__,
            "runtime_api_version": CRI_VERSION,
        }

    def update_runtime_config(self, pod_cidrs: str) -> Path | None:
        """UpdateRuntimeConfig's pod CIDRs, as containerd's: with ``cni.conf_template`` set and no
        loadable network config, the conflist written from the template (returned); else nothing
        changes. A malformed CIDR is InvalidArgument, a broken template FailedPrecondition."""
        if not pod_cidrs:
            return None
        cidrs = [cidr.strip() for cidr in pod_cidrs.split(",")]
        try:
            pod_cidr_routes(cidrs)
        except ValueError as exc:
            raise worded(InvalidArgument, f"get routes: {exc}") from None
        template = self.config.cni.conf_template
        if not template:
            log.info("cri_pod_cidr_no_template", pod_cidrs=cidrs)
            return None
        if not load_network_configs(self.config.cni.conf_dir, self.config.cni.max_conf_num).error:
            log.info("cri_pod_cidr_network_ready", template=template)
            return None
        try:
            written = write_cni_config(self.config.cni.conf_dir, template, cidrs)
        except TemplateError as exc:
            raise worded(FailedPrecondition, str(exc)) from None
        log.info("cri_cni_config_written", path=str(written), template=template, pod_cidrs=cidrs)
        return written

    def handler_names(self) -> list[str]:
        """The handlers, the default first, then by name (containerd's order for the cgroup driver)."""
        default = self.config.containerd.default_runtime_name
        rest = sorted(n for n in self.config.containerd.runtimes if n != default)
        return [default, *rest] if default in self.config.containerd.runtimes else rest

    def status(self, *, verbose: bool = False, deprecations: Sequence[tuple[str, str]] = ()) -> RuntimeStatus:
        network = load_network_configs(self.config.cni.conf_dir, self.config.cni.max_conf_num)
        network_ready = Condition(NETWORK_READY, True)
        if network.error:
            network_ready = Condition(
                NETWORK_READY,
                False,
                NETWORK_NOT_READY_REASON,
                f"Network plugin returns error: {CNI_NOT_INITIALIZED}",
            )
        ignored = set(self.config.ignore_deprecation_warnings)
        warnings = {i: m for i, m in deprecations if i not in ignored}
        deprecation = (
            Condition(
                NO_DEPRECATION_WARNINGS, False, "ContainerdHasDeprecationWarnings", json.dumps(warnings)
            )
            if warnings
            else Condition(NO_DEPRECATION_WARNINGS, True)
        )
        handlers = [self._features(name) for name in sorted(self.config.containerd.runtimes)]
        if self.config.containerd.default_runtime_name in self.config.containerd.runtimes:
            handlers.insert(0, self._features(""))
        info: dict[str, str] = {}
        if verbose:
            info["config"] = json.dumps(encode(self.config), separators=(",", ":"))
            info["cniconfig"] = json.dumps(
                {"PluginConfDir": self.config.cni.conf_dir, "Networks": list(network.networks)},
                separators=(",", ":"),
            )
            info["lastCNILoadStatus"] = network.error or "OK"
            info["lastCNILoadStatus.default"] = network.error or "OK"
        return RuntimeStatus(
            (Condition(RUNTIME_READY, True), network_ready, deprecation), tuple(handlers), info
        )

    def cgroup_driver(self) -> str:
        """ "systemd" or "cgroupfs": the first runc handler's ``SystemdCgroup`` (default handler
        first), else whether systemd runs this machine."""
        for name in self.handler_names():
            handler = self.config.containerd.runtimes[name]
            if handler.runtime_type in RUNC_RUNTIME_TYPES:
                return "systemd" if runc_options(handler).get("SystemdCgroup") is True else "cgroupfs"
        return "systemd" if _systemd_running() else "cgroupfs"

    def runtime_snapshotters(self) -> dict[str, str]:
        return {n: h.snapshotter for n, h in self.config.containerd.runtimes.items() if h.snapshotter}


async def init(ic: InitContext) -> CRIRuntimeService:
    config: RuntimeConfig = ic.config
    ic.meta.exports["CRIVersion"] = CRI_VERSION
    service = CRIRuntimeService(dataclasses.replace(config))
    service.user_namespaces = await supports_idmapped_overlay()
    return service


def _rro(runtime_type: str) -> bool:
    """A runc handler can make recursive read-only mounts when runc and the kernel can (containerd
    asks ``runc features`` of its runc handlers only)."""
    return runtime_type in RUNC_RUNTIME_TYPES and recursive_read_only_supported()


@functools.cache
def recursive_read_only_supported(runtime: str = "runc") -> bool:
    """Whether the runtime can make ``rro`` mounts (``runc features`` lists it and the kernel has
    mount_setattr), as containerd asks of a runc handler at start."""
    binary = shutil.which(runtime)
    if binary is None:
        return False
    try:
        done = subprocess.run([binary, "features"], capture_output=True, text=True, timeout=10, check=False)
        features = json.loads(done.stdout) if done.returncode == 0 else {}
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return False
    return isinstance(features, dict) and specs.supports_recursive_read_only(features)


registration = Registration(
    type=types.CRI,
    id="runtime",
    init=init,
    config=RuntimeConfig,
    migrate=split_v2_section,
    description="CRI runtime handlers, CNI network configs and the node's runtime status",
)
