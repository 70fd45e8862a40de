"""The scenario registry: a scenario is one function, registered with ``@scenario(...)``.

A scenario function takes a ``Target`` (one daemon kind) and returns one ``Sample``: a value per
metric it declared, in that metric's unit. The runner calls it ``runs`` times per kind,
alternating kinds, and reports the medians. ``needs`` says what the target provides:

- ``"running"``: ``target.daemon()`` is a daemon started once for all such scenarios;
- ``"fresh"``: nothing is running; ``target.spawn()`` makes a new daemon in fresh temp dirs;
- ``"none"``: in-process work with no daemon (``kinds`` is then usually just corral).

A scenario whose single run is costly can ask for fewer runs with ``runs_divisor``: it then runs
``max(1, runs // runs_divisor)`` times per kind, rounded up to an odd number (so each median is one
run's values, and a time and the rate derived from it agree), and the table says so next to its rows.

A scenario that leaves things behind on purpose (to clean them up only after its last run) names a
``cleanup``: the runner calls it once per kind after that scenario's runs, whether they succeeded.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from benchmarks.daemons import KINDS, Ctr, Daemon

Needs = Literal["none", "fresh", "running"]
NEEDS_ORDER: tuple[Needs, ...] = ("none", "fresh", "running")
"""The runner's phases: in-process work and fresh starts run before the long-lived daemons exist."""

Sample = Mapping[str, float]
ScenarioFn = Callable[["Target"], Sample]
CleanupFn = Callable[["Target"], None]


@dataclass(frozen=True)
class Metric:
    """One row of the table."""

    key: str
    label: str
    unit: str
    """The unit the scenario reports the value in: ``ms``, ``MiB``, or a rate such as ``MiB/s``."""
    higher_is_better: bool = False
    """True for rates: the table marks such rows, as their corral/containerd ratio reads the other way."""


@dataclass(frozen=True)
class Target:
    """What a scenario run gets for one daemon kind."""

    kind: str
    ctr: Ctr
    spawn: Callable[[], Daemon]
    """A new, not yet started daemon of this kind in fresh temp dirs (use it with ``with``)."""
    workdir: Path
    """The benchmark's work dir (removed at the end): room for a scenario's input files."""
    running: Daemon | None = None

    def daemon(self) -> Daemon:
        """The long-lived daemon of this kind (only for ``needs="running"`` scenarios)."""
        if self.running is None:
            raise RuntimeError(f"{self.kind}: no running daemon; declare needs='running'")
        return self.running


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    needs: Needs
    metrics: tuple[Metric, ...]
    fn: ScenarioFn
    kinds: tuple[str, ...]
    warmup: int
    """Untimed calls per kind before the timed runs."""
    runs_divisor: int = 1
    """Run about ``runs // runs_divisor`` times instead of ``runs`` (see ``runs``)."""
    cleanup: CleanupFn | None = None
    """Called once per kind after the scenario's last run (also after a failed one)."""

    def runs(self, default: int) -> int:
        """How many timed runs per kind this scenario gets when the others get ``default``."""
        if self.runs_divisor == 1:
            return default
        n = max(1, default // self.runs_divisor)
        return n if n % 2 else n + 1


SCENARIOS: dict[str, Scenario] = {}
"""Every registered scenario, in registration order (the table's row order)."""


def scenario(
    name: str,
    *,
    needs: Needs,
    metrics: tuple[Metric, ...],
    kinds: tuple[str, ...] = KINDS,
    warmup: int = 0,
    runs_divisor: int = 1,
    cleanup: CleanupFn | None = None,
) -> Callable[[ScenarioFn], ScenarioFn]:
    """Register the decorated function as scenario ``name``."""

    def register(fn: ScenarioFn) -> ScenarioFn:
        if name in SCENARIOS:
            raise ValueError(f"scenario {name!r} registered twice")
        if runs_divisor < 1:
            raise ValueError(f"scenario {name!r}: runs_divisor must be at least 1")
        keys = [m.key for m in metrics]
        if not keys or len(set(keys)) != len(keys):
            raise ValueError(f"scenario {name!r}: metrics must be non-empty with unique keys")
        doc = (fn.__doc__ or "").strip().splitlines()
        SCENARIOS[name] = Scenario(
            name, doc[0] if doc else name, needs, metrics, fn, kinds, warmup, runs_divisor, cleanup
        )
        return fn

    return register
