"""corral's ttrpc client and server against the real thing: Debian's containerd-shim-runc-v2.

The shim is started as containerd starts it, with TTRPC_ADDRESS pointing at a TTRPCServer that
receives its event Forwards; the client then drives the shim's containerd.task.v2.Task service.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import pytest
from tooling import require_root, require_tool

from corral.api.ttrpc import NAMESPACE_TTRPC_HEADER, TTRPCClient, TTRPCContext, TTRPCServer
from corral.api.ttrpc.protowire import bool_field, iter_fields, string_field
from corral.kernel import NotFound, Unavailable

pytestmark = [pytest.mark.anyio, pytest.mark.root]

TASK = "containerd.task.v2.Task"
EVENTS = "containerd.services.events.ttrpc.v1.Events"
NAMESPACE = "corral-ttrpc-test"
SOCKET_DIR = Path("/run/containerd/s")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def fields_of(data: bytes) -> dict[int, list[int | bytes]]:
    """A message's fields by number, every value kept (for repeated ones)."""
    out: dict[int, list[int | bytes]] = {}
    for number, _, value in iter_fields(data):
        out.setdefault(number, []).append(value)
    return out


def first(data: bytes, number: int, default: int | bytes = 0) -> int | bytes:
    return fields_of(data).get(number, [default])[0]


# The few containerd.task.v2 messages used here, by field number (runtime/v2/task/shim.proto).
def id_request(container: str, exec_id: str = "") -> bytes:
    """ConnectRequest{id=1}, StateRequest/StartRequest/WaitRequest/DeleteRequest{id=1, exec_id=2}."""
    return string_field(1, container) + string_field(2, exec_id)


def shutdown_request(container: str, now: bool = False) -> bytes:
    return string_field(1, container) + bool_field(2, now)


def create_request(container: str, bundle: Path, stdout: Path, stderr: Path) -> bytes:
    """CreateTaskRequest{id=1, bundle=2, stdout=6, stderr=7}: a populated rootfs, no terminal, no stdin."""
    return (
        string_field(1, container)
        + string_field(2, str(bundle))
        + string_field(6, str(stdout))
        + string_field(7, str(stderr))
    )


@dataclass
class Forwarded:
    topic: str
    namespace: str
    metadata: dict[str, str]


@dataclass
class EventSink:
    """What the shim publishes: Events/Forward{envelope=1 {timestamp=1, namespace=2, topic=3, event=4}}."""

    events: list[Forwarded] = field(default_factory=list)
    deleted: anyio.Event = field(default_factory=anyio.Event)

    async def forward(self, payload: bytes, ctx: TTRPCContext) -> bytes:
        envelope = first(payload, 1, b"")
        assert isinstance(envelope, bytes)
        topic, namespace = first(envelope, 3, b""), first(envelope, 2, b"")
        assert isinstance(topic, bytes) and isinstance(namespace, bytes)
        self.events.append(Forwarded(topic.decode(), namespace.decode(), dict(ctx.metadata)))
        if topic == b"/tasks/delete":  # the last event of a task
            self.deleted.set()
        return b""

    def topics(self) -> list[str]:
        return [e.topic for e in self.events]


class Fifo:
    """A FIFO held open read-write (so neither side ever sees EOF) and drained into ``data``."""

    def __init__(self, path: Path) -> None:
        os.mkfifo(path, 0o600)
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)
        self.data = bytearray()
        self._grew = anyio.Event()

    async def drain(self) -> None:
        while True:
            await anyio.wait_readable(self.fd)
            self.read_available()
            self._grew.set()
            self._grew = anyio.Event()

    async def wait_for(self, text: bytes) -> None:
        while text not in self.data:
            await self._grew.wait()

    def read_available(self) -> None:
        while True:
            try:
                chunk = os.read(self.fd, 65536)
            except BlockingIOError:
                return
            if not chunk:
                return
            self.data += chunk

    def close(self) -> None:
        os.close(self.fd)


