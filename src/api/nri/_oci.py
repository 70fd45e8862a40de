"""Between OCI runtime specs (JSON as dicts) and NRI's messages.

``container_from_spec`` is how a container looks to plugins; ``apply_adjustment`` writes a combined
adjustment into the spec as containerd/nri's ``runtime-tools/generate`` does: env replaced in place
and new variables appended, mounts replaced by destination and sorted by depth, devices added with
a cgroup rule allowing them, hooks and rlimits appended, resources set field by field.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from corral.api.nri._result import removal_key
from corral.kernel import OnFirstUse

if TYPE_CHECKING:
    from corral.api.types.nri.pkg.api import v1alpha1 as api
else:
    api = OnFirstUse("corral.api.types.nri.pkg.api.v1alpha1")  # NRI's messages: at the first plugin

Spec = dict[str, Any]
CDIInjector = Callable[[Spec, Sequence[str]], None]
"""Resolves fully qualified CDI device names and applies their edits to a spec."""


# -- spec -> NRI ----------------------------------------------------------------------------------
def _hook(h: Mapping[str, Any]) -> api.Hook:
    timeout = h.get("timeout")
    return api.Hook(
        path=h.get("path", ""),
        args=list(h.get("args") or []),
        env=list(h.get("env") or []),
        timeout=api.OptionalInt(value=int(timeout)) if timeout is not None else None,
    )


def _hooks(spec: Spec) -> api.Hooks:
    hooks = spec.get("hooks") or {}
    return api.Hooks(**{
        stage: [_hook(h) for h in hooks.get(key) or []]
        for stage, key in (
            ("prestart", "prestart"), ("create_runtime", "createRuntime"),
            ("create_container", "createContainer"), ("start_container", "startContainer"),
            ("poststart", "poststart"), ("poststop", "poststop"),
        )
    })  # fmt: skip


def _optional(kind: type[Any], value: Any) -> Any:
    return None if value is None else kind(value=value)


def resources_from_oci(res: Mapping[str, Any] | None) -> api.LinuxResources:
    res = res or {}
    memory = res.get("memory") or {}
    cpu = res.get("cpu") or {}
    pids = res.get("pids")
    return api.LinuxResources(
        memory=api.LinuxMemory(
            limit=_optional(api.OptionalInt64, memory.get("limit")),
            reservation=_optional(api.OptionalInt64, memory.get("reservation")),
            swap=_optional(api.OptionalInt64, memory.get("swap")),
            kernel=_optional(api.OptionalInt64, memory.get("kernel")),
            kernel_tcp=_optional(api.OptionalInt64, memory.get("kernelTCP")),
            swappiness=_optional(api.OptionalUInt64, memory.get("swappiness")),
            disable_oom_killer=_optional(api.OptionalBool, memory.get("disableOOMKiller")),
            use_hierarchy=_optional(api.OptionalBool, memory.get("useHierarchy")),
        ),
        cpu=api.LinuxCpu(
            shares=_optional(api.OptionalUInt64, cpu.get("shares")),
            quota=_optional(api.OptionalInt64, cpu.get("quota")),
            period=_optional(api.OptionalUInt64, cpu.get("period")),
            realtime_runtime=_optional(api.OptionalInt64, cpu.get("realtimeRuntime")),
            realtime_period=_optional(api.OptionalUInt64, cpu.get("realtimePeriod")),
            cpus=cpu.get("cpus", ""),
            mems=cpu.get("mems", ""),
        ),
        hugepage_limits=[
            api.HugepageLimit(page_size=h.get("pageSize", ""), limit=int(h.get("limit", 0)))
            for h in res.get("hugepageLimits") or []
        ],
        unified=dict(res.get("unified") or {}),
        devices=[
            api.LinuxDeviceCgroup(
                allow=bool(d.get("allow")),
                type=d.get("type", ""),
                major=_optional(api.OptionalInt64, d.get("major")),
                minor=_optional(api.OptionalInt64, d.get("minor")),
                access=d.get("access", ""),
            )
            for d in res.get("devices") or []
        ],
        pids=api.LinuxPids(limit=int(pids.get("limit", 0))) if pids else None,
    )


def container_from_spec(
    container_id: str,
    spec: Spec,
    *,
    labels: Mapping[str, str] | None = None,
    name: str = "",
    pod_sandbox_id: str = "",
    state: api.ContainerState | None = None,
    pid: int = 0,
    image: str = "",
    created_at: int = 0,
) -> api.Container:
    """The container a spec describes, as NRI plugins are shown it."""
    process = spec.get("process") or {}
    linux = spec.get("linux") or {}
    user = process.get("user") or {}
    oom = process.get("oomScoreAdj")
    return api.Container(
        id=container_id,
        pod_sandbox_id=pod_sandbox_id,
        name=name or container_id,
        state=api.ContainerState.CONTAINER_CREATED if state is None else state,
        labels=dict(labels or {}),
        annotations=dict(spec.get("annotations") or {}),
        args=list(process.get("args") or []),
        env=list(process.get("env") or []),
        mounts=[
            api.Mount(
                destination=m.get("destination", ""),
                type=m.get("type", ""),
                source=m.get("source", ""),
                options=list(m.get("options") or []),
            )
            for m in spec.get("mounts") or []
        ],
        hooks=_hooks(spec),
        linux=api.LinuxContainer(
            namespaces=[
                api.LinuxNamespace(type=n.get("type", ""), path=n.get("path", ""))
                for n in linux.get("namespaces") or []
            ],
            devices=[
                api.LinuxDevice(
                    path=d.get("path", ""),
                    type=d.get("type", ""),
                    major=int(d.get("major", 0)),
                    minor=int(d.get("minor", 0)),
                    file_mode=_optional(api.OptionalFileMode, d.get("fileMode")),
                    uid=_optional(api.OptionalUInt32, d.get("uid")),
                    gid=_optional(api.OptionalUInt32, d.get("gid")),
                )
                for d in linux.get("devices") or []
            ],
            resources=resources_from_oci(linux.get("resources")),
            oom_score_adj=_optional(api.OptionalInt, oom),
            cgroups_path=linux.get("cgroupsPath", ""),
            sysctl=dict(linux.get("sysctl") or {}),
        ),
        pid=pid,
        rlimits=[
            api.PosixRlimit(type=r.get("type", ""), hard=int(r.get("hard", 0)), soft=int(r.get("soft", 0)))
            for r in process.get("rlimits") or []
        ],
        created_at=created_at,
        user=api.User(
            uid=int(user.get("uid", 0)),
            gid=int(user.get("gid", 0)),
            additional_gids=[int(g) for g in user.get("additionalGids") or []],
        ),
        image=api.Image(name=image) if image else None,
    )


# -- NRI -> spec ----------------------------------------------------------------------------------
def _hook_to_oci(h: api.Hook) -> dict[str, Any]:
    out: dict[str, Any] = {"path": h.path}
    if h.args:
        out["args"] = list(h.args)
    if h.env:
        out["env"] = list(h.env)
    if h.timeout is not None:
        out["timeout"] = h.timeout.value
    return out


def _mount_depth(m: Mapping[str, Any]) -> tuple[int, str]:
    destination = m.get("destination", "")
    return os.path.normpath(destination).count("/"), destination


def _env(spec: Spec, env: Sequence[api.KeyValue]) -> None:
    if not env:
        return
    process = spec.setdefault("process", {})
    wanted = {removal_key(e.key)[0]: e for e in env}
    out: list[str] = []
    for item in process.get("env") or []:
        key, sep, _ = item.partition("=")
        if not sep:
            continue
        change = wanted.pop(key, None)
        if change is None:
            out.append(item)
        elif not removal_key(change.key)[1]:
            out.append(f"{change.key}={change.value}")
    for e in env:
        if not removal_key(e.key)[1] and wanted.pop(e.key, None) is not None:
            out.append(f"{e.key}={e.value}")
    process["env"] = out


def _devices(spec: Spec, devices: Sequence[api.LinuxDevice]) -> None:
    linux = spec.setdefault("linux", {})
    for d in devices:
        key, marked = removal_key(d.path)
        linux["devices"] = [x for x in linux.get("devices") or [] if x.get("path") != key]
        if marked:
            continue
        device: dict[str, Any] = {"path": d.path, "type": d.type, "major": d.major, "minor": d.minor}
        if d.file_mode is not None:
            device["fileMode"] = d.file_mode.value
        if d.uid is not None:
            device["uid"] = d.uid.value
        if d.gid is not None:
            device["gid"] = d.gid.value
        linux["devices"].append(device)
        access = "rw" + ("m" if d.type == "b" else "")
        rules = linux.setdefault("resources", {}).setdefault("devices", [])
        rules.append({"allow": True, "type": d.type, "major": d.major, "minor": d.minor, "access": access})


def _resources(spec: Spec, r: api.LinuxResources | None) -> None:
    if r is None:
        return
    res = spec.setdefault("linux", {}).setdefault("resources", {})
    if r.cpu is not None:
        cpu = res.setdefault("cpu", {})
        for name, key in (
            ("period", "period"), ("quota", "quota"), ("shares", "shares"),
            ("realtime_runtime", "realtimeRuntime"), ("realtime_period", "realtimePeriod"),
        ):  # fmt: skip
            value = getattr(r.cpu, name)
            if value is not None:
                cpu[key] = value.value
        if r.cpu.cpus:
            cpu["cpus"] = r.cpu.cpus
        if r.cpu.mems:
            cpu["mems"] = r.cpu.mems
        if not cpu:
            del res["cpu"]
    if r.memory is not None and r.memory.limit is not None and r.memory.limit.value:
        memory = res.setdefault("memory", {})
        memory["limit"] = memory["swap"] = r.memory.limit.value
    for h in r.hugepage_limits:
        limits = res.setdefault("hugepageLimits", [])
        limits[:] = [x for x in limits if x.get("pageSize") != h.page_size]
        limits.append({"pageSize": h.page_size, "limit": h.limit})
    if r.unified:
        res.setdefault("unified", {}).update(r.unified)
    if r.pids is not None:
        pids = res.setdefault("pids", {})
        if r.pids.limit > -1:
            pids["limit"] = r.pids.limit
    for d in r.devices:
        rule: dict[str, Any] = {"allow": d.allow, "type": d.type, "access": d.access}
        if d.major is not None:
            rule["major"] = d.major.value
        if d.minor is not None:
            rule["minor"] = d.minor.value
        res.setdefault("devices", []).append(rule)


def _mounts(spec: Spec, mounts: Sequence[api.Mount]) -> None:
    if not mounts:
        return
    current = list(spec.get("mounts") or [])
    for m in mounts:
        destination, marked = removal_key(m.destination)
        current = [x for x in current if x.get("destination") != destination]
        if marked:
            continue
        mount: dict[str, Any] = {"destination": m.destination, "type": m.type, "source": m.source}
        if m.options:
            mount["options"] = list(m.options)
        for option in m.options:
            if option in ("rshared", "rslave"):
                linux = spec.setdefault("linux", {})
                if option == "rshared" or linux.get("rootfsPropagation") not in ("rshared", "rslave"):
                    linux["rootfsPropagation"] = option
        current.append(mount)
    spec["mounts"] = sorted(current, key=_mount_depth)


def _scheduler(spec: Spec, sch: api.LinuxScheduler | None) -> None:
    if sch is None:
        return
    process = spec.setdefault("process", {})
    if sch.policy == api.LinuxSchedulerPolicy.SCHED_NONE:
        process.pop("scheduler", None)
        return
    scheduler: dict[str, Any] = {"policy": sch.policy.name}
    for key, value in (("nice", sch.nice), ("priority", sch.priority), ("runtime", sch.runtime),
                       ("deadline", sch.deadline), ("period", sch.period)):  # fmt: skip
        if value:
            scheduler[key] = value
    if sch.flags:
        scheduler["flags"] = [f.name for f in sch.flags]
    process["scheduler"] = scheduler


def _seccomp(spec: Spec, policy: api.LinuxSeccomp | None) -> None:
    if policy is None:
        return
    syscalls = []
    for sc in policy.syscalls:
        syscall: dict[str, Any] = {"names": list(sc.names), "action": sc.action}
        if sc.errno_ret is not None:
            syscall["errnoRet"] = sc.errno_ret.value
        if sc.args:
            syscall["args"] = [
                {"index": a.index, "value": a.value, "valueTwo": a.value_two, "op": a.op} for a in sc.args
            ]
        syscalls.append(syscall)
    seccomp: dict[str, Any] = {"defaultAction": policy.default_action}
    for key, value in (("architectures", list(policy.architectures)), ("flags", list(policy.flags)),
                       ("listenerPath", policy.listener_path), ("listenerMetadata", policy.listener_metadata),
                       ("syscalls", syscalls)):  # fmt: skip
        if value:
            seccomp[key] = value
    spec.setdefault("linux", {})["seccomp"] = seccomp


def _rdt(spec: Spec, rdt: api.LinuxRdt | None) -> None:
    if rdt is None:
        return
    linux = spec.setdefault("linux", {})
    if rdt.remove:
        linux.pop("intelRdt", None)
    if rdt.clos_id is not None:
        linux.setdefault("intelRdt", {})["closID"] = rdt.clos_id.value
    if rdt.schemata is not None:
        linux.setdefault("intelRdt", {})["schemata"] = list(rdt.schemata.value)
    if rdt.enable_monitoring is not None:
        linux.setdefault("intelRdt", {})["enableMonitoring"] = rdt.enable_monitoring.value


def apply_adjustment(
    spec: Spec, adjust: api.ContainerAdjustment | None, cdi: CDIInjector | None = None
) -> None:
    """Write ``adjust`` into ``spec`` in place; CDI devices it names are injected through ``cdi``.

    Block I/O and RDT class names are left alone: they need classes configured on the host, which
    corral has none of (containerd without blockio/RDT configuration ignores them the same way)."""
    if adjust is None:
        return
    annotations = spec.setdefault("annotations", {})
    for key, value in adjust.annotations.items():
        name, marked = removal_key(key)
        if marked:
            annotations.pop(name, None)
        else:
            annotations[key] = value
    if not annotations:
        del spec["annotations"]
    _env(spec, adjust.env)
    if adjust.args:
        spec.setdefault("process", {})["args"] = list(adjust.args)
    if adjust.hooks is not None:
        stages = (
            ("prestart", "prestart"), ("poststart", "poststart"), ("poststop", "poststop"),
            ("create_runtime", "createRuntime"), ("create_container", "createContainer"),
            ("start_container", "startContainer"),
        )  # fmt: skip
        for stage, key in stages:
            added = getattr(adjust.hooks, stage)
            if added:
                spec.setdefault("hooks", {}).setdefault(key, []).extend(_hook_to_oci(h) for h in added)
    if adjust.CDI_devices and cdi is not None:
        cdi(spec, [d.name for d in adjust.CDI_devices])
    linux = adjust.linux
    if linux is not None:
        _devices(spec, linux.devices)
        if linux.cgroups_path:
            spec.setdefault("linux", {})["cgroupsPath"] = linux.cgroups_path
        if linux.oom_score_adj is not None:
            spec.setdefault("process", {})["oomScoreAdj"] = linux.oom_score_adj.value
        if linux.io_priority is not None and linux.io_priority.class_:
            spec.setdefault("process", {})["ioPriority"] = {
                "class": linux.io_priority.class_.name, "priority": linux.io_priority.priority,
            }  # fmt: skip
        _scheduler(spec, linux.scheduler)
        _seccomp(spec, linux.seccomp_policy)
        for ns in linux.namespaces:
            kind, marked = removal_key(ns.type)
            namespaces = [
                n for n in spec.setdefault("linux", {}).get("namespaces") or [] if n.get("type") != kind
            ]
            if not marked:
                namespaces.append({"type": ns.type, **({"path": ns.path} if ns.path else {})})
            spec["linux"]["namespaces"] = namespaces
        for key, value in linux.sysctl.items():
            name, marked = removal_key(key)
            sysctl = spec.setdefault("linux", {}).setdefault("sysctl", {})
            if marked:
                sysctl.pop(name, None)
            else:
                sysctl[key] = value
        for key, device in linux.net_devices.items():
            name, marked = removal_key(key)
            net = spec.setdefault("linux", {}).setdefault("netDevices", {})
            if marked:
                net.pop(name, None)
            elif device is not None:
                net[key] = {"name": device.name}
        if linux.memory_policy is not None:
            policy = linux.memory_policy
            memory_policy: dict[str, Any] = {"mode": policy.mode.name, "nodes": policy.nodes}
            if policy.flags:
                memory_policy["flags"] = [f.name for f in policy.flags]
            spec.setdefault("linux", {})["memoryPolicy"] = memory_policy
        _resources(spec, linux.resources)
        _rdt(spec, linux.rdt)
    _mounts(spec, adjust.mounts)
    for r in adjust.rlimits:
        spec.setdefault("process", {}).setdefault("rlimits", []).append(
            {"type": r.type, "hard": r.hard, "soft": r.soft}
        )


def resources_to_oci(r: api.LinuxResources) -> dict[str, Any]:
    """An update's resources as OCI LinuxResources JSON (what a shim's Update takes)."""
    spec: Spec = {}
    _resources(spec, r)
    if r.memory is not None:
        memory = spec.setdefault("linux", {}).setdefault("resources", {}).setdefault("memory", {})
        for name, key in (("reservation", "reservation"), ("swap", "swap"), ("swappiness", "swappiness")):
            value = getattr(r.memory, name)
            if value is not None:
                memory[key] = value.value
    resources: dict[str, Any] = spec.get("linux", {}).get("resources", {})
    return resources
