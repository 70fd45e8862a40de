"""The tracer behind ``corral.plugins.core.tracing`` and the edges' request spans, on the OpenTelemetry SDK.

Imported only when tracing is configured. Request spans are named and attributed as containerd's
otelgrpc and otelttrpc interceptors name them: ``package.Service/Method``, kind SERVER,
``rpc.system``, ``rpc.service``, ``rpc.method`` and ``rpc.grpc.status_code`` (``rpc.ttrpc.status_code``),
with the span marked failed only for the codes a server is to blame for.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any

import anyio.to_thread
import structlog
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.propagators.textmap import Getter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ParentBased, Sampler, TraceIdRatioBased
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from corral.plugins.core import tracing

SCOPE = "corral"

# otelgrpc's serverStatus: Unknown, DeadlineExceeded, Unimplemented, Internal, Unavailable, DataLoss.
SERVER_ERRORS = frozenset({2, 4, 12, 13, 14, 15})

_SCALARS = (str, bool, int, float)


def attribute(value: object) -> Any:
    """A value OpenTelemetry can carry: scalars and homogeneous lists as they are, the rest as text."""
    if isinstance(value, _SCALARS):
        return value
    if (
        isinstance(value, list | tuple)
        and value
        and isinstance(value[0], _SCALARS)
        and all(type(v) is type(value[0]) for v in value)
    ):
        return list(value)
    if value is None:
        return "<nil>"
    return str(value)


def attributes(first: Mapping[str, object] | None, more: Mapping[str, object]) -> dict[str, Any]:
    merged = {**first, **more} if first else more
    return {key: attribute(value) for key, value in merged.items()}


class _MetadataGetter(Getter[Mapping[str, object]]):
    """W3C headers out of gRPC metadata (a multidict) or ttrpc's (first values)."""

    def get(self, carrier: Mapping[str, object], key: str) -> list[str] | None:
        value = carrier.get(key)
        if value is None:
            return None
        if isinstance(value, list | tuple):
            return [v.decode() if isinstance(v, bytes) else str(v) for v in value]
        return [value.decode() if isinstance(value, bytes) else str(value)]

    def keys(self, carrier: Mapping[str, object]) -> list[str]:
        return list(carrier.keys())


_GETTER = _MetadataGetter()


class SpanHandle:
    """An OpenTelemetry span seen through ``corral.plugins.core.tracing.Span``."""

    __slots__ = ("_span",)

    def __init__(self, span: trace.Span) -> None:
        self._span = span

    @property
    def recording(self) -> bool:
        return self._span.is_recording()

    def set_attributes(self, attrs: Mapping[str, object] | None = None, /, **more: object) -> None:
        self._span.set_attributes(attributes(attrs, more))

    def add_event(self, name: str, attrs: Mapping[str, object] | None = None, /, **more: object) -> None:
        self._span.add_event(name, attributes(attrs, more))


class _SpanScope:
    """``with`` a plugin span: started as the current span's child and current for the block."""

    __slots__ = ("_attributes", "_name", "_span", "_token", "_tracer")

    def __init__(self, tracer: trace.Tracer, name: str, attrs: Mapping[str, object]) -> None:
        self._tracer = tracer
        self._name = name
        self._attributes = attrs

    def __enter__(self) -> SpanHandle:
        self._span = self._tracer.start_span(self._name, attributes=attributes(None, self._attributes))
        self._token = otel_context.attach(trace.set_span_in_context(self._span))
        return SpanHandle(self._span)

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if exc is not None:
                if isinstance(exc, Exception):
                    self._span.record_exception(exc)
                self._span.set_status(Status(StatusCode.ERROR, str(exc) or type(exc).__name__))
        finally:
            otel_context.detach(self._token)
            self._span.end()


class _RequestScope:
    """``with`` a request served by an edge: a SERVER span whose parent is the caller's traceparent."""

    __slots__ = ("_code_key", "_metadata", "_method", "_span", "_system", "_token", "_tracer")

    def __init__(
        self, tracer: trace.Tracer, system: str, method: str, metadata: Mapping[str, object]
    ) -> None:
        self._tracer = tracer
        self._system = system
        self._method = method
        self._metadata = metadata
        self._code_key = f"rpc.{system}.status_code"

    def __enter__(self) -> _RequestScope:
        parent = PROPAGATOR.extract(self._metadata, getter=_GETTER)
        name, attrs = parse_full_method(self._method)
        attrs["rpc.system"] = self._system
        self._span = self._tracer.start_span(name, context=parent, kind=SpanKind.SERVER, attributes=attrs)
        self._token = otel_context.attach(trace.set_span_in_context(self._span, parent))
        return self

    def finish(self, code: int, message: str) -> None:
        self._span.set_attribute(self._code_key, code)
        if code in SERVER_ERRORS:
            self._span.set_status(Status(StatusCode.ERROR, message))

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        otel_context.detach(self._token)
        self._span.end()


