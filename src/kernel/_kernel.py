"""The kernel: load enabled plugins, order them, configure them, start them, stop them."""

from __future__ import annotations

import dataclasses
import inspect
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pluggy
import structlog

from corral.kernel import _config
from corral.kernel._context import (
    PROPERTY_GRPC_ADDRESS,
    PROPERTY_LOG_TRACE_ID,
    PROPERTY_METRICS_ADDRESS,
    PROPERTY_METRICS_HISTOGRAM,
    PROPERTY_ROOT,
    PROPERTY_STATE,
    PROPERTY_TTRPC_ADDRESS,
    ROOT_MODE,
    STATE_MODE,
    InitContext,
    PluginUnavailable,
    dependency_problem,
    ensure_directory,
)
from corral.kernel._discovery import (
    Candidate,
    ConfigSource,
    PluginLoadError,
    discover,
    discover_config_sources,
    duplicates,
    is_enabled,
    load,
    load_config_source,
)
from corral.kernel._errors import ConfigError
from corral.kernel._graph import DependencyCycleError, resolve_order
from corral.kernel._hookspecs import PROJECT, CorralHooks
from corral.kernel._process import apply_process_settings
from corral.kernel._records import PluginRecord, SkipPlugin, Status
from corral.kernel._registration import Registration

log = structlog.get_logger("corral.kernel")

DEFAULT_CLOSE_TIMEOUT = 10.0


class StartupError(RuntimeError):
    """The daemon cannot start: a required plugin is not ok, or the plugin set is unusable."""


