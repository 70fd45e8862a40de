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

from typing import Any, Protocol, runtime_checkable

__all__ = ["SpanProcessor"]


@runtime_checkable
class SpanProcessor(Protocol):
    """An ``io.containerd.tracing.processor.v1`` instance: OpenTelemetry's ``SpanProcessor`` interface."""

    def on_start(self, span: Any, parent_context: Any = None) -> None: ...

    def on_end(self, span: Any) -> None: ...

    def shutdown(self) -> None: ...

    def force_flush(self, timeout_millis: int = 30000) -> bool: ...
