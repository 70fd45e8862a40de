"""Pin the wire of the tasks, images, containers, sandbox, transfer, shim, ttrpc, cgroups, CRI and NRI types.

Two independent encoders meet here: betterproto2 (the generated src/api/types) and the official
``google.protobuf`` runtime, fed with descriptors that grpcio-tools compiles from the same
src/api/proto files. A message encoded by one must decode to the same message in the other, with
nothing left over as an unknown field. Hand-computed golden bytes (tag = number << 3 | wire type)
pin the field numbers that matter most, independently of both encoders.
"""

from __future__ import annotations

import datetime
import importlib
import inspect
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any as TypingAny

import betterproto2
import grpc_tools
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
from google.protobuf.descriptor import Descriptor as PbDescriptor
from google.protobuf.descriptor import EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message as PbMessage
from google.protobuf.unknown_fields import UnknownFieldSet
from grpc_tools import protoc
from grpclib.const import Cardinality

from corral.api.types.containerd.events import ContainerCreate, ContainerCreateRuntime, TaskExit
from corral.api.types.containerd.runc.v1 import Options, ProcessDetails
from corral.api.types.containerd.services.containers.v1 import Container, ContainerRuntime
from corral.api.types.containerd.services.events.ttrpc.v1 import ForwardRequest
from corral.api.types.containerd.services.images.v1 import DeleteImageRequest, Image, ImageCreate
from corral.api.types.containerd.services.sandbox.v1 import ControllerStartResponse, ControllerUpdateRequest
from corral.api.types.containerd.services.streaming.v1 import StreamInit
from corral.api.types.containerd.services.tasks.v1 import (
    CreateTaskRequest,
    ExecProcessRequest,
    ListPidsResponse,
    MetricsResponse,
)
from corral.api.types.containerd.services.transfer.v1 import TransferOptions, TransferRequest
from corral.api.types.containerd.task.v2 import ConnectResponse, DeleteResponse, StateResponse
from corral.api.types.containerd.task.v2 import CreateTaskRequest as ShimCreateTaskRequest
from corral.api.types.containerd.types import Descriptor, Envelope, Metric, Mount, Platform, Sandbox
from corral.api.types.containerd.types.transfer import (
    AuthResponse,
    AuthType,
    ImageStore,
    Progress,
    RegistryResolver,
    UnpackConfiguration,
    WindowUpdate,
)
from corral.api.types.containerd.v1.types import Process, ProcessInfo, Status
from corral.api.types.google.protobuf import Any
from corral.api.types.google.rpc import Status as RpcStatus
from corral.api.types.io.containerd.cgroups import v1 as cgroups_v1
from corral.api.types.io.containerd.cgroups import v2 as cgroups_v2
from corral.api.types.message_pool import default_message_pool
from corral.api.types.nri.pkg.api import v1alpha1 as nri
from corral.api.types.runtime import v1 as cri
from corral.api.types.ttrpc import KeyValue, Request, Response

REPO_ROOT = Path(__file__).resolve().parents[2]
PROTO_DIR = REPO_ROOT / "src" / "api" / "proto"
UTC = datetime.UTC

# Every proto package this file covers; the structural checks walk all their messages and services.
PACKAGES = (
    "containerd.types",
    "containerd.v1.types",
    "containerd.types.transfer",
    "containerd.events",
    "containerd.services.images.v1",
    "containerd.services.containers.v1",
    "containerd.services.tasks.v1",
    "containerd.services.events.ttrpc.v1",
    "containerd.services.transfer.v1",
    "containerd.services.streaming.v1",
    "containerd.services.sandbox.v1",
    "containerd.task.v2",
    "containerd.runc.v1",
    "io.containerd.cgroups.v1",
    "io.containerd.cgroups.v2",
    "ttrpc",
    "runtime.v1",
    "nri.pkg.api.v1alpha1",
)

# google.protobuf's field kinds, spelled as betterproto2 spells them.
KIND_NAMES = {
    FieldDescriptor.TYPE_DOUBLE: betterproto2.TYPE_DOUBLE,
    FieldDescriptor.TYPE_FLOAT: betterproto2.TYPE_FLOAT,
    FieldDescriptor.TYPE_INT64: betterproto2.TYPE_INT64,
    FieldDescriptor.TYPE_UINT64: betterproto2.TYPE_UINT64,
    FieldDescriptor.TYPE_INT32: betterproto2.TYPE_INT32,
    FieldDescriptor.TYPE_FIXED64: betterproto2.TYPE_FIXED64,
    FieldDescriptor.TYPE_FIXED32: betterproto2.TYPE_FIXED32,
    FieldDescriptor.TYPE_BOOL: betterproto2.TYPE_BOOL,
    FieldDescriptor.TYPE_STRING: betterproto2.TYPE_STRING,
    FieldDescriptor.TYPE_MESSAGE: betterproto2.TYPE_MESSAGE,
    FieldDescriptor.TYPE_BYTES: betterproto2.TYPE_BYTES,
    FieldDescriptor.TYPE_UINT32: betterproto2.TYPE_UINT32,
    FieldDescriptor.TYPE_ENUM: betterproto2.TYPE_ENUM,
    FieldDescriptor.TYPE_SFIXED32: betterproto2.TYPE_SFIXED32,
    FieldDescriptor.TYPE_SFIXED64: betterproto2.TYPE_SFIXED64,
    FieldDescriptor.TYPE_SINT32: betterproto2.TYPE_SINT32,
    FieldDescriptor.TYPE_SINT64: betterproto2.TYPE_SINT64,
}


