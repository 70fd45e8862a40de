"""The ``io.corral.runtime.v1.wasmtime`` plugin: skipped, with the reason, where wasmtime is missing."""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable, Coroutine
from typing import Any

from corral.kernel import InitContext, Registration, SkipPlugin
from corral.plugins import types
from corral.plugins.events.types import optional_publisher
from corral.plugins.runtimes.wasm import WasmRuntime


class _LazyModuleCache:
    """The module cache, made (and wasmtime imported, its engine built) when the first wasm task
    needs it rather than at every start of corrald: some 50 ms that most daemons never use."""

    def __init__(self) -> None:
        self._cache: Any = None

    def __getattr__(self, name: str) -> Any:
        if self._cache is None:
            from corral.plugins.runtimes.wasm._engine import ModuleCache

            self._cache = ModuleCache()
        return getattr(self._cache, name)


async def init(ic: InitContext) -> WasmRuntime:
    try:
        found = importlib.util.find_spec("wasmtime") is not None
    except (ImportError, ValueError) as e:  # pragma: no cover - a broken install skips
        raise SkipPlugin(f"wasmtime is not importable: {e}") from None
    if not found:  # pragma: no cover - wasmtime is a dependency
        raise SkipPlugin("wasmtime is not importable: No module named 'wasmtime'")

    def spawn(fn: Callable[[], Coroutine[Any, Any, None]], name: str) -> None:
        ic.start_soon(functools.partial(fn), name)

    runtime = WasmRuntime(
        ic.state, spawn, optional_publisher(ic.get_by_type(types.EVENT)), _LazyModuleCache()
    )
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
