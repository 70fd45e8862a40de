"""The in-process wasm runtime with real wasmtime, real FIFOs and the real event exchange."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import anyio
import pytest
from deep_trees import deep_tree

wasmtime = pytest.importorskip("wasmtime")

from corral.kernel import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound  # noqa: E402
from corral.plugins.core import namespace  # noqa: E402
from corral.plugins.events.exchange import Exchange  # noqa: E402
from corral.plugins.metadata import AnyValue  # noqa: E402
from corral.plugins.runtimes import SPEC_TYPE_URL, CreateOpts, Task, TaskIO, TaskStatus  # noqa: E402
from corral.plugins.runtimes.wasm import RUNTIME_NAME, WasmRuntime  # noqa: E402
from corral.plugins.runtimes.wasm._engine import ModuleCache  # noqa: E402

pytestmark = pytest.mark.anyio

WASI = '(import "wasi_snapshot_preview1" "{0}" (func ${0} (param {1}) {2}))'


def module(body: str, data: str = "", imports: tuple[str, ...] = ("fd_write", "proc_exit")) -> bytes:
    """A WASI command from text: ``body`` is ``_start``'s code."""
    sigs = {
        "fd_write": ("i32 i32 i32 i32", "(result i32)"),
        "fd_read": ("i32 i32 i32 i32", "(result i32)"),
        "proc_exit": ("i32", ""),
        "args_sizes_get": ("i32 i32", "(result i32)"),
        "environ_sizes_get": ("i32 i32", "(result i32)"),
    }
    decls = "\n".join(WASI.format(name, *sigs[name]) for name in imports)
    escaped = "".join(f"\\{b:02x}" for b in data.encode())
    text = f"""(module {decls}
      (memory (export "memory") 1)
      (data (i32.const 1024) "{escaped}")
      (func (export "_start") {body}))"""
    return bytes(wasmtime.wat2wasm(text))


def write_stdout(n: int) -> str:
    """fd_write(1, iovec at 0 -> (1024, n))"""
    return (
        f"(i32.store (i32.const 0) (i32.const 1024)) (i32.store (i32.const 4) (i32.const {n}))"
        " (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 16)))"
    )


HELLO = module(write_stdout(6) + " (call $proc_exit (i32.const 3))", "hello\n")
SPIN = module("(loop $l (br $l))")
TRAP = module("unreachable")
# argc and envc, as two decimal digits each: "AE\n"
COUNTS = module(
    "(drop (call $args_sizes_get (i32.const 100) (i32.const 104)))"
    " (drop (call $environ_sizes_get (i32.const 108) (i32.const 112)))"
    " (i32.store8 (i32.const 1024) (i32.add (i32.const 48) (i32.load (i32.const 100))))"
    " (i32.store8 (i32.const 1025) (i32.add (i32.const 48) (i32.load (i32.const 108))))" + write_stdout(3),
    "..\n",
    ("fd_write", "args_sizes_get", "environ_sizes_get"),
)


class Harness:
    def __init__(self, tmp: Path, tg: Any) -> None:
        self.tmp = tmp
        self.exchange = Exchange()
        self.cache = ModuleCache()

        def spawn(fn: Callable[[], Coroutine[Any, Any, None]], name: str) -> None:
            tg.start_soon(fn, name=name)

        self.runtime = WasmRuntime(tmp / "state", spawn, self.exchange, self.cache)

    def rootfs(self, name: str, wasm: bytes) -> Path:
        root = self.tmp / "images" / name
        root.mkdir(parents=True)
        (root / "app.wasm").write_bytes(wasm)
        return root

    def opts(
        self, name: str, wasm: bytes, args: list[str] | None = None, env: list[str] | None = None, **io: Any
    ) -> CreateOpts:
        """A container whose spec's root is a directory holding the module (no snapshot mounts)."""
        spec = {
            "root": {"path": str(self.rootfs(name, wasm))},
            "process": {"args": args or ["/app.wasm"], "env": env or []},
        }
        return CreateOpts(
            spec=AnyValue(SPEC_TYPE_URL, json.dumps(spec).encode()), io=TaskIO(**io), runtime=RUNTIME_NAME
        )

    async def create(self, task_id: str, opts: CreateOpts) -> Task:
        with namespace("ns"):
            return await self.runtime.create(task_id, opts)

    def fifo(self, name: str) -> str:
        path = self.tmp / name
        os.mkfifo(path)
        return str(path)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    async with anyio.create_task_group() as tg:
        yield Harness(tmp_path, tg)
        tg.cancel_scope.cancel()