# ---------------------------------------------------------------- the reference runtime


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> descriptor_pool.DescriptorPool:
    """google.protobuf descriptors for every .proto under src/api/proto, compiled by grpcio-tools."""
    out = tmp_path_factory.mktemp("descriptors") / "all.pb"
    include = Path(next(iter(grpc_tools.__path__))) / "_proto"
    sources = sorted(p.relative_to(PROTO_DIR).as_posix() for p in PROTO_DIR.rglob("*.proto"))
    args = ["protoc", f"-I{PROTO_DIR}", f"-I{include}", "--include_imports", f"--descriptor_set_out={out}"]
    assert protoc.main([*args, *sources]) == 0
    files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    result = descriptor_pool.DescriptorPool()
    for file in files.file:  # --include_imports lists dependencies first
        result.Add(file)
    return result


def official(pool: descriptor_pool.DescriptorPool, full_name: str) -> type[PbMessage]:
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(full_name))


def assert_no_unknown_fields(msg: PbMessage) -> None:
    """Every field betterproto2 wrote has a number the descriptor knows, at every depth."""
    assert len(UnknownFieldSet(msg)) == 0, f"{msg.DESCRIPTOR.full_name} has unknown fields"
    for field, value in msg.ListFields():
        if field.type != FieldDescriptor.TYPE_MESSAGE:
            continue
        if field.message_type.GetOptions().map_entry:
            values = value.values() if field.message_type.fields_by_name["value"].message_type else []
        elif field.is_repeated:
            values = value
        else:
            values = [value]
        for sub in values:
            assert_no_unknown_fields(sub)


def decode_officially(
    pool: descriptor_pool.DescriptorPool, full_name: str, msg: betterproto2.Message
) -> TypingAny:
    """Encode with betterproto2, decode with google.protobuf, and check the way back is lossless."""
    decoded = official(pool, full_name).FromString(bytes(msg))
    assert_no_unknown_fields(decoded)
    assert type(msg).parse(decoded.SerializeToString()) == msg
    return decoded


# ---------------------------------------------------------------- every message and service, structurally


def _messages(pool: descriptor_pool.DescriptorPool) -> Iterator[PbDescriptor]:
    def walk(desc: PbDescriptor) -> Iterator[PbDescriptor]:
        if desc.GetOptions().map_entry:
            return
        yield desc
        for nested in desc.nested_types:
            yield from walk(nested)

    for package in PACKAGES:
        for path in sorted(PROTO_DIR.rglob("*.proto")):
            file = pool.FindFileByName(path.relative_to(PROTO_DIR).as_posix())
            if file.package != package:
                continue
            for desc in file.message_types_by_name.values():
                yield from walk(desc)


def _generated_class(full_name: str) -> type[betterproto2.Message]:
    return default_message_pool.url_to_type[f"type.googleapis.com/{full_name}"]


def _enum_names(enum_cls: type[betterproto2.Enum]) -> dict[int, str]:
    renamed: dict[int, str] = {}
    if hasattr(enum_cls, "betterproto_value_to_renamed_proto_names"):
        renamed = enum_cls.betterproto_value_to_renamed_proto_names()
    return {member.value: renamed.get(member.value, member.name) for member in enum_cls}


def _check_enum(desc: EnumDescriptor, enum_cls: type) -> None:
    assert issubclass(enum_cls, betterproto2.Enum)
    assert _enum_names(enum_cls) == {v.number: v.name for v in desc.values}, desc.full_name


def test_every_generated_message_has_the_descriptors_field_numbers_and_kinds(
    pool: descriptor_pool.DescriptorPool,
) -> None:
    checked = 0
    for desc in _messages(pool):
        cls = _generated_class(desc.full_name)
        meta = cls._betterproto
        by_number = {m.number: (name, m) for name, m in meta.meta_by_field_name.items()}
        assert set(by_number) == {f.number for f in desc.fields}, desc.full_name
        for field in desc.fields:
            name, got = by_number[field.number]
            where = f"{desc.full_name}.{field.name} = {field.number}"
            if field.message_type is not None and field.message_type.GetOptions().map_entry:
                assert got.proto_type == betterproto2.TYPE_MAP, where
                assert got.map_meta is not None
                key, value = (
                    field.message_type.fields_by_name["key"],
                    field.message_type.fields_by_name["value"],
                )
                assert got.map_meta[0].proto_type == KIND_NAMES[key.type], where
                assert got.map_meta[1].proto_type == KIND_NAMES[value.type], where
                if value.message_type is not None:
                    assert _generated_or_wkt(meta.cls_by_field[f"{name}.value"], value.message_type), where
                continue
            assert got.proto_type == KIND_NAMES[field.type], where
            assert got.repeated == field.is_repeated, where
            if field.message_type is not None:
                assert _generated_or_wkt(meta.cls_by_field[name], field.message_type), where
            if field.enum_type is not None:
                _check_enum(field.enum_type, meta.cls_by_field[name])
            checked += 1
    assert checked > 1000  # a guard that the walk saw the packages at all (the CRI alone has ~700)


