"""The ``io.corral.runtime.v1.wasmtime`` plugin: skipped, with the reason, where wasmtime is missing."""

from __future__ import annotations

import functools
from collections.abc import Callable, Coroutine
from typing import Any

from corral.kernel import InitContext, Registration, SkipPlugin
from corral.plugins import types
from corral.plugins.events.types import optional_publisher
from corral.plugins.runtimes.wasm import WasmRuntime


async def init(ic: InitContext) -> WasmRuntime:
    try:
        from corral.plugins.runtimes.wasm._engine import ModuleCache
    except ImportError as e:  # pragma: no cover - wasmtime is a dependency; a broken install skips
        raise SkipPlugin(f"wasmtime is not importable: {e}") from None

    def spawn(fn: Callable[[], Coroutine[Any, Any, None]], name: str) -> None:
        ic.start_soon(functools.partial(fn), name)

    runtime = WasmRuntime(ic.state, spawn, optional_publisher(ic.get_by_type(types.EVENT)), ModuleCache())
    await runtime.recover()
    ic.meta.exports["runtimes"] = ",".join(runtime.runtime_names)
    return runtime


registration = Registration(
    type=types.RUNTIME_IN_PROCESS,
    id="wasmtime",
    init=init,
    after=(types.EVENT,),
    description="WASI modules run in-process by wasmtime (runtime io.containerd.wasmtime.v1), no process per task",
)
