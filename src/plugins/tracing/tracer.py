"""io.containerd.internal.v1.tracing — the tracer: a span for every request served and every plugin call.

Built from every ``io.containerd.tracing.processor.v1`` plugin (OTLP's, or a third party's), it
serves each gRPC and ttrpc request in a span whose parent is the caller's W3C ``traceparent``, and
is installed behind ``corral.plugins.core.tracing.span`` so plugin calls nest under it.
``service_name`` and ``sampling_ratio`` apply unless ``OTEL_SERVICE_NAME`` or ``OTEL_TRACES_SAMPLER``
say otherwise. Log entries written inside a span become its events, and with ``[debug]
log_trace_id`` they carry its ``trace_id``, as containerd's logrus hook does. Skipped with its
processors, so without an endpoint requests are not wrapped at all.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from corral import __version__
from corral.kernel import PROPERTY_LOG_TRACE_ID, InitContext, Registration, SkipPlugin
from corral.plugins import types
from corral.plugins.core import tracing
from corral.plugins.tracing import SpanProcessor, check_sdk_enabled


@dataclass(frozen=True)
class TracingConfig:
    """The ``io.containerd.internal.v1.tracing`` section: what every span is tagged and sampled with."""

    service_name: str = "corral"
    """The ``service.name`` of every span."""
    sampling_ratio: float = 1.0
    """The fraction of new traces recorded (0..1, chosen by trace id); a request that brings a
    ``traceparent`` follows its caller's decision."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.sampling_ratio <= 1.0:
            raise ValueError(f"sampling_ratio: {self.sampling_ratio} is outside 0..1")


async def init(ic: InitContext) -> Any:
    config: TracingConfig = ic.config
    check_sdk_enabled(os.environ)
    processors = ic.get_by_type(types.TRACING_PROCESSOR, SpanProcessor)
    if not processors:
        raise SkipPlugin("no span processor")
    from corral.plugins.tracing._otel import build_tracer

    tracer = build_tracer(
        processors.values(),
        service_name=None if os.environ.get("OTEL_SERVICE_NAME") else config.service_name,
        sampling_ratio=None if os.environ.get("OTEL_TRACES_SAMPLER") else config.sampling_ratio,
        version=__version__,
        log_trace_ids=ic.properties.get(PROPERTY_LOG_TRACE_ID) == "true",
    )
    tracing.install(tracer)
    ic.meta.exports["processors"] = ",".join(sorted(processors))
    return tracer


registration = Registration(
    type=types.INTERNAL,
    id="tracing",
    init=init,
    requires=(types.TRACING_PROCESSOR,),
    config=TracingConfig,
    description="OpenTelemetry spans for every request served and the plugin calls under it",
)
