"""Runs scenarios against each daemon kind and collects raw samples."""

from __future__ import annotations

import functools
import itertools
import statistics
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.daemons import Ctr, Daemon
from benchmarks.registry import NEEDS_ORDER, Scenario, Target

DaemonFactory = Callable[[Path], Daemon]
"""Builds a (not yet started) daemon of one kind in the given, not yet existing, work dir."""


@dataclass
class Results:
    """Raw samples: ``samples[scenario][metric][kind]`` is one value per run, in the metric's unit."""

    runs: int
    """Runs per measurement; a scenario with a ``runs_divisor`` has fewer samples."""
    kinds: tuple[str, ...]
    samples: dict[str, dict[str, dict[str, list[float]]]] = field(default_factory=dict)

    def add(self, scenario: str, metric: str, kind: str, value: float) -> None:
        self.samples.setdefault(scenario, {}).setdefault(metric, {}).setdefault(kind, []).append(value)

    def values(self, scenario: str, metric: str, kind: str) -> list[float]:
        return self.samples.get(scenario, {}).get(metric, {}).get(kind, [])


class Runner:
    """Runs each scenario ``runs`` times per kind, alternating which kind goes first.

    Phases follow ``NEEDS_ORDER``: in-process scenarios and fresh-start scenarios run while no
    daemon is up; the long-lived daemons are started only for the ``running`` phase, and every
    daemon is stopped before ``run`` returns, whatever happens.
    """

    def __init__(
        self,
        factories: Mapping[str, DaemonFactory],
        ctr: Ctr,
        workdir: Path,
        runs: int,
        progress: Callable[[str], None] = lambda _msg: None,
    ) -> None:
        if runs < 1:
            raise ValueError("runs must be at least 1")
        self.factories = dict(factories)
        self.ctr = ctr
        self.workdir = workdir
        self.runs = runs
        self.progress = progress
        self._serial = itertools.count(1)

    def spawn(self, kind: str) -> Daemon:
        return self.factories[kind](self.workdir / f"{kind}-{next(self._serial):03d}")

    def run(self, scenarios: Sequence[Scenario]) -> Results:
        results = Results(self.runs, tuple(self.factories))
        running: dict[str, Daemon] = {}
        with ExitStack() as stack:
            for needs in NEEDS_ORDER:
                for sc in (s for s in scenarios if s.needs == needs):
                    kinds = [k for k in sc.kinds if k in self.factories]
                    if not kinds:
                        self.progress(f"{sc.name}: skipped (no daemon of kind {', '.join(sc.kinds)})")
                        continue
                    if needs == "running":
                        for kind in kinds:
                            if kind not in running:
                                self.progress(f"starting a long-lived {kind} daemon")
                                running[kind] = stack.enter_context(self.spawn(kind))
                    self._run_one(sc, kinds, running, results)
        return results

    def _samples(
        self, sc: Scenario, kinds: list[str], targets: dict[str, Target], runs: int, results: Results
    ) -> None:
        for kind in kinds:
            for _ in range(sc.warmup):
                sc.fn(targets[kind])
        for i in range(runs):
            order = kinds if i % 2 == 0 else kinds[::-1]
            for kind in order:
                sample = sc.fn(targets[kind])
                missing = {m.key for m in sc.metrics} - set(sample)
                if missing:
                    raise RuntimeError(f"scenario {sc.name!r} returned no {', '.join(sorted(missing))}")
                for metric in sc.metrics:
                    results.add(sc.name, metric.key, kind, float(sample[metric.key]))

    def _run_one(self, sc: Scenario, kinds: list[str], running: dict[str, Daemon], results: Results) -> None:
        targets = {
            kind: Target(
                kind=kind,
                ctr=self.ctr,
                spawn=functools.partial(self.spawn, kind),
                workdir=self.workdir,
                running=running.get(kind) if sc.needs == "running" else None,
            )
            for kind in kinds
        }
        runs = sc.runs(self.runs)
        self.progress(f"{sc.name}: {sc.description}" + (f" ({runs} runs)" if runs != self.runs else ""))
        with ExitStack() as cleanups:
            if sc.cleanup is not None:
                for kind in kinds:
                    cleanups.callback(sc.cleanup, targets[kind])
            self._samples(sc, kinds, targets, runs, results)
        for metric in sc.metrics:
            medians = ", ".join(
                f"{kind} {statistics.median(results.values(sc.name, metric.key, kind)):.2f} {metric.unit}"
                for kind in kinds
            )
            self.progress(f"  {metric.key}: {medians}")
