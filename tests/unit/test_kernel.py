"""The kernel's lifecycle: concurrent init in dependency order, statuses and reasons, stop."""

from __future__ import annotations

import dataclasses
import importlib.metadata as md
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest

from corral.kernel import (
    Candidate,
    ConfigError,
    DaemonConfig,
    InitContext,
    Kernel,
    Origin,
    Registration,
    SkipPlugin,
    StartupError,
    Status,
    UndeclaredDependency,
    builtin_candidate,
    discover,
    hookimpl,
)


@pytest.fixture
def config(tmp_path: Path) -> DaemonConfig:
    return DaemonConfig(root=str(tmp_path / "root"), state=str(tmp_path / "state"))


def run(kernel: Kernel, body: Any = None) -> None:
    async def main() -> None:
        async with kernel.running():
            if body is not None:
                await body()

    anyio.run(main)


def make(plugin_type: str, plugin_id: str, **kwargs: Any) -> Registration:
    async def init(ic: InitContext) -> Any:
        return f"{plugin_type}.{plugin_id}"

    kwargs.setdefault("init", init)
    return Registration(type=plugin_type, id=plugin_id, **kwargs)


def kernel_of(config: DaemonConfig, *regs: Registration) -> Kernel:
    return Kernel(config, candidates=[builtin_candidate(r) for r in regs])


def third_party(uri: str, value: str, distribution: str = "corral-thirdparty") -> Candidate:
    plugin_type, _, plugin_id = uri.rpartition(".")
    ep = md.EntryPoint(name=uri, value=value, group="corral.plugins")
    origin = Origin(distribution, "1.0", uri, value, builtin=False)
    return Candidate(uri, plugin_type, plugin_id, origin, ep)


def test_independent_plugins_initialise_concurrently(config: DaemonConfig) -> None:
    both_running = anyio.Event()
    running = 0

    async def slow(ic: InitContext) -> None:
        nonlocal running
        running += 1
        if running == 2:
            both_running.set()
        with anyio.fail_after(5):
            await both_running.wait()

    kernel = kernel_of(config, make("a.v1", "x", init=slow), make("b.v1", "y", init=slow))
    run(kernel)
    assert [r.status for r in kernel.records()] == [Status.OK, Status.OK]


def test_a_plugin_waits_for_every_plugin_of_a_type_it_requires(config: DaemonConfig) -> None:
    finished: list[str] = []

    def provider(name: str, delay: float) -> Registration:
        async def init(ic: InitContext) -> str:
            await anyio.sleep(delay)
            finished.append(name)
            return name

        return make("snap.v1", name, init=init)

    async def consumer(ic: InitContext) -> dict[str, Any]:
        finished.append("consumer")
        return ic.get_by_type("snap.v1")

    kernel = kernel_of(
        config,
        make("meta.v1", "db", init=consumer, requires=("snap.v1",)),
        provider("a", 0.05),
        provider("b", 0.0),
    )
    run(kernel)
    assert finished[-1] == "consumer"
    assert kernel.get("meta.v1.db").instance == {"a": "a", "b": "b"}  # type: ignore[union-attr]


def test_config_section_is_decoded_into_the_plugins_dataclass(config: DaemonConfig) -> None:
    @dataclass(frozen=True)
    class Cfg:
        greeting: str = "hello"
        count: int = 1

    seen: list[Cfg] = []

    async def init(ic: InitContext) -> None:
        seen.append(ic.config)

    config = dataclasses.replace(config, plugins={"g.v1.greeter": {"greeting": "hi"}})
    run(kernel_of(config, make("g.v1", "greeter", init=init, config=Cfg)))
    assert seen == [Cfg(greeting="hi", count=1)]


def test_unknown_config_key_is_an_error_naming_its_toml_path(config: DaemonConfig) -> None:
    @dataclass(frozen=True)
    class Cfg:
        greeting: str = "hello"

    config = dataclasses.replace(config, plugins={"g.v1.greeter": {"greting": "hi"}})
    with pytest.raises(ConfigError, match=r'plugins\."g\.v1\.greeter"\.greting'):
        run(kernel_of(config, make("g.v1", "greeter", config=Cfg)))