def _generated_or_wkt(cls: type, desc: PbDescriptor) -> bool:
    """The generated class for a message-typed field is the one registered under the descriptor's name.

    betterproto2 unwraps google.protobuf.Timestamp into datetime; that is the one exception.
    """
    if desc.full_name == "google.protobuf.Timestamp":
        return cls is datetime.datetime
    return cls is _generated_class(desc.full_name)


def _module(package: str) -> ModuleType:
    return importlib.import_module(f"corral.api.types.{package}")


CARDINALITY = {
    (False, False): Cardinality.UNARY_UNARY,
    (False, True): Cardinality.UNARY_STREAM,
    (True, False): Cardinality.STREAM_UNARY,
    (True, True): Cardinality.STREAM_STREAM,
}


@pytest.mark.parametrize("package", PACKAGES)
def test_generated_service_bases_serve_exactly_the_descriptors_methods(
    pool: descriptor_pool.DescriptorPool, package: str
) -> None:
    expected: dict[str, Cardinality] = {}
    for path in sorted(PROTO_DIR.rglob("*.proto")):
        file = pool.FindFileByName(path.relative_to(PROTO_DIR).as_posix())
        if file.package != package:
            continue
        for service in file.services_by_name.values():
            for method in service.methods:
                kind = CARDINALITY[(method.client_streaming, method.server_streaming)]
                expected[f"/{service.full_name}/{method.name}"] = kind
    served: dict[str, Cardinality] = {}
    for _, base in inspect.getmembers(_module(package), inspect.isclass):
        if base.__name__.endswith("Base") and hasattr(base, "__mapping__"):
            served |= {path: h.cardinality for path, h in base().__mapping__().items()}
    assert served == expected


@pytest.mark.parametrize(
    ("package", "service", "methods"),
    [
        ("containerd.services.tasks.v1", "Tasks", 17),
        ("containerd.task.v2", "Task", 17),
        ("containerd.services.images.v1", "Images", 5),
        ("containerd.services.containers.v1", "Containers", 6),
        ("containerd.services.sandbox.v1", "Store", 5),
        ("containerd.services.sandbox.v1", "Controller", 9),
        ("runtime.v1", "RuntimeService", 30),
        ("runtime.v1", "ImageService", 5),
        ("nri.pkg.api.v1alpha1", "Runtime", 2),
        ("nri.pkg.api.v1alpha1", "Plugin", 18),
    ],
)
def test_service_method_counts(package: str, service: str, methods: int) -> None:
    base = getattr(_module(package), f"{service}Base")
    assert len(base().__mapping__()) == methods


def test_streaming_kinds() -> None:
    containers = _module("containerd.services.containers.v1").ContainersBase().__mapping__()
    assert containers["/containerd.services.containers.v1.Containers/ListStream"].cardinality is (
        Cardinality.UNARY_STREAM
    )
    streaming = _module("containerd.services.streaming.v1").StreamingBase().__mapping__()
    assert (
        streaming["/containerd.services.streaming.v1.Streaming/Stream"].cardinality
        is Cardinality.STREAM_STREAM
    )
    cri_runtime = cri.RuntimeServiceBase().__mapping__()
    assert (
        cri_runtime["/runtime.v1.RuntimeService/GetContainerEvents"].cardinality is Cardinality.UNARY_STREAM
    )


# ---------------------------------------------------------------- golden bytes for the numbers that matter


def test_tasks_create_rootfs_is_field_3_and_options_field_9() -> None:
    msg = CreateTaskRequest(
        container_id="c",
        rootfs=[Mount(type="overlay", source="overlay", options=["lowerdir=/l"])],
        options=Any(type_url="containerd.runc.v1.Options", value=b""),
    )
    mount = b"\x0a\x07overlay\x12\x07overlay\x22\x0blowerdir=/l"
    url = b"containerd.runc.v1.Options"
    assert bytes(msg) == (
        b"\x0a\x01c"  # 1 container_id
        + b"\x1a"
        + bytes([len(mount)])
        + mount  # 3 rootfs
        + b"\x4a"
        + bytes([len(url) + 2])
        + b"\x0a"
        + bytes([len(url)])
        + url  # 9 options (Any.type_url only)
    )
    assert CreateTaskRequest.parse(bytes(msg)) == msg


def test_tasks_create_task_api_fields_11_and_12() -> None:
    assert bytes(CreateTaskRequest(task_api_address="a", task_api_version=3)) == b"\x5a\x01a\x60\x03"


