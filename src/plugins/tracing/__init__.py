"""Tracing: OpenTelemetry spans for every RPC served and the plugin calls under it, exported over OTLP.

Two plugins, as in containerd: ``io.containerd.tracing.processor.v1.otlp`` sends finished spans to
an OTLP endpoint, and ``io.containerd.internal.v1.tracing`` builds the tracer from every span
processor, serves each request in a span (``corral.api.edge.RequestTracer``) and installs itself
behind ``corral.plugins.core.tracing.span``. Both are skipped without an endpoint, and the
OpenTelemetry SDK is imported only when one is configured.

Any ``io.containerd.tracing.processor.v1`` plugin's instance is an OpenTelemetry SDK
``SpanProcessor``, so a third-party processor (another exporter, a filter) plugs in beside OTLP.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

from corral.kernel import InvalidArgument, SkipPlugin

__all__ = ["SpanProcessor", "check_sdk_enabled", "parse_bool"]

_TRUE = ("1", "t", "T", "TRUE", "true", "True")
_FALSE = ("0", "f", "F", "FALSE", "false", "False")


def parse_bool(name: str, value: str) -> bool:
    """Go's strconv.ParseBool, which containerd reads OpenTelemetry's variables with."""
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise InvalidArgument(f'invalid value for {name}: "{value}" is not a boolean')


def check_sdk_enabled(env: Mapping[str, str]) -> None:
    """Skip (both tracing plugins, as containerd's) when ``OTEL_SDK_DISABLED`` is true."""
    disabled = env.get("OTEL_SDK_DISABLED", "")
    if disabled and parse_bool("OTEL_SDK_DISABLED", disabled):
        raise SkipPlugin(f"tracing disabled by env OTEL_SDK_DISABLED={disabled}")


@runtime_checkable
class SpanProcessor(Protocol):
    """An ``io.containerd.tracing.processor.v1`` instance: OpenTelemetry's ``SpanProcessor`` interface."""

    def on_start(self, span: Any, parent_context: Any = None) -> None: ...

    def on_end(self, span: Any) -> None: ...

    def shutdown(self) -> None: ...

    def force_flush(self, timeout_millis: int = 30000) -> bool: ...
