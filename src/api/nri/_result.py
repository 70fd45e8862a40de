"""Combining the replies of several NRI plugins, as containerd/nri's adaptation ``result`` does.

Plugins are asked in index order; each reply is merged into one adjustment. A field (or one entry
of a map or list field: an env variable, a mount destination, an annotation key) belongs to the
first plugin that sets it, and a second plugin setting it fails the request with NRI's message
``plugins "a" and "b" both tried to set Env FOO``. A plugin may remove a key (``-KEY``) and then
set it again itself. Hooks accumulate. Updates to other containers merge per container.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

from corral.kernel import FailedPrecondition, OnFirstUse

if TYPE_CHECKING:
    from corral.api.types.nri.pkg.api import v1alpha1 as api
else:
    api = OnFirstUse("corral.api.types.nri.pkg.api.v1alpha1")  # NRI's messages: at the first plugin

M = TypeVar("M")
_MEMORY = (
    ("limit", "MemLimit"),
    ("reservation", "MemReservation"),
    ("swap", "MemSwapLimit"),
    ("kernel", "MemKernelLimit"),
    ("kernel_tcp", "MemTCPLimit"),
    ("swappiness", "MemSwappiness"),
    ("disable_oom_killer", "MemDisableOomKiller"),
    ("use_hierarchy", "MemUseHierarchy"),
)
_CPU = (
    ("shares", "CPUShares"),
    ("quota", "CPUQuota"),
    ("period", "CPUPeriod"),
    ("realtime_runtime", "CPURealtimeRuntime"),
    ("realtime_period", "CPURealtimePeriod"),
)
_HOOK_STAGES = ("prestart", "create_runtime", "create_container", "start_container", "poststart", "poststop")


def copy(message: M) -> M:
    """A deep copy of a generated message (its bytes parsed again)."""
    copied: M = type(message).parse(bytes(message))  # type: ignore[attr-defined,call-overload]
    return copied


def removal_key(key: str) -> tuple[str, bool]:
    """``-KEY`` asks for KEY's removal: (KEY, True); anything else is (key, False)."""
    if key.startswith("-"):
        return key[1:], True
    return key, False


class Conflict(FailedPrecondition):
    """Two plugins set the same field of one container."""


class Owners:
    """Which plugin set which field of which container (NRI's OwningPlugins)."""

    def __init__(self) -> None:
        self.simple: dict[str, dict[int, str]] = {}
        self.compound: dict[str, dict[tuple[int, str], str]] = {}

    def _conflict(self, field: api.Field, plugin: str, other: str, *qualifiers: str) -> Conflict:
        name = api.Field(field).name.rstrip("_")
        return Conflict(f'plugins "{plugin}" and "{other}" both tried to set {name} {" ".join(qualifiers)}')

    def claim(self, cid: str, field: api.Field, plugin: str) -> None:
        owners = self.simple.setdefault(cid, {})
        other = owners.get(int(field))
        if other is not None:
            clearer, cleared = removal_key(other)
            if not (cleared and clearer == plugin):
                raise self._conflict(field, plugin, clearer)
        owners[int(field)] = plugin

    def claim_key(self, cid: str, field: api.Field, key: str, plugin: str) -> None:
        owners = self.compound.setdefault(cid, {})
        other = owners.get((int(field), key))
        if other is not None:
            clearer, cleared = removal_key(other)
            if not (cleared and clearer == plugin):
                raise self._conflict(field, plugin, clearer, key)
        owners[(int(field), key)] = plugin

    def clear_key(self, cid: str, field: api.Field, key: str, plugin: str) -> None:
        self.compound.setdefault(cid, {})[(int(field), key)] = "-" + plugin

    def to_proto(self) -> api.OwningPlugins:
        """As NRI's OwningPlugins, what a validator is shown."""
        out = api.OwningPlugins()
        for cid in sorted(set(self.simple) | set(self.compound)):
            owners = api.FieldOwners(simple=dict(self.simple.get(cid, {})))
            for (field, key), plugin in self.compound.get(cid, {}).items():
                owners.compound.setdefault(field, api.CompoundFieldOwners()).owners[key] = plugin
            out.owners[cid] = owners
        return out

    def accumulate(self, cid: str, field: api.Field, plugin: str) -> None:
        owners = self.simple.setdefault(cid, {})
        old = owners.get(int(field))
        owners[int(field)] = f"{old},{plugin}" if old else plugin