def test_ttrpc_request_fields_and_repeated_metadata_5() -> None:
    msg = Request(
        service="containerd.task.v2.Task",
        method="State",
        payload=b"\x0a\x01x",
        timeout_nano=2_000_000_000,
        metadata=[KeyValue(key="k", value="a"), KeyValue(key="k", value="b")],
    )
    assert bytes(msg) == (
        b"\x0a\x17containerd.task.v2.Task"  # 1 service
        + b"\x12\x05State"  # 2 method
        + b"\x1a\x03\x0a\x01x"  # 3 payload
        + b"\x20\x80\xa8\xd6\xb9\x07"  # 4 timeout_nano = 2e9 as a varint
        + b"\x2a\x06\x0a\x01k\x12\x01a"  # 5 metadata, one entry per occurrence
        + b"\x2a\x06\x0a\x01k\x12\x01b"
    )
    assert Request.parse(bytes(msg)) == msg


def test_ttrpc_ok_response_has_no_status_and_error_carries_rpc_status() -> None:
    assert bytes(Response(payload=b"\x08\x01")) == b"\x12\x02\x08\x01"
    assert bytes(Response()) == b""
    err = Response(status=RpcStatus(code=5, message="nf"))
    assert bytes(err) == b"\x0a\x06\x08\x05\x12\x02nf"


def test_shim_state_response_status_4_and_exec_id_11() -> None:
    msg = StateResponse(id="c", pid=42, status=Status.RUNNING, exit_status=0, exec_id="e")
    assert bytes(msg) == b"\x0a\x01c\x18\x2a\x20\x02\x5a\x01e"
    assert [s.value for s in (Status.UNKNOWN, Status.CREATED, Status.RUNNING, Status.STOPPED)] == [0, 1, 2, 3]
    assert [s.value for s in (Status.PAUSED, Status.PAUSING)] == [4, 5]


def test_shim_create_options_is_field_10_and_connect_response() -> None:
    assert bytes(ShimCreateTaskRequest(id="c", bundle="/b", terminal=True)) == b"\x0a\x01c\x12\x02/b\x20\x01"
    assert bytes(ShimCreateTaskRequest(options=Any(type_url="t"))) == b"\x52\x03\x0a\x01t"
    assert bytes(ConnectResponse(shim_pid=1, task_pid=2, version="v")) == b"\x08\x01\x10\x02\x1a\x01v"


def test_shim_delete_output_parses_exit_137() -> None:
    # What "containerd-shim-runc-v2 ... delete" prints on stdout: pid, exit_status, exited_at.
    data = b"\x08\x07\x10\x89\x01\x1a\x06\x08\x80\xc6\x96\xac\x06"
    parsed = DeleteResponse.parse(data)
    assert parsed.pid == 7
    assert parsed.exit_status == 137
    assert parsed.exited_at == datetime.datetime.fromtimestamp(1703256832, tz=UTC)


def test_images_times_are_fields_7_and_8_and_delete_target_3() -> None:
    at = datetime.datetime(1970, 1, 1, 0, 0, 1, tzinfo=UTC)
    assert (
        bytes(Image(name="n", created_at=at, updated_at=at)) == b"\x0a\x01n\x3a\x02\x08\x01\x42\x02\x08\x01"
    )
    assert bytes(DeleteImageRequest(name="n", sync=True, target=Descriptor(size=1))) == (
        b"\x0a\x01n\x10\x01\x1a\x02\x18\x01"
    )
    assert DeleteImageRequest.parse(b"\x0a\x01n").target is None


def test_container_extensions_10_and_sandbox_11() -> None:
    msg = Container(
        id="c",
        runtime=ContainerRuntime(name="io.containerd.runc.v2"),
        extensions={"e": Any(type_url="t", value=b"v")},
        sandbox="s",
    )
    entry = b"\x0a\x01e\x12\x06\x0a\x01t\x12\x01v"
    assert bytes(msg) == (
        b"\x0a\x01c"
        + b"\x22\x17\x0a\x15io.containerd.runc.v2"  # 4 runtime{name}
        + b"\x52"
        + bytes([len(entry)])
        + entry  # 10 extensions
        + b"\x5a\x01s"  # 11 sandbox
    )


def test_sandbox_sandboxer_is_field_10() -> None:
    msg = Sandbox(sandbox_id="p", labels={"a": "b"}, sandboxer="podsandbox")
    assert bytes(msg) == b"\x0a\x01p\x22\x06\x0a\x01a\x12\x01b\x52\x0apodsandbox"
    # ControllerUpdateRequest is the one controller request with sandboxer at 2.
    assert bytes(ControllerUpdateRequest(sandbox_id="p", sandboxer="x")) == b"\x0a\x01p\x12\x01x"


def test_image_store_unpacks_is_field_10() -> None:
    msg = ImageStore(
        name="docker.io/library/busybox:latest",
        unpacks=[UnpackConfiguration(platform=Platform(os="linux"), snapshotter="overlayfs")],
    )
    unpack = b"\x0a\x07\x0a\x05linux\x12\x09overlayfs"
    assert bytes(msg).endswith(b"\x52" + bytes([len(unpack)]) + unpack)


def test_transfer_options_progress_stream_is_field_1() -> None:
    assert bytes(TransferOptions(progress_stream="p")) == b"\x0a\x01p"
    msg = TransferRequest(source=Any(type_url="a"), destination=Any(type_url="b"), options=TransferOptions())
    assert bytes(msg) == b"\x0a\x03\x0a\x01a\x12\x03\x0a\x01b\x1a\x00"


