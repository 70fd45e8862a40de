"""An Apply the client gives up on stops writing at once: after a deadline, and after a disconnect.

The layer is one 2 GiB file of zeros (9 MB gzip'd), far more than the daemon writes before the
client gives up; what the snapshot grows by afterwards is what the daemon wrote after the client
was gone. containerd checks its context per 32 KiB copied; the issue measured corral going on for
0.25 to 1 GB.
"""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
import tarfile
import time
import zlib
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import pytest
from grpclib.exceptions import GRPCError
from harness import Daemon
from tooling import require_root

from corral.api.client import connect
from corral.api.types.containerd import types as ctypes
from corral.api.types.containerd.services.diff import v1 as diff_pb
from corral.api.types.containerd.services.snapshots import v1 as snap_pb

GZIP_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
FILE_SIZE = 2 << 30
MEMBER = 64 << 20
AFTER_LIMIT = 32 << 20
"""What may still be written after the client left: a chunk or two in flight, not hundreds of MB."""


def gzip_member(data: bytes) -> bytes:
    c = zlib.compressobj(1, zlib.DEFLATED, 31)
    return c.compress(data) + c.flush()


def zeros_layer() -> bytes:
    """One file of FILE_SIZE zeros, as a multi-member gzip stream (each member compressed once)."""
    info = tarfile.TarInfo("big")
    info.size, info.mode = FILE_SIZE, 0o644
    zeros = gzip_member(bytes(MEMBER))
    return b"".join(
        [
            gzip_member(info.tobuf(tarfile.USTAR_FORMAT)),
            *[zeros] * (FILE_SIZE // MEMBER),
            gzip_member(bytes(1024)),
        ]
    )


def size_of(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def settled_size(path: Path, quiet: float = 1.0, limit: float = 30.0) -> int:
    """The file's size once it has stopped changing for ``quiet`` seconds."""
    last, since, end = size_of(path), time.monotonic(), time.monotonic() + limit
    while time.monotonic() < end:
        time.sleep(0.1)
        now = size_of(path)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            break
    return last


async def give_up_by_deadline(call: Callable[[float | None], Awaitable[object]]) -> None:
    with pytest.raises((GRPCError, asyncio.TimeoutError)):
        await call(0.3)


async def give_up_by_disconnect(call: Callable[[float | None], Awaitable[object]]) -> None:
    # The call is cancelled on the client (grpclib resets the stream) and the connection closed.
    with anyio.move_on_after(0.3) as scope:
        await call(None)
    assert scope.cancelled_caught


@pytest.mark.parametrize(
    "give_up", [give_up_by_deadline, give_up_by_disconnect], ids=["deadline", "disconnect"]
)
def test_apply_stops_writing_once_the_client_gives_up(
    daemon: Daemon, tmp_path: Path, give_up: Callable[..., Awaitable[None]]
) -> None:
    require_root()
    layer = tmp_path / "layer.gz"
    layer.write_bytes(zeros_layer())
    digest = "sha256:" + hashlib.sha256(layer.read_bytes()).hexdigest()
    with layer.open("rb") as blob:
        subprocess.run(
            ["ctr", "-a", daemon.socket, "content", "ingest", "--expected-digest", digest, "zeros"],
            stdin=blob,
            check=True,
        )
    daemon.ctr("snapshots", "--snapshotter", "native", "prepare", "target")
    mounted = daemon.ctr("snapshots", "--snapshotter", "native", "mounts", "/unused", "target").stdout
    written = Path(mounted.split()[3]) / "big"  # mount -t bind SOURCE /unused -o rbind,rw

    at_give_up = 0

    async def run() -> None:
        nonlocal at_give_up
        async with connect(daemon.socket) as client:
            md = {"containerd-namespace": "default"}
            snaps = snap_pb.SnapshotsStub(client.channel, metadata=md)
            mounts = (await snaps.mounts(snap_pb.MountsRequest(snapshotter="native", key="target"))).mounts
            differ = diff_pb.DiffStub(client.channel, metadata=md)
            request = diff_pb.ApplyRequest(
                diff=ctypes.Descriptor(media_type=GZIP_LAYER, digest=digest, size=layer.stat().st_size),
                mounts=mounts,
            )
            try:
                await give_up(lambda timeout: differ.apply(request, timeout=timeout))
            finally:
                at_give_up = size_of(written)

    anyio.run(run)
    final = settled_size(written)
    assert at_give_up > 0, "the apply had not started writing when the client gave up"
    assert final < FILE_SIZE, "the apply ran to the end"
    assert final - at_give_up < AFTER_LIMIT, f"{(final - at_give_up) >> 20} MiB written after the client left"
    assert "differ_applied" not in daemon.log()