def test_skip_and_error_are_different_states_with_reasons(config: DaemonConfig) -> None:
    async def skip(ic: InitContext) -> None:
        raise SkipPlugin("no overlay support in this kernel")

    async def fail(ic: InitContext) -> None:
        raise OSError("disk on fire")

    kernel = kernel_of(config, make("s.v1", "skipper", init=skip), make("f.v1", "failer", init=fail))
    run(kernel)
    skipper, failer = kernel.get("s.v1.skipper"), kernel.get("f.v1.failer")
    assert skipper is not None and skipper.status is Status.SKIP
    assert skipper.reason == "no overlay support in this kernel"
    assert "skip plugin" in str(skipper.error)
    assert failer is not None and failer.status is Status.ERROR
    assert failer.reason == "OSError: disk on fire"


def test_missing_required_type_skips_the_plugin_and_names_what_it_needed(config: DaemonConfig) -> None:
    kernel = kernel_of(config, make("g.v1", "x", requires=("nothing.v1",)))
    run(kernel)
    rec = kernel.get("g.v1.x")
    assert rec is not None and rec.status is Status.SKIP
    assert rec.reason == "requires nothing.v1, which no installed plugin provides"


def test_failed_dependency_fails_its_dependents_with_a_chain(config: DaemonConfig) -> None:
    async def fail(ic: InitContext) -> None:
        raise RuntimeError("boom")

    kernel = kernel_of(
        config,
        make("meta.v1", "db", init=fail),
        make("svc.v1", "ns", requires=("meta.v1",)),
        make("grpc.v1", "ns", requires=("svc.v1",)),
    )
    run(kernel)
    svc, grpc = kernel.get("svc.v1.ns"), kernel.get("grpc.v1.ns")
    assert svc is not None and svc.status is Status.ERROR and svc.blocked_by == ("meta.v1.db",)
    assert "meta.v1.db is error: RuntimeError: boom" in svc.reason
    assert grpc is not None and grpc.blocked_by == ("svc.v1.ns",)


def test_disabled_plugins_are_not_loaded_and_dependents_skip(config: DaemonConfig) -> None:
    config = dataclasses.replace(config, disabled_plugins=("meta.v1.db",))
    kernel = kernel_of(config, make("meta.v1", "db"), make("svc.v1", "ns", requires=("meta.v1",)))
    run(kernel)
    assert [r.uri for r in kernel.records() if r.status is Status.DISABLED] == ["meta.v1.db"]
    svc = kernel.get("svc.v1.ns")
    assert svc is not None and svc.status is Status.SKIP
    assert svc.blocked_by == ("meta.v1.db",) and "disabled" in svc.reason


def test_required_plugin_that_is_not_ok_stops_start_up_naming_it(config: DaemonConfig) -> None:
    async def fail(ic: InitContext) -> None:
        raise RuntimeError("cannot open database")

    config = dataclasses.replace(config, required_plugins=("meta.v1.db",))
    with pytest.raises(StartupError) as info:
        run(kernel_of(config, make("meta.v1", "db", init=fail)))
    assert "meta.v1.db: error: RuntimeError: cannot open database" in str(info.value)


def test_a_required_plugin_that_cannot_start_stops_start_up_before_any_plugin_runs(
    config: DaemonConfig,
) -> None:
    started: list[str] = []

    async def note(ic: InitContext) -> None:
        started.append(ic.uri)

    for required, extra in (("nope.v1.missing", {}), ("meta.v1.db", {"disabled_plugins": ("meta.v1.db",)})):
        cfg = dataclasses.replace(config, required_plugins=(required,), **extra)  # type: ignore[arg-type]
        kernel = kernel_of(cfg, make("meta.v1", "db", init=note), make("other.v1", "x", init=note))
        with pytest.raises(StartupError, match=f"required plugins not ok: {required}: "):
            kernel.prepare()
        with pytest.raises(StartupError):
            run(kernel_of(cfg, make("meta.v1", "db", init=note), make("other.v1", "x", init=note)))
    assert started == []


