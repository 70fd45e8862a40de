"""io.containerd.tracing.processor.v1.otlp — finished spans batched and sent to an OTLP endpoint.

Configured as containerd 1.7 does it: the section's ``endpoint``, ``protocol`` and ``insecure``,
each overridden by OpenTelemetry's standard variables when those are set
(``OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT``, ``…_PROTOCOL``, ``…_INSECURE``; containerd 2.x reads
only the variables). No endpoint, or ``OTEL_SDK_DISABLED=true``: the plugin is skipped and tracing
is off. The exporter (and the OpenTelemetry SDK) is imported only past that point.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

from corral.kernel import InitContext, InvalidArgument, Registration, SkipPlugin, Unimplemented
from corral.plugins import types
from corral.plugins.tracing import check_sdk_enabled, parse_bool

PROTOCOLS = ("http/protobuf", "grpc")
TRACES_PATH = "/v1/traces"


@dataclass(frozen=True)
class OTLPConfig:
    """The ``io.containerd.tracing.processor.v1.otlp`` section: where spans are exported."""

    endpoint: str = ""
    """Where spans go: for http/protobuf a URL (``http://host:4318``; ``/v1/traces`` is appended),
    for grpc ``host:port`` or a URL. Empty: no tracing (unless OTEL_EXPORTER_OTLP_ENDPOINT is set)."""
    protocol: Literal["", "http/protobuf", "grpc"] = ""
    """``http/protobuf`` (what "" means) or ``grpc``."""
    insecure: bool = False
    """grpc without TLS; http/protobuf follows the endpoint's scheme instead."""

    def __post_init__(self) -> None:
        scheme = urlsplit(self.endpoint).scheme if "://" in self.endpoint else ""
        if scheme not in ("", "http", "https"):
            raise ValueError(f'endpoint: "{self.endpoint}" is not an http or https URL nor host:port')


@dataclass(frozen=True)
class ExporterSettings:
    """What the exporter is built with, once the environment has had its say."""

    protocol: str
    endpoint: str
    """A full URL (path included) for http/protobuf; as given for grpc."""
    insecure: bool


def _first(env: Mapping[str, str], *names: str) -> tuple[str, str]:
    for name in names:
        if env.get(name):
            return name, env[name]
    return "", ""


def check_enabled(endpoint: str, env: Mapping[str, str]) -> None:
    """Skip (tracing off) when disabled by ``OTEL_SDK_DISABLED`` or when no endpoint is set anywhere."""
    check_sdk_enabled(env)
    if (
        not endpoint
        and not _first(env, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")[1]
    ):
        raise SkipPlugin("tracing endpoint not configured")


def exporter_settings(config: OTLPConfig, env: Mapping[str, str]) -> ExporterSettings:
    """Resolve protocol, endpoint and transport security: a set variable wins over the config key."""
    check_enabled(config.endpoint, env)
    exporter = env.get("OTEL_TRACES_EXPORTER", "")
    if exporter and exporter != "otlp":
        raise InvalidArgument(f'unsupported traces exporter "{exporter}" (OTEL_TRACES_EXPORTER)')
    source, protocol = _first(env, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
    protocol = protocol or config.protocol or "http/protobuf"
    if protocol not in PROTOCOLS:
        raise Unimplemented(f'OpenTelemetry protocol "{protocol}" ({source}): not implemented')
    name, insecure_text = _first(env, "OTEL_EXPORTER_OTLP_TRACES_INSECURE", "OTEL_EXPORTER_OTLP_INSECURE")
    insecure = parse_bool(name, insecure_text) if insecure_text else config.insecure
    signal_endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "")
    base = env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "") or config.endpoint
    if protocol == "grpc":
        return ExporterSettings(protocol, signal_endpoint or base, insecure)
    if signal_endpoint:
        return ExporterSettings(protocol, _with_scheme(signal_endpoint, insecure), insecure)
    return ExporterSettings(protocol, _with_scheme(base, insecure).rstrip("/") + TRACES_PATH, insecure)


def _with_scheme(endpoint: str, insecure: bool) -> str:
    if "://" in endpoint:
        return endpoint
    return ("http://" if insecure else "https://") + endpoint


def build_processor(settings: ExporterSettings) -> Any:
    """A BatchSpanProcessor over the OTLP exporter for ``settings`` (imports the SDK)."""
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    exporter: Any
    if settings.protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GRPCExporter

        exporter = GRPCExporter(endpoint=settings.endpoint, insecure=settings.insecure)
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HTTPExporter

        exporter = HTTPExporter(endpoint=settings.endpoint)
    return BatchSpanProcessor(exporter)


async def init(ic: InitContext) -> Any:
    settings = exporter_settings(ic.config, os.environ)
    ic.meta.exports["endpoint"] = settings.endpoint
    ic.meta.exports["protocol"] = settings.protocol
    ic.log.info("tracing_exporter", endpoint=settings.endpoint, protocol=settings.protocol)
    return build_processor(settings)


registration = Registration(
    type=types.TRACING_PROCESSOR,
    id="otlp",
    init=init,
    config=OTLPConfig,
    description="sends finished spans to an OTLP endpoint (http/protobuf or grpc); skipped without one",
)