def test_stream_init_and_window_update() -> None:
    assert bytes(StreamInit(id="s1")) == b"\x0a\x02s1"
    assert bytes(WindowUpdate(update=-1)) == b"\x08" + b"\xff" * 9 + b"\x01"  # int32 -1 is a 10-byte varint


def test_runc_options_fields_keep_1_6_criu_path() -> None:
    msg = Options(binary_name="runc", root="/r", criu_path="/c", systemd_cgroup=True, task_api_version=3)
    assert bytes(msg) == b"\x32\x04runc\x3a\x02/r\x42\x02/c\x48\x01\x68\x03"
    assert bytes(ProcessDetails(exec_id="e")) == b"\x0a\x01e"


def test_cgroups_v1_memory_usage_is_field_33() -> None:
    msg = cgroups_v1.Metrics(memory=cgroups_v1.MemoryStat(usage=cgroups_v1.MemoryEntry(usage=5)))
    assert bytes(msg) == b"\x22\x05\x8a\x02\x02\x10\x05"  # 4 memory { 33 usage { 2 usage } }


def test_cgroups_v2_memory_is_field_4_and_io_6() -> None:
    msg = cgroups_v2.Metrics(memory=cgroups_v2.MemoryStat(usage=7), io=cgroups_v2.IoStat())
    assert bytes(msg) == b"\x22\x03\x80\x02\x07\x32\x00"  # 4 memory { 32 usage }, 6 io {}


def test_cri_pod_sandbox_config_fields() -> None:
    msg = cri.PodSandboxConfig(
        metadata=cri.PodSandboxMetadata(name="p", uid="u", namespace="n", attempt=1),
        hostname="h",
        log_directory="/l",
        labels={"a": "b"},
        linux=cri.LinuxPodSandboxConfig(
            cgroup_parent="/k",
            security_context=cri.LinuxSandboxSecurityContext(
                namespace_options=cri.NamespaceOption(network=cri.NamespaceMode.NODE),
            ),
        ),
    )
    meta = b"\x0a\x01p\x12\x01u\x1a\x01n\x20\x01"
    linux = b"\x0a\x02/k\x12\x04\x0a\x02\x08\x02"
    assert bytes(msg) == (
        b"\x0a"
        + bytes([len(meta)])
        + meta  # 1 metadata
        + b"\x12\x01h"  # 2 hostname
        + b"\x1a\x02/l"  # 3 log_directory
        + b"\x32\x06\x0a\x01a\x12\x01b"  # 6 labels
        + b"\x42"
        + bytes([len(linux)])
        + linux  # 8 linux { 1 cgroup_parent, 2 security_context { 1 namespace_options { 1 network } } }
    )
    assert cri.PodSandboxConfig.parse(bytes(msg)) == msg


def test_cri_mount_user_namespace_and_image_fields() -> None:
    msg = cri.Mount(
        container_path="/c",
        uid_mappings=[cri.IdMapping(host_id=1000, container_id=0, length=1)],
        recursive_read_only=True,
        image=cri.ImageSpec(image="i"),
        image_sub_path="sub",
    )
    assert bytes(msg) == (
        b"\x0a\x02/c"
        + b"\x32\x05\x08\xe8\x07\x18\x01"  # 6 uidMappings
        + b"\x40\x01"  # 8 recursive_read_only
        + b"\x4a\x03\x0a\x01i"  # 9 image
        + b"\x52\x03sub"  # 10 image_sub_path
    )
    userns = cri.UserNamespace(mode=cri.NamespaceMode.POD, uids=[cri.IdMapping(length=65536)])
    assert bytes(cri.NamespaceOption(userns_options=userns)) == b"\x2a\x06\x12\x04\x18\x80\x80\x04"


def test_cri_image_spec_high_field_numbers() -> None:
    msg = cri.ImageSpec(image="i", user_specified_image="u", runtime_handler="r")
    assert bytes(msg) == b"\x0a\x01i\x92\x01\x01u\x9a\x01\x01r"  # 18 and 19 need two-byte tags


def test_nri_configure_response_events_is_field_2() -> None:
    assert bytes(nri.ConfigureResponse(events=1 << 3)) == b"\x10\x08"


# ---------------------------------------------------------------- both runtimes agree, message by message