def test_plugins_in_a_cycle_fail_naming_the_cycle_and_the_rest_start(config: DaemonConfig) -> None:
    kernel = kernel_of(
        config,
        make("a.v1", "x", requires=("b.v1",)),
        make("b.v1", "y", requires=("a.v1",)),
        make("c.v1", "z"),
    )
    run(kernel)
    for uri in ("a.v1.x", "b.v1.y"):
        rec = kernel.get(uri)
        assert rec is not None and rec.status is Status.ERROR
        assert "plugin dependency cycle: " in rec.reason and "a.v1.x" in rec.reason and "b.v1.y" in rec.reason
    assert kernel.get("c.v1.z").status is Status.OK  # type: ignore[union-attr]


def test_looking_up_an_undeclared_type_is_refused(config: DaemonConfig) -> None:
    async def sneaky(ic: InitContext) -> Any:
        return ic.get_single("meta.v1")

    kernel = kernel_of(config, make("meta.v1", "db"), make("svc.v1", "x", init=sneaky))
    run(kernel)
    rec = kernel.get("svc.v1.x")
    assert rec is not None and rec.status is Status.ERROR
    assert isinstance(rec.error, UndeclaredDependency)


def test_plugins_close_in_reverse_start_order(config: DaemonConfig) -> None:
    closed: list[str] = []

    class Closer:
        def __init__(self, name: str) -> None:
            self.name = name

        async def aclose(self) -> None:
            closed.append(self.name)

    def closer(plugin_type: str, plugin_id: str, **kw: Any) -> Registration:
        async def init(ic: InitContext) -> Closer:
            return Closer(plugin_id)

        return make(plugin_type, plugin_id, init=init, **kw)

    run(kernel_of(config, closer("b.v1", "second", requires=("a.v1",)), closer("a.v1", "first")))
    assert closed == ["second", "first"]


def test_close_that_hangs_is_abandoned_after_its_timeout(config: DaemonConfig) -> None:
    class Hangs:
        async def aclose(self) -> None:
            await anyio.sleep(60)

    async def init(ic: InitContext) -> Hangs:
        return Hangs()

    kernel = Kernel(config, candidates=[builtin_candidate(make("h.v1", "x", init=init))], close_timeout=0.05)
    started = time.monotonic()
    run(kernel)
    assert time.monotonic() - started < 5


def test_each_plugin_gets_its_own_root_and_state_directory(config: DaemonConfig) -> None:
    async def init(ic: InitContext) -> tuple[Path, Path]:
        return ic.root, ic.state

    kernel = kernel_of(config, make("a.v1", "x", init=init))
    run(kernel)
    root, state = kernel.get("a.v1.x").instance  # type: ignore[union-attr]
    assert root == Path(config.root) / "a.v1.x" and root.is_dir()
    assert state == Path(config.state) / "a.v1.x" and state.is_dir()


def test_background_tasks_are_cancelled_when_the_kernel_stops(config: DaemonConfig) -> None:
    cancelled = anyio.Event()

    async def init(ic: InitContext) -> None:
        async def forever() -> None:
            try:
                await anyio.sleep_forever()
            finally:
                cancelled.set()

        ic.start_soon(forever)

    run(kernel_of(config, make("a.v1", "x", init=init)))
    assert cancelled.is_set()


def test_a_plugins_own_task_group_runs_later_work_until_the_daemon_stops(config: DaemonConfig) -> None:
    """What a plugin starts in its task group after init (a call's background work) runs; at stop
    the plugin is closed first, then what still runs there is cancelled."""
    order: list[str] = []

    class Owner:
        def __init__(self, tasks: anyio.abc.TaskGroup) -> None:
            self.tasks = tasks

        async def aclose(self) -> None:
            order.append("closed")

    async def init(ic: InitContext) -> Owner:
        return Owner(await ic.task_group("work"))

    async def forever() -> None:
        try:
            order.append("running")
            await anyio.sleep_forever()
        finally:
            order.append("cancelled")

    kernel = kernel_of(config, make("a.v1", "x", init=init))

    async def main() -> None:
        async with kernel.running():
            owner = kernel.get("a.v1.x").instance  # type: ignore[union-attr]
            owner.tasks.start_soon(forever)
            await anyio.wait_all_tasks_blocked()
            assert order == ["running"]

    anyio.run(main)
    assert order == ["running", "closed", "cancelled"]


