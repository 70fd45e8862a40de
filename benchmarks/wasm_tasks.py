"""Wasm tasks per second: corral's in-process wasmtime runtime, measured two ways.

``python -m benchmarks.wasm_tasks [--tasks N] [--concurrency C]`` starts corrald in fresh temp
dirs and runs N WASI tasks (a module that writes a line and exits), each a container and its task
(create, start, wait, delete; the container removed), through corral's client API over the gRPC
socket; then the same N through the runtime contract in one process, without the socket. It prints
tasks/s for both. runwasi's published figure (1,000 tasks at 329.85 tasks/s, driving one shim
directly) is set against the in-process row, which measures the same thing: no daemon in between.
It measures; it never asserts.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio

from benchmarks.daemons import CorralDaemon, Ctr, corrald_binary, ctr_binary
from corral.api.client import Client, connect
from corral.api.types.containerd.services.containers import v1 as containers_pb
from corral.api.types.google import protobuf

RUNWASI_TASKS_PER_SECOND = 329.85
RUNTIME = "io.containerd.wasmtime.v1"
SPEC_TYPE_URL = "types.containerd.io/opencontainers/runtime-spec/1/Spec"
WAT = """(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 1024) "hello\\n")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 1024)) (i32.store (i32.const 4) (i32.const 6))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 16)))))
"""


def module_tree(base: Path) -> Path:
    import wasmtime

    root = base / "rootfs"
    root.mkdir(parents=True)
    (root / "app.wasm").write_bytes(bytes(wasmtime.wat2wasm(WAT)))
    return root


def spec(root: Path) -> bytes:
    """A container whose root is a host directory holding the module (no snapshot to mount)."""
    return json.dumps(
        {"ociVersion": "1.1.0", "root": {"path": str(root)}, "process": {"args": ["/app.wasm"]}}
    ).encode()


async def one_over_grpc(client: Client, name: str, spec_bytes: bytes) -> None:
    container = containers_pb.Container(
        id=name,
        runtime=containers_pb.ContainerRuntime(name=RUNTIME),
        spec=protobuf.Any(type_url=SPEC_TYPE_URL, value=spec_bytes),
    )
    await client.create_container(container)
    await client.create_task(name)
    await client.start_task(name)
    await client.wait_task(name)
    await client.delete_task(name)
    await client.delete_container(name)


async def run_many(count: int, concurrency: int, one: Callable[[int], Awaitable[None]]) -> float:
    limiter = anyio.Semaphore(concurrency)

    async def guarded(i: int) -> None:
        async with limiter:
            await one(i)

    began = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for i in range(count):
            tg.start_soon(guarded, i)
    return count / (time.perf_counter() - began)


async def over_grpc(socket: str, root: Path, count: int, concurrency: int) -> float:
    spec_bytes = spec(root)
    async with connect(socket, "bench") as client:
        await one_over_grpc(client, "warmup", spec_bytes)  # the module's one compilation

        async def one(i: int) -> None:
            await one_over_grpc(client, f"w{i}", spec_bytes)

        return await run_many(count, concurrency, one)


async def in_process(state: Path, root: Path, count: int, concurrency: int) -> float:
    from corral.plugins.core import namespace
    from corral.plugins.events.exchange import Exchange
    from corral.plugins.metadata import AnyValue
    from corral.plugins.runtimes import CreateOpts
    from corral.plugins.runtimes.wasm import WasmRuntime
    from corral.plugins.runtimes.wasm._engine import ModuleCache

    opts = CreateOpts(spec=AnyValue(SPEC_TYPE_URL, spec(root)), runtime=RUNTIME)
    async with anyio.create_task_group() as tg:

        def spawn(fn: Callable[[], Awaitable[Any]], name: str) -> None:
            tg.start_soon(fn, name=name)

        runtime = WasmRuntime(state, spawn, Exchange(), ModuleCache())

        async def one(i: int) -> None:
            with namespace("bench"):
                task = await runtime.create(f"w{i}", opts)
                await task.start()
                await task.wait()
                await task.delete()

        await one(-1)
        rate = await run_many(count, concurrency, one)
        tg.cancel_scope.cancel()
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=1)
    args = parser.parse_args()
    ctr = ctr_binary()
    if ctr is None:
        raise SystemExit("ctr is needed to tell when corrald is ready")
    with tempfile.TemporaryDirectory(prefix="corral-wasm-bench-") as scratch:
        work = Path(scratch)
        root = module_tree(work / "module")
        with CorralDaemon(corrald_binary(), work / "corrald", Ctr(ctr)) as daemon:
            grpc = anyio.run(over_grpc, str(daemon.socket), root, args.tasks, args.concurrency)
        local = anyio.run(in_process, work / "in-process", root, args.tasks, args.concurrency)
    runwasi = RUNWASI_TASKS_PER_SECOND
    rows = [
        (f"wasm tasks, {args.tasks} (concurrency {args.concurrency})", "tasks/s", f"vs runwasi {runwasi}"),
        ("---", "---", "---"),
        (
            "through corral's client API (container + task, 6 RPCs each)",
            f"{grpc:.0f}",
            f"{grpc / runwasi:.2f}x",
        ),
        ("the runtime in-process (create, start, wait, delete)", f"{local:.0f}", f"{local / runwasi:.2f}x"),
    ]
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
