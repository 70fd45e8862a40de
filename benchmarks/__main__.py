"""``python -m benchmarks``: corrald and containerd side by side; the Markdown table goes to stdout."""

from __future__ import annotations

import argparse
import compileall
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from types import FrameType

import corral
from benchmarks import images as _images  # noqa: F401  (registers the import and export scenarios)
from benchmarks import scenarios as _scenarios  # noqa: F401  (registers the scenarios)
from benchmarks import tasks as _tasks  # noqa: F401  (registers the container-run scenario)
from benchmarks import unpack as _unpack  # noqa: F401  (registers the unpack and snapshot scenarios)
from benchmarks.daemons import (
    CONTAINERD,
    CONTAINERD_BIN,
    CORRAL,
    ContainerdDaemon,
    CorralDaemon,
    Ctr,
    DaemonError,
    containerd_version,
    corrald_binary,
    ctr_binary,
)
from benchmarks.registry import SCENARIOS
from benchmarks.report import collect_environment, render_markdown, to_json
from benchmarks.runner import DaemonFactory, Runner

# isort: split
from benchmarks import cri as _cri  # noqa: F401  (registers the CRI pod scenario)

# isort: split
# Registered last, so the load scenarios' RSS row is read after every other running scenario.
from benchmarks import load as _load  # noqa: F401

DEFAULT_RUNS = 10
QUICK_RUNS = 3


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Benchmark corrald against Debian's containerd, both driven by ctr; "
        "prints a Markdown table of medians and corral/containerd ratios.",
    )
    runs = p.add_mutually_exclusive_group()
    runs.add_argument("--runs", type=int, default=DEFAULT_RUNS, metavar="N", help="runs per measurement (10)")
    runs.add_argument("--quick", action="store_true", help=f"same as --runs {QUICK_RUNS}")
    p.add_argument("--json", type=Path, metavar="PATH", help="also write the raw samples as JSON")
    p.add_argument(
        "--only",
        action="append",
        metavar="SCENARIO",
        choices=list(SCENARIOS),
        help="run only these (repeatable)",
    )
    p.add_argument("--list", action="store_true", help="list the scenarios and exit")
    p.add_argument("--containerd", default=CONTAINERD_BIN, metavar="PATH", help=f"(default {CONTAINERD_BIN})")
    p.add_argument("--keep", action="store_true", help="keep the /tmp/corral-bench-* work dir")
    args = p.parse_args(argv)
    if args.quick:
        args.runs = QUICK_RUNS
    if args.runs < 1:
        p.error("--runs must be at least 1")
    return args


def _terminate(signum: int, _frame: FrameType | None) -> None:
    # Unwind through the context managers so every daemon started is stopped; a second signal
    # must not interrupt that clean-up.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    print(f"interrupted by {signal.Signals(signum).name}; stopping daemons", file=sys.stderr)
    raise SystemExit(128 + signum)


def prime_startup_caches(corrald: str, ctr: Ctr, workdir: Path) -> None:
    """Start corrald once where it may write its start-up caches beside its bytecode (the code of
    its dataclasses, the index of lazily started gRPC plugins), as the first start after an
    install does; every measured start then finds them."""
    saved = os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    try:
        with CorralDaemon(corrald, workdir, ctr):
            pass
    finally:
        if saved is not None:
            os.environ["PYTHONDONTWRITEBYTECODE"] = saved


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list:
        for sc in SCENARIOS.values():
            print(f"{sc.name:24} {sc.needs:8} {sc.description}")
        return 0
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, _terminate)

    def progress(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    ctr_path = ctr_binary()
    if ctr_path is None:
        progress("error: ctr not found (install Debian's containerd package)")
        return 2
    ctr = Ctr(ctr_path)
    corrald = corrald_binary()
    # As pip does when it installs a package: corral's modules compiled, so that every start of
    # corrald reads bytecode even where PYTHONDONTWRITEBYTECODE keeps Python from writing it.
    compileall.compile_dir(str(Path(corral.__file__).parent), quiet=1)
    factories: dict[str, DaemonFactory] = {CORRAL: lambda wd: CorralDaemon(corrald, wd, ctr)}

    version: str | None = None
    note = ""
    if not os.access(args.containerd, os.X_OK):
        note = f"not found at {args.containerd}"
    elif os.geteuid() != 0:
        note = "skipped (needs root)"
    else:
        version = containerd_version(args.containerd)
        binary = args.containerd
        factories[CONTAINERD] = lambda wd: ContainerdDaemon(binary, wd, ctr)
    if note:
        progress(f"containerd {note}: running corral only")

    selected = [sc for sc in SCENARIOS.values() if not args.only or sc.name in args.only]
    env = collect_environment(args.runs, version, note)
    workdir = Path(tempfile.mkdtemp(prefix="corral-bench-", dir="/tmp"))
    progress(f"work dir {workdir}; {args.runs} runs per measurement")
    keep = args.keep
    try:
        prime_startup_caches(corrald, ctr, workdir / "prime")
        results = Runner(factories, ctr, workdir, args.runs, progress).run(selected)
    except (DaemonError, RuntimeError, OSError, subprocess.SubprocessError) as exc:
        keep = True
        detail = getattr(exc, "stderr", None)
        progress(f"error: {exc}" + (f"\n{detail}" if detail else ""))
        return 1
    finally:
        if keep:
            progress(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    if args.json is not None:
        args.json.write_text(json.dumps(to_json(env, selected, results), indent=2) + "\n")
        progress(f"raw results written to {args.json}")
    sys.stdout.write(render_markdown(env, selected, results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