def test_tasks_messages_agree(pool: descriptor_pool.DescriptorPool) -> None:
    req = CreateTaskRequest(
        container_id="c",
        rootfs=[Mount(type="overlay", options=["a", "b"])],
        stdin="/fifo/in",
        terminal=True,
        checkpoint=Descriptor(media_type="m", digest="sha256:x", size=3),
        runtime_path="/bin/shim",
    )
    decoded = decode_officially(pool, "containerd.services.tasks.v1.CreateTaskRequest", req)
    assert [m.type for m in decoded.rootfs] == ["overlay"]
    assert decoded.checkpoint.size == 3
    assert json_format.MessageToDict(decoded) == req.to_dict()

    pids = ListPidsResponse(
        processes=[ProcessInfo(pid=9, info=Any(type_url="containerd.runc.v1.ProcessDetails"))]
    )
    assert (
        decode_officially(pool, "containerd.services.tasks.v1.ListPidsResponse", pids).processes[0].pid == 9
    )

    metric = Metric(timestamp=datetime.datetime(2024, 5, 6, tzinfo=UTC), id="c", data=Any(type_url="x"))
    decoded = decode_officially(
        pool, "containerd.services.tasks.v1.MetricsResponse", MetricsResponse(metrics=[metric])
    )
    assert decoded.metrics[0].timestamp.seconds == 1714953600

    exec_req = ExecProcessRequest(container_id="c", exec_id="e", spec=Any(type_url="p", value=b"{}"))
    assert decode_officially(pool, "containerd.services.tasks.v1.ExecProcessRequest", exec_req).exec_id == "e"

    proc = Process(container_id="c", id="e", pid=1, status=Status.STOPPED, exit_status=2)
    decoded = decode_officially(pool, "containerd.v1.types.Process", proc)
    assert decoded.status == 3
    assert json_format.MessageToDict(decoded) == proc.to_dict()


def test_images_and_containers_agree(pool: descriptor_pool.DescriptorPool) -> None:
    image = Image(
        name="docker.io/library/busybox:latest",
        labels={"k": "v"},
        target=Descriptor(media_type="application/vnd.oci.image.index.v1+json", digest="sha256:a", size=9),
        created_at=datetime.datetime(2024, 1, 1, tzinfo=UTC),
    )
    decoded = decode_officially(pool, "containerd.services.images.v1.Image", image)
    assert decoded.target.digest == "sha256:a"
    assert json_format.MessageToDict(decoded) == image.to_dict()

    event = ImageCreate(name="n", labels={"a": "b"})
    assert decode_officially(pool, "containerd.services.images.v1.ImageCreate", event).labels == {"a": "b"}

    container = Container(
        id="c",
        image="i",
        runtime=ContainerRuntime(
            name="io.containerd.runc.v2", options=Any(type_url="containerd.runc.v1.Options")
        ),
        spec=Any(type_url="types.containerd.io/opencontainers/runtime-spec/1/Spec", value=b"{}"),
        snapshotter="overlayfs",
        snapshot_key="c",
        extensions={"x": Any(type_url="t", value=b"1"), "y": Any(type_url="u")},
    )
    decoded = decode_officially(pool, "containerd.services.containers.v1.Container", container)
    assert decoded.runtime.name == "io.containerd.runc.v2"
    assert sorted(decoded.extensions) == ["x", "y"]
    assert decoded.extensions["x"].value == b"1"


def test_events_agree(pool: descriptor_pool.DescriptorPool) -> None:
    exit_event = TaskExit(
        container_id="c", id="c", pid=5, exit_status=137, exited_at=datetime.datetime(2024, 1, 1, tzinfo=UTC)
    )
    decoded = decode_officially(pool, "containerd.events.TaskExit", exit_event)
    assert decoded.exit_status == 137
    assert json_format.MessageToDict(decoded) == exit_event.to_dict()

    create = ContainerCreate(id="c", image="i", runtime=ContainerCreateRuntime(name="r"))
    assert decode_officially(pool, "containerd.events.ContainerCreate", create).runtime.name == "r"

    forward = ForwardRequest(
        envelope=Envelope(
            namespace="default", topic="/tasks/exit", event=Any(type_url="containerd.events.TaskExit")
        )
    )
    decoded = decode_officially(pool, "containerd.services.events.ttrpc.v1.ForwardRequest", forward)
    assert decoded.envelope.topic == "/tasks/exit"


def test_sandbox_and_transfer_agree(pool: descriptor_pool.DescriptorPool) -> None:
    start = ControllerStartResponse(sandbox_id="p", pid=3, labels={"a": "b"}, address="unix:///s", version=3)
    decoded = decode_officially(pool, "containerd.services.sandbox.v1.ControllerStartResponse", start)
    assert (decoded.address, decoded.version) == ("unix:///s", 3)

    store = ImageStore(
        name="n",
        platforms=[Platform(os="linux", architecture="amd64")],
        all_metadata=True,
        manifest_limit=1,
        unpacks=[UnpackConfiguration(snapshotter="overlayfs")],
    )
    decoded = decode_officially(pool, "containerd.types.transfer.ImageStore", store)
    assert decoded.unpacks[0].snapshotter == "overlayfs"
    assert json_format.MessageToDict(decoded) == store.to_dict()

    resolver = RegistryResolver(auth_stream="a", headers={"X": "1"}, default_scheme="https")
    assert decode_officially(pool, "containerd.types.transfer.RegistryResolver", resolver).headers == {
        "X": "1"
    }

    auth = AuthResponse(
        auth_type=AuthType.HEADER, secret="Bearer t", expire_at=datetime.datetime(2030, 1, 1, tzinfo=UTC)
    )
    decoded = decode_officially(pool, "containerd.types.transfer.AuthResponse", auth)
    assert decoded.authType == 3
    assert json_format.MessageToDict(decoded) == auth.to_dict()

    progress = Progress(
        event="saved", name="n", parents=["p"], progress=10, total=20, desc=Descriptor(size=20)
    )
    assert decode_officially(pool, "containerd.types.transfer.Progress", progress).total == 20