def test_hooks_of_plugins_are_called_through_pluggy(config: DaemonConfig) -> None:
    seen: list[str] = []

    class Observer:
        @hookimpl
        def corral_plugin_loaded(self, record: Any) -> None:
            seen.append(record.uri)

    run(kernel_of(config, make("a.v1", "x", hooks=Observer()), make("b.v1", "y", requires=("a.v1",))))
    assert seen == ["a.v1.x", "b.v1.y"]


def test_third_party_plugins_are_not_imported_until_enabled(config: DaemonConfig) -> None:
    # The module does not exist: importing it would fail, so "not-enabled" proves it was not imported.
    cand = third_party("x.v1.plugin", "corral_test_never_imported:registration")
    kernel = Kernel(config, candidates=[cand])
    run(kernel)
    rec = kernel.get("x.v1.plugin")
    assert rec is not None and rec.status is Status.NOT_ENABLED
    assert 'enabled_plugins = ["x.v1.plugin"]' in rec.reason


@pytest.mark.parametrize(
    "enable", [{"enabled_plugins": ("x.v1.plugin",)}, {"enabled_distributions": ("corral-thirdparty",)}]
)
def test_enabled_third_party_plugin_that_fails_to_import_is_an_error_naming_its_distribution(
    config: DaemonConfig, enable: dict[str, Any]
) -> None:
    cand = third_party("x.v1.plugin", "corral_test_never_imported:registration")
    kernel = Kernel(dataclasses.replace(config, **enable), candidates=[cand])
    run(kernel)
    rec = kernel.get("x.v1.plugin")
    assert rec is not None and rec.status is Status.ERROR
    assert "corral-thirdparty" in rec.reason and "ModuleNotFoundError" in rec.reason


def test_entry_point_must_name_the_plugin_it_points_at(config: DaemonConfig) -> None:
    cand = third_party("x.v1.wrong", "corral.plugins.metadata.sqlite:registration")
    kernel = Kernel(dataclasses.replace(config, enabled_plugins=("*",)), candidates=[cand])
    run(kernel)
    rec = kernel.get("x.v1.wrong")
    assert rec is not None and rec.status is Status.ERROR
    assert "the entry point's name must be the plugin URI" in rec.reason


def test_builtin_plugins_are_discovered_from_the_entry_point_group_without_importing() -> None:
    found = {c.uri: c for c in discover()}
    sqlite = found["io.containerd.metadata.v1.sqlite"]
    assert sqlite.origin.builtin and sqlite.origin.distribution == "corral"
    assert sqlite.origin.value == "corral.plugins.metadata.sqlite:registration"
    assert sqlite.type == "io.containerd.metadata.v1" and sqlite.id == "sqlite"


def test_a_plugin_that_looks_up_a_skipped_plugin_is_skipped_naming_it(config: DaemonConfig) -> None:
    async def skip(ic: InitContext) -> None:
        raise SkipPlugin("not on this machine")

    async def fail(ic: InitContext) -> None:
        raise RuntimeError("broken")

    def lookup(target: str) -> Any:
        async def init(ic: InitContext) -> Any:
            return ic.get_by_id("svc.v1", target)

        return init

    regs = [
        make("svc.v1", "skipper", init=skip),
        make("svc.v1", "failer", init=fail),
        make("svc.v1", "fine"),
        make("grpc.v1", "a", requires=("svc.v1",), init=lookup("skipper")),
        make("grpc.v1", "b", requires=("svc.v1",), init=lookup("failer")),
    ]
    kernel = kernel_of(config, *regs)
    run(kernel)
    a, b = kernel.get("grpc.v1.a"), kernel.get("grpc.v1.b")
    assert a is not None and b is not None
    # The same cause gives the same status as the plugin in the way, and names it.
    assert (a.status, a.blocked_by) == (Status.SKIP, ("svc.v1.skipper",))
    assert "svc.v1.skipper is skip: not on this machine" in a.reason
    assert (b.status, b.blocked_by) == (Status.ERROR, ("svc.v1.failer",))
