"""containerd.services.sandbox.v1.Store: the same calls against corrald and Debian's containerd 2.x,
the same answers — records (times aside), gRPC codes and messages. (Debian's containerd 1.6 serves
no sandbox API: its Store and Controller are UNIMPLEMENTED.)"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
from containerd2 import Containerd2, containerd2_bin
from grpclib.client import Channel
from grpclib.exceptions import GRPCError
from harness import Daemon
from tooling import require_root

from corral.api.types.containerd import types as ctypes
from corral.api.types.containerd.services.sandbox import v1 as pb
from corral.api.types.google import protobuf

RUNC = ctypes.SandboxRuntime(
    name="io.containerd.runc.v2", options=protobuf.Any(type_url="runc.Options", value=b"\x08\x01")
)
SPEC = protobuf.Any(type_url="types.containerd.io/opencontainers/runtime-spec/1/Spec", value=b"{}")


def sandbox(sid: str, **fields: Any) -> ctypes.Sandbox:
    fields.setdefault("runtime", RUNC)
    return ctypes.Sandbox(sandbox_id=sid, **fields)


def record(s: ctypes.Sandbox | None) -> dict[str, Any]:
    """A sandbox without its times (which only need to agree with each other)."""
    assert s is not None
    return {
        "id": s.sandbox_id,
        "runtime": (s.runtime.name, s.runtime.options.type_url if s.runtime.options else None,
                    bytes(s.runtime.options.value) if s.runtime.options else None) if s.runtime else None,
        "spec": (s.spec.type_url, bytes(s.spec.value)) if s.spec else None,
        "labels": dict(s.labels),
        "extensions": {k: (v.type_url, bytes(v.value)) for k, v in s.extensions.items()},
        "sandboxer": s.sandboxer,
    }  # fmt: skip


Call = Callable[[pb.StoreStub], Awaitable[Any]]

STEPS: list[tuple[str, Call]] = [
    ("get in a namespace without sandboxes", lambda st: st.get(pb.StoreGetRequest(sandbox_id="x"))),
    ("delete in a namespace without sandboxes", lambda st: st.delete(pb.StoreDeleteRequest(sandbox_id="x"))),
    ("list in a namespace without sandboxes", lambda st: st.list(pb.StoreListRequest())),
    ("create without an id", lambda st: st.create(pb.StoreCreateRequest(sandbox=sandbox("")))),
    ("create with a bad id", lambda st: st.create(pb.StoreCreateRequest(sandbox=sandbox("a/b")))),
    (
        "create",
        lambda st: st.create(
            pb.StoreCreateRequest(
                sandbox=sandbox(
                    "s1",
                    spec=SPEC,
                    labels={"app": "web", "empty": ""},
                    extensions={"e1": protobuf.Any(type_url="x.One", value=b"1")},
                    sandboxer="podsandbox",
                )
            )
        ),
    ),
    ("create taken", lambda st: st.create(pb.StoreCreateRequest(sandbox=sandbox("s1")))),
    (
        "create another",
        lambda st: st.create(pb.StoreCreateRequest(sandbox=sandbox("s2", labels={"app": "db"}))),
    ),
    ("get missing", lambda st: st.get(pb.StoreGetRequest(sandbox_id="x"))),
    ("get", lambda st: st.get(pb.StoreGetRequest(sandbox_id="s1"))),
    (
        "update a label and the extensions",
        lambda st: st.update(
            pb.StoreUpdateRequest(
                sandbox=sandbox(
                    "s1",
                    labels={"app": "", "tier": "1"},
                    extensions={"e2": protobuf.Any(type_url="x.Two", value=b"2")},
                ),
                fields=["labels.app", "labels.tier", "extensions"],
            )
        ),
    ),
    ("get after an update", lambda st: st.get(pb.StoreGetRequest(sandbox_id="s1"))),
    (
        "update a field that cannot change",
        lambda st: st.update(
            pb.StoreUpdateRequest(sandbox=sandbox("s1", sandboxer="x"), fields=["sandboxer"])
        ),
    ),
    (
        "full update with another runtime",
        lambda st: st.update(
            pb.StoreUpdateRequest(sandbox=sandbox("s1", runtime=ctypes.SandboxRuntime(name="x")))
        ),
    ),
    (
        "full update without a spec",
        lambda st: st.update(pb.StoreUpdateRequest(sandbox=sandbox("s1", labels={"only": "this"}))),
    ),
    (
        "update the runtime without options",
        lambda st: st.update(
            pb.StoreUpdateRequest(
                sandbox=sandbox("s1", runtime=ctypes.SandboxRuntime(name="io.containerd.kata.v2")),
                fields=["runtime"],
            )
        ),
    ),
    (
        "update missing",
        lambda st: st.update(pb.StoreUpdateRequest(sandbox=sandbox("nope"), fields=["labels"])),
    ),
    ("list", lambda st: st.list(pb.StoreListRequest())),
    ("list by label", lambda st: st.list(pb.StoreListRequest(filters=["labels.app==db"]))),
    ("list by id or label", lambda st: st.list(pb.StoreListRequest(filters=["id==s1", "labels.app==db"]))),
    ("list with a bad filter", lambda st: st.list(pb.StoreListRequest(filters=["labels.app=="]))),
    ("delete missing", lambda st: st.delete(pb.StoreDeleteRequest(sandbox_id="x"))),
    ("delete", lambda st: st.delete(pb.StoreDeleteRequest(sandbox_id="s1"))),
    ("get deleted", lambda st: st.get(pb.StoreGetRequest(sandbox_id="s1"))),
]


async def outcomes(socket: str) -> list[tuple[str, Any]]:
    channel = Channel(path=socket)
    store = pb.StoreStub(channel, metadata={"containerd-namespace": "pods"})
    out: list[tuple[str, Any]] = []
    try:
        for name, call in STEPS:
            try:
                reply = await call(store)
            except GRPCError as exc:
                out.append((name, ("error", exc.status.value, exc.message)))
                continue
            if isinstance(reply, pb.StoreListResponse):
                out.append((name, ("list", [record(s) for s in reply.list])))
            elif hasattr(reply, "sandbox"):
                s = reply.sandbox
                assert s.created_at is not None and s.updated_at is not None
                times = (
                    "same"
                    if s.created_at == s.updated_at
                    else "updated later"
                    if s.updated_at > s.created_at
                    else "?"
                )
                out.append((name, ("sandbox", record(s), times)))
            else:
                out.append((name, ("ok",)))
    finally:
        channel.close()
    return out


def test_the_sandbox_store_answers_as_containerd_2_does(tmp_path: Path) -> None:
    require_root()
    containerd2_bin()
    theirs_daemon = Containerd2(tmp_path / "containerd").start()
    ours_daemon = Daemon(tmp_path / "corral").start()
    try:
        theirs = anyio.run(outcomes, theirs_daemon.socket)
        ours = anyio.run(outcomes, ours_daemon.socket)
    finally:
        ours_daemon.stop()
        theirs_daemon.stop()
    for (name, mine), (_, expected) in zip(ours, theirs, strict=True):
        assert mine == expected, name
