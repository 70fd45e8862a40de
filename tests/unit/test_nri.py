"""NRI's runtime side without a daemon: the multiplexed wire against an independent plugin process,
registration, events with subscription masks, combined adjustments and their conflicts, timeouts
and crashes, pre-installed plugins, in-process hooks, updates and evictions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pluggy
import pytest

from corral.api.nri import (
    NRI,
    Conflict,
    CreateResult,
    MuxDecoder,
    Settings,
    Timeouts,
    api,
    apply_adjustment,
    container_from_spec,
    encode_frames,
    hookimpl,
)
from corral.api.nri.plugin import check_hooks
from corral.kernel import FailedPrecondition

PLUGIN = Path(__file__).parent.parent / "nri_test_plugin.py"

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def test_mux_frames_are_connection_id_length_payload_and_cut_at_4_kib() -> None:
    assert encode_frames(2, b"hello") == b"\x00\x00\x00\x02\x00\x00\x00\x05hello"
    data = bytes(range(256)) * 20  # 5120 bytes: two frames
    frames = encode_frames(1, data)
    assert frames[:8] == b"\x00\x00\x00\x01\x00\x00\x10\x00"
    assert frames[8 + 4096 : 16 + 4096] == b"\x00\x00\x00\x01\x00\x00\x04\x00"
    decoder = MuxDecoder()
    decoder.feed(frames[:100])
    assert list(decoder.frames()) == []
    decoder.feed(frames[100:] + encode_frames(2, b"x"))
    got = list(decoder.frames())
    assert [(c, len(p)) for c, p in got] == [(1, 4096), (1, 1024), (2, 1)]
    assert b"".join(p for c, p in got if c == 1) == data


def _settings(tmp: Path, **timeouts: float) -> Settings:
    return Settings(
        socket_path=str(tmp / "nri" / "nri.sock"),
        plugin_path=str(tmp / "plugins"),
        plugin_config_path=str(tmp / "conf.d"),
        timeouts=Timeouts(**timeouts) if timeouts else Timeouts(registration=5, request=2),
        runtime=("corral", "test"),
    )


@asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[NRI]:
    nri = NRI(settings)
    async with anyio.create_task_group() as tg:
        await tg.start(nri.serve)
        yield nri
        tg.cancel_scope.cancel()


def start_plugin(settings: Settings, log: Path, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, str(PLUGIN), "--socket", settings.socket_path, "--log", str(log), *args]
    )


async def until(predicate: Any, limit: float = 10.0) -> None:
    with anyio.fail_after(limit):
        while not predicate():  # noqa: ASYNC110 -- polls another process's progress
            await anyio.sleep(0.02)


def entries(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def spec_of(env: list[str]) -> dict[str, Any]:
    return {"process": {"args": ["sh"], "env": env}, "mounts": [{"destination": "/proc", "type": "proc"}]}


async def test_an_external_plugin_registers_and_adjusts_env_annotations_and_mounts(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    log = tmp_path / "plugin.log"
    async with running(settings) as nri:
        assert oct(os.stat(settings.socket_path).st_mode & 0o777) == "0o600"
        proc = start_plugin(
            settings, log, "--name", "adder", "--index", "20", "--env", "ADDED=by-plugin",
            "--env", "PATH=/plugin/bin", "--annotation", "nri.test/added=yes", "--mount", "/tmp:/plugin-tmp",
        )  # fmt: skip
        try:
            await until(lambda: [p.name for p in nri.plugins] == ["20-adder"])
            spec = spec_of(["PATH=/bin", "KEEP=1"])
            container = container_from_spec("c1", spec, labels={"l": "v"})
            adjust = await nri.create_container(None, container)
            apply_adjustment(spec, adjust)
            assert spec["process"]["env"] == ["PATH=/plugin/bin", "KEEP=1", "ADDED=by-plugin"]
            assert spec["annotations"] == {"nri.test/added": "yes"}
            # Sorted by depth, then destination, as NRI sorts them.
            assert spec["mounts"] == [
                {"destination": "/plugin-tmp", "type": "bind", "source": "/tmp", "options": ["rbind", "ro"]},
                {"destination": "/proc", "type": "proc"},
            ]
            await nri.start_container(None, container)
            await nri.stop_container(None, container)
            await nri.stop_container(None, container)  # once only
            await nri.remove_container(None, container)
            await until(lambda: len(entries(log)) >= 7)
        finally:
            proc.kill()
            proc.wait()
    got = entries(log)
    # The registration's reply and the Configure call may arrive together, either first.
    assert {"registered": True} in got
    got = [e for e in got if "registered" not in e]
    assert got[0] == {"method": "Configure", "runtime": "corral", "config": ""}
    assert got[1] == {"method": "Synchronize", "containers": [], "more": False}
    assert got[2]["method"] == "CreateContainer" and got[2]["env"] == ["PATH=/bin", "KEEP=1"]
    assert [e["method"] for e in got[3:]] == ["StartContainer", "StopContainer", "RemoveContainer"]
    assert not os.path.exists(settings.socket_path)


async def test_a_plugin_sees_only_the_events_it_subscribed_to(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    log = tmp_path / "plugin.log"
    async with running(settings) as nri:
        proc = start_plugin(settings, log, "--events", "start")
        try:
            await until(lambda: len(nri.plugins) == 1)
            container = container_from_spec("c2", spec_of([]))
            adjust = await nri.create_container(None, container)
            assert adjust.env == []
            await nri.start_container(None, container)
            await until(lambda: any(e.get("method") == "StartContainer" for e in entries(log)))
        finally:
            proc.kill()
            proc.wait()
    assert "CreateContainer" not in [e.get("method") for e in entries(log)]


@pytest.mark.parametrize("behaviour", ["hang", "crash"])
async def test_a_plugin_that_hangs_or_crashes_is_dropped_and_the_container_goes_on(
    tmp_path: Path, behaviour: str
) -> None:
    settings = _settings(tmp_path, registration=5, request=0.5)
    log = tmp_path / "plugin.log"
    async with running(settings) as nri:
        proc = start_plugin(settings, log, "--behaviour", behaviour, "--env", "NEVER=1")
        try:
            await until(lambda: len(nri.plugins) == 1)
            with anyio.fail_after(5):
                adjust = await nri.create_container(None, container_from_spec("c3", spec_of([])))
            assert adjust.env == []
            assert nri.plugins == []
        finally:
            proc.kill()
            proc.wait()


async def test_a_plugin_that_never_registers_is_closed_after_the_registration_timeout(tmp_path: Path) -> None:
    settings = _settings(tmp_path, registration=0.3, request=1)
    async with running(settings) as nri:
        with anyio.fail_after(5):
            stream = await anyio.connect_unix(settings.socket_path)
            # The runtime hangs up on a plugin that says nothing.
            with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
                await stream.receive()
        assert nri.plugins == []


async def test_preinstalled_plugins_are_launched_with_a_connected_socket_and_their_config(
    tmp_path: Path,
) -> None:
    settings = _settings(tmp_path)
    log = tmp_path / "plugin.log"
    plugins = Path(settings.plugin_path)
    plugins.mkdir()
    wrapper = plugins / "05-launched"
    wrapper.write_text(
        f"#!/bin/sh\nexec {sys.executable} {PLUGIN} --log {log} --env LAUNCHED=$NRI_PLUGIN_NAME-$NRI_PLUGIN_IDX\n"
    )
    wrapper.chmod(0o755)
    (plugins / "not-a-plugin.txt").write_text("ignored: not executable")
    Path(settings.plugin_config_path).mkdir()
    (Path(settings.plugin_config_path) / "launched.conf").write_text("level: debug\n")
    async with running(settings) as nri:
        assert [(p.name, p.kind) for p in nri.plugins] == [("05-launched", "pre-connected")]
        adjust = await nri.create_container(None, container_from_spec("c4", spec_of([])))
        assert [(e.key, e.value) for e in adjust.env] == [("LAUNCHED", "launched-05")]
    configure = next(e for e in entries(log) if e.get("method") == "Configure")
    assert configure["config"] == "level: debug\n"


class EnvHook:
    def __init__(self, key: str, value: str, seen: list[str] | None = None) -> None:
        self.key, self.value, self.seen = key, value, seen

    @hookimpl
    async def nri_create_container(
        self, pod: api.PodSandbox, container: api.Container
    ) -> api.ContainerAdjustment:
        if self.seen is not None:
            self.seen.append(f"{self.key}={self.value} saw {sorted(container.env)}")
        return api.ContainerAdjustment(env=[api.KeyValue(key=self.key, value=self.value)])


async def test_in_process_hooks_run_in_index_order_and_see_earlier_adjustments(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    settings.disable_connections = True
    seen: list[str] = []
    async with running(settings) as nri:
        await nri.register_hooks(EnvHook("SECOND", "2", seen), "second", "20")
        await nri.register_hooks(EnvHook("FIRST", "1", seen), "first", "10")
        assert [p.name for p in nri.plugins] == ["10-first", "20-second"]
        assert not os.path.exists(settings.socket_path)
        adjust = await nri.create_container(None, container_from_spec("c5", spec_of(["BASE=0"])))
    assert [(e.key, e.value) for e in adjust.env] == [("FIRST", "1"), ("SECOND", "2")]
    assert seen == ["FIRST=1 saw ['BASE=0']", "SECOND=2 saw ['BASE=0', 'FIRST=1']"]


async def test_two_plugins_setting_one_env_variable_fail_the_creation_naming_both(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    settings.disable_connections = True
    async with running(settings) as nri:
        await nri.register_hooks(EnvHook("SAME", "a"), "a", "10")
        await nri.register_hooks(EnvHook("SAME", "b"), "b", "20")
        with pytest.raises(Conflict, match=r'plugins "20-b" and "10-a" both tried to set Env SAME'):
            await nri.create_container(None, container_from_spec("c6", spec_of([])))


class Domain:
    name = "fake"

    def __init__(self) -> None:
        self.updates: list[api.ContainerUpdate] = []
        self.evicted: list[str] = []

    def list_pod_sandboxes(self) -> list[api.PodSandbox]:
        return []

    def list_containers(self) -> list[api.Container]:
        return [api.Container(id="other")]

    def has_container(self, container_id: str) -> bool:
        return container_id == "other"

    async def update_container(self, update: api.ContainerUpdate) -> None:
        self.updates.append(update)

    async def evict_container(self, eviction: api.ContainerEviction) -> None:
        self.evicted.append(eviction.container_id)


class Rebalancer:
    synced: list[str] = []

    @hookimpl
    def nri_synchronize(self, pods: list[api.PodSandbox], containers: list[api.Container]) -> None:
        self.synced.extend(c.id for c in containers)

    @hookimpl
    def nri_create_container(
        self, pod: api.PodSandbox, container: api.Container
    ) -> api.CreateContainerResponse:
        limit = api.LinuxResources(memory=api.LinuxMemory(limit=api.OptionalInt64(value=1 << 26)))
        return api.CreateContainerResponse(
            update=[
                api.ContainerUpdate(container_id="other", linux=api.LinuxContainerUpdate(resources=limit))
            ],
            evict=[api.ContainerEviction(container_id="other", reason="make room")],
        )


async def test_updates_and_evictions_a_plugin_asks_for_reach_the_domain_of_the_container(
    tmp_path: Path,
) -> None:
    settings = _settings(tmp_path)
    settings.disable_connections = True
    domain = Domain()
    async with running(settings) as nri:
        nri.register_domain(domain)
        hooks = Rebalancer()
        await nri.register_hooks(hooks, "rebalancer", "30")
        assert hooks.synced == ["other"]
        await nri.create_container(None, container_from_spec("new", spec_of([])))
    result = CreateResult(api.CreateContainerRequest(container=api.Container(id="new")))
    with pytest.raises(
        FailedPrecondition, match='plugin "30-rebalancer" asked update of "new" during creation'
    ):
        result.update([api.ContainerUpdate(container_id="new")], "30-rebalancer")
    assert domain.evicted == ["other"]
    [update] = domain.updates
    assert update.linux is not None and update.linux.resources is not None
    assert update.linux.resources.memory is not None and update.linux.resources.memory.limit is not None
    assert update.linux.resources.memory.limit.value == 1 << 26


class Misspelt:
    @hookimpl
    def nri_create_containers(self, pod: api.PodSandbox, container: api.Container) -> None: ...


class WrongArguments:
    @hookimpl
    def nri_start_container(self, pod: api.PodSandbox, box: api.Container) -> None: ...


@pytest.mark.parametrize("hooks", [Misspelt(), WrongArguments()], ids=["unknown hook", "wrong arguments"])
def test_hooks_that_match_no_spec_are_refused(hooks: object) -> None:
    with pytest.raises(pluggy.PluginValidationError):
        check_hooks(hooks, "broken")


def test_adjustments_are_written_into_the_spec_as_nri_runtime_tools_does() -> None:
    spec: dict[str, Any] = {
        "process": {"env": ["A=1", "B=2"]},
        "mounts": [{"destination": "/a/b/c"}, {"destination": "/x"}],
        "linux": {"devices": [{"path": "/dev/old", "type": "c", "major": 1, "minor": 1}]},
    }
    adjust = api.ContainerAdjustment(
        env=[api.KeyValue(key="-A"), api.KeyValue(key="C", value="3")],
        mounts=[api.Mount(destination="/a", source="/src", type="bind"), api.Mount(destination="-/x")],
        hooks=api.Hooks(prestart=[api.Hook(path="/bin/true", args=["true"])]),
        rlimits=[api.PosixRlimit(type="RLIMIT_NOFILE", hard=64, soft=32)],
        linux=api.LinuxContainerAdjustment(
            devices=[
                api.LinuxDevice(path="/dev/new", type="c", major=1, minor=3),
                api.LinuxDevice(path="-/dev/old"),
            ],
            resources=api.LinuxResources(
                cpu=api.LinuxCpu(shares=api.OptionalUInt64(value=512), cpus="0"),
                memory=api.LinuxMemory(limit=api.OptionalInt64(value=1 << 20)),
                pids=api.LinuxPids(limit=10),
            ),
            oom_score_adj=api.OptionalInt(value=500),
        ),
    )
    apply_adjustment(spec, adjust)
    assert spec["process"]["env"] == ["B=2", "C=3"]
    assert [m["destination"] for m in spec["mounts"]] == ["/a", "/a/b/c"]
    assert spec["hooks"] == {"prestart": [{"path": "/bin/true", "args": ["true"]}]}
    assert spec["process"]["rlimits"] == [{"type": "RLIMIT_NOFILE", "hard": 64, "soft": 32}]
    assert spec["process"]["oomScoreAdj"] == 500
    assert spec["linux"]["devices"] == [{"path": "/dev/new", "type": "c", "major": 1, "minor": 3}]
    resources = spec["linux"]["resources"]
    assert resources["devices"] == [{"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rw"}]
    assert resources["cpu"] == {"shares": 512, "cpus": "0"}
    assert resources["memory"] == {"limit": 1 << 20, "swap": 1 << 20}
    assert resources["pids"] == {"limit": 10}


def test_scheduler_seccomp_memory_policy_and_rdt_adjustments_reach_the_spec() -> None:
    spec: dict[str, Any] = {"linux": {"intelRdt": {"closID": "old"}}}
    adjust = api.ContainerAdjustment(
        linux=api.LinuxContainerAdjustment(
            scheduler=api.LinuxScheduler(policy=api.LinuxSchedulerPolicy.SCHED_BATCH, nice=5),
            seccomp_policy=api.LinuxSeccomp(
                default_action="SCMP_ACT_ALLOW",
                syscalls=[
                    api.LinuxSyscall(
                        names=["mkdir"], action="SCMP_ACT_ERRNO", errno_ret=api.OptionalUInt32(value=1)
                    )
                ],
            ),
            memory_policy=api.LinuxMemoryPolicy(mode=api.MpolMode.MPOL_BIND, nodes="0"),
            rdt=api.LinuxRdt(remove=True, clos_id=api.OptionalString(value="gold")),
        )
    )
    apply_adjustment(spec, adjust)
    assert spec["process"]["scheduler"] == {"policy": "SCHED_BATCH", "nice": 5}
    assert spec["linux"]["seccomp"] == {
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}],
    }
    assert spec["linux"]["memoryPolicy"] == {"mode": "MPOL_BIND", "nodes": "0"}
    assert spec["linux"]["intelRdt"] == {"closID": "gold"}


class Validator:
    def __init__(self) -> None:
        self.seen: list[api.ValidateContainerAdjustmentRequest] = []

    @hookimpl
    def nri_validate_container_adjustment(
        self, request: api.ValidateContainerAdjustmentRequest
    ) -> api.ValidateContainerAdjustmentResponse:
        self.seen.append(request)
        assert request.adjust is not None
        if any(e.key == "FORBIDDEN" for e in request.adjust.env):
            return api.ValidateContainerAdjustmentResponse(reject=True, reason="FORBIDDEN is not allowed")
        return api.ValidateContainerAdjustmentResponse()


async def test_a_validator_sees_the_combined_adjustment_and_its_owners_and_may_reject_it(
    tmp_path: Path,
) -> None:
    settings = _settings(tmp_path)
    settings.disable_connections = True
    validator = Validator()
    async with running(settings) as nri:
        await nri.register_hooks(EnvHook("ALLOWED", "1"), "setter", "10")
        await nri.register_hooks(validator, "policy", "90")
        adjust = await nri.create_container(None, container_from_spec("ok", spec_of(["BASE=0"])))
        assert [e.key for e in adjust.env] == ["ALLOWED"]
        [request] = validator.seen
        assert request.container is not None and request.container.env == ["BASE=0"]  # pristine
        owners = request.owners.owners["ok"] if request.owners else None
        assert owners is not None and owners.compound[api.Field.Env.value].owners == {"ALLOWED": "10-setter"}
        assert [(p.index, p.name) for p in request.plugins] == [("10", "setter"), ("90", "policy")]
        await nri.register_hooks(EnvHook("FORBIDDEN", "1"), "sneaky", "20")
        with pytest.raises(
            FailedPrecondition, match='validator "90-policy" rejected container adjustment, reason: FORBIDDEN'
        ):
            await nri.create_container(None, container_from_spec("no", spec_of([])))


async def test_an_external_plugins_unsolicited_updates_reach_the_domain(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    log = tmp_path / "plugin.log"
    domain = Domain()
    async with running(settings) as nri:
        nri.register_domain(domain)
        proc = start_plugin(settings, log, "--update-on-start", "other=33554432")
        try:
            await until(lambda: len(nri.plugins) == 1)
            synced = next(e for e in entries(log) if e.get("method") == "Synchronize")
            assert synced["containers"] == ["other"]
            await nri.start_container(None, container_from_spec("starter", spec_of([])))
            await until(lambda: any("updated" in e for e in entries(log)))
        finally:
            proc.kill()
            proc.wait()
    assert {"updated": True, "failed": []} in entries(log)
    [update] = domain.updates
    assert update.container_id == "other"
    assert update.linux is not None and update.linux.resources is not None
    assert update.linux.resources.memory is not None and update.linux.resources.memory.limit is not None
    assert update.linux.resources.memory.limit.value == 32 << 20


class PodWatcher:
    def __init__(self) -> None:
        self.events: list[str] = []

    @hookimpl
    def nri_run_pod_sandbox(self, pod: api.PodSandbox) -> None:
        self.events.append(f"run {pod.id} {pod.namespace}/{pod.name}")

    @hookimpl
    def nri_stop_pod_sandbox(self, pod: api.PodSandbox) -> None:
        self.events.append(f"stop {pod.id}")

    @hookimpl
    def nri_remove_pod_sandbox(self, pod: api.PodSandbox) -> None:
        self.events.append(f"remove {pod.id}")

    @hookimpl
    def nri_create_container(self, pod: api.PodSandbox, container: api.Container) -> api.ContainerAdjustment:
        self.events.append(f"create {container.id} in {pod.id} ({container.pod_sandbox_id})")
        return api.ContainerAdjustment(
            annotations={"pod": pod.name}, CDI_devices=[api.CdiDevice(name="vendor.com/dev=x")]
        )


async def test_cri_calls_nri_through_the_plain_record_contract(tmp_path: Path) -> None:
    from corral.api.nri import Events
    from corral.plugins.nri import ContainerInfo, NRIEvents, PodInfo

    settings = _settings(tmp_path)
    settings.disable_connections = True
    watcher = PodWatcher()
    injected: list[list[str]] = []

    def inject(spec: dict[str, Any], devices: Any) -> None:
        injected.append(list(devices))
        spec.setdefault("process", {}).setdefault("env", []).append("INJECTED=1")

    async with running(settings) as nri:
        events = Events(nri, inject)
        assert isinstance(events, NRIEvents)
        await nri.register_hooks(watcher, "watcher", "10")
        pod = PodInfo(id="p1", name="web", namespace="prod", labels={"app": "web"})
        await events.run_pod_sandbox(pod)
        spec = spec_of(["A=1"])
        adjusted = await events.create_container(
            pod, ContainerInfo(id="c1", pod_sandbox_id="p1", name="app"), spec
        )
        await events.stop_pod_sandbox(pod)
        await events.stop_pod_sandbox(pod)  # once only
        await events.remove_pod_sandbox(pod)
    assert adjusted["annotations"] == {"pod": "web"} and adjusted["process"]["env"] == ["A=1", "INJECTED=1"]
    assert spec["process"]["env"] == ["A=1"]  # the caller's spec is left as it was
    assert injected == [["vendor.com/dev=x"]]
    assert watcher.events == ["run p1 prod/web", "create c1 in p1 (p1)", "stop p1", "remove p1"]


class Crowd(Domain):
    """Enough containers that one Synchronize message would be over ttrpc's 4 MiB."""

    def list_containers(self) -> list[api.Container]:
        return [api.Container(id=f"c{i:04}", env=[f"BIG={'x' * 8192}"]) for i in range(600)]


async def test_a_state_too_big_for_one_message_is_synchronized_in_batches(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    log = tmp_path / "plugin.log"
    async with running(settings) as nri:
        nri.register_domain(Crowd())
        proc = start_plugin(settings, log)
        try:
            await until(lambda: len(nri.plugins) == 1, limit=30)
        finally:
            proc.kill()
            proc.wait()
    batches = [e for e in entries(log) if e.get("method") == "Synchronize"]
    assert len(batches) > 1
    assert [b["more"] for b in batches] == [True] * (len(batches) - 1) + [False]
    assert [c for b in batches for c in b["containers"]] == [f"c{i:04}" for i in range(600)]
