"""OpenTelemetry tracing: spans for RPCs served to the real ctr, and the plugin calls under them,
exported over OTLP to a collector the tests run on 127.0.0.1."""

from __future__ import annotations

import gzip
import hashlib
import io
import secrets
import socket
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from harness import Daemon, run_corrald_once
from otlp_collector import Collector, ReceivedSpan, grpc_collector, http_collector
from registry_fixture import Registry

from corral.api.client import connect
from corral.api.types.containerd import types as ctypes
from corral.api.types.containerd.services.diff import v1 as diff_pb
from corral.api.types.containerd.services.snapshots import v1 as snap_pb
from corral.api.types.containerd.services.version import v1 as version_pb
from corral.plugins.core import tracing
from corral.plugins.core.tracing import span
from corral.plugins.remotes import Descriptor, RegistryClient

SERVER = 2  # OTLP SpanKind
STATUS_UNSET, STATUS_ERROR = 0, 2
VERSION = "containerd.services.version.v1.Version/Version"
GZIP_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"

# Spans leave within a fifth of a second rather than the batch processor's default five.
QUICK = {"OTEL_BSP_SCHEDULE_DELAY": "200"}


@pytest.fixture
def collector() -> Iterator[Collector]:
    yield from http_collector()


def traced_daemon(base: Path, endpoint: str, extra: str = "", env: dict[str, str] | None = None) -> Daemon:
    config = (
        f'version = 3\n[plugins."io.containerd.tracing.processor.v1.otlp"]\nendpoint = "{endpoint}"\n{extra}'
    )
    return Daemon(base, config=config, env={**QUICK, **(env or {})}).start()


def traceparent() -> tuple[str, str, str]:
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


def one(spans: list[ReceivedSpan], name: str, trace_id: str = "") -> ReceivedSpan:
    found = [s for s in spans if s.name == name and (not trace_id or s.trace_id == trace_id)]
    assert len(found) == 1, f"{len(found)} spans named {name}: {sorted({s.name for s in spans})}"
    return found[0]


def test_ctr_calls_are_server_spans_with_containerds_names_attributes_and_codes(
    tmp_path: Path, ctr: str, collector: Collector
) -> None:
    d = traced_daemon(tmp_path / "corral", collector.endpoint)
    try:
        d.ctr("version")
        d.ctr("snapshots", "rm", "nonexistent", check=False)
        remove = "containerd.services.snapshots.v1.Snapshots/Remove"
        spans = collector.wait_for(lambda got: any(s.name == remove for s in got))
    finally:
        d.stop()
    version = next(s for s in spans if s.name == VERSION)
    assert version.kind == SERVER
    assert version.attributes == {
        "rpc.system": "grpc",
        "rpc.service": "containerd.services.version.v1.Version",
        "rpc.method": "Version",
        "rpc.grpc.status_code": 0,
    }
    assert version.status_code == STATUS_UNSET
    assert version.parent_span_id == ""  # ctr sends no traceparent: a root span
    assert version.resource["service.name"] == "corral"
    failed = one(spans, remove)
    # NotFound is the caller's doing: the code is recorded, the server span is not marked failed.
    assert failed.attributes["rpc.grpc.status_code"] == 5
    assert failed.status_code == STATUS_UNSET
    # The snapshot call under it failed, and says why.
    inner = one(spans, "metadata.snapshots.Remove", failed.trace_id)
    assert inner.parent_span_id == failed.span_id
    assert inner.status_code == STATUS_ERROR
    assert "nonexistent" in inner.status_message
    assert inner.attributes["snapshot.key"] == "nonexistent"


async def version_with(address: str, metadata: dict[str, str]) -> None:
    async with connect(address) as client:
        stub = version_pb.VersionStub(client.channel, metadata=metadata)
        await stub.version()


def test_a_callers_traceparent_makes_the_request_span_its_child(tmp_path: Path, collector: Collector) -> None:
    header, trace_id, parent_id = traceparent()
    d = traced_daemon(tmp_path / "corral", collector.endpoint)
    try:
        anyio.run(version_with, d.socket, {"traceparent": header, "tracestate": "vendor=opaque"})
        spans = collector.wait_for(lambda got: any(s.trace_id == trace_id for s in got))
    finally:
        d.stop()
    span = one(spans, VERSION, trace_id)
    assert span.parent_span_id == parent_id
    assert span.kind == SERVER


def layer_tar() -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, data in (("hello.txt", b"hello from a layer\n"), ("etc/motd", b"traced\n")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), mtime=0)


