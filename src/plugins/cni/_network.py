"""Attaching a pod's network namespace to its networks, and detaching it, as go-cni does for
containerd's CRI: the loopback network on ``lo``, then the configured ones on ``eth0``, ``eth1`` ….

Every attachment is recorded in the cache directory before its ADD runs and updated with the
result after, so a teardown — also one after a crash, by ``cleanup`` — runs DEL with exactly the
configuration and arguments the ADD had, whatever the configuration directory says by then.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import structlog

from corral.kernel import CorralError, FailedPrecondition, InvalidArgument, NotFound
from corral.plugins.cni._config import (
    LOOPBACK_CONFLIST,
    NetworkConfigList,
    load_networks,
    parse_conflist,
    plugin_stdin,
)
from corral.plugins.cni._invoke import Invocation, run_plugin, version_tuple

log = structlog.get_logger("corral.cni")

DEFAULT_CONF_DIR = "/etc/cni/net.d"
DEFAULT_BIN_DIRS = ("/opt/cni/bin", "/usr/lib/cni")
"""containerd's CRI default (``/opt/cni/bin``), then where Debian's containernetworking-plugins are."""
DEFAULT_IFNAME_PREFIX = "eth"


@dataclass(frozen=True)
class PortMapping:
    """A CRI PortMapping as the portmap plugin's ``portMappings`` capability takes it."""

    host_port: int
    container_port: int
    protocol: str = "tcp"
    host_ip: str = ""

    def runtime_config(self) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "hostPort": self.host_port,
            "containerPort": self.container_port,
            "protocol": self.protocol.lower(),
        }
        if self.host_ip:
            entry["hostIP"] = self.host_ip
        return entry


@dataclass(frozen=True)
class IPConfig:
    """One address an attachment gave the pod, with its gateway and interface."""

    address: str
    """CIDR notation, ``10.88.0.5/16``."""
    gateway: str = ""
    interface: str = ""

    @property
    def ip(self) -> str:
        return self.address.split("/", 1)[0]


@dataclass(frozen=True)
class Attachment:
    """One network on one interface of the pod, and what its ADD returned."""

    network: str
    ifname: str
    result: Mapping[str, Any] = field(default_factory=dict)

    @property
    def ips(self) -> list[IPConfig]:
        return result_ips(self.result, self.ifname)


@dataclass(frozen=True)
class SetupResult:
    """What a pod's network setup made: one attachment per network."""

    attachments: tuple[Attachment, ...]

    @property
    def ips(self) -> list[IPConfig]:
        """The pod's addresses, as containerd's CRI orders them: the first non-loopback
        attachment's, IPv4 before IPv6."""
        for a in self.attachments:
            if a.ifname == "lo":
                continue
            found = a.ips
            if found:
                return sorted(found, key=lambda c: ":" in c.ip)
        return []

    @property
    def pod_ip(self) -> str:
        ips = self.ips
        return ips[0].ip if ips else ""


def result_ips(result: Mapping[str, Any], ifname: str = "") -> list[IPConfig]:
    """The addresses of a CNI result (spec 0.3.0 and later ``ips``; 0.1/0.2 ``ip4``/``ip6``),
    those of the pod's interface ``ifname`` when the result says which one that is."""
    interfaces = result.get("interfaces") or []
    names = [i.get("name", "") if isinstance(i, dict) else "" for i in interfaces]
    sandboxed = [bool(i.get("sandbox")) if isinstance(i, dict) else False for i in interfaces]
    found: list[IPConfig] = []
    for entry in result.get("ips") or []:
        if not isinstance(entry, dict) or "address" not in entry:
            continue
        index = entry.get("interface")
        name = ""
        if isinstance(index, int) and 0 <= index < len(names):
            name = names[index]
            if ifname and (name != ifname or not sandboxed[index]):
                continue
        found.append(IPConfig(str(entry["address"]), str(entry.get("gateway", "")), name))
    for legacy in ("ip4", "ip6"):
        block = result.get(legacy)
        if isinstance(block, dict) and "ip" in block:
            found.append(IPConfig(str(block["ip"]), str(block.get("gateway", "")), ifname))
    return found


def pod_args(namespace: str, name: str, uid: str, container_id: str) -> tuple[tuple[str, str], ...]:
    """containerd's CNI_ARGS for a pod."""
    return (
        ("IgnoreUnknown", "1"),
        ("K8S_POD_NAMESPACE", namespace),
        ("K8S_POD_NAME", name),
        ("K8S_POD_INFRA_CONTAINER_ID", container_id),
        ("K8S_POD_UID", uid),
    )