def parse_full_method(path: str) -> tuple[str, dict[str, Any]]:
    """otelgrpc's ParseFullMethod: ``/pkg.Service/Method`` → name ``pkg.Service/Method`` and attributes."""
    if not path.startswith("/"):
        return path, {}
    name = path[1:]
    service, sep, method = name.rpartition("/")
    if not sep:
        return name, {}
    attrs: dict[str, Any] = {}
    if service:
        attrs["rpc.service"] = service
    if method:
        attrs["rpc.method"] = method
    return name, attrs


PROPAGATOR = CompositePropagator([TraceContextTextMapPropagator(), W3CBaggagePropagator()])
"""containerd's: W3C trace context and baggage."""


class LogBridge:
    """A structlog processor, as containerd's logrus hook: a log entry written inside a recording
    span becomes an event of that span (its fields as attributes), and with ``trace_ids`` the entry
    gains the ``trace_id`` of the span it was written in."""

    def __init__(self, *, trace_ids: bool) -> None:
        self.trace_ids = trace_ids

    def __call__(self, logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
        current = trace.get_current_span()
        ctx = current.get_span_context()
        if not ctx.is_valid:
            return event
        if self.trace_ids:
            event["trace_id"] = format(ctx.trace_id, "032x")
        if current.is_recording():
            fields = {k: v for k, v in event.items() if k not in ("event", "timestamp", "trace_id")}
            fields.setdefault("level", method)
            current.add_event(str(event.get("event", "")), attributes(None, fields))
        return event

    def install(self) -> None:
        """Run before the renderer, so the entry's level and bound fields are there."""
        processors = list(structlog.get_config()["processors"])
        processors.insert(max(len(processors) - 1, 0), self)
        structlog.configure(processors=processors)

    def uninstall(self) -> None:
        processors = [p for p in structlog.get_config()["processors"] if p is not self]
        structlog.configure(processors=processors)


class SDKLogs(logging.Handler):
    """The SDK's own log records (an export that failed, a collector that is down) as corral's
    structured log events rather than bare lines on stderr."""

    def __init__(self) -> None:
        super().__init__()
        self._log = structlog.get_logger("corral.tracing")

    def emit(self, record: logging.LogRecord) -> None:
        self._log.log(record.levelno, "tracing_sdk_message", logger=record.name, message=record.getMessage())

    def install(self) -> None:
        sdk = logging.getLogger("opentelemetry")
        sdk.addHandler(self)
        sdk.propagate = False

    def uninstall(self) -> None:
        sdk = logging.getLogger("opentelemetry")
        sdk.removeHandler(self)
        sdk.propagate = True


class OpenTelemetryTracer:
    """Spans for plugins (``start_span``) and for edges (``request_span``) from one TracerProvider."""

    def __init__(self, provider: TracerProvider, logs: LogBridge | None = None) -> None:
        self.provider = provider
        self._tracer = provider.get_tracer(SCOPE)
        self._logs = logs
        if logs is not None:
            logs.install()
        self._sdk_logs = SDKLogs()
        self._sdk_logs.install()

    def start_span(self, name: str, attrs: Mapping[str, object]) -> _SpanScope:
        return _SpanScope(self._tracer, name, attrs)

    def current_span(self) -> SpanHandle:
        return SpanHandle(trace.get_current_span())

    def request_span(self, system: str, method: str, metadata: Mapping[str, object]) -> _RequestScope:
        return _RequestScope(self._tracer, system, method, metadata)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return bool(self.provider.force_flush(timeout_millis))

    async def aclose(self) -> None:
        """Stop tracing and send what is left (at daemon stop, the exporters' last batch)."""
        tracing.uninstall(self)
        if self._logs is not None:
            self._logs.uninstall()
        try:
            await anyio.to_thread.run_sync(self.provider.shutdown, abandon_on_cancel=True)
        finally:
            self._sdk_logs.uninstall()


def build_tracer(
    processors: Iterable[Any],
    *,
    service_name: str | None,
    sampling_ratio: float | None,
    version: str,
    log_trace_ids: bool = False,
) -> OpenTelemetryTracer:
    """A provider over ``processors``; ``None`` leaves the service name or the sampler to the
    OpenTelemetry variables (``OTEL_SERVICE_NAME``, ``OTEL_TRACES_SAMPLER``)."""
    resource_attributes: dict[str, Any] = {"service.version": version}
    if service_name is not None:
        resource_attributes["service.name"] = service_name
    sampler: Sampler | None = None
    if sampling_ratio is not None:
        sampler = ParentBased(TraceIdRatioBased(sampling_ratio))
    provider = TracerProvider(
        sampler=sampler, resource=Resource.create(resource_attributes), shutdown_on_exit=False
    )
    for processor in processors:
        provider.add_span_processor(processor)
    return OpenTelemetryTracer(provider, LogBridge(trace_ids=log_trace_ids))
