"""The in-process wasm runtime with real wasmtime, real FIFOs and the real event exchange."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import anyio
import pytest

wasmtime = pytest.importorskip("wasmtime")

from corral.kernel import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound  # noqa: E402
from corral.plugins.events.exchange import Exchange  # noqa: E402
from corral.plugins.events.types import TaskIO  # noqa: E402
from corral.plugins.runtimes.wasm import Status, WasmRuntime  # noqa: E402
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

        self.runtime = WasmRuntime(spawn, self.exchange, self.cache)

    def bundle(
        self, name: str, wasm: bytes, args: list[str] | None = None, env: list[str] | None = None
    ) -> Path:
        bundle = self.tmp / name
        (bundle / "rootfs").mkdir(parents=True)
        (bundle / "rootfs" / "app.wasm").write_bytes(wasm)
        spec = {"root": {"path": "rootfs"}, "process": {"args": args or ["/app.wasm"], "env": env or []}}
        (bundle / "config.json").write_text(json.dumps(spec))
        return bundle

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
    bundle = h.bundle("t1", HELLO)
    async with h.exchange.subscribe() as events:
        task = await h.runtime.create("ns", "t1", bundle, (), TaskIO(stdout=stdout))
        assert task.status is Status.CREATED
        pid = await h.runtime.start("ns", "t1")
        exited = await h.runtime.wait("ns", "t1")
        assert exited.exit_status == 3 and exited.pid == pid > 0
        assert os.read(reader, 100) == b"hello\n"
        deleted = await h.runtime.delete("ns", "t1")
        assert deleted.exit_status == 3
        topics = []
        with anyio.fail_after(5):
            async for envelope in events:
                assert envelope.namespace == "ns"
                topics.append(envelope.topic)
                if envelope.topic == "/tasks/delete":
                    break
    os.close(reader)
    assert topics == ["/tasks/create", "/tasks/start", "/tasks/exit", "/tasks/delete"]
    with pytest.raises(NotFound):
        h.runtime.get("ns", "t1")


async def test_args_and_env_reach_the_guest(h: Harness) -> None:
    stdout = h.fifo("out")
    reader = os.open(stdout, os.O_RDONLY | os.O_NONBLOCK)
    bundle = h.bundle("t", COUNTS, args=["/app.wasm", "a", "b"], env=["A=1", "B=2", "C=3", "D"])
    await h.runtime.create("ns", "t", bundle, (), TaskIO(stdout=stdout))
    await h.runtime.start("ns", "t")
    assert (await h.runtime.wait("ns", "t")).exit_status == 0
    assert os.read(reader, 100) == b"34\n"
    os.close(reader)


async def test_kill_ends_a_spinning_guest_promptly_and_only_that_one(h: Harness) -> None:
    await h.runtime.create("ns", "spin1", h.bundle("spin1", SPIN), (), TaskIO())
    await h.runtime.create("ns", "spin2", h.bundle("spin2", SPIN), (), TaskIO())
    await h.runtime.start("ns", "spin1")
    await h.runtime.start("ns", "spin2")
    await anyio.sleep(0.1)
    began = time.monotonic()
    await h.runtime.kill("ns", "spin1", signal.SIGTERM)
    exited = await h.runtime.wait("ns", "spin1")
    assert exited.exit_status == 128 + signal.SIGTERM
    assert time.monotonic() - began < 2
    assert h.runtime.get("ns", "spin2").status is Status.RUNNING
    with pytest.raises(FailedPrecondition):
        await h.runtime.delete("ns", "spin2")
    await h.runtime.kill("ns", "spin2", signal.SIGKILL)
    assert (await h.runtime.wait("ns", "spin2")).exit_status == 137
    with pytest.raises(NotFound, match="process already finished"):
        await h.runtime.kill("ns", "spin2", signal.SIGKILL)
    with pytest.raises(InvalidArgument, match="can only be ended"):
        await h.runtime.kill("ns", "spin1", signal.SIGUSR1)


async def test_a_trap_is_exit_134_with_the_trap_on_stderr(h: Harness) -> None:
    stderr = h.fifo("err")
    reader = os.open(stderr, os.O_RDONLY | os.O_NONBLOCK)
    await h.runtime.create("ns", "t", h.bundle("t", TRAP), (), TaskIO(stderr=stderr))
    await h.runtime.start("ns", "t")
    assert (await h.runtime.wait("ns", "t")).exit_status == 134
    assert b"wasm trap" in os.read(reader, 1000)
    os.close(reader)


async def test_a_module_is_compiled_once_for_many_tasks(h: Harness) -> None:
    bundle = h.bundle("shared", HELLO)
    for i in range(20):
        await h.runtime.create("ns", f"t{i}", bundle, (), TaskIO())
        await h.runtime.start("ns", f"t{i}")
        assert (await h.runtime.wait("ns", f"t{i}")).exit_status == 3
        await h.runtime.delete("ns", f"t{i}")
    assert h.cache.compilations == 1


async def test_bad_input_is_refused_and_leaves_nothing(h: Harness) -> None:
    bundle = h.bundle("b", HELLO, args=["/missing.wasm"])
    with pytest.raises(FailedPrecondition, match="no such module"):
        await h.runtime.create("ns", "b", bundle, (), TaskIO())
    assert h.runtime.list("ns") == []
    with pytest.raises(InvalidArgument, match="no terminal"):
        await h.runtime.create("ns", "b", h.bundle("b2", HELLO), (), TaskIO(terminal=True))
    (h.tmp / "b3").mkdir()
    with pytest.raises(InvalidArgument, match=r"no config\.json"):
        await h.runtime.create("ns", "b", h.tmp / "b3", (), TaskIO())
    bad = h.bundle("b4", b"\0asm not really")
    with pytest.raises(wasmtime.WasmtimeError):
        await h.runtime.create("ns", "b", bad, (), TaskIO())
    assert h.runtime.list("ns") == []
    await h.runtime.create("ns", "ok", h.bundle("ok", HELLO), (), TaskIO())
    with pytest.raises(AlreadyExists):
        await h.runtime.create("ns", "ok", h.bundle("ok2", HELLO), (), TaskIO())


async def test_the_module_path_cannot_leave_the_rootfs(h: Harness) -> None:
    outside = h.tmp / "outside.wasm"
    outside.write_bytes(HELLO)
    bundle = h.bundle("esc", HELLO, args=["/link.wasm"])
    (bundle / "rootfs" / "link.wasm").symlink_to(outside)  # absolute: resolved inside the rootfs
    with pytest.raises(FailedPrecondition, match="no such module"):
        await h.runtime.create("ns", "esc", bundle, (), TaskIO())
    bundle2 = h.bundle("esc2", HELLO, args=["/../../outside.wasm"])
    with pytest.raises(FailedPrecondition, match="no such module"):
        await h.runtime.create("ns", "esc2", bundle2, (), TaskIO())
