"""The Markdown table (for the README) and the raw JSON."""

from __future__ import annotations

import datetime as dt
import os
import platform
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.daemons import CONTAINERD, CORRAL
from benchmarks.registry import Metric, Scenario
from benchmarks.runner import Results
from benchmarks.timing import Summary
from corral import __version__ as corral_version

DASH = "—"


@dataclass(frozen=True)
class Environment:
    date: str
    uname: str
    cpu: str
    cpus: int
    python: str
    containerd: str | None
    """containerd's version, or None when it was not benchmarked."""
    containerd_note: str
    corral: str
    runs: int


def cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    for key in ("model name", "Model", "Hardware", "cpu model", "cpu"):
        for line in text.splitlines():
            name, sep, value = line.partition(":")
            if sep and name.strip() == key and value.strip():
                return value.strip()
    return platform.processor() or "unknown CPU"


def collect_environment(runs: int, containerd: str | None, containerd_note: str = "") -> Environment:
    u = os.uname()
    return Environment(
        date=dt.date.today().isoformat(),
        uname=f"{u.sysname} {u.release} {u.machine}",  # what `uname -srm` prints
        cpu=cpu_model(),
        cpus=os.cpu_count() or 1,
        python=platform.python_version(),
        containerd=containerd,
        containerd_note=containerd_note,
        corral=corral_version,
        runs=runs,
    )


def fmt_value(value: float, unit: str) -> str:
    if unit == "\N{MULTIPLICATION SIGN}":
        return f"{value:.2f}{unit}"
    if unit == "ms":
        digits = 0 if value >= 100 else 1 if value >= 10 else 2
    elif unit == "s":
        digits = 2
    elif value >= 1000:
        digits = 0
    else:
        digits = 1
    return f"{value:,.{digits}f} {unit}"


def fmt_ratio(ratio: float | None) -> str:
    return DASH if ratio is None else f"{ratio:.2f}\N{MULTIPLICATION SIGN}"


def medians(results: Results, sc: Scenario, metric: Metric) -> dict[str, float]:
    out = {}
    for kind in (CORRAL, CONTAINERD):
        values = results.values(sc.name, metric.key, kind)
        if values:
            out[kind] = statistics.median(values)
    return out


def ratio(med: dict[str, float]) -> float | None:
    if CORRAL in med and med.get(CONTAINERD):
        return med[CORRAL] / med[CONTAINERD]
    return None


def header(env: Environment) -> str:
    containerd = f"containerd {env.containerd}" if env.containerd else f"containerd: {env.containerd_note}"
    return (
        f"_{env.date} · {env.uname} · {env.cpu} ({env.cpus} CPUs) · Python {env.python} · "
        f"{containerd} · corral {env.corral} · median of {env.runs} runs, both driven by `ctr`_"
    )


def row_label(sc: Scenario, metric: Metric, runs: int) -> str:
    """The metric's label, marked when higher is better or when it had fewer runs than the others."""
    label = metric.label
    if metric.higher_is_better:
        label += " (higher is better)"
    n = sc.runs(runs)
    if n != runs:
        label += f" · median of {n} run{'' if n == 1 else 's'}"
    return label


def render_markdown(env: Environment, scenarios: Sequence[Scenario], results: Results) -> str:
    lines = [
        header(env),
        "",
        "| Measurement | corral | containerd | corral / containerd |",
        "|---|---:|---:|---:|",
    ]
    for sc in scenarios:
        for metric in sc.metrics:
            med = medians(results, sc, metric)
            if not med:
                continue
            cells = [fmt_value(med[k], metric.unit) if k in med else DASH for k in (CORRAL, CONTAINERD)]
            label = row_label(sc, metric, env.runs)
            lines.append(f"| {label} | {cells[0]} | {cells[1]} | {fmt_ratio(ratio(med))} |")
    return "\n".join(lines) + "\n"


def to_json(env: Environment, scenarios: Sequence[Scenario], results: Results) -> dict[str, Any]:
    out: dict[str, Any] = {"environment": asdict(env), "runs": results.runs, "scenarios": {}}
    for sc in scenarios:
        metrics: dict[str, Any] = {}
        for metric in sc.metrics:
            per_kind = results.samples.get(sc.name, {}).get(metric.key, {})
            if not per_kind:
                continue
            metrics[metric.key] = {
                "label": metric.label,
                "unit": metric.unit,
                "higher_is_better": metric.higher_is_better,
                "samples": per_kind,
                "summary": {kind: asdict(Summary.of(values)) for kind, values in per_kind.items()},
                "ratio_corral_over_containerd": ratio(medians(results, sc, metric)),
            }
        if metrics:
            out["scenarios"][sc.name] = {
                "description": sc.description,
                "needs": sc.needs,
                "runs": sc.runs(results.runs),
                "metrics": metrics,
            }
    return out
