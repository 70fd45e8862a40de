"""A checkpoint that succeeds, and the restore of it, through the tasks service: over a real
metadata and content store, with a runtime whose tasks write checkpoint files as CRIU would (CRIU
cannot checkpoint on every kernel; ``tests/integration/test_checkpoint_restore.py`` drives runc's
shim with ctr, side by side with containerd)."""

from __future__ import annotations

import io
import re
import stat
import tarfile
from pathlib import Path

import pytest
from task_doubles import CHECKPOINT_FILES, OPTIONS, SPEC, MemoryContainers, RecordingRuntime

from corral.kernel import AlreadyExists, InvalidArgument, NotFound
from corral.plugins.content.local import LocalContentStore
from corral.plugins.core import Descriptor, namespace
from corral.plugins.metadata import AnyValue, Container, ContainerRuntime, NamespacedContent
from corral.plugins.metadata.sqlite import open_metadata
from corral.plugins.services.tasks import (
    MEDIA_TYPE_CHECKPOINT,
    MEDIA_TYPE_CHECKPOINT_CONFIG,
    TasksService,
)

pytestmark = pytest.mark.anyio

CHECKPOINT_OPTIONS = AnyValue("containerd.runc.v1.CheckpointOptions", b"\x08\x01")  # exit: true


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Node:
    def __init__(self, tmp_path: Path) -> None:
        self.state = tmp_path / "state"
        md = open_metadata(tmp_path / "meta.db", content=LocalContentStore(tmp_path / "content"))
        self.content = md.view(NamespacedContent)
        self.containers, self.runtime = MemoryContainers(), RecordingRuntime()
        self.service = TasksService(self.containers, self.runtime, content=self.content, state=self.state)

    async def container(self, name: str, runtime: str = "io.containerd.runc.v2") -> None:
        await self.containers.create(Container(name, ContainerRuntime(runtime, OPTIONS), spec=SPEC))

    async def blob(self, digest: str) -> bytes:
        return b"".join([chunk async for chunk in await self.content.read(digest)])


