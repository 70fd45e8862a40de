"""Tracing without a daemon: the plugin span API on and off, nesting across tasks and threads,
request spans at the edges (ttrpc over a real socket), and how the exporter's settings resolve."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import anyio.to_thread
import pytest
import structlog
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from corral.api.edge import RequestTracer
from corral.api.grpc.server import build_mapping
from corral.api.ttrpc import TTRPCClient, TTRPCContext, TTRPCServer
from corral.kernel import (
    DaemonConfig,
    Internal,
    InvalidArgument,
    Kernel,
    NotFound,
    Registration,
    SkipPlugin,
    Unimplemented,
    builtin_candidate,
    configure_logging,
)
from corral.plugins import types
from corral.plugins.core import tracing
from corral.plugins.core.tracing import span
from corral.plugins.tracing import otlp
from corral.plugins.tracing import tracer as tracer_plugin
from corral.plugins.tracing.otlp import OTLPConfig, exporter_settings

# --- off ----------------------------------------------------------------------------------------


def test_without_a_tracer_a_span_is_one_shared_object_that_records_nothing() -> None:
    assert not tracing.enabled()
    first, second = span("a"), span("b", {"k.v": 1}, x=2)
    assert first is second
    with first as s:
        assert not s.recording
        s.set_attributes(anything=object())
        s.add_event("nothing")
    assert tracing.current_span() is tracing.NO_SPAN


def test_the_tracing_plugins_and_the_edges_import_no_opentelemetry_until_an_endpoint_is_set(
    tmp_path: Path,
) -> None:
    """A whole kernel started as corrald starts it, its gRPC mapping built, with tracing off."""
    code = (
        "import sys, anyio\n"
        "from corral.kernel import Kernel, DaemonConfig\n"
        "from corral.api.grpc.server import build_mapping\n"
        "import corral.api.ttrpc.server\n"
        f"config = DaemonConfig(root={str(tmp_path / 'r')!r}, state={str(tmp_path / 's')!r})\n"
        "async def main():\n"
        "    kernel = Kernel(config)\n"
        "    async with kernel.running():\n"
        "        build_mapping(kernel.records())\n"
        "        print([r.status.value for r in kernel.records() if 'tracing' in r.uri])\n"
        "anyio.run(main)\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.splitlines()[-2:] == ["['skip', 'skip']", "[]"], out.stderr


# --- on: the real tracing plugin over an in-memory span processor ----------------------------


@asynccontextmanager
async def traced(
    tmp_path: Path, *, log_trace_id: bool = False, **config: Any
) -> AsyncIterator[tuple[Any, InMemorySpanExporter]]:
    """A kernel with the tracing plugin and a third-party processor that keeps spans in memory."""
    exporter = InMemorySpanExporter()

    async def memory(ic: Any) -> SimpleSpanProcessor:
        return SimpleSpanProcessor(exporter)

    processor = Registration(type=types.TRACING_PROCESSOR, id="memory", init=memory)
    daemon = DaemonConfig(
        root=str(tmp_path / "root"),
        state=str(tmp_path / "state"),
        plugins={"io.containerd.internal.v1.tracing": config},
    )
    daemon = dataclasses.replace(daemon, debug=dataclasses.replace(daemon.debug, log_trace_id=log_trace_id))
    kernel = Kernel(
        daemon, candidates=[builtin_candidate(processor), builtin_candidate(tracer_plugin.registration)]
    )
    async with kernel.running():
        record = kernel.get("io.containerd.internal.v1.tracing")
        assert record is not None and record.ok, record
        yield record.instance, exporter
    assert not tracing.enabled()


@pytest.fixture
def no_otel_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)


def by_name(spans: tuple[ReadableSpan, ...]) -> dict[str, ReadableSpan]:
    return {s.name: s for s in spans}


def parent_of(s: ReadableSpan) -> int | None:
    return s.parent.span_id if s.parent is not None else None


@pytest.mark.usefixtures("no_otel_env")
def test_plugin_spans_nest_across_tasks_and_threads_and_carry_their_attributes(tmp_path: Path) -> None:
    async def main() -> tuple[ReadableSpan, ...]:
        async with traced(tmp_path) as (_, exporter):
            assert tracing.enabled()

            def in_thread() -> None:
                with span("pkg.unpack.unpacker.unpackLayer", {"layer.media.size": 3}):
                    pass

            async def child() -> None:
                with span("pull.fetch", digest="sha256:x"):
                    await anyio.lowlevel.checkpoint()

            with span("pull.Pull", {"image.ref": "busybox"}, unpack=True) as top:
                assert top.recording
                top.set_attributes({"platforms.count": 1}, tags=["a", "b"], odd=object(), none=None)
                top.add_event("resolved", {"descriptor.digest": "sha256:y"})
                async with anyio.create_task_group() as tg:
                    tg.start_soon(child)
                with span("pkg.unpack.unpacker.unpack"):
                    await anyio.to_thread.run_sync(in_thread)
            return tuple(exporter.get_finished_spans())

    spans = by_name(anyio.run(main))
    top = spans["pull.Pull"]
    assert parent_of(top) is None
    assert parent_of(spans["pull.fetch"]) == top.context.span_id
    unpack = spans["pkg.unpack.unpacker.unpack"]
    assert parent_of(unpack) == top.context.span_id
    assert parent_of(spans["pkg.unpack.unpacker.unpackLayer"]) == unpack.context.span_id
    assert len({s.context.trace_id for s in spans.values()}) == 1
    attrs = dict(top.attributes or {})
    assert attrs["image.ref"] == "busybox"
    assert attrs["unpack"] is True
    assert attrs["platforms.count"] == 1
    assert attrs["tags"] == ("a", "b")
    assert attrs["odd"].startswith("<object object")
    assert attrs["none"] == "<nil>"
    assert [e.name for e in top.events] == ["resolved"]
    assert top.kind == SpanKind.INTERNAL
    assert top.resource.attributes["service.name"] == "corral"


@pytest.mark.usefixtures("no_otel_env")
def test_an_exception_leaving_a_span_marks_it_failed_and_still_propagates(tmp_path: Path) -> None:
    async def main() -> tuple[ReadableSpan, ...]:
        async with traced(tmp_path) as (_, exporter):
            with pytest.raises(NotFound), span("metadata.snapshots.Remove"):
                raise NotFound("snapshot gone does not exist")
            return tuple(exporter.get_finished_spans())

    (failed,) = anyio.run(main)
    assert failed.status.status_code == StatusCode.ERROR
    assert failed.status.description == "snapshot gone does not exist: not found"  # as err.Error() reads
    assert [e.name for e in failed.events] == ["exception"]


@pytest.mark.usefixtures("no_otel_env")
def test_a_sampling_ratio_of_zero_keeps_no_new_trace_and_the_service_name_is_configurable(
    tmp_path: Path,
) -> None:
    async def main() -> tuple[ReadableSpan, ...]:
        async with traced(tmp_path, sampling_ratio=0.0, service_name="node-1") as (t, exporter):
            with span("dropped") as s:
                assert not s.recording
            header = f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"
            with t.request_span("grpc", "/x.v1.X/Kept", {"traceparent": header}) as r:
                r.finish(0, "")
            return tuple(exporter.get_finished_spans())

    (kept,) = anyio.run(main)
    assert kept.name == "x.v1.X/Kept"
    assert kept.resource.attributes["service.name"] == "node-1"


@pytest.mark.usefixtures("no_otel_env")
def test_request_spans_follow_the_traceparent_and_mark_only_server_faults_failed(tmp_path: Path) -> None:
    trace_id, caller = secrets.token_hex(16), secrets.token_hex(8)

    async def main() -> tuple[ReadableSpan, ...]:
        async with traced(tmp_path) as (t, exporter):
            assert isinstance(t, RequestTracer)
            metadata = {"traceparent": [f"00-{trace_id}-{caller}-01"], "containerd-namespace": "default"}
            for method, code in (("Ok", 0), ("Missing", 5), ("Broken", 13)):
                with t.request_span("grpc", f"/containerd.services.x.v1.X/{method}", metadata) as r:
                    with span("inner"):
                        pass
                    r.finish(code, f"{method} message")
            return tuple(exporter.get_finished_spans())

    spans = anyio.run(main)
    requests = {s.name: s for s in spans if s.kind == SpanKind.SERVER}
    assert set(requests) == {f"containerd.services.x.v1.X/{m}" for m in ("Ok", "Missing", "Broken")}
    for s in requests.values():
        assert s.context.trace_id == int(trace_id, 16)
        assert parent_of(s) == int(caller, 16)
        assert s.parent is not None and s.parent.is_remote
    ok, missing, broken = (requests[f"containerd.services.x.v1.X/{m}"] for m in ("Ok", "Missing", "Broken"))
    assert dict(ok.attributes or {}) == {
        "rpc.service": "containerd.services.x.v1.X",
        "rpc.method": "Ok",
        "rpc.system": "grpc",
        "rpc.grpc.status_code": 0,
    }
    assert missing.status.status_code == StatusCode.UNSET
    assert (missing.attributes or {})["rpc.grpc.status_code"] == 5
    assert broken.status.status_code == StatusCode.ERROR
    assert broken.status.description == "Broken message"
    inner = [s for s in spans if s.name == "inner"]
    assert {parent_of(s) for s in inner} == {s.context.span_id for s in requests.values()}


@pytest.mark.usefixtures("no_otel_env")
def test_the_grpc_edge_wraps_handlers_only_when_a_tracer_is_ok(tmp_path: Path) -> None:
    from corral.api.grpc import version

    class Record:
        def __init__(self, instance: Any) -> None:
            self.instance, self.ok, self.uri = instance, True, "x.v1.y"

    async def services(ic: Any) -> Any:
        return await version.registration.init(ic)

    async def main() -> None:
        async with traced(tmp_path) as (t, _):
            grpc_plugin = Record(await services(None))
            path = "/containerd.services.version.v1.Version/Version"
            plain = build_mapping([grpc_plugin])  # type: ignore[list-item]
            wrapped = build_mapping([Record(t), grpc_plugin])  # type: ignore[list-item]
            assert "_traced" not in plain[path].func.__qualname__
            assert "_traced" in wrapped[path].func.__qualname__

    anyio.run(main)


async def echo(payload: bytes, ctx: TTRPCContext) -> bytes:
    with span("echo.work"):
        pass
    return payload


async def missing(payload: bytes, ctx: TTRPCContext) -> bytes:
    raise NotFound("no such thing")


async def broken(payload: bytes, ctx: TTRPCContext) -> bytes:
    raise Internal("it broke")


@pytest.mark.usefixtures("no_otel_env")
def test_ttrpc_requests_are_spans_named_and_coded_as_otelttrpc_names_them(tmp_path: Path) -> None:
    trace_id, caller = secrets.token_hex(16), secrets.token_hex(8)
    sock = tmp_path / "t.sock"

    async def main() -> tuple[ReadableSpan, ...]:
        async with traced(tmp_path) as (t, exporter):
            server = TTRPCServer(tracers=[t])
            server.register("corral.test.v1.Probe", "Echo", echo)
            server.register("corral.test.v1.Probe", "Missing", missing)
            server.register("corral.test.v1.Probe", "Broken", broken)
            async with server.serve(sock), TTRPCClient.connect(sock) as client:
                md = {"traceparent": f"00-{trace_id}-{caller}-01"}
                assert await client.call("corral.test.v1.Probe", "Echo", b"hi", metadata=md) == b"hi"
                with pytest.raises(NotFound):
                    await client.call("corral.test.v1.Probe", "Missing", metadata=md)
                with pytest.raises(Internal):
                    await client.call("corral.test.v1.Probe", "Broken", metadata=md)
            return tuple(exporter.get_finished_spans())

    spans = by_name(anyio.run(main))
    echo_span = spans["corral.test.v1.Probe/Echo"]
    assert dict(echo_span.attributes or {}) == {
        "rpc.service": "corral.test.v1.Probe",
        "rpc.method": "Echo",
        "rpc.system": "ttrpc",
        "rpc.ttrpc.status_code": 0,
    }
    assert echo_span.kind == SpanKind.SERVER
    assert parent_of(echo_span) == int(caller, 16)
    assert parent_of(spans["echo.work"]) == echo_span.context.span_id
    assert (spans["corral.test.v1.Probe/Missing"].attributes or {})["rpc.ttrpc.status_code"] == 5
    assert spans["corral.test.v1.Probe/Missing"].status.status_code == StatusCode.UNSET
    assert spans["corral.test.v1.Probe/Broken"].status.status_code == StatusCode.ERROR


@pytest.mark.usefixtures("no_otel_env")
def test_log_entries_inside_a_span_become_its_events_and_carry_its_trace_id(tmp_path: Path) -> None:
    out = io.StringIO()
    configure_logging("info", "json", stream=out)
    log = structlog.get_logger("corral.test")

    async def main() -> tuple[ReadableSpan, ...]:
        async with traced(tmp_path, log_trace_id=True) as (_, exporter):
            log.info("outside_any_span")
            with span("differ.walking.Apply"):
                log.info("differ_applied", digest="sha256:abc", entries=3)
                log.debug("below_the_level")
            return tuple(exporter.get_finished_spans())

    try:
        (applied,) = anyio.run(main)
        entries = {e["event"]: e for e in map(json.loads, out.getvalue().splitlines())}
    finally:
        configure_logging("info")
    (event,) = applied.events
    assert event.name == "differ_applied"
    assert dict(event.attributes or {}) == {"digest": "sha256:abc", "entries": 3, "level": "info"}
    assert entries["differ_applied"]["trace_id"] == format(applied.context.trace_id, "032x")
    assert "trace_id" not in entries["outside_any_span"]
    assert "below_the_level" not in entries
    # At stop the bridge leaves the logging set-up as it found it.
    assert not any(type(p).__name__ == "LogBridge" for p in structlog.get_config()["processors"])


# --- the exporter's settings: config keys, then OpenTelemetry's variables over them -------------


@pytest.mark.parametrize(
    ("config", "env", "expected"),
    [
        ({"endpoint": "http://collector:4318"}, {}, ("http/protobuf", "http://collector:4318/v1/traces", False)),
        ({"endpoint": "https://c:4318/otlp/"}, {}, ("http/protobuf", "https://c:4318/otlp/v1/traces", False)),
        ({"endpoint": "c:4318"}, {}, ("http/protobuf", "https://c:4318/v1/traces", False)),
        ({"endpoint": "c:4318", "insecure": True}, {}, ("http/protobuf", "http://c:4318/v1/traces", True)),
        ({"endpoint": "c:4317", "protocol": "grpc"}, {}, ("grpc", "c:4317", False)),
        ({"endpoint": "c:4317", "protocol": "grpc", "insecure": True}, {}, ("grpc", "c:4317", True)),
        (
            {"endpoint": "http://config:4318"},
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://env:4318"},
            ("http/protobuf", "http://env:4318/v1/traces", False),
        ),
        (
            {},
            {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://env:4318/custom", "OTEL_EXPORTER_OTLP_ENDPOINT": "x:1"},
            ("http/protobuf", "http://env:4318/custom", False),
        ),
        (
            {"endpoint": "c:4317", "protocol": "http/protobuf"},
            {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_INSECURE": "true"},
            ("grpc", "c:4317", True),
        ),
        (
            {"endpoint": "c:4317", "protocol": "grpc", "insecure": True},
            {"OTEL_EXPORTER_OTLP_TRACES_INSECURE": "false"},
            ("grpc", "c:4317", False),
        ),
    ],
)  # fmt: skip
def test_exporter_settings_take_a_set_variable_over_the_config_key(
    config: dict[str, Any], env: dict[str, str], expected: tuple[str, str, bool]
) -> None:
    settings = exporter_settings(OTLPConfig(**config), env)
    assert (settings.protocol, settings.endpoint, settings.insecure) == expected


@pytest.mark.parametrize(
    ("env", "error", "words"),
    [
        ({}, SkipPlugin, "tracing endpoint not configured"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c", "OTEL_SDK_DISABLED": "true"}, SkipPlugin, "disabled by env"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c", "OTEL_SDK_DISABLED": "maybe"}, InvalidArgument, "boolean"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c", "OTEL_TRACES_EXPORTER": "zipkin"}, InvalidArgument, "zipkin"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, Unimplemented,
         '"http/json" (OTEL_EXPORTER_OTLP_PROTOCOL)'),
    ],
)  # fmt: skip
def test_exporter_settings_skip_or_refuse_as_containerd_does(
    env: dict[str, str], error: type[Exception], words: str
) -> None:
    with pytest.raises(error, match=words.replace("(", r"\(").replace(")", r"\)")):
        exporter_settings(OTLPConfig(), env)


def test_the_otlp_plugin_builds_a_batch_processor_for_either_protocol() -> None:
    for protocol, endpoint in (("http/protobuf", "http://127.0.0.1:9/v1/traces"), ("grpc", "127.0.0.1:9")):
        processor = otlp.build_processor(otlp.ExporterSettings(protocol, endpoint, True))
        try:
            assert type(processor).__name__ == "BatchSpanProcessor"
        finally:
            processor.shutdown()
