"""The ``io.corral.runtime.v1.wasmtime`` plugin: skipped, with the reason, where wasmtime is missing."""

from __future__ import annotations

import functools
from collections.abc import Callable, Coroutine
from typing import Any

from corral.kernel import InitContext, Registration, SkipPlugin
from corral.plugins import types
from corral.plugins.events.types import optional_publisher
from corral.plugins.runtimes.wasm import WasmRuntime

IN_PROCESS_RUNTIME = "io.corral.runtime.v1"
"""Runtimes that run tasks inside corrald; each instance names the runtimes it serves in
``runtime_names``, which the tasks service matches before looking for a shim binary."""


async def init(ic: InitContext) -> WasmRuntime:
    try:
        from corral.plugins.runtimes.wasm._engine import ModuleCache
    except ImportError as e:  # pragma: no cover - wasmtime is a dependency; a broken install skips
        raise SkipPlugin(f"wasmtime is not importable: {e}") from None

    def spawn(fn: Callable[[], Coroutine[Any, Any, None]], name: str) -> None:
        ic.start_soon(functools.partial(fn), name)

    runtime = WasmRuntime(spawn, optional_publisher(ic.get_by_type(types.EVENT)), ModuleCache())
    ic.meta.exports["runtimes"] = ",".join(runtime.runtime_names)
    return runtime


registration = Registration(
    type=IN_PROCESS_RUNTIME,
    id="wasmtime",
    init=init,
    after=(types.EVENT,),
    description="WASI modules run in-process by wasmtime (runtime io.containerd.wasmtime.v1), no process per task",
)