def test_shim_and_ttrpc_agree(pool: descriptor_pool.DescriptorPool) -> None:
    state = StateResponse(
        id="c",
        bundle="/b",
        pid=4,
        status=Status.RUNNING,
        stdout="/fifo/out",
        exited_at=datetime.datetime(1, 1, 1, tzinfo=UTC),  # the Go zero time 1.6 sends
        exec_id="e",
    )
    decoded = decode_officially(pool, "containerd.task.v2.StateResponse", state)
    assert decoded.exited_at.seconds == -62135596800
    assert json_format.MessageToDict(decoded) == state.to_dict()

    request = Request(service="s", method="m", payload=bytes(state), metadata=[KeyValue(key="k", value="v")])
    decoded = decode_officially(pool, "ttrpc.Request", request)
    assert StateResponse.parse(decoded.payload) == state


def test_cgroups_agree(pool: descriptor_pool.DescriptorPool) -> None:
    v1 = cgroups_v1.Metrics(
        hugetlb=[cgroups_v1.HugetlbStat(usage=1, pagesize="2MB")],
        pids=cgroups_v1.PidsStat(current=3, limit=10),
        cpu=cgroups_v1.CpuStat(usage=cgroups_v1.CpuUsage(total=100, per_cpu=[60, 40])),
        memory=cgroups_v1.MemoryStat(cache=1, total_rss=2, kernel_tcp=cgroups_v1.MemoryEntry(limit=3)),
        blkio=cgroups_v1.BlkIoStat(
            io_service_bytes_recursive=[cgroups_v1.BlkIoEntry(op="Read", major=8, value=5)]
        ),
        network=[cgroups_v1.NetworkStat(name="eth0", rx_bytes=1)],
    )
    decoded = decode_officially(pool, "io.containerd.cgroups.v1.Metrics", v1)
    assert list(decoded.cpu.usage.per_cpu) == [60, 40]
    assert json_format.MessageToDict(decoded) == v1.to_dict()

    v2 = cgroups_v2.Metrics(
        pids=cgroups_v2.PidsStat(current=1),
        cpu=cgroups_v2.CpuStat(
            usage_usec=5, psi=cgroups_v2.PsiStats(some=cgroups_v2.PsiData(avg10=0.25, total=9))
        ),
        memory=cgroups_v2.MemoryStat(anon=1, workingset_refault_file=2, swap_max_usage=3),
        memory_events=cgroups_v2.MemoryEvents(oom_kill=1, oom_group_kill=2),
        io=cgroups_v2.IoStat(usage=[cgroups_v2.IoEntry(major=8, rbytes=4)]),
        hugetlb=[cgroups_v2.HugeTlbStat(current=1, pagesize="1GB", failcnt=2)],
    )
    decoded = decode_officially(pool, "io.containerd.cgroups.v2.Metrics", v2)
    assert decoded.cpu.psi.some.avg10 == 0.25
    assert json_format.MessageToDict(decoded) == v2.to_dict()