def _empty_resources() -> api.LinuxResources:
    return api.LinuxResources(memory=api.LinuxMemory(), cpu=api.LinuxCpu(), hugepage_limits=[], unified={})


def _adjust_resources(
    owners: Owners,
    cid: str,
    plugin: str,
    wanted: api.LinuxResources,
    targets: list[api.LinuxResources],
    *,
    with_devices: bool = True,
) -> None:
    """Claim and copy every set field of ``wanted`` into each of ``targets``."""
    for name, member in _MEMORY:
        value = getattr(wanted.memory, name, None) if wanted.memory else None
        if value is not None:
            owners.claim(cid, getattr(api.Field, member), plugin)
            for t in targets:
                setattr(t.memory, name, copy(value))
    for name, member in _CPU:
        value = getattr(wanted.cpu, name, None) if wanted.cpu else None
        if value is not None:
            owners.claim(cid, getattr(api.Field, member), plugin)
            for t in targets:
                setattr(t.cpu, name, copy(value))
    if wanted.cpu is not None:
        for name, field in (("cpus", api.Field.CPUSetCPUs), ("mems", api.Field.CPUSetMems)):
            value = getattr(wanted.cpu, name)
            if value:
                owners.claim(cid, field, plugin)
                for t in targets:
                    setattr(t.cpu, name, value)
    for limit in wanted.hugepage_limits:
        owners.claim_key(cid, api.Field.HugepageLimits, limit.page_size, plugin)
        for t in targets:
            t.hugepage_limits.append(copy(limit))
    if with_devices:
        for rule in wanted.devices:
            for t in targets:
                t.devices.append(copy(rule))
    for key, value in wanted.unified.items():
        owners.claim_key(cid, api.Field.CgroupsUnified, key, plugin)
        for t in targets:
            t.unified[key] = value
    for name, field in (
        ("blockio_class", api.Field.BlockioClass),
        ("rdt_class", api.Field.RdtClass),
        ("pids", api.Field.PidsLimit),
    ):
        value = getattr(wanted, name)
        if value is not None:
            owners.claim(cid, field, plugin)
            for t in targets:
                setattr(t, name, copy(value))


class UpdateResult:
    """Updates plugins asked for other containers, merged per container (UpdateContainer, StopContainer,
    Synchronize, and the update part of CreateContainer)."""

    def __init__(self, owners: Owners | None = None, creating: str = "", updating: str = "") -> None:
        self.owners = owners or Owners()
        self.creating = creating
        self.updating = updating
        self.updates: dict[str, api.ContainerUpdate] = {}
        self.order: list[str] = []
        self.requested: api.LinuxResources | None = None

    def update(self, updates: list[api.ContainerUpdate], plugin: str) -> None:
        for u in updates:
            cid = u.container_id
            if self.creating and cid == self.creating:
                raise FailedPrecondition(f'plugin "{plugin}" asked update of "{cid}" during creation')
            reply = self.updates.get(cid)
            if reply is None:
                reply = api.ContainerUpdate(
                    container_id=cid,
                    linux=api.LinuxContainerUpdate(resources=_empty_resources()),
                    ignore_failure=u.ignore_failure,
                )
                self.updates[cid] = reply
                self.order.append(cid)
            else:
                reply.ignore_failure = reply.ignore_failure and u.ignore_failure
            if u.linux is None or u.linux.resources is None:
                continue
            assert reply.linux is not None and reply.linux.resources is not None
            base = (
                self.requested
                if self.requested is not None and cid == self.updating
                else reply.linux.resources
            )
            # On a copy: an update whose failure is ignored changes nothing.
            trial = copy(base)
            trial.memory = trial.memory or api.LinuxMemory()
            trial.cpu = trial.cpu or api.LinuxCpu()
            try:
                _adjust_resources(self.owners, cid, plugin, u.linux.resources, [trial], with_devices=False)
            except Conflict:
                if not u.ignore_failure:
                    raise
                continue
            reply.linux.resources = trial
            if cid == self.updating:
                self.requested = copy(trial)

    def replies(self) -> list[api.ContainerUpdate]:
        """The merged updates in the order plugins first asked for each container."""
        return [self.updates[cid] for cid in self.order if cid != self.updating]


