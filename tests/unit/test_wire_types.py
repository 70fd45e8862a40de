"""Pin corral's generated wire types (src/api/types, from src/api/proto) to containerd's wire contract.

Expected bytes are hand-computed protobuf encodings: tag byte = field_number << 3 | wire_type
(0 varint, 1 fixed64, 2 length-delimited), then the varint length / value.
"""

from __future__ import annotations

import asyncio
import datetime
import struct
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from grpclib.client import Channel
from grpclib.const import Cardinality
from grpclib.server import Server

from corral.api.types.containerd.events import (
    NamespaceCreate,
    SnapshotCommit,
    SnapshotPrepare,
    SnapshotRemove,
)
from corral.api.types.containerd.services.content.v1 import (
    ContentBase,
    WriteAction,
    WriteContentRequest,
    WriteContentResponse,
)
from corral.api.types.containerd.services.diff.v1 import ApplyRequest, DiffBase, DiffResponse
from corral.api.types.containerd.services.events.v1 import EventsBase, PublishRequest
from corral.api.types.containerd.services.introspection.v1 import (
    DeprecationWarning,
    IntrospectionBase,
    IntrospectionStub,
    Plugin,
    PluginsRequest,
    PluginsResponse,
    ServerResponse,
)
from corral.api.types.containerd.services.leases.v1 import CreateRequest, LeasesBase
from corral.api.types.containerd.services.namespaces.v1 import (
    Namespace,
    NamespacesBase,
    UpdateNamespaceRequest,
)
from corral.api.types.containerd.services.snapshots.v1 import CommitSnapshotRequest, Info, Kind, SnapshotsBase
from corral.api.types.containerd.services.version.v1 import VersionBase, VersionResponse, VersionStub
from corral.api.types.containerd.types import Descriptor, Envelope, Mount, Platform
from corral.api.types.corral.introspection.v1 import IntrospectionBase as CorralIntrospectionBase
from corral.api.types.corral.introspection.v1 import PluginDetail
from corral.api.types.google.protobuf import Any, Empty, FieldMask, Timestamp
from corral.api.types.google.rpc import Status
from corral.api.types.grpc.health.v1 import (
    HealthBase,
    HealthCheckRequest,
    HealthCheckResponse,
    HealthCheckResponseServingStatus,
    HealthStub,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
UTC = datetime.UTC

GO_ZERO_SECONDS = -62135596800  # 0001-01-01T00:00:00Z, Go's time.Time{} as gogo stdtime encodes it
# int64 -62135596800 as a varint: two's complement, 10 bytes.
GO_ZERO_SECONDS_VARINT = b"\x80\x92\xb8\xc3\x98\xfe\xff\xff\xff\x01"


def _varint(n: int) -> bytes:
    """Independent reference encoder for the varint literals above."""
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


# ---------------------------------------------------------------- scalar / map / nested encodings


def test_version_response_bytes() -> None:
    msg = VersionResponse(version="1", revision="r")
    assert bytes(msg) == b"\n\x011\x12\x01r"
    assert VersionResponse.parse(b"\n\x011\x12\x01r") == msg


def test_plugin_bytes_field_by_field() -> None:
    msg = Plugin(type="a", id="b", exports={"root": "/x"})
    expected = (
        b"\x0a\x01a"  # 1 type
        + b"\x12\x01b"  # 2 id
        + b"\x2a\x0a"  # 5 exports: one map entry, 10 bytes
        + b"\x0a\x04root"  # entry key (1)
        + b"\x12\x02/x"  # entry value (2)
    )
    assert bytes(msg) == expected
    assert Plugin.parse(expected) == msg


def test_plugin_platforms_and_init_err() -> None:
    msg = Plugin(
        type="io.containerd.snapshotter.v1",
        platforms=[Platform(os="linux", architecture="amd64")],
        init_err=Status(code=2, message="boom"),
        requires=["x.y"],
        capabilities=["c"],
    )
    data = bytes(msg)
    platform = b"\x0a\x05linux\x12\x05amd64"
    status = b"\x08\x02\x12\x04boom"
    assert data == (
        b"\x0a\x1cio.containerd.snapshotter.v1"
        + b"\x1a\x03x.y"  # 3 requires
        + b"\x22"
        + bytes([len(platform)])
        + platform  # 4 platforms
        + b"\x32\x01c"  # 6 capabilities
        + b"\x3a"
        + bytes([len(status)])
        + status  # 7 init_err
    )
    assert Plugin.parse(data) == msg


def test_unset_message_field_is_absent_but_empty_message_is_present() -> None:
    assert bytes(Plugin()) == b""
    assert Plugin().init_err is None
    # A set-but-empty sub-message is encoded (tag 7, length 0) and parses back as present.
    assert bytes(Plugin(init_err=Status())) == b"\x3a\x00"
    assert Plugin.parse(b"\x3a\x00").init_err == Status()
    assert Plugin.parse(b"").init_err is None


def test_platform_os_version_field_4() -> None:
    assert bytes(Platform(os_version="10.0.17763")) == b"\x22\x0a10.0.17763"


def test_descriptor_annotations_field_5() -> None:
    msg = Descriptor(media_type="m", digest="d", size=300, annotations={"k": "v"})
    assert bytes(msg) == b"\x0a\x01m\x12\x01d\x18\xac\x02\x2a\x06\x0a\x01k\x12\x01v"
    assert Descriptor.parse(bytes(msg)) == msg


def test_server_response_uint64() -> None:
    msg = ServerResponse(uuid="u", pid=1, pidns=4026531836)
    assert bytes(msg) == b"\x0a\x01u\x10\x01\x18" + _varint(4026531836)
    assert ServerResponse.parse(bytes(msg)) == msg


def test_health_serving_is_08_01() -> None:
    assert bytes(HealthCheckResponse(status=HealthCheckResponseServingStatus.SERVING)) == b"\x08\x01"
    parsed = HealthCheckResponse.parse(b"\x08\x01")
    assert parsed.status is HealthCheckResponseServingStatus.SERVING
    assert [s.value for s in HealthCheckResponseServingStatus] == [0, 1, 2, 3]


def test_snapshot_events_snapshotter_is_field_5() -> None:
    assert bytes(SnapshotPrepare(key="k", parent="p", snapshotter="o")) == b"\x0a\x01k\x12\x01p\x2a\x01o"
    assert bytes(SnapshotCommit(key="k", name="n", snapshotter="o")) == b"\x0a\x01k\x12\x01n\x2a\x01o"
    assert bytes(SnapshotRemove(key="k", snapshotter="o")) == b"\x0a\x01k\x2a\x01o"


def test_lease_create_labels_field_3() -> None:
    assert bytes(CreateRequest(id="l", labels={"a": "b"})) == b"\x0a\x01l\x1a\x06\x0a\x01a\x12\x01b"


def test_commit_snapshot_parent_field_5_and_kind() -> None:
    msg = CommitSnapshotRequest(snapshotter="s", name="n", key="k", parent="p")
    assert bytes(msg) == b"\x0a\x01s\x12\x01n\x1a\x01k\x2a\x01p"
    assert bytes(Info(name="n", kind=Kind.COMMITTED)) == b"\x0a\x01n\x18\x03"


def test_diff_response_diff_is_field_3() -> None:
    assert bytes(DiffResponse(diff=Descriptor(size=1))) == b"\x1a\x02\x18\x01"


def test_apply_request_any_map_and_mounts() -> None:
    msg = ApplyRequest(
        mounts=[Mount(type="bind", source="/a", options=["rbind"])],
        payloads={"p": Any(type_url="t", value=b"")},
        sync_fs=True,
    )
    mount = b"\x0a\x04bind\x12\x02/a\x22\x05rbind"
    entry = b"\x0a\x01p\x12\x03\x0a\x01t"
    assert bytes(msg) == (
        b"\x12" + bytes([len(mount)]) + mount + b"\x1a" + bytes([len(entry)]) + entry + b"\x20\x01"
    )
    assert ApplyRequest.parse(bytes(msg)) == msg


def test_corral_plugin_detail_high_field_numbers() -> None:
    msg = PluginDetail(init_seconds=0.5, error_code=-1, order=3)
    assert bytes(msg) == (
        b"\x51"
        + struct.pack("<d", 0.5)  # 10 init_seconds, fixed64
        + b"\x78"
        + _varint(-1)  # 15 error_code, int32 -1 is a 10-byte varint
        + b"\x80\x01\x03"  # 16 order: tag 128 needs two varint bytes
    )
    assert PluginDetail.parse(bytes(msg)) == msg


# ---------------------------------------------------------------- well-known types


def test_any_keeps_bare_type_url() -> None:
    inner = NamespaceCreate(name="ns")
    assert bytes(inner) == b"\x0a\x02ns"
    url = "containerd.events.NamespaceCreate"
    any_ = Any(type_url=url, value=bytes(inner))
    data = bytes(any_)
    assert data == b"\x0a" + bytes([len(url)]) + url.encode() + b"\x12\x04\x0a\x02ns"
    parsed = Any.parse(data)
    assert parsed.type_url == url
    assert NamespaceCreate.parse(parsed.value) == inner

    env = Envelope(
        timestamp=datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
        namespace="default",
        topic="/namespaces/create",
        event=any_,
    )
    parsed_env = Envelope.parse(bytes(env))
    assert parsed_env == env
    assert parsed_env.event is not None
    assert parsed_env.event.type_url == url


def test_any_pack_adds_google_prefix_so_do_not_use_it_for_containerd() -> None:
    # Pitfall guard: betterproto2's Any.pack() uses "type.googleapis.com/<name>", which 1.6 ctr rejects.
    packed = Any.pack(NamespaceCreate(name="ns"))
    assert packed.type_url == "type.googleapis.com/containerd.events.NamespaceCreate"


def test_timestamp_go_zero_round_trips() -> None:
    assert _varint(GO_ZERO_SECONDS) == GO_ZERO_SECONDS_VARINT
    ts = Timestamp(seconds=GO_ZERO_SECONDS)
    assert bytes(ts) == b"\x08" + GO_ZERO_SECONDS_VARINT
    assert Timestamp.parse(bytes(ts)).seconds == GO_ZERO_SECONDS
    go_zero = datetime.datetime(1, 1, 1, tzinfo=UTC)
    assert ts.to_datetime() == go_zero
    assert Timestamp.from_datetime(go_zero) == ts

    # Message-typed Timestamp fields surface as aware datetimes.
    msg = DeprecationWarning(id="x", last_occurrence=go_zero)
    data = bytes(msg)
    assert data == b"\x0a\x01x\x1a\x0b\x08" + GO_ZERO_SECONDS_VARINT
    assert DeprecationWarning.parse(data).last_occurrence == go_zero


def test_timestamp_epoch_is_present_not_unset() -> None:
    # seconds:0 is 1970-01-01, encoded as a present empty message; unset is absent.
    epoch = datetime.datetime(1970, 1, 1, tzinfo=UTC)
    assert bytes(DeprecationWarning(last_occurrence=epoch)) == b"\x1a\x00"
    assert bytes(DeprecationWarning()) == b""
    assert DeprecationWarning.parse(b"\x1a\x00").last_occurrence == epoch
    assert DeprecationWarning.parse(b"").last_occurrence is None


def test_field_mask_and_empty() -> None:
    msg = UpdateNamespaceRequest(
        namespace=Namespace(name="n", labels={"a": "b"}),
        update_mask=FieldMask(paths=["labels.a"]),
    )
    ns = b"\x0a\x01n\x12\x06\x0a\x01a\x12\x01b"
    mask = b"\x0a\x08labels.a"
    assert bytes(msg) == b"\x0a" + bytes([len(ns)]) + ns + b"\x12" + bytes([len(mask)]) + mask
    assert UpdateNamespaceRequest.parse(bytes(msg)) == msg
    assert bytes(Empty()) == b""
    assert Empty.parse(b"") == Empty()


# ---------------------------------------------------------------- content write protocol


def test_write_content_request_write_with_offset_parses() -> None:
    data = (
        b"\x08\x01"  # 1 action = WRITE
        + b"\x12\x03ref"  # 2 ref
        + b"\x18\x80\x10"  # 3 total = 2048
        + b"\x28\x80\x08"  # 5 offset = 1024
        + b"\x32\x02ab"  # 6 data
    )
    msg = WriteContentRequest.parse(data)
    assert msg.action is WriteAction.WRITE
    assert msg.ref == "ref"
    assert msg.total == 2048
    assert msg.offset == 1024
    assert msg.data == b"ab"
    assert msg.expected == ""
    assert msg.labels == {}
    assert bytes(msg) == data
    assert [a.value for a in (WriteAction.STAT, WriteAction.WRITE, WriteAction.COMMIT)] == [0, 1, 2]


def test_write_content_response_fields() -> None:
    started = datetime.datetime(2024, 1, 1, tzinfo=UTC)
    msg = WriteContentResponse(action=WriteAction.COMMIT, started_at=started, offset=2, total=2, digest="d")
    parsed = WriteContentResponse.parse(bytes(msg))
    assert parsed == msg
    assert bytes(msg).startswith(b"\x08\x02\x12")
    assert bytes(msg).endswith(b"\x20\x02\x28\x02\x32\x01d")


# ---------------------------------------------------------------- service method paths


def _cardinalities(base: object) -> dict[str, Cardinality]:
    mapping = base.__mapping__()  # type: ignore[attr-defined]
    return {path: handler.cardinality for path, handler in mapping.items()}


U, SS, BIDI = Cardinality.UNARY_UNARY, Cardinality.UNARY_STREAM, Cardinality.STREAM_STREAM


@pytest.mark.parametrize(
    ("base", "service", "methods"),
    [
        (
            IntrospectionBase,
            "containerd.services.introspection.v1.Introspection",
            {"Plugins": U, "Server": U, "PluginInfo": U},
        ),
        (VersionBase, "containerd.services.version.v1.Version", {"Version": U}),
        (
            NamespacesBase,
            "containerd.services.namespaces.v1.Namespaces",
            {"Get": U, "List": U, "Create": U, "Update": U, "Delete": U},
        ),
        (HealthBase, "grpc.health.v1.Health", {"Check": U, "Watch": SS}),
        (
            ContentBase,
            "containerd.services.content.v1.Content",
            {
                "Info": U,
                "Update": U,
                "List": SS,
                "Delete": U,
                "Read": SS,
                "Status": U,
                "ListStatuses": U,
                "Write": BIDI,
                "Abort": U,
            },
        ),
        (
            LeasesBase,
            "containerd.services.leases.v1.Leases",
            {"Create": U, "Delete": U, "List": U, "AddResource": U, "DeleteResource": U, "ListResources": U},
        ),
        (EventsBase, "containerd.services.events.v1.Events", {"Publish": U, "Forward": U, "Subscribe": SS}),
        (
            SnapshotsBase,
            "containerd.services.snapshots.v1.Snapshots",
            {
                "Prepare": U,
                "View": U,
                "Mounts": U,
                "Commit": U,
                "Remove": U,
                "Stat": U,
                "Update": U,
                "List": SS,
                "Usage": U,
                "Cleanup": U,
            },
        ),
        (DiffBase, "containerd.services.diff.v1.Diff", {"Apply": U, "Diff": U}),
        (CorralIntrospectionBase, "corral.introspection.v1.Introspection", {"Plugins": U}),
    ],
)
def test_service_method_paths(base: type, service: str, methods: dict[str, Cardinality]) -> None:
    expected = {f"/{service}/{name}": card for name, card in methods.items()}
    assert _cardinalities(base()) == expected


def test_introspection_plugins_path_present() -> None:
    assert "/containerd.services.introspection.v1.Introspection/Plugins" in IntrospectionBase().__mapping__()


def test_publish_request_event_any() -> None:
    msg = PublishRequest(topic="/t", event=Any(type_url="containerd.events.ContentDelete", value=b""))
    assert PublishRequest.parse(bytes(msg)).event == msg.event


# ---------------------------------------------------------------- grpclib end to end (unix socket)


class _Introspection(IntrospectionBase):
    async def plugins(self, message: PluginsRequest) -> PluginsResponse:
        return PluginsResponse(plugins=[Plugin(type="t", id=f"{len(message.filters)}", exports={"k": "v"})])


class _Version(VersionBase):
    async def version(self, message: Empty) -> VersionResponse:
        return VersionResponse(version="1", revision="r")


class _Health(HealthBase):
    async def check(self, message: HealthCheckRequest) -> HealthCheckResponse:
        return HealthCheckResponse(status=HealthCheckResponseServingStatus.SERVING)

    async def watch(self, message: HealthCheckRequest) -> AsyncIterator[HealthCheckResponse]:
        for status in (
            HealthCheckResponseServingStatus.SERVING,
            HealthCheckResponseServingStatus.NOT_SERVING,
        ):
            yield HealthCheckResponse(status=status)


def test_grpclib_round_trip_over_unix_socket() -> None:
    async def scenario() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            sock = str(Path(tmp) / "s.sock")
            server = Server([_Introspection(), _Version(), _Health()])
            await server.start(path=sock)
            channel = Channel(path=sock)
            try:
                resp = await IntrospectionStub(channel).plugins(PluginsRequest(filters=["a", "b"]))
                assert resp == PluginsResponse(plugins=[Plugin(type="t", id="2", exports={"k": "v"})])
                assert await VersionStub(channel).version() == VersionResponse(version="1", revision="r")
                health = HealthStub(channel)
                check = await health.check(HealthCheckRequest())
                assert check.status is HealthCheckResponseServingStatus.SERVING
                statuses = [r.status async for r in health.watch(HealthCheckRequest())]
                assert statuses == [
                    HealthCheckResponseServingStatus.SERVING,
                    HealthCheckResponseServingStatus.NOT_SERVING,
                ]
            finally:
                channel.close()
                server.close()
                await server.wait_closed()

    asyncio.run(scenario())


# ---------------------------------------------------------------- generated code is in sync


def test_generated_types_match_protos() -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "gen_protos.py"), "--check"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