def members(tar: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        return {
            m.name: archive.extractfile(m).read()  # type: ignore[union-attr]
            for m in archive.getmembers()
            if m.isfile()
        }


async def test_a_checkpoint_is_stored_as_its_tar_and_the_containers_spec(tmp_path: Path) -> None:
    node = Node(tmp_path)
    with namespace("ns1"):
        await node.container("c1")
        await node.service.create("c1")
        stored = await node.service.checkpoint("c1", CHECKPOINT_OPTIONS)
        [(path, options)] = node.runtime.tasks_by_key[("ns1", "c1")].checkpoints
        assert options == CHECKPOINT_OPTIONS  # the caller's options reach the runtime as given
        assert not Path(path).exists()  # the scratch directory is gone with the call
        assert Path(path).parent == node.state / "checkpoint"
        tar, config = stored
        assert (tar.media_type, config.media_type) == (MEDIA_TYPE_CHECKPOINT, MEDIA_TYPE_CHECKPOINT_CONFIG)
        data = await node.blob(tar.digest)
        assert len(data) == tar.size and members(data) == CHECKPOINT_FILES
        spec = await node.blob(config.digest)
        assert spec == SPEC.marshal() and config.size == len(spec)
        # A second checkpoint of the unchanged container stores the same spec blob again: no
        # AlreadyExists (containerd's fails here).
        again = await node.service.checkpoint("c1", CHECKPOINT_OPTIONS)
        assert again[1].digest == config.digest
    with namespace("ns2"), pytest.raises(NotFound):
        await node.content.info(tar.digest)  # stored in the request's namespace only


async def test_an_image_path_keeps_the_checkpoint_there_and_stores_nothing(tmp_path: Path) -> None:
    node = Node(tmp_path)
    images = tmp_path / "images"
    with namespace("ns1"):
        await node.container("c1")
        await node.service.create("c1")
        assert await node.service.checkpoint("c1", CHECKPOINT_OPTIONS, image_path=str(images)) == []
        assert (images / "inventory.img").read_bytes() == CHECKPOINT_FILES["inventory.img"]
        assert await node.content.list() == []


async def test_runc_refuses_options_of_another_type_and_other_runtimes_take_theirs(
    tmp_path: Path,
) -> None:
    node = Node(tmp_path)
    with namespace("ns1"):
        await node.container("c1")
        await node.container("w1", runtime="io.containerd.wasmtime.v1")
        for name in ("c1", "w1"):
            await node.service.create(name)
        with pytest.raises(
            InvalidArgument, match=r"invalid task checkpoint option for io\.containerd\.runc\.v2"
        ):
            await node.service.checkpoint("c1", AnyValue("containerd.runc.v1.Options"))
        assert node.runtime.tasks_by_key[("ns1", "c1")].checkpoints == []
        other = AnyValue("example.com/Options", b"x")
        assert len(await node.service.checkpoint("w1", other, image_path="/ignored")) == 2


async def test_a_task_is_restored_from_a_stored_checkpoint_and_its_images_go_with_it(
    tmp_path: Path,
) -> None:
    node = Node(tmp_path)
    with namespace("ns1"):
        await node.container("c1")
        await node.container("c2")
        await node.service.create("c1")
        tar, _ = await node.service.checkpoint("c1")
        await node.service.create("c2", checkpoint=tar)
        restored = node.runtime.tasks_by_key[("ns1", "c2")]
        assert restored.restored == CHECKPOINT_FILES
        images = Path(restored.opts.checkpoint)
        assert images == node.state / "restore" / "ns1" / "c2"
        for directory in (images, images.parent, images.parent.parent):  # a process's memory
            assert stat.S_IMODE(directory.stat().st_mode) == 0o700
        # Kept until the task starts (runc's shim restores then), then removed.
        await node.service.start("c2")
        assert not images.exists()
        # Kept for a task that never starts until it is deleted.
        await node.container("c3")
        await node.service.create("c3", checkpoint=tar)
        assert (node.state / "restore" / "ns1" / "c3").is_dir()
        await node.service.delete("c3")
        assert not (node.state / "restore" / "ns1" / "c3").exists()


async def test_a_restore_refuses_what_is_no_checkpoint_and_changes_nothing(tmp_path: Path) -> None:
    node = Node(tmp_path)
    with namespace("ns1"):
        await node.container("c1")
        await node.container("c2")
        await node.service.create("c1")
        tar, config = await node.service.checkpoint("c1")
        with pytest.raises(
            InvalidArgument, match=re.escape(f'unsupported checkpoint type "{MEDIA_TYPE_CHECKPOINT_CONFIG}"')
        ):
            await node.service.create("c2", checkpoint=config)
        missing = Descriptor(MEDIA_TYPE_CHECKPOINT, "sha256:" + "0" * 64, 1)
        with pytest.raises(NotFound):
            await node.service.create("c2", checkpoint=missing)
        # A task that exists already keeps the images it was restored from.
        await node.service.create("c2", checkpoint=tar)
        with pytest.raises(AlreadyExists):
            await node.service.create("c2", checkpoint=tar)
        assert (node.state / "restore" / "ns1" / "c2" / "inventory.img").exists()
        assert ("ns1", "c2") in node.runtime.tasks_by_key


async def test_a_restore_path_in_runcs_options_is_used_as_it_is(tmp_path: Path) -> None:
    node = Node(tmp_path)
    with namespace("ns1"):
        await node.container("c1")
        await node.service.create("c1", restore_path="/var/lib/criu/c1")
        assert node.runtime.tasks_by_key[("ns1", "c1")].opts.checkpoint == "/var/lib/criu/c1"
        await node.container("w1", runtime="io.containerd.wasmtime.v1")
        await node.service.create("w1", restore_path="/var/lib/criu/w1")  # runc's option only
        assert node.runtime.tasks_by_key[("ns1", "w1")].opts.checkpoint == ""