def test_cri_messages_agree(pool: descriptor_pool.DescriptorPool) -> None:
    config = cri.ContainerConfig(
        metadata=cri.ContainerMetadata(name="c", attempt=2),
        image=cri.ImageSpec(image="busybox", annotations={"a": "b"}),
        command=["sh"],
        args=["-c", "true"],
        envs=[cri.KeyValue(key="A", value="1")],
        mounts=[
            cri.Mount(
                container_path="/d",
                host_path="/h",
                propagation=cri.MountPropagation.PROPAGATION_BIDIRECTIONAL,
            )
        ],
        devices=[cri.Device(container_path="/dev/x", host_path="/dev/y", permissions="rwm")],
        log_path="c/0.log",
        linux=cri.LinuxContainerConfig(
            resources=cri.LinuxContainerResources(
                cpu_quota=-1, memory_limit_in_bytes=1 << 30, unified={"k": "v"}
            ),
            security_context=cri.LinuxContainerSecurityContext(
                capabilities=cri.Capability(add_capabilities=["NET_ADMIN"]),
                run_as_user=cri.Int64Value(value=0),
                supplemental_groups_policy=cri.SupplementalGroupsPolicy.Strict,
                seccomp=cri.SecurityProfile(
                    profile_type=cri.SecurityProfileProfileType.Localhost, localhost_ref="p"
                ),
            ),
        ),
        stop_signal=cri.Signal.SIGRTMAX,
    )
    decoded = decode_officially(pool, "runtime.v1.ContainerConfig", config)
    assert decoded.stop_signal == 65
    # run_as_user 0 (root) survives as a present, empty wrapper: "set to zero", not "unset".
    assert decoded.linux.security_context.HasField("run_as_user")
    assert decoded.linux.security_context.run_as_user.value == 0
    assert json_format.MessageToDict(decoded) == config.to_dict()

    status = cri.ContainerStatus(
        id="x",
        state=cri.ContainerState.CONTAINER_EXITED,
        exit_code=-1,
        finished_at=1_700_000_000_000_000_000,
        user=cri.ContainerUser(linux=cri.LinuxContainerUser(uid=0, gid=0, supplemental_groups=[1, 2])),
        stop_signal=cri.Signal.SIGTERM,
    )
    decoded = decode_officially(pool, "runtime.v1.ContainerStatus", status)
    assert decoded.state == 2
    assert json_format.MessageToDict(decoded) == status.to_dict()

    stats = cri.PodSandboxStats(
        attributes=cri.PodSandboxAttributes(id="p", labels={"a": "b"}),
        linux=cri.LinuxPodSandboxStats(
            cpu=cri.CpuUsage(timestamp=1, usage_core_nano_seconds=cri.UInt64Value(value=5)),
            memory=cri.MemoryUsage(working_set_bytes=cri.UInt64Value(value=7)),
            containers=[
                cri.ContainerStats(writable_layer=cri.FilesystemUsage(used_bytes=cri.UInt64Value(value=1)))
            ],
            io=cri.IoUsage(timestamp=2),
        ),
    )
    decoded = decode_officially(pool, "runtime.v1.PodSandboxStats", stats)
    assert decoded.linux.containers[0].writable_layer.used_bytes.value == 1

    runtime_status = cri.StatusResponse(
        status=cri.RuntimeStatus(conditions=[cri.RuntimeCondition(type="RuntimeReady", status=True)]),
        runtime_handlers=[
            cri.RuntimeHandler(name="", features=cri.RuntimeHandlerFeatures(recursive_read_only_mounts=True))
        ],
        features=cri.RuntimeFeatures(supplemental_groups_policy=True),
    )
    decoded = decode_officially(pool, "runtime.v1.StatusResponse", runtime_status)
    assert decoded.runtime_handlers[0].features.recursive_read_only_mounts is True

    event = cri.ContainerEventResponse(
        container_id="x",
        container_event_type=cri.ContainerEventType.CONTAINER_STOPPED_EVENT,
        pod_sandbox_status=cri.PodSandboxStatus(id="p", state=cri.PodSandboxState.SANDBOX_NOTREADY),
        containers_statuses=[status],
    )
    assert decode_officially(pool, "runtime.v1.ContainerEventResponse", event).container_event_type == 2


def test_nri_messages_agree(pool: descriptor_pool.DescriptorPool) -> None:
    container = nri.Container(
        id="c",
        pod_sandbox_id="p",
        state=nri.ContainerState.CONTAINER_RUNNING,
        args=["sh"],
        mounts=[nri.Mount(destination="/d", type="bind", source="/s", options=["rbind"])],
        linux=nri.LinuxContainer(
            resources=nri.LinuxResources(memory=nri.LinuxMemory(limit=nri.OptionalInt64(value=1 << 20))),
            oom_score_adj=nri.OptionalInt(value=-500),
            io_priority=nri.LinuxIoPriority(class_=nri.IoPrioClass.BE, priority=4),
            net_devices={"eth1": nri.LinuxNetDevice(name="net1")},
        ),
        CDI_devices=[nri.CdiDevice(name="vendor.com/gpu=0")],
        user=nri.User(uid=1, gid=2, additional_gids=[3]),
    )
    decoded = decode_officially(pool, "nri.pkg.api.v1alpha1.Container", container)
    assert decoded.linux.io_priority.__getattribute__("class") == 2  # the proto name is a Python keyword
    assert decoded.CDI_devices[0].name == "vendor.com/gpu=0"
    assert decoded.linux.net_devices["eth1"].name == "net1"

    owners = nri.OwningPlugins(
        owners={
            "c": nri.FieldOwners(
                simple={nri.Field.MemLimit.value: "p1"},
                compound={nri.Field.Mounts.value: nri.CompoundFieldOwners(owners={"/d": "p2"})},
            )
        }
    )
    decoded = decode_officially(pool, "nri.pkg.api.v1alpha1.OwningPlugins", owners)
    assert decoded.owners["c"].compound[2].owners["/d"] == "p2"

    register = nri.RegisterPluginRequest(plugin_name="p", plugin_idx="10", NRI_version="v0.9.0")
    assert (
        decode_officially(pool, "nri.pkg.api.v1alpha1.RegisterPluginRequest", register).NRI_version
        == "v0.9.0"
    )

    adjust = nri.CreateContainerResponse(
        adjust=nri.ContainerAdjustment(annotations={"a": "b"}, env=[nri.KeyValue(key="K", value="V")]),
        evict=[nri.ContainerEviction(container_id="o", reason="r")],
    )
    assert (
        decode_officially(pool, "nri.pkg.api.v1alpha1.CreateContainerResponse", adjust).evict[0].reason == "r"
    )


def test_python_renamings_keep_the_proto_names_and_numbers() -> None:
    # Reserved words and prefixed enum values get Python names; the wire is unchanged.
    assert nri.Field.None_.value == 0
    assert _enum_names(nri.Field)[0] == "None"
    assert _enum_names(nri.IoPrioClass)[2] == "IOPRIO_CLASS_BE"
    assert bytes(nri.LinuxIoPriority(class_=nri.IoPrioClass.IDLE)) == b"\x08\x03"