async def apply_with(address: str, key: str, digest: str, size: int, header: str) -> str:
    async with connect(address) as client:
        md = {"containerd-namespace": "default", "traceparent": header}
        snaps = snap_pb.SnapshotsStub(client.channel, metadata=md)
        mounts = (await snaps.mounts(snap_pb.MountsRequest(snapshotter="native", key=key))).mounts
        differ = diff_pb.DiffStub(client.channel, metadata=md)
        reply = await differ.apply(
            diff_pb.ApplyRequest(
                diff=ctypes.Descriptor(media_type=GZIP_LAYER, digest=digest, size=size), mounts=mounts
            )
        )
        assert reply.applied is not None
        return reply.applied.digest


def test_a_diff_apply_nests_the_differs_spans_under_the_rpc_under_the_caller(
    tmp_path: Path, ctr: str, collector: Collector
) -> None:
    layer = layer_tar()
    digest = "sha256:" + hashlib.sha256(layer).hexdigest()
    header, trace_id, caller = traceparent()
    d = traced_daemon(tmp_path / "corral", collector.endpoint)
    try:
        ingest = subprocess.run(
            ["ctr", "-a", d.socket, "content", "ingest", "--expected-digest", digest, "layer-ref"],
            input=layer, capture_output=True,
        )  # fmt: skip
        assert ingest.returncode == 0, ingest.stderr
        d.ctr("snapshots", "--snapshotter", "native", "prepare", "target")
        diff_id = anyio.run(apply_with, d.socket, "target", digest, len(layer), header)
        spans = collector.wait_for(
            lambda got: any(s.trace_id == trace_id and s.name == "differ.walking.Apply" for s in got)
        )
        ingested = collector.wait_for(lambda got: any(s.name == "metadata.content.Commit" for s in got))
    finally:
        d.stop()
    rpc = one(spans, "containerd.services.diff.v1.Diff/Apply", trace_id)
    service = one(spans, "diff.Apply", trace_id)
    differ = one(spans, "differ.walking.Apply", trace_id)
    assert rpc.parent_span_id == caller
    assert service.parent_span_id == rpc.span_id
    assert differ.parent_span_id == service.span_id
    assert service.attributes["layer.media.digest"] == digest
    assert service.attributes["layer.media.size"] == len(layer)
    assert service.attributes["layer.diff_id"] == diff_id
    assert differ.attributes["layer.entries"] >= 2
    assert rpc.attributes["rpc.grpc.status_code"] == 0
    # The content written by ctr: its commit nested in the Content/Write stream's span.
    commit = next(s for s in ingested if s.name == "metadata.content.Commit")
    write = next(s for s in ingested if s.span_id == commit.parent_span_id)
    assert write.name == "containerd.services.content.v1.Content/Write"
    assert commit.attributes["content.digest"] == digest
    prepare = next(s for s in ingested if s.name == "metadata.snapshots.Prepare")
    assert prepare.attributes == {"snapshotter": "native", "snapshot.key": "target", "snapshot.parent": ""}


def test_nothing_is_exported_and_both_plugins_say_why_when_no_endpoint_is_set(
    tmp_path: Path, ctr: str, collector: Collector
) -> None:
    d = Daemon(tmp_path / "corral", env=QUICK).start()
    try:
        for _ in range(3):
            d.ctr("version")
        d.ctr("snapshots", "--snapshotter", "native", "prepare", "x")
        rows = [line.split() for line in d.ctr("plugins", "ls").stdout.splitlines()]
    finally:
        d.stop()
    assert ["io.containerd.tracing.processor.v1", "otlp", "-", "skip"] in rows
    assert ["io.containerd.internal.v1", "tracing", "-", "skip"] in rows
    assert collector.requests == 0
    assert collector.spans == []