async def read_all(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    out = b""
    try:
        with anyio.fail_after(10):
            while True:
                try:
                    chunk = os.read(fd, 65536)
                except BlockingIOError:
                    await anyio.sleep(0.005)
                    continue
                if not chunk and out:
                    return out
                if not chunk:
                    await anyio.sleep(0.005)
                    continue
                out += chunk
    finally:
        os.close(fd)


async def test_a_module_writes_to_its_fifo_and_its_exit_code_is_the_tasks(h: Harness) -> None:
    stdout = h.fifo("out")
    reader = os.open(stdout, os.O_RDONLY | os.O_NONBLOCK)  # the client opens its end first, as ctr does
    async with h.exchange.subscribe() as events:
        task = await h.create("t1", h.opts("t1", HELLO, stdout=stdout))
        assert (await task.state()).status is TaskStatus.CREATED
        bundle = Path((await task.state()).bundle)
        assert json.loads((bundle / "config.json").read_text())["process"]["args"] == ["/app.wasm"]
        await task.start()
        running = await task.state()
        exited = await task.wait()
        assert exited.status == 3 and exited.pid == running.pid > 0
        assert os.read(reader, 100) == b"hello\n"
        with namespace("ns"):
            assert [t.id for t in await h.runtime.tasks()] == ["t1"]
            deleted = await h.runtime.delete("t1")
        assert deleted.status == 3
        assert not bundle.exists()
        topics = []
        with anyio.fail_after(5):
            async for envelope in events:
                assert envelope.namespace == "ns"
                topics.append(envelope.topic)
                if envelope.topic == "/tasks/delete":
                    break
    os.close(reader)
    assert topics == ["/tasks/create", "/tasks/start", "/tasks/exit", "/tasks/delete"]
    with namespace("ns"), pytest.raises(NotFound):
        await h.runtime.get("t1")


async def test_args_and_env_reach_the_guest(h: Harness) -> None:
    stdout = h.fifo("out")
    reader = os.open(stdout, os.O_RDONLY | os.O_NONBLOCK)
    opts = h.opts("t", COUNTS, args=["/app.wasm", "a", "b"], env=["A=1", "B=2", "C=3", "D"], stdout=stdout)
    task = await h.create("t", opts)
    await task.start()
    assert (await task.wait()).status == 0
    assert os.read(reader, 100) == b"34\n"
    os.close(reader)


async def test_kill_ends_a_spinning_guest_promptly_and_only_that_one(h: Harness) -> None:
    spin1 = await h.create("spin1", h.opts("spin1", SPIN))
    spin2 = await h.create("spin2", h.opts("spin2", SPIN))
    await spin1.start()
    await spin2.start()
    await anyio.sleep(0.1)
    began = time.monotonic()
    await spin1.kill(signal.SIGTERM)
    assert (await spin1.wait()).status == 128 + signal.SIGTERM
    assert time.monotonic() - began < 2
    assert (await spin2.state()).status is TaskStatus.RUNNING
    with namespace("ns"), pytest.raises(FailedPrecondition):
        await h.runtime.delete("spin2")
    await spin2.kill(signal.SIGKILL)
    assert (await spin2.wait()).status == 137
    with pytest.raises(NotFound, match="process already finished"):
        await spin2.kill(signal.SIGKILL)
    with pytest.raises(InvalidArgument, match="can only be ended"):
        await spin1.kill(signal.SIGUSR1)


async def test_a_trap_is_exit_134_with_the_trap_on_stderr(h: Harness) -> None:
    stderr = h.fifo("err")
    reader = os.open(stderr, os.O_RDONLY | os.O_NONBLOCK)
    task = await h.create("t", h.opts("t", TRAP, stderr=stderr))
    await task.start()
    assert (await task.wait()).status == 134
    assert b"wasm trap" in os.read(reader, 1000)
    os.close(reader)


async def test_a_module_is_compiled_once_for_many_tasks(h: Harness) -> None:
    opts = h.opts("shared", HELLO)
    for i in range(20):
        task = await h.create(f"t{i}", opts)
        await task.start()
        assert (await task.wait()).status == 3
        await task.delete()
    assert h.cache.compilations == 1


async def test_bad_input_is_refused_and_leaves_nothing(h: Harness) -> None:
    with pytest.raises(FailedPrecondition, match="no such module"):
        await h.create("b", h.opts("b", HELLO, args=["/missing.wasm"]))
    with pytest.raises(InvalidArgument, match="no terminal"):
        await h.create("b", h.opts("b2", HELLO, terminal=True))
    with pytest.raises(InvalidArgument, match="no spec"):
        await h.create("b", CreateOpts(runtime=RUNTIME_NAME))
    with pytest.raises(wasmtime.WasmtimeError):
        await h.create("b", h.opts("b4", b"\0asm not really"))
    with pytest.raises(InvalidArgument):
        await h.create("../escape", h.opts("b5", HELLO))
    with namespace("ns"):
        assert await h.runtime.tasks() == []
    assert list((h.tmp / "state" / "ns").iterdir()) == []
    await h.create("ok", h.opts("ok", HELLO))
    with pytest.raises(AlreadyExists):
        await h.create("ok", h.opts("ok2", HELLO))


async def test_the_module_path_cannot_leave_the_rootfs(h: Harness) -> None:
    outside = h.tmp / "outside.wasm"
    outside.write_bytes(HELLO)
    opts = h.opts("esc", HELLO, args=["/link.wasm"])
    root = Path(json.loads(opts.spec.value)["root"]["path"]) if opts.spec else h.tmp
    (root / "link.wasm").symlink_to(outside)  # absolute: resolved inside the rootfs
    with pytest.raises(FailedPrecondition, match="no such module"):
        await h.create("esc", opts)
    with pytest.raises(FailedPrecondition, match="no such module"):
        await h.create("esc2", h.opts("esc2", HELLO, args=["/../../outside.wasm"]))


async def test_bundles_left_by_a_crash_are_removed_at_start(h: Harness) -> None:
    await h.create("left", h.opts("left", SPIN))
    assert (h.tmp / "state" / "ns" / "left" / "config.json").exists()
    fresh = WasmRuntime(h.tmp / "state", lambda fn, name: None, None, h.cache)
    await fresh.recover()
    assert list((h.tmp / "state" / "ns").iterdir()) == []


async def test_recovery_removes_deep_bundles_but_never_enters_a_rootfs_still_in_use(h: Harness) -> None:
    """A bundle is removed whatever its depth, but only once its rootfs is empty: a rootfs whose
    snapshot could not be unmounted (here, one that still holds files) keeps the bundle whole."""
    state = h.tmp / "state" / "ns"
    deep = state / "deep"
    (deep / "rootfs").mkdir(parents=True)
    deep_tree(deep / "data", 3 * sys.getrecursionlimit())
    busy = state / "busy"
    (busy / "rootfs").mkdir(parents=True)
    (busy / "rootfs" / "snapshot-file").write_text("the snapshot's own bytes")
    fresh = WasmRuntime(h.tmp / "state", lambda fn, name: None, None, h.cache)
    await fresh.recover()
    assert sorted(p.name for p in state.iterdir()) == ["busy"]
    assert (busy / "rootfs" / "snapshot-file").read_text() == "the snapshot's own bytes"