def alive(pid: int) -> bool:
    """Running, as opposed to gone or a zombie waiting for a parent that is not us."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


@dataclass
class Shim:
    """One container id's shim, started with ``start`` from its bundle as containerd does."""

    binary: str
    bundle: Path
    container: str
    address: str
    events_socket: Path
    tasks: anyio.abc.TaskGroup | None = None
    log: Fifo | None = None

    @property
    def socket(self) -> Path:
        """runc-v2's socket: /run/containerd/s/ sha256(address/namespace/id), whatever the daemon's state dir."""
        digest = hashlib.sha256(os.path.join(self.address, NAMESPACE, self.container).encode()).hexdigest()
        return SOCKET_DIR / digest

    def args(self, *action: str) -> list[str]:
        return [
            self.binary, "-namespace", NAMESPACE, "-address", self.address,
            "-publish-binary", "/bin/true", "-id", self.container, *action,
        ]  # fmt: skip

    async def start(self) -> str:
        # The daemon opens the log FIFO write-only and blocks until a reader exists.
        self.log = Fifo(self.bundle / "log")
        assert self.tasks is not None
        self.tasks.start_soon(self.log.drain)
        env = {**os.environ, "TTRPC_ADDRESS": str(self.events_socket), "GOMAXPROCS": "2"}
        result = await anyio.run_process(
            self.args("start"), cwd=self.bundle, env=env, stdin=subprocess.DEVNULL, check=False
        )
        assert result.returncode == 0, result.stderr.decode(errors="replace")
        return result.stdout.decode().strip()

    async def delete(self) -> bytes:
        """The ``delete`` action containerd runs once the shim has gone: a DeleteResponse on stdout."""
        result = await anyio.run_process(
            self.args("-bundle", str(self.bundle), "delete"),
            cwd=self.bundle,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        assert result.returncode == 0, result.stderr.decode(errors="replace")
        return bytes(result.stdout)


@asynccontextmanager
async def shim_setup(
    tmp_path: Path, make_spec: Callable[[Path, str], dict[str, object]]
) -> AsyncIterator[tuple[Shim, EventSink]]:
    """A bundle ``<tmp>/<ns>/<id>`` holding ``spec``, an events server, and cleanup of anything left behind.

    The bundle's last element must be the id: the shim's delete action finds the bundle that way."""
    require_root()
    binary = require_tool("containerd-shim-runc-v2")
    require_tool("runc")
    container = f"t{uuid.uuid4().hex[:12]}"
    bundle = tmp_path / NAMESPACE / container
    bundle.mkdir(parents=True)
    (bundle / "config.json").write_text(json.dumps(make_spec(bundle, container)))
    events_socket = tmp_path / "ev.sock"
    shim = Shim(binary, bundle, container, f"/run/corral-test/{container}.sock", events_socket)
    sink = EventSink()
    server = TTRPCServer()
    server.register(EVENTS, "Forward", sink.forward)
    try:
        async with server.serve(events_socket), anyio.create_task_group() as tg:
            shim.tasks = tg
            try:
                yield shim, sink
            finally:
                tg.cancel_scope.cancel()
    finally:
        _cleanup(shim)


def _cleanup(shim: Shim) -> None:
    """Leave no shim, runc container, socket or cgroup behind, whatever the test did."""
    for pid in shim_pids(shim.container):
        with suppress(ProcessLookupError):
            os.kill(pid, 9)
    subprocess.run(
        ["runc", "--root", f"/run/containerd/runc/{NAMESPACE}", "delete", "--force", shim.container],
        capture_output=True,
        check=False,
    )
    with suppress(FileNotFoundError):
        shim.socket.unlink()
    with suppress(OSError):
        subprocess.run(["umount", "-l", str(shim.bundle / "rootfs")], capture_output=True, check=False)
    if shim.log is not None:
        shim.log.close()
    for controller in Path("/sys/fs/cgroup").iterdir():
        parent = controller / "corral-ttrpc-test"
        for group in (parent / shim.container, parent):  # the parent only once it is empty
            with suppress(OSError):
                group.rmdir()
    with suppress(OSError):
        Path(f"/run/containerd/runc/{NAMESPACE}").rmdir()


def shim_pids(container: str) -> list[int]:
    """Running shim processes for ``container``, found by their command line."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with suppress(OSError):
            args = (entry / "cmdline").read_bytes().split(b"\0")
            if b"-id" in args and container.encode() in args and alive(int(entry.name)):
                found.append(int(entry.name))
    return found


async def wait_gone(pid: int) -> None:
    """Until ``pid`` exits; a pidfd tells even though the shim is not our child."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        with anyio.fail_after(10):
            await anyio.wait_readable(pidfd)
    finally:
        os.close(pidfd)


def task_path(address: str) -> Path:
    assert address.startswith("unix://"), address
    return Path(address.removeprefix("unix://"))


def minimal_spec(bundle: Path, container: str) -> dict[str, object]:
    """Enough for ``start``, which reads config.json only for its grouping annotations."""
    return {
        "ociVersion": "1.0.2",
        "process": {"args": ["/bin/true"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
        "root": {"path": "rootfs"},
        "linux": {},
    }


async def test_shim_answers_connect_and_state_then_shuts_down_and_leaves_nothing(tmp_path: Path) -> None:
    async with shim_setup(tmp_path, minimal_spec) as (shim, _):
        address = await shim.start()
        assert task_path(address) == shim.socket
        assert stat.S_ISSOCK(shim.socket.lstat().st_mode)
        async with TTRPCClient.connect(task_path(address)) as client:
            reply = await client.call(TASK, "Connect", id_request(shim.container), timeout=5)
            shim_pid = first(reply, 1)
            assert isinstance(shim_pid, int) and shim_pid > 0
            assert alive(shim_pid)
            assert first(reply, 2) == 0  # no task yet
            assert (shim.bundle / "address").read_text() == address

            with pytest.raises(NotFound) as info:
                await client.call(TASK, "State", id_request("unknown"), timeout=2)
            assert str(info.value) == "container not created: not found"

            # The shim may exit before its reply to Shutdown is on the wire, as containerd expects.
            with suppress(Unavailable):
                await client.call(TASK, "Shutdown", shutdown_request(shim.container), timeout=3)
        await wait_gone(shim_pid)
        assert shim_pids(shim.container) == []
        assert not shim.socket.exists()
        assert not [p for p in SOCKET_DIR.iterdir() if p.name == shim.socket.name]


def busybox_spec(bundle: Path, container: str, args: list[str]) -> dict[str, object]:
    """runc's own default spec with a static busybox as the whole root filesystem."""
    busybox = require_tool("busybox")
    rootfs = bundle / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    for name in ("proc", "dev", "sys", "tmp"):
        (rootfs / name).mkdir()
    shutil.copy2(busybox, rootfs / "bin" / "busybox")
    subprocess.run(["runc", "spec", "--bundle", str(bundle)], check=True, capture_output=True)
    spec: dict[str, object] = json.loads((bundle / "config.json").read_text())
    process = spec["process"]
    assert isinstance(process, dict)
    process.update(terminal=False, args=args)
    linux = spec["linux"]
    assert isinstance(linux, dict)
    linux["cgroupsPath"] = f"/corral-ttrpc-test/{container}"
    return spec


async def test_busybox_runs_through_the_shim_and_its_events_reach_our_server(tmp_path: Path) -> None:
    require_root()
    require_tool("busybox")

    def spec(bundle: Path, container: str) -> dict[str, object]:
        return busybox_spec(bundle, container, ["/bin/busybox", "echo", "hello-from-corral-ttrpc"])

    async with shim_setup(tmp_path, spec) as (shim, sink):
        stdout, stderr = Fifo(tmp_path / "stdout"), Fifo(tmp_path / "stderr")
        try:
            async with anyio.create_task_group() as tg:
                address = await shim.start()
                tg.start_soon(stdout.drain)
                tg.start_soon(stderr.drain)
                async with TTRPCClient.connect(task_path(address)) as client:
                    created = await client.call(
                        TASK, "Create", create_request(shim.container, shim.bundle, stdout.path, stderr.path)
                    )
                    pid = first(created, 1)
                    assert isinstance(pid, int) and pid > 0
                    connected = await client.call(TASK, "Connect", id_request(shim.container))
                    shim_pid = first(connected, 1)
                    assert first(connected, 2) == pid
                    started = await client.call(TASK, "Start", id_request(shim.container))
                    assert first(started, 1) == pid
                    waited = await client.call(TASK, "Wait", id_request(shim.container), timeout=30)
                    assert first(waited, 1) == 0  # exit_status
                    assert 2 in fields_of(waited)  # exited_at
                    deleted = await client.call(TASK, "Delete", id_request(shim.container))
                    assert first(deleted, 1) == pid
                    assert first(deleted, 2) == 0
                    with suppress(Unavailable):
                        await client.call(TASK, "Shutdown", shutdown_request(shim.container), timeout=3)
                assert isinstance(shim_pid, int)
                await wait_gone(shim_pid)
                final = await shim.delete()
                assert isinstance(first(final, 1, 0), int)
                with anyio.fail_after(10):
                    await stdout.wait_for(b"hello-from-corral-ttrpc")
                    await sink.deleted.wait()  # events are published asynchronously
                tg.cancel_scope.cancel()
        finally:
            stdout.close()
            stderr.close()

    assert bytes(stdout.data) == b"hello-from-corral-ttrpc\n"
    assert sink.topics() == ["/tasks/create", "/tasks/start", "/tasks/exit", "/tasks/delete"]
    assert {e.namespace for e in sink.events} == {NAMESPACE}
    assert all(e.metadata.get(NAMESPACE_TTRPC_HEADER) == NAMESPACE for e in sink.events)
    assert shim_pids(shim.container) == []
    assert not shim.socket.exists()
    assert not Path(f"/run/containerd/runc/{NAMESPACE}/{shim.container}").exists()