class Kernel:
    """Owns the plugin set. Use ``async with kernel.running():`` to start and stop it."""

    def __init__(
        self,
        config: _config.DaemonConfig,
        *,
        candidates: Sequence[Candidate] | None = None,
        config_sources: Sequence[ConfigSource] | None = None,
        close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
    ) -> None:
        self.config = config
        self.candidates = list(discover() if candidates is None else candidates)
        self.config_sources = list(discover_config_sources() if config_sources is None else config_sources)
        self.close_timeout = close_timeout
        self.hooks = pluggy.PluginManager(PROJECT)
        self.hooks.add_hookspecs(CorralHooks)
        self.plugin_configs: dict[str, dict[str, Any]] = {k: dict(v) for k, v in config.plugins.items()}
        self._decoded: dict[str, Any] = {}
        self._records: dict[str, PluginRecord] = {}
        self._order: list[str] = []
        self._dependents: dict[str, tuple[str, ...]] = {}
        self._started: list[str] = []
        self._graph = resolve_order(())
        self._by_type: dict[str, list[str]] = {}
        self._unread_keys: dict[str, str] = {}
        self.ready = anyio.Event()

    # -- PluginSet -------------------------------------------------------------------------
    def records(self) -> Sequence[PluginRecord]:
        """Plugins in start order, then those not started (failed to load, disabled, not enabled)."""
        started = [self._records[u] for u in self._order]
        in_order = set(self._order)
        return started + [r for u, r in self._records.items() if u not in in_order]

    def get(self, uri: str) -> PluginRecord | None:
        return self._records.get(uri)

    def dependents(self, uri: str) -> tuple[str, ...]:
        return self._dependents.get(uri, ())

    # -- loading ---------------------------------------------------------------------------
    def load_registrations(self) -> list[Registration]:
        """Import what is enabled; record everything else with the reason it is not running."""
        disabled = set(self.config.disabled_plugins)
        regs: list[Registration] = []
        defined = self.config_candidates()
        defined_uris = {c.uri for c in defined}
        candidates = [*self.candidates, *defined]
        for uri, cands in duplicates(self.candidates).items():
            dists = ", ".join(c.origin.distribution for c in cands)
            self._records[uri] = PluginRecord(
                uri, cands[0].type, cands[0].id, cands[0].origin, Status.ERROR,
                reason=f"plugin {uri} is declared by more than one distribution: {dists}",
            )  # fmt: skip
        for cand in candidates:
            if cand.uri in self._records:
                continue
            base = PluginRecord(cand.uri, cand.type, cand.id, cand.origin, Status.PENDING)
            if cand.uri in disabled:
                self.hooks.set_blocked(cand.uri)
                self._records[cand.uri] = dataclasses.replace(
                    base, status=Status.DISABLED, reason="listed in disabled_plugins"
                )
                continue
            enabled = cand.uri in defined_uris  # defining a plugin in config enables it
            if not enabled and not is_enabled(
                cand, self.config.enabled_plugins, self.config.enabled_distributions
            ):
                self._records[cand.uri] = dataclasses.replace(
                    base,
                    status=Status.NOT_ENABLED,
                    reason=f"third-party plugin from {cand.origin.distribution}; enable it with "
                    f'enabled_plugins = ["{cand.uri}"] or '
                    f'enabled_distributions = ["{cand.origin.distribution}"] in config.toml',
                )
                continue
            try:
                reg = load(cand)
            except PluginLoadError as exc:
                log.warning("plugin_load_failed", plugin=cand.uri, error=str(exc))
                self._records[cand.uri] = dataclasses.replace(
                    base, status=Status.ERROR, reason=str(exc), error=exc
                )
                continue
            if reg.hooks is not None:
                self.hooks.register(reg.hooks, name=reg.uri)
            self._records[cand.uri] = dataclasses.replace(base, registration=reg)
            regs.append(reg)
        return regs

    def config_candidates(self) -> list[Candidate]:
        """Plugins the config itself defines (``[proxy_plugins.NAME]``), from the providers of the
        top-level keys it sets; registered after every installed plugin, as containerd does."""
        taken = {c.uri: c for c in self.candidates}
        defined: list[Candidate] = []
        for source in self.config_sources:
            table = getattr(self.config, source.key, None)
            if not table:
                continue
            if not self._source_enabled(source):
                self._unread_keys[source.key] = source.origin.distribution
                continue
            try:
                provide = load_config_source(source)
            except PluginLoadError as exc:
                raise StartupError(str(exc)) from exc
            for cand in provide(table):
                other = taken.get(cand.uri)
                if other is not None:
                    key = cand.origin.entry_point or source.key
                    by = other.origin.distribution or "another definition"
                    raise ConfigError(f"{key}: plugin {cand.uri} is already provided by {by}", key=key)
                taken[cand.uri] = cand
                defined.append(cand)
        return defined

    def _source_enabled(self, source: ConfigSource) -> bool:
        """As for plugins: corral's own providers are on, a third-party one only once enabled."""
        if source.origin.builtin or source.provider is not None:
            return True
        as_plugin = Candidate(source.key, "", "", source.origin)
        return is_enabled(as_plugin, self.config.enabled_plugins, self.config.enabled_distributions)

    def _order_plugins(self, regs: list[Registration]) -> list[Registration]:
        """Resolve the start order; plugins caught in a cycle fail, naming the cycle, the rest go on."""
        while True:
            try:
                graph = resolve_order(regs)
            except DependencyCycleError as exc:
                members = set(exc.members)
                for uri in members:
                    self._records[uri] = dataclasses.replace(
                        self._records[uri], status=Status.ERROR, reason=str(exc), error=exc
                    )
                log.error("plugin_dependency_cycle", members=list(exc.members))
                regs = [r for r in regs if r.uri not in members]
                continue
            self._graph = graph
            self._by_type = {}
            for rec in self._records.values():
                self._by_type.setdefault(rec.type, []).append(rec.uri)
            self._dependents = dict(graph.dependents)
            return list(graph.order)

    def migrate_config(self, regs: Sequence[Registration]) -> None:
        """Upgrade plugin sections of an older config (version 2) in start order."""
        if self.config.version >= 3:
            return
        migrations = [r.migrate for r in regs if r.migrate is not None]
        self.plugin_configs = _config.migrate_plugins(self.config.version, self.plugin_configs, migrations)
        log.warning("config_migrated", from_version=self.config.version, hint="run `corral config migrate`")

    def decode_configs(self, regs: Sequence[Registration]) -> dict[str, Any]:
        """Every plugin's typed config; a bad section is fatal and names its TOML path."""
        decoded: dict[str, Any] = {}
        for reg in regs:
            for alias in reg.config_aliases:
                if alias in self.plugin_configs:
                    section = self.plugin_configs.pop(alias)
                    self.plugin_configs[reg.uri] = {**section, **self.plugin_configs.get(reg.uri, {})}
            raw = self.plugin_configs.get(reg.uri)
            if reg.config is None:
                decoded[reg.uri] = None
                continue
            decoded[reg.uri] = _config.decode(reg.config, raw or {}, f'plugins."{reg.uri}"')
        return decoded

    def prepare(self) -> tuple[list[Registration], dict[str, Any]]:
        """Load, migrate, order and decode: everything before any plugin code runs its init.

        What can be known before any plugin starts is checked here, so ``corral config validate``
        (which runs only this) refuses what corrald would refuse."""
        regs = self.load_registrations()
        self.migrate_config(regs)
        ordered = self._order_plugins(regs)
        configs = self.decode_configs(ordered)
        self._decoded = {uri: cfg for uri, cfg in configs.items() if cfg is not None}
        self._check_required_statically()
        return ordered, configs

    def config_notes(self) -> list[str]:
        """What the config asks for that will not happen: sections no plugin reads, settings corral
        does not act on. Logged at start, printed by ``corral config validate``."""
        notes = []
        for uri in self.plugin_configs:
            rec = self._records.get(uri)
            if rec is None:
                notes.append(f'plugins."{uri}": no installed plugin has this URI; section ignored')
            elif rec.status is Status.NOT_ENABLED:
                notes.append(f'plugins."{uri}": plugin not enabled; section not checked')
        for key, distribution in self._unread_keys.items():
            notes.append(
                f"{key}: read only by {distribution}, which is not enabled; "
                f'enable it with enabled_distributions = ["{distribution}"]'
            )
        for key, reason in _config.inert_settings(self.config):
            notes.append(f"{key}: accepted, but has no effect in corral ({reason})")
        for uri, decoded in self._decoded.items():
            for name, reason in _config.inert_fields(decoded):
                notes.append(f'plugins."{uri}".{name}: accepted, but has no effect in corral ({reason})')
        return notes

    def _check_required_statically(self) -> None:
        problems = []
        for uri in self.config.required_plugins:
            rec = self._records.get(uri)
            if rec is None:
                problems.append(f"{uri}: not installed")
            elif rec.status in (Status.DISABLED, Status.NOT_ENABLED, Status.ERROR):
                problems.append(f"{uri}: {rec.status.value}: {rec.reason}")
        if problems:
            raise StartupError("required plugins not ok: " + "; ".join(problems))

    # -- lifecycle -------------------------------------------------------------------------
    @asynccontextmanager
    async def running(self) -> AsyncIterator[Kernel]:
        """Start every enabled plugin, yield, then close them in reverse order.

        Errors from start-up or from the body are re-raised as they are, not wrapped in the
        exception group of the task group that owns the plugins' background tasks.
        """
        ensure_directory(Path(self.config.root), ROOT_MODE)
        ensure_directory(Path(self.config.state), STATE_MODE)
        ordered, configs = self.prepare()
        apply_process_settings(self.config)
        for note in self.config_notes():
            log.warning("config_not_applied", note=note)
        failure: BaseException | None = None
        async with anyio.create_task_group() as tg:
            try:
                await self._start(ordered, configs, tg)
                yield self
            except BaseException as exc:
                failure = exc
            finally:
                with anyio.CancelScope(shield=True):
                    await self._stop()
                tg.cancel_scope.cancel()
        if failure is not None:
            raise failure

    async def _start(
        self, ordered: list[Registration], configs: dict[str, Any], tg: anyio.abc.TaskGroup
    ) -> None:
        self._order = [r.uri for r in ordered]
        for i, reg in enumerate(ordered):
            self._records[reg.uri] = dataclasses.replace(
                self._records[reg.uri], order=i, config=configs[reg.uri]
            )
        done = {r.uri: anyio.Event() for r in ordered}
        graph_deps = {r.uri: [d.uri for d in self._graph.dependencies(r)] for r in ordered}

        async def start_one(reg: Registration) -> None:
            for dep in graph_deps[reg.uri]:
                await done[dep].wait()
            structlog.contextvars.bind_contextvars(plugin=reg.uri)
            try:
                await self._init_plugin(reg, configs[reg.uri], tg)
            finally:
                done[reg.uri].set()
                self.hooks.hook.corral_plugin_loaded(record=self._records[reg.uri])

        # Independent plugins start concurrently; each waits only for the types it named.
        async with anyio.create_task_group() as init_group:
            for reg in ordered:
                init_group.start_soon(start_one, reg, name=f"init:{reg.uri}")
        self.ready.set()
        self.hooks.hook.corral_ready(records=self.records())
        self._check_required()

    async def _init_plugin(self, reg: Registration, config: Any, tg: anyio.abc.TaskGroup) -> None:
        rec = self._records[reg.uri]
        required = [self._records[u] for t in reg.requires for u in self._by_type.get(t, ())]
        problem = dependency_problem(reg, required)
        if problem is not None:
            status, reason, blockers = problem
            self._records[reg.uri] = dataclasses.replace(
                rec, status=status, reason=reason, blocked_by=blockers,
                error=SkipPlugin(reason) if status is Status.SKIP else RuntimeError(reason),
            )  # fmt: skip
            log.info("plugin_not_started", status=status.value, reason=reason)
            return
        root = Path(self.config.root) / reg.uri
        state = Path(self.config.state) / reg.uri
        ic = InitContext(
            reg, config=config, root=root, state=state, properties=self._properties(root, state),
            plugins=self, task_group=tg,
        )  # fmt: skip
        started = time.perf_counter()
        try:
            instance = await reg.init(ic)
        except SkipPlugin as exc:
            self._records[reg.uri] = dataclasses.replace(
                rec, status=Status.SKIP, reason=exc.reason, error=exc, meta=ic.meta,
                init_seconds=time.perf_counter() - started,
            )  # fmt: skip
            log.info("plugin_skipped", reason=exc.reason)
            return
        except PluginUnavailable as exc:
            # A plugin it looked up is not there: it shares that plugin's fate and names it.
            status = Status.ERROR if exc.failed else Status.SKIP
            reason = str(exc)
            self._records[reg.uri] = dataclasses.replace(
                rec, status=status, reason=reason, blocked_by=exc.blockers, meta=ic.meta,
                error=exc if exc.failed else SkipPlugin(reason),
                init_seconds=time.perf_counter() - started,
            )  # fmt: skip
            log.info("plugin_not_started", status=status.value, reason=reason)
            return
        except Exception as exc:
            self._records[reg.uri] = dataclasses.replace(
                rec, status=Status.ERROR, reason=f"{type(exc).__name__}: {exc}", error=exc, meta=ic.meta,
                init_seconds=time.perf_counter() - started,
            )  # fmt: skip
            log.warning("plugin_failed", error=str(exc), exc_info=exc)
            return
        elapsed = time.perf_counter() - started
        self._records[reg.uri] = dataclasses.replace(
            rec, status=Status.OK, instance=instance, meta=ic.meta, init_seconds=elapsed
        )
        self._started.append(reg.uri)
        log.debug("plugin_started", seconds=round(elapsed, 6))

    def _properties(self, root: Path, state: Path) -> dict[str, str]:
        grpc = self.config.grpc.address
        return {
            PROPERTY_ROOT: str(root),
            PROPERTY_STATE: str(state),
            PROPERTY_GRPC_ADDRESS: grpc,
            PROPERTY_TTRPC_ADDRESS: self.config.ttrpc.address or (f"{grpc}.ttrpc" if grpc else ""),
            PROPERTY_METRICS_ADDRESS: self.config.metrics.address,
            PROPERTY_METRICS_HISTOGRAM: "true" if self.config.metrics.grpc_histogram else "false",
            PROPERTY_LOG_TRACE_ID: "true" if self.config.debug.log_trace_id else "false",
        }

    def _check_required(self) -> None:
        problems = []
        for uri in self.config.required_plugins:
            rec = self._records.get(uri)
            if rec is None:
                problems.append(f"{uri}: not installed")
            elif not rec.ok:
                problems.append(f"{uri}: {rec.status.value}: {rec.reason}")
        if problems:
            raise StartupError("required plugins not ok: " + "; ".join(problems))

    async def _stop(self) -> None:
        self.hooks.hook.corral_stopping()
        for uri in reversed(self._started):
            instance = self._records[uri].instance
            closer = getattr(instance, "aclose", None) or getattr(instance, "close", None)
            if closer is None:
                continue
            with anyio.move_on_after(self.close_timeout) as scope:
                try:
                    result = closer()
                    if inspect.isawaitable(result):
                        await result
                except Exception as exc:
                    log.warning("plugin_close_failed", plugin=uri, error=str(exc))
            if scope.cancelled_caught:
                log.warning("plugin_close_timeout", plugin=uri, seconds=self.close_timeout)
        self._started.clear()


__all__ = ["ConfigError", "Kernel", "StartupError"]
