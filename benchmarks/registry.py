"""The scenario registry: a scenario is one function, registered with ``@scenario(...)``.

A scenario function takes a ``Target`` (one daemon kind) and returns one ``Sample``: a value per
metric it declared, in that metric's unit. The runner calls it ``runs`` times per kind,
alternating kinds, and reports the medians. ``needs`` says what the target provides:

- ``"running"``: ``target.daemon()`` is a daemon started once for all such scenarios;
- ``"fresh"``: nothing is running; ``target.spawn()`` makes a new daemon in fresh temp dirs;
- ``"none"``: in-process work with no daemon (``kinds`` is then usually just corral).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from benchmarks.daemons import KINDS, Ctr, Daemon

Needs = Literal["none", "fresh", "running"]
NEEDS_ORDER: tuple[Needs, ...] = ("none", "fresh", "running")
"""The runner's phases: in-process work and fresh starts run before the long-lived daemons exist."""

Sample = Mapping[str, float]
ScenarioFn = Callable[["Target"], Sample]


@dataclass(frozen=True)
class Metric:
    """One row of the table."""

    key: str
    label: str
    unit: str
    """``ms`` or ``MiB``: the unit the scenario reports the value in."""


@dataclass(frozen=True)
class Target:
    """What a scenario run gets for one daemon kind."""

    kind: str
    ctr: Ctr
    spawn: Callable[[], Daemon]
    """A new, not yet started daemon of this kind in fresh temp dirs (use it with ``with``)."""
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


SCENARIOS: dict[str, Scenario] = {}
"""Every registered scenario, in registration order (the table's row order)."""


def scenario(
    name: str,
    *,
    needs: Needs,
    metrics: tuple[Metric, ...],
    kinds: tuple[str, ...] = KINDS,
    warmup: int = 0,
) -> Callable[[ScenarioFn], ScenarioFn]:
    """Register the decorated function as scenario ``name``."""

    def register(fn: ScenarioFn) -> ScenarioFn:
        if name in SCENARIOS:
            raise ValueError(f"scenario {name!r} registered twice")
        keys = [m.key for m in metrics]
        if not keys or len(set(keys)) != len(keys):
            raise ValueError(f"scenario {name!r}: metrics must be non-empty with unique keys")
        doc = (fn.__doc__ or "").strip().splitlines()
        SCENARIOS[name] = Scenario(name, doc[0] if doc else name, needs, metrics, fn, kinds, warmup)
        return fn

    return register