class CreateResult(UpdateResult):
    """The combined adjustment of a container being created, and updates to others."""

    def __init__(self, request: api.CreateContainerRequest) -> None:
        container = request.container or api.Container()
        request.container = container
        super().__init__(creating=container.id)
        self.container = container
        self.id = container.id
        container.hooks = container.hooks or api.Hooks()
        container.linux = container.linux or api.LinuxContainer()
        linux = container.linux
        linux.resources = linux.resources or api.LinuxResources()
        linux.resources.memory = linux.resources.memory or api.LinuxMemory()
        linux.resources.cpu = linux.resources.cpu or api.LinuxCpu()
        self.adjust = api.ContainerAdjustment(
            hooks=api.Hooks(),
            linux=api.LinuxContainerAdjustment(resources=_empty_resources()),
        )
        self.evict: list[api.ContainerEviction] = []

    @property
    def _linux(self) -> api.LinuxContainerAdjustment:
        assert self.adjust.linux is not None
        return self.adjust.linux

    def apply(self, reply: api.CreateContainerResponse | None, plugin: str) -> None:
        if reply is None:
            return
        if reply.adjust is not None:
            self._adjust(reply.adjust, plugin)
        self.update(reply.update, plugin)
        self.evict.extend(reply.evict)

    def response(self) -> api.CreateContainerResponse:
        return api.CreateContainerResponse(adjust=self.adjust, update=self.replies(), evict=self.evict)

    def _adjust(self, adj: api.ContainerAdjustment, plugin: str) -> None:
        self._annotations(dict(adj.annotations), plugin)
        self._keyed(adj.mounts, "destination", api.Field.Mounts, plugin)
        self._env(adj.env, plugin)
        self._args(list(adj.args), plugin)
        self._hooks(adj.hooks, plugin)
        linux = adj.linux
        if linux is not None:
            self._keyed(linux.devices, "path", api.Field.Devices, plugin)
            if linux.resources is not None:
                assert self.container.linux is not None and self.container.linux.resources is not None
                assert self._linux.resources is not None
                _adjust_resources(
                    self.owners, self.id, plugin, linux.resources,
                    [self.container.linux.resources, self._linux.resources],
                )  # fmt: skip
            self._simple(linux, "cgroups_path", api.Field.CgroupsPath, plugin, set_if=bool)
            self._simple(linux, "oom_score_adj", api.Field.OomScoreAdj, plugin)
            self._simple(linux, "io_priority", api.Field.IoPriority, plugin)
            self._simple(linux, "seccomp_policy", api.Field.SeccompPolicy, plugin)
            self._simple(linux, "scheduler", api.Field.LinuxSched, plugin)
            self._simple(linux, "memory_policy", api.Field.MemoryPolicy, plugin)
            self._simple(linux, "rdt", api.Field.RdtClosID, plugin)
            for ns in linux.namespaces:
                key, _ = removal_key(ns.type)
                self.owners.claim_key(self.id, api.Field.Namespace, key, plugin)
                self._linux.namespaces.append(copy(ns))
            self._mapping(dict(linux.sysctl), self._linux.sysctl, api.Field.Sysctl, plugin, "")
            self._mapping(
                dict(linux.net_devices), self._linux.net_devices, api.Field.LinuxNetDevices, plugin, None
            )
        for rlimit in adj.rlimits:
            self.owners.claim_key(self.id, api.Field.Rlimits, rlimit.type, plugin)
            self.container.rlimits.append(copy(rlimit))
            self.adjust.rlimits.append(copy(rlimit))
        for device in adj.CDI_devices:
            # Only added, never removed; the same device twice is refused.
            self.owners.claim_key(self.id, api.Field.CdiDevices, device.name, plugin)
            self.adjust.CDI_devices.append(copy(device))

    def _simple(self, linux: Any, name: str, field: api.Field, plugin: str, set_if: Any = None) -> None:
        value = getattr(linux, name)
        if value is None or (set_if is not None and not set_if(value)):
            return
        self.owners.claim(self.id, field, plugin)
        setattr(self._linux, name, value if isinstance(value, str) else copy(value))

    def _mapping(
        self, wanted: dict[str, Any], reply: dict[str, Any], field: api.Field, plugin: str, gone: Any
    ) -> None:
        removed = set()
        for key in list(wanted):
            name, marked = removal_key(key)
            if marked:
                removed.add(name)
                del wanted[key]
        for key, value in wanted.items():
            if key in removed:
                self.owners.clear_key(self.id, field, key, plugin)
                reply["-" + key] = gone
                removed.discard(key)
            self.owners.claim_key(self.id, field, key, plugin)
            reply[key] = value
        for key in removed:
            reply["-" + key] = gone

    def _annotations(self, wanted: dict[str, str], plugin: str) -> None:
        self._mapping(wanted, self.adjust.annotations, api.Field.Annotations, plugin, "")
        # ``wanted`` now holds only the keys set; later plugins see them on the container.
        self.container.annotations.update(wanted)

    def _keyed(self, items: list[Any], attr: str, field: api.Field, plugin: str) -> None:
        """Mounts (by destination) and devices (by path): removals, replacements, additions."""
        if not items:
            return
        linux_list = field == api.Field.Devices
        reply: list[Any] = self._linux.devices if linux_list else self.adjust.mounts
        assert self.container.linux is not None
        current: list[Any] = self.container.linux.devices if linux_list else self.container.mounts
        added = [i for i in items if not removal_key(getattr(i, attr))[1]]
        removed = {removal_key(getattr(i, attr))[0]: i for i in items if removal_key(getattr(i, attr))[1]}
        modified = {getattr(i, attr) for i in added}
        kept = []
        for item in reply:
            if getattr(item, attr) in removed:
                self.owners.clear_key(self.id, field, getattr(item, attr), plugin)
                continue
            kept.append(item)
        reply[:] = kept
        current[:] = [
            i for i in current if getattr(i, attr) not in removed and getattr(i, attr) not in modified
        ]
        for item in added:
            self.owners.claim_key(self.id, field, getattr(item, attr), plugin)
            reply.append(copy(item))
        if not linux_list:
            for key, item in removed.items():
                if key not in modified:
                    reply.append(copy(item))
        current.extend(copy(i) for i in added)

    def _env(self, env: list[api.KeyValue], plugin: str) -> None:
        if not env:
            return
        added = [e for e in env if not removal_key(e.key)[1]]
        removed = {removal_key(e.key)[0] for e in env if removal_key(e.key)[1]}
        modified = {e.key for e in added}
        kept = []
        for e in self.adjust.env:
            if e.key in removed:
                self.owners.clear_key(self.id, api.Field.Env, e.key, plugin)
                continue
            kept.append(e)
        self.adjust.env = kept
        self.container.env = [e for e in self.container.env if e.split("=", 1)[0] not in removed | modified]
        for e in added:
            self.owners.claim_key(self.id, api.Field.Env, e.key, plugin)
            self.adjust.env.append(copy(e))
        self.container.env.extend(f"{e.key}={e.value}" for e in added)

    def _args(self, args: list[str], plugin: str) -> None:
        if not args:
            return
        if args[0] == "":
            self.owners.simple.setdefault(self.id, {})[int(api.Field.Args)] = "-" + plugin
            args = args[1:]
        self.owners.claim(self.id, api.Field.Args, plugin)
        self.adjust.args = list(args)
        self.container.args = list(args)

    def _hooks(self, hooks: api.Hooks | None, plugin: str) -> None:
        if hooks is None:
            return
        assert self.adjust.hooks is not None and self.container.hooks is not None
        claimed = False
        for stage in _HOOK_STAGES:
            added = getattr(hooks, stage)
            if added:
                getattr(self.adjust.hooks, stage).extend(copy(h) for h in added)
                getattr(self.container.hooks, stage).extend(copy(h) for h in added)
                claimed = True
        if claimed:
            self.owners.accumulate(self.id, api.Field.OciHooks, plugin)
