"""Every RPC corrald serves, sent malformed and random requests: it stays up, always answers with a
status within the deadline, and never answers Unknown (an exception no plugin mapped).

Every body is small (Content/Write floods and Diff/Apply of giant layers are not this test's
business), and mounts name only a small sandbox. Short form (the normal run): 500 requests. Long
form: ``CORRAL_FUZZ_MESSAGES=10000``. The seed is ``CORRAL_FUZZ_SEED`` (fixed by default, so a
failure can be replayed); a summary of the statuses seen is printed (``pytest -s``).
"""

from __future__ import annotations

import os
import random
import subprocess
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest
from grpc_bodies import BodyMaker
from grpc_calls import OPEN_BY_DESIGN, RPC, Outcome, Plan, call, channel, generated_rpcs, message_types
from grpclib.const import Status
from harness import Daemon

MESSAGES = int(os.environ.get("CORRAL_FUZZ_MESSAGES", "500"))
SEED = int(os.environ.get("CORRAL_FUZZ_SEED", "20261202"))
NAMESPACE_HEADERS = ("default", "default", "fuzz", "fuzz", "fresh", "../escape", "a" * 300, None)
PLANS = ("end",) * 8 + ("abandon", "after")


@dataclass(frozen=True)
class Sent:
    rpc: RPC
    strategy: str
    plan: Plan
    namespace: str | None
    outcome: Outcome

    def describe(self) -> str:
        bodies = ", ".join(b[:48].hex() + ("…" if len(b) > 48 else "") for b in self.plan.bodies) or "none"
        return (
            f"{self.rpc.path} [{self.strategy}, {self.plan.mode}, namespace={self.namespace!r}] bodies: {bodies}"
            f" -> {self.outcome.status.name} {self.outcome.message!r}"
            + (f" ({self.outcome.transport})" if self.outcome.transport else "")
        )


def served(rpcs: list[RPC], socket: str) -> list[RPC]:
    """The generated RPCs the daemon serves: the others answer 'unknown service'."""

    async def probe() -> list[RPC]:
        ch = channel(socket)
        try:
            found = []
            for rpc in rpcs:
                outcome = await call(ch, rpc, Plan([b""]), {"containerd-namespace": "default"})
                unknown = outcome.status is Status.UNIMPLEMENTED and outcome.message.startswith("unknown ")
                if not unknown:
                    found.append(rpc)
            return found
        finally:
            ch.close()

    return anyio.run(probe)


async def fuzz(d: Daemon, rpcs: list[RPC], sandbox: Path, count: int, seed: int) -> list[Sent]:
    rng = random.Random(seed)
    maker = BodyMaker(rng, sandbox, message_types())
    sent: list[Sent] = []
    ch = channel(d.socket)
    try:
        for _ in range(count):
            rpc = rng.choice(rpcs)
            strategy, body = maker.body(rpc.request_type)
            n = 1 if rng.random() < 0.85 else rng.choice((0, 2, 3))
            bodies = [body, *(maker.body(rpc.request_type)[1] for _ in range(n - 1))][:n]
            plan = Plan(bodies, rng.choice(PLANS))
            namespace = rng.choice(NAMESPACE_HEADERS)
            metadata = {"containerd-namespace": namespace} if namespace is not None else {}
            outcome = await call(ch, rpc, plan, metadata)
            sent.append(Sent(rpc, strategy, plan, namespace, outcome))
            assert d.proc is not None
            if d.proc.poll() is not None:
                raise AssertionError(
                    f"corrald died (exit {d.proc.returncode}) after: {sent[-1].describe()} (seed {seed})"
                )
    finally:
        ch.close()
    return sent


def summary(sent: list[Sent], seconds: float) -> str:
    by_status = Counter(s.outcome.status.name for s in sent)
    by_rpc = Counter(s.rpc.path for s in sent)
    lines = [
        f"fuzzed {len(sent)} requests over {len(by_rpc)} RPCs in {seconds:.1f}s (seed {SEED})",
        "statuses: " + ", ".join(f"{name} {n}" for name, n in by_status.most_common()),
        "strategies: " + ", ".join(f"{k} {n}" for k, n in Counter(s.strategy for s in sent).most_common()),
        "plans: " + ", ".join(f"{k} {n}" for k, n in Counter(s.plan.mode for s in sent).most_common()),
    ]
    return "\n".join(lines)


def stale_mounts(*roots: Path) -> list[str]:
    """Mounts of this test's directories (as source or target); other daemons on the machine may
    have mounts of their own."""
    lines = Path("/proc/self/mountinfo").read_text().splitlines()
    return [line for line in lines if any(str(r) in line for r in roots)]


@pytest.mark.root
def test_no_request_crashes_hangs_or_answers_unknown(fuzz_daemon: Daemon, sandbox: Path) -> None:
    d = fuzz_daemon
    rpcs = served(generated_rpcs(), d.socket)
    paths = {rpc.path for rpc in rpcs}
    # The probe found the daemon's surface, not a fraction of it.
    assert {"/containerd.services.content.v1.Content/Write", "/containerd.services.snapshots.v1.Snapshots/Prepare",
            "/containerd.services.leases.v1.Leases/Create", "/grpc.health.v1.Health/Watch"} <= paths  # fmt: skip
    assert paths >= OPEN_BY_DESIGN
    pid = d.proc.pid if d.proc else 0

    started = time.monotonic()
    sent = anyio.run(fuzz, d, rpcs, sandbox, MESSAGES, SEED)
    report = summary(sent, time.monotonic() - started)
    print("\n" + report)

    hung = [s for s in sent if s.outcome.hung]
    unknown = [s for s in sent if s.outcome.status is Status.UNKNOWN]
    assert not hung, f"{len(hung)} calls hung (seed {SEED}):\n" + "\n".join(s.describe() for s in hung[:10])
    assert not unknown, f"{len(unknown)} calls answered Unknown (seed {SEED}):\n" + "\n".join(
        s.describe() for s in unknown[:10]
    )
    assert d.proc is not None and d.proc.poll() is None and d.proc.pid == pid
    version = d.ctr("version")
    assert "Revision: corral" in version.stdout
    failures = [line for line in d.log().splitlines() if "handler_failed" in line]
    assert not failures, f"the daemon logged unmapped exceptions (seed {SEED}):\n" + "\n".join(failures[:10])
    assert not stale_mounts(sandbox, d.base), "mounts left behind:\n" + "\n".join(
        stale_mounts(sandbox, d.base)
    )
    # Every RPC was reached, most more than once.
    assert {s.rpc.path for s in sent} == paths or 20 * len(paths) > MESSAGES


def test_the_fuzzer_is_reproducible_from_its_seed(tmp_path: Path) -> None:
    types = message_types()
    rpc = generated_rpcs()[0]
    first, again = (BodyMaker(random.Random(7), tmp_path, types) for _ in range(2))
    bodies = [first.body(rpc.request_type) for _ in range(20)]
    assert bodies == [again.body(rpc.request_type) for _ in range(20)]
    assert len(set(bodies)) > 1


@pytest.mark.root
def test_a_fuzzed_daemon_stops_gracefully_and_starts_again_on_its_state(
    fuzz_daemon: Daemon, sandbox: Path
) -> None:
    rpcs = served(generated_rpcs(), fuzz_daemon.socket)
    anyio.run(fuzz, fuzz_daemon, rpcs, sandbox, 100, SEED + 1)
    assert fuzz_daemon.stop() == 0
    fuzz_daemon.start()
    result = subprocess.run(
        ["ctr", "-a", fuzz_daemon.socket, "version"], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr
