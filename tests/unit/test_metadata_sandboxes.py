"""Sandboxes in the sqlite metadata store: containerd's core/metadata/sandbox.go — validation,
store-set times, field paths and their bolt merge rules, filters, errors, and garbage collection."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import pytest

from corral.kernel import AlreadyExists, InvalidArgument, NotFound
from corral.plugins.content.memory import MemoryContentStore
from corral.plugins.core import namespace
from corral.plugins.metadata import (
    AnyValue,
    NamespacedContent,
    NamespaceStore,
    Sandbox,
    SandboxRuntime,
    SandboxStore,
)
from corral.plugins.metadata.sqlite import SqliteMetadata, open_metadata

RUNC = SandboxRuntime("io.containerd.runc.v2", AnyValue("runc.Options", b"\x01"))
SPEC = AnyValue("types.containerd.io/opencontainers/runtime-spec/1/Spec", b"{}")


def run(tmp_path: Path, body: Callable[[SqliteMetadata, SandboxStore], Awaitable[None]]) -> None:
    async def main() -> None:
        md = open_metadata(tmp_path / "meta.db", content=MemoryContentStore())
        try:
            with namespace("default"):
                await body(md, md.view(SandboxStore))
        finally:
            md.close()

    anyio.run(main)


def test_create_sets_both_times_and_get_returns_every_field(tmp_path: Path) -> None:
    async def body(md: SqliteMetadata, store: SandboxStore) -> None:
        before = time.time()
        sb = Sandbox(
            "pod-1", RUNC, {"a": "1", "empty": ""}, SPEC, "podsandbox", {"ext": AnyValue("x.Y", b"v")}
        )
        created = await store.create(sb)
        assert created.created_at is not None and created.created_at == created.updated_at
        assert before - 1 <= created.created_at.timestamp() <= time.time() + 1
        got = await store.get("pod-1")
        assert got == created
        assert got.labels == {"a": "1"}  # bolt stores no empty label value
        assert got.runtime == RUNC and got.spec == SPEC and got.sandboxer == "podsandbox"
        assert got.extensions == {"ext": AnyValue("x.Y", b"v")}

    run(tmp_path, body)


def test_errors_are_containerds(tmp_path: Path) -> None:
    async def body(md: SqliteMetadata, store: SandboxStore) -> None:
        with pytest.raises(NotFound, match=r"^no sandbox buckets: not found$"):
            await store.get("x")
        with pytest.raises(NotFound, match=r"^no sandbox buckets: not found$"):
            await store.delete("x")
        with pytest.raises(
            InvalidArgument,
            match=r"^failed to validate sandbox: invalid sandbox ID: identifier must",
        ):
            await store.create(Sandbox(""))
        with pytest.raises(InvalidArgument, match=r"invalid sandbox ID"):
            await store.create(Sandbox("bad/id"))
        await store.create(Sandbox("a", RUNC))
        with pytest.raises(
            AlreadyExists, match=r'^write error: sandbox bucket "a" already exists: already exists$'
        ):
            await store.create(Sandbox("a", RUNC))
        with pytest.raises(NotFound, match=r'^bucket "x" not found: not found$'):
            await store.get("x")
        with pytest.raises(NotFound, match=r'^failed to delete sandbox "x": not found$'):
            await store.delete("x")
        with pytest.raises(InvalidArgument, match=r'cannot update "sandboxer" field on sandbox "a"'):
            await store.update(Sandbox("a", RUNC, sandboxer="other"), ["sandboxer"])
        with pytest.raises(InvalidArgument, match=r"sandbox.Runtime.Name field is immutable"):
            await store.update(Sandbox("a", SandboxRuntime("other")))
        with pytest.raises(InvalidArgument):
            await store.list(["labels.a=="])
        # The bucket outlives its sandboxes: a namespace that had one words a miss by the id.
        await store.delete("a")
        with pytest.raises(NotFound, match=r'^bucket "a" not found'):
            await store.get("a")

    run(tmp_path, body)


def test_an_update_answers_the_record_as_asked_and_stores_it_merged_as_bolt_does(tmp_path: Path) -> None:
    async def body(md: SqliteMetadata, store: SandboxStore) -> None:
        created = await store.create(
            Sandbox("s", RUNC, {"keep": "1", "drop": "2"}, SPEC, "podsandbox", {"e1": AnyValue("t", b"1")})
        )
        await anyio.sleep(0.01)
        change = Sandbox("s", labels={"drop": ""}, extensions={"e2": AnyValue("t", b"2")})
        one = await store.update(change, ["labels.drop", "extensions"])
        assert one.labels == {"keep": "1"} and set(one.extensions) == {"e2"}
        assert one.created_at == created.created_at and one.updated_at is not None
        assert created.updated_at is not None and one.updated_at > created.updated_at
        assert one.sandboxer == "podsandbox" and one.spec == SPEC
        # What is stored keeps every extension: the bucket overwrite removes none.
        assert set((await store.get("s")).extensions) == {"e1", "e2"}
        # A full replace: labels replaced; the answer has no spec, the store keeps it.
        two = await store.update(Sandbox("s", SandboxRuntime("io.containerd.runc.v2"), {"new": "x"}))
        assert two.labels == {"new": "x"} and two.spec is None and two.runtime.options is None
        stored = await store.get("s")
        assert stored.spec == SPEC and stored.runtime == RUNC and stored.labels == {"new": "x"}
        three = await store.update(Sandbox("s", SandboxRuntime("io.containerd.kata.v2")), ["runtime"])
        assert three.runtime == SandboxRuntime("io.containerd.kata.v2")
        assert (await store.get("s")).runtime == SandboxRuntime("io.containerd.kata.v2", RUNC.options)

    run(tmp_path, body)


def test_list_is_sorted_and_filters_on_id_and_labels(tmp_path: Path) -> None:
    async def body(md: SqliteMetadata, store: SandboxStore) -> None:
        for sid, app in (("c", "web"), ("a", "db"), ("b", "web")):
            await store.create(Sandbox(sid, RUNC, {"app": app}))
        assert [s.id for s in await store.list()] == ["a", "b", "c"]
        assert [s.id for s in await store.list(["labels.app==web"])] == ["b", "c"]
        assert [s.id for s in await store.list(["id==a", "labels.app==nothing"])] == ["a"]
        with namespace("other"):
            assert await store.list() == []

    run(tmp_path, body)


def test_a_sandbox_holds_what_its_gc_labels_name_and_is_never_collected(tmp_path: Path) -> None:
    async def body(md: SqliteMetadata, store: SandboxStore) -> None:
        content = md.view(NamespacedContent)
        w = await content.writer("ref-1")
        await w.write(b"held by a sandbox")
        info = await w.commit(17, "")
        w2 = await content.writer("ref-2")
        await w2.write(b"held by nothing")
        loose = await w2.commit(15, "")
        await store.create(Sandbox("pod", RUNC, {"containerd.io/gc.ref.content.x": info.digest}))
        result = await md.garbage_collect()
        assert f"default/{loose.digest}" in result.removed.get("content", [])
        assert (await content.info(info.digest)).digest == info.digest
        assert (await store.get("pod")).id == "pod"

    run(tmp_path, body)


def test_a_namespace_with_sandboxes_can_be_deleted_and_takes_them_along(tmp_path: Path) -> None:
    async def body(md: SqliteMetadata, store: SandboxStore) -> None:
        with namespace("pods"):
            await store.create(Sandbox("p", RUNC))
        await md.view(NamespaceStore).delete("pods")
        with namespace("pods"), pytest.raises(NotFound, match=r"no sandbox buckets"):
            await store.get("p")

    run(tmp_path, body)