@dataclass(frozen=True)
class CNISettings:
    """Where network configs, plugin binaries and the attachment cache are."""

    conf_dir: Path = Path(DEFAULT_CONF_DIR)
    bin_dirs: tuple[str, ...] = DEFAULT_BIN_DIRS
    max_conf_num: int = 1
    cache_dir: Path = Path("/var/lib/cni/corral")
    loopback: bool = True


class CNI:
    """The pod networks of one daemon: set up, checked and torn down per sandbox id."""

    def __init__(self, settings: CNISettings) -> None:
        self.settings = settings
        self._lock = anyio.Lock()

    # -- configuration ----------------------------------------------------------------------------
    def networks(self) -> list[tuple[NetworkConfigList, str]]:
        """The networks a new pod is attached to, each with its interface name."""
        out: list[tuple[NetworkConfigList, str]] = []
        if self.settings.loopback:
            out.append((parse_conflist(json.dumps(LOOPBACK_CONFLIST), "loopback"), "lo"))
        loaded = load_networks(self.settings.conf_dir, self.settings.max_conf_num)
        out += [(net, f"{DEFAULT_IFNAME_PREFIX}{i}") for i, net in enumerate(loaded)]
        return out

    def status(self) -> None:
        """FailedPrecondition unless a network is configured (the CRI's NetworkReady condition)."""
        try:
            load_networks(self.settings.conf_dir, self.settings.max_conf_num)
        except CorralError as exc:
            raise FailedPrecondition(f"cni plugin not initialized: {exc}") from None

    # -- cache ------------------------------------------------------------------------------------
    def _cache_path(self, container_id: str, network: str, ifname: str) -> Path:
        return self.settings.cache_dir / f"{network}-{container_id}-{ifname}.json"

    async def _write_cache(self, path: Path, entry: Mapping[str, Any]) -> None:
        """Durably, in a worker thread: the fsync would stall every other pod's calls."""
        text = json.dumps(entry)
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self._write_cache_file, path, text)

    def _write_cache_file(self, path: Path, text: str) -> None:
        self.settings.cache_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        tmp.replace(path)

    def _entries(self, container_id: str | None = None) -> list[tuple[Path, dict[str, Any]]]:
        try:
            paths = sorted(self.settings.cache_dir.glob("*.json"))
        except OSError:
            return []
        found: list[tuple[Path, dict[str, Any]]] = []
        for path in paths:
            try:
                entry = json.loads(path.read_text())
            except (OSError, ValueError):
                log.warning("cni_cache_unreadable", path=str(path))
                continue
            if container_id is None or entry.get("containerId") == container_id:
                found.append((path, entry))
        found.sort(key=lambda e: e[1].get("order", 0))
        return found

    def attached(self) -> set[str]:
        """The sandbox ids that have networks set up (or half set up)."""
        return {str(e.get("containerId")) for _, e in self._entries()}

    # -- ADD / DEL / CHECK ------------------------------------------------------------------------
    async def setup(
        self,
        container_id: str,
        netns: str,
        *,
        args: Sequence[tuple[str, str]] = (),
        port_mappings: Sequence[PortMapping] = (),
    ) -> SetupResult:
        """ADD every network; on any failure, DEL what was added (and the one that failed)."""
        if not container_id:
            raise InvalidArgument("container id is required")
        networks = self.networks()
        runtime_config: dict[str, Any] = {}
        if port_mappings:
            runtime_config["portMappings"] = [p.runtime_config() for p in port_mappings]
        done: list[Attachment] = []
        try:
            for order, (net, ifname) in enumerate(networks):
                done.append(await self._add(container_id, netns, net, ifname, args, runtime_config, order))
        except BaseException:
            with anyio.CancelScope(shield=True):
                try:
                    await self.teardown(container_id, netns)
                except Exception as exc:
                    log.warning("cni_rollback_failed", id=container_id, error=str(exc))
            raise
        log.info("cni_setup", id=container_id, ips=[ip.address for ip in SetupResult(tuple(done)).ips])
        return SetupResult(tuple(done))

    async def _add(
        self,
        container_id: str,
        netns: str,
        net: NetworkConfigList,
        ifname: str,
        args: Sequence[tuple[str, str]],
        runtime_config: Mapping[str, Any],
        order: int,
    ) -> Attachment:
        path = self._cache_path(container_id, net.name, ifname)
        entry: dict[str, Any] = {
            "kind": "cniCacheV1",
            "containerId": container_id,
            "ifName": ifname,
            "networkName": net.name,
            "config": net.raw,
            "cniArgs": [list(a) for a in args],
            "runtimeConfig": dict(runtime_config),
            "netns": netns,
            "order": order,
            "result": None,
        }
        # Recorded before the ADD: a daemon killed during it leaves what a restart tears down.
        await self._write_cache(path, entry)
        invocation = Invocation("ADD", container_id, netns, ifname, tuple(args), self.settings.bin_dirs)
        result: Mapping[str, Any] | None = None
        for plugin in net.plugins:
            stdin = plugin_stdin(net, plugin, result, runtime_config)
            result = await run_plugin(plugin.type, net.name, invocation, stdin)
        entry["result"] = result
        await self._write_cache(path, entry)
        return Attachment(net.name, ifname, result or {})

    async def teardown(self, container_id: str, netns: str = "") -> None:
        """DEL every network the sandbox was attached to, last first, with the cached
        configuration; idempotent. ``netns`` "" (or gone) is fine: the plugins release what lives
        outside it (IP allocations, iptables rules, the host's veth end goes with the namespace)."""
        errors: list[str] = []
        for path, entry in reversed(self._entries(container_id)):
            try:
                await self._del(entry, netns)
            except CorralError as exc:
                errors.append(str(exc))
                continue
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        if errors:
            raise FailedPrecondition("; ".join(errors))

    async def _del(self, entry: Mapping[str, Any], netns: str) -> None:
        net = parse_conflist(json.dumps(entry["config"]), entry.get("networkName", ""))
        if netns and not os.path.exists(netns):
            netns = ""
        args = tuple((str(k), str(v)) for k, v in entry.get("cniArgs", []))
        invocation = Invocation(
            "DEL", entry["containerId"], netns, entry["ifName"], args, self.settings.bin_dirs
        )
        result = entry.get("result")
        # libcni hands DEL the cached result from spec 0.4.0 on.
        prev = result if result is not None and version_tuple(net.cni_version) >= (0, 4) else None
        # Every plugin gets its DEL even when one before it failed (libcni stops at the first
        # failure, which leaves the bridge's IP allocated behind a plugin that broke); a plugin
        # whose binary is gone has nothing of its own to release.
        errors: list[str] = []
        for plugin in reversed(net.plugins):
            stdin = plugin_stdin(net, plugin, prev, entry.get("runtimeConfig", {}))
            try:
                await run_plugin(plugin.type, net.name, invocation, stdin)
            except NotFound as exc:
                log.warning("cni_plugin_missing_on_del", plugin=plugin.type, network=net.name, error=str(exc))
            except CorralError as exc:
                errors.append(str(exc))
        if errors:
            raise FailedPrecondition("; ".join(errors))

    async def check(self, container_id: str, netns: str) -> None:
        """CHECK every network with its cached result (networks before spec 0.4.0 are skipped,
        as libcni cannot check them)."""
        for _, entry in self._entries(container_id):
            net = parse_conflist(json.dumps(entry["config"]), entry.get("networkName", ""))
            if version_tuple(net.cni_version) < (0, 4) or net.disable_check:
                continue
            if entry.get("result") is None:
                raise FailedPrecondition(f"network {net.name} of {container_id} was never set up")
            args = tuple((str(k), str(v)) for k, v in entry.get("cniArgs", []))
            invocation = Invocation(
                "CHECK", container_id, netns, entry["ifName"], args, self.settings.bin_dirs
            )
            for plugin in net.plugins:
                stdin = plugin_stdin(net, plugin, entry["result"], entry.get("runtimeConfig", {}))
                await run_plugin(plugin.type, net.name, invocation, stdin)

    async def cleanup(self, keep: set[str]) -> list[str]:
        """Tear down the networks of every sandbox not in ``keep`` (what a killed daemon left).
        Returns the ids torn down."""
        removed = []
        for container_id in sorted(self.attached() - keep):
            entries = self._entries(container_id)
            netns = next((str(e.get("netns", "")) for _, e in entries if e.get("netns")), "")
            try:
                await self.teardown(container_id, netns)
                removed.append(container_id)
                log.info("cni_leftover_removed", id=container_id)
            except CorralError as exc:
                log.warning("cni_leftover_failed", id=container_id, error=str(exc))
        return removed

    def result(self, container_id: str) -> SetupResult | None:
        """The cached result of a sandbox's setup (after a restart too); None if it has none."""
        entries = self._entries(container_id)
        if not entries or any(e.get("result") is None for _, e in entries):
            return None
        return SetupResult(tuple(Attachment(e["networkName"], e["ifName"], e["result"]) for _, e in entries))