def test_an_endpoint_from_the_environment_turns_tracing_on_as_in_containerd_2(
    tmp_path: Path, ctr: str, collector: Collector
) -> None:
    env = {**QUICK, "OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint, "OTEL_SERVICE_NAME": "node-7"}
    d = Daemon(tmp_path / "corral", env=env).start()
    try:
        d.ctr("version")
        spans = collector.wait_for(lambda got: any(s.name == VERSION for s in got))
    finally:
        d.stop()
    assert {s.resource["service.name"] for s in spans if s.name == VERSION} == {"node-7"}


def test_spans_still_batched_at_stop_are_sent_before_corrald_exits(
    tmp_path: Path, ctr: str, collector: Collector
) -> None:
    # A batch delay far longer than the test: only the flush at stop can deliver the span.
    d = traced_daemon(tmp_path / "corral", collector.endpoint, env={"OTEL_BSP_SCHEDULE_DELAY": "600000"})
    try:
        d.ctr("namespaces", "create", "traced-at-stop")
        assert collector.spans == []
    finally:
        assert d.stop() == 0
    create = one(collector.spans, "containerd.services.namespaces.v1.Namespaces/Create")
    assert create.attributes["rpc.grpc.status_code"] == 0


def test_the_grpc_protocol_exports_to_an_otlp_grpc_collector(tmp_path: Path, ctr: str) -> None:
    for receiver in grpc_collector():
        extra = (
            'protocol = "grpc"\ninsecure = true\n'
            '[plugins."io.containerd.internal.v1.tracing"]\nservice_name = "grpc-node"\n'
        )
        d = traced_daemon(tmp_path / "corral", receiver.endpoint, extra)
        try:
            d.ctr("version")
            spans = receiver.wait_for(lambda got: any(s.name == VERSION for s in got))
        finally:
            d.stop()
        assert {s.resource["service.name"] for s in spans if s.name == VERSION} == {"grpc-node"}


def test_a_sampling_ratio_of_zero_records_no_new_trace_but_follows_a_sampled_caller(
    tmp_path: Path, collector: Collector
) -> None:
    header, trace_id, _ = traceparent()
    extra = '[plugins."io.containerd.internal.v1.tracing"]\nsampling_ratio = 0.0\n'
    d = traced_daemon(tmp_path / "corral", collector.endpoint, extra)
    try:
        anyio.run(version_with, d.socket, {})
        anyio.run(version_with, d.socket, {"traceparent": header})
        spans = collector.wait_for(lambda got: any(s.trace_id == trace_id for s in got))
    finally:
        d.stop()
    assert [s.trace_id for s in spans if s.name == VERSION] == [trace_id]


@pytest.mark.parametrize(
    ("section", "key", "value", "why"),
    [
        ("io.containerd.tracing.processor.v1.otlp", "protocol", '"http/json"', 'one of "", "http/protobuf", "grpc"'),
        ("io.containerd.tracing.processor.v1.otlp", "endpoint", '"ftp://collector:21"', "not an http or https URL"),
        ("io.containerd.internal.v1.tracing", "sampling_ratio", "1.5", "outside 0..1"),
    ],
)  # fmt: skip
def test_a_bad_tracing_key_is_a_config_error_naming_the_file_and_the_key(
    tmp_path: Path, section: str, key: str, value: str, why: str
) -> None:
    imported = tmp_path / "corral" / "conf.d" / "tracing.toml"
    imported.parent.mkdir(parents=True)
    imported.write_text(f'version = 3\n[plugins."{section}"]\n{key} = {value}\n')
    result = run_corrald_once(tmp_path / "corral", 'version = 3\nimports = ["conf.d/*.toml"]\n')
    assert result.returncode == 2, result.stderr
    line = result.stderr.strip()
    assert line.startswith(f"corrald: config error: {imported}: "), line
    assert f'plugins."{section}"' in line
    assert key in line
    assert why in line
    assert len(line.splitlines()) == 1


def test_a_collector_that_is_down_fails_no_request_and_corrald_still_stops_cleanly(
    tmp_path: Path, ctr: str
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    # The exporter gives up on a batch after OTEL_EXPORTER_OTLP_TIMEOUT (10 s unless set).
    d = traced_daemon(tmp_path / "corral", closed, env={"OTEL_EXPORTER_OTLP_TIMEOUT": "2"})
    try:
        for _ in range(3):
            assert "Server:" in d.ctr("version").stdout
        d.ctr("namespaces", "create", "still-served")
        assert "still-served" in d.ctr("namespaces", "ls", "-q").stdout.split()
    finally:
        assert d.stop() == 0
    # The SDK's complaint is a structured event in corrald's log, not a bare line.
    assert '"event": "tracing_sdk_message"' in d.log()


def test_registry_round_trips_nest_under_the_span_that_makes_them(registry: Registry) -> None:
    """The fetch end of a pull: every HTTP request to the registry is a span of containerd's name
    under whatever span the caller is in (here a pull's fetch)."""
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from corral.plugins.tracing._otel import build_tracer

    blob = b"a blob fetched under a traced pull\n"
    desc = Descriptor("application/octet-stream", "sha256:" + hashlib.sha256(blob).hexdigest(), len(blob))
    ref = f"{registry.host}/corral/traced:1"
    exporter = InMemorySpanExporter()
    tracer = build_tracer([SimpleSpanProcessor(exporter)], service_name="t", sampling_ratio=1.0, version="0")

    async def pull() -> bytes:
        async with RegistryClient(plain_http=True) as client:
            await client.push_blob(ref, desc, blob)
            tracing.install(tracer)
            try:
                with span("pull.Pull", {"image.ref": ref}), span("pull.fetch"):
                    return await client.fetch_bytes(ref, desc)
            finally:
                await tracer.aclose()

    assert anyio.run(pull) == blob
    spans = {s.context.span_id: s for s in exporter.get_finished_spans()}
    requests = [s for s in spans.values() if s.name == "remotes.docker.resolver.HTTPRequest"]
    assert requests, [s.name for s in spans.values()]
    fetch = next(s for s in spans.values() if s.name == "pull.fetch")
    assert spans[fetch.parent.span_id].name == "pull.Pull"  # type: ignore[union-attr]
    for request in requests:
        assert request.parent is not None and request.parent.span_id == fetch.context.span_id
        attrs = dict(request.attributes or {})
        assert attrs["http.request.method"] == "GET"
        assert attrs["url.full"] == f"http://{registry.host}/v2/corral/traced/blobs/{desc.digest}"
        assert attrs["http.response.status_code"] == 200
    assert not tracing.enabled()


async def create_and_delete_container(address: str, container_id: str) -> None:
    from corral.api.types.containerd.services.containers import v1 as containers_pb
    from corral.api.types.google import protobuf

    async with connect(address) as client:
        spec = protobuf.Any(type_url="types.containerd.io/opencontainers/runtime-spec/1/Spec", value=b"{}")
        await client.create_container(
            containers_pb.Container(
                id=container_id,
                runtime=containers_pb.ContainerRuntime(name="io.containerd.runc.v2"),
                spec=spec,
            )
        )
        stub = containers_pb.ContainersStub(client.channel, metadata={"containerd-namespace": "default"})
        await stub.delete(containers_pb.DeleteContainerRequest(id=container_id))


def test_container_records_have_containerds_metadata_spans(tmp_path: Path, collector: Collector) -> None:
    d = traced_daemon(tmp_path / "corral", collector.endpoint)
    try:
        anyio.run(create_and_delete_container, d.socket, "traced-box")
        spans = collector.wait_for(lambda got: any(s.name == "metadata.containers.Delete" for s in got))
    finally:
        d.stop()
    create = one(spans, "metadata.containers.Create")
    rpc = one(spans, "containerd.services.containers.v1.Containers/Create")
    assert create.parent_span_id == rpc.span_id
    assert create.attributes["container.id"] == "traced-box"
    assert create.attributes["container.createdAt"].endswith("Z")
    assert one(spans, "metadata.containers.Delete").attributes == {"container.id": "traced-box"}


async def forward_over_ttrpc(address: str, header: str) -> None:
    from datetime import UTC, datetime

    from corral.api.ttrpc import TTRPCClient
    from corral.api.types.containerd.services.events.ttrpc import v1 as ttrpc_pb
    from corral.api.types.google import protobuf

    event = protobuf.Any(type_url="containerd.events.TaskExit", value=b"")
    envelope = ctypes.Envelope(
        timestamp=datetime.now(UTC), namespace="default", topic="/tasks/exit", event=event
    )
    async with TTRPCClient.connect(address) as client:
        await client.call(
            "containerd.services.events.ttrpc.v1.Events",
            "Forward",
            bytes(ttrpc_pb.ForwardRequest(envelope=envelope)),
            metadata={"traceparent": header},
        )


def test_a_shims_ttrpc_call_to_corrald_is_a_ttrpc_server_span(tmp_path: Path, collector: Collector) -> None:
    header, trace_id, caller = traceparent()
    d = traced_daemon(tmp_path / "corral", collector.endpoint)
    try:
        anyio.run(forward_over_ttrpc, d.socket + ".ttrpc", header)
        spans = collector.wait_for(lambda got: any(s.trace_id == trace_id for s in got))
    finally:
        d.stop()
    forward = one(spans, "containerd.services.events.ttrpc.v1.Events/Forward", trace_id)
    assert forward.parent_span_id == caller
    assert forward.kind == SERVER
    assert forward.attributes == {
        "rpc.system": "ttrpc",
        "rpc.service": "containerd.services.events.ttrpc.v1.Events",
        "rpc.method": "Forward",
        "rpc.ttrpc.status_code": 0,
    }
