"""Checkpoint and restore, side by side with containerd: the same ctr commands, the same answers.

CRIU cannot checkpoint or restore on every kernel (nor is it on every machine), so what both
daemons are held to is the path a checkpoint and a restore take through them to runc's shim and
back: ``ctr tasks checkpoint`` pauses the task, the daemon has the shim checkpoint it into a
directory of its own and the task is running again after the refusal; ``ctr containers restore
--live`` of a checkpoint image reaches the daemon's Create, which unpacks the checkpoint's tar
from the content store for the shim's ``runc restore``. Whatever CRIU says (not installed, or not
able) comes back to ctr in both daemons' words. The storing of a checkpoint that succeeds and the
unpacking of one are proven in ``tests/unit/test_tasks_checkpoint.py``.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from containerd_daemon import Containerd
from harness import Daemon
from task_leaks import SHIM
from tooling import require_root, require_tool

from corral.api.client import connect
from corral.api.types.containerd import types as ctypes
from corral.plugins.images.build import build_busybox_image

IMAGE = "docker.io/library/busybox:latest"
CHECKPOINT = "application/vnd.containerd.container.criu.checkpoint.criu.tar"
CONFIG = "application/vnd.containerd.container.checkpoint.config.v1+proto"
ROOT = {"containerd.io/gc.root": "checkpoint test"}


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[Daemon, Containerd]]:
    require_root()
    require_tool(SHIM)
    require_tool("runc")
    require_tool("containerd")
    archive = tmp_path / "busybox.tar"
    build_busybox_image(archive)
    ours = Daemon(tmp_path / "corral").start()
    theirs = Containerd(tmp_path / "containerd").start()
    try:
        for d in (ours, theirs):
            d.ctr("images", "import", str(archive))
        yield ours, theirs
    finally:
        try:
            for d, suffix in ((ours, "ours"), (theirs, "theirs")):
                # runc's shim never answers a Delete of a task whose restore failed as it started
                # (under either daemon): its shim goes first, and the daemon cleans up after it.
                subprocess.run(["pkill", "-KILL", "-f", f"{SHIM} .* -id rs-{suffix} "], check=False)
                d.ctr("tasks", "kill", "-s", "SIGKILL", f"cp-{suffix}", check=False)
                time.sleep(0.3)
                for name in ("cp", "rs"):
                    d.ctr("tasks", "rm", "-f", f"{name}-{suffix}", check=False)
                    d.ctr("containers", "rm", f"{name}-{suffix}", check=False)
        finally:
            theirs.stop()
            ours.stop()


def said(d: Daemon | Containerd, suffix: str, *args: str) -> tuple[int, str, str]:
    """``ctr ARGS`` with ``{id}`` as this daemon's container, and the answer with each daemon's
    own names (its directories, its container, the random part of a scratch directory) taken out."""
    argv = [a.replace("{id}", suffix) for a in args]
    done = subprocess.run(
        [require_tool("ctr"), "-a", d.socket, *argv], capture_output=True, text=True, timeout=120
    )

    def plain(text: str) -> str:
        text = text.replace(str(d.base), "BASE").replace(suffix, "ID")
        return re.sub(r"(ctrd?-checkpoint)[\w]+", r"\1X", text)

    return done.returncode, plain(done.stdout), plain(done.stderr)


def both_say(pair: tuple[Daemon, Containerd], *args: str) -> tuple[int, str, str]:
    ours, theirs = pair
    answer = said(ours, "ours", *args)
    assert answer == said(theirs, "theirs", *args), args
    return answer


def each(pair: tuple[Daemon, Containerd], *args: str) -> list[str]:
    """Each daemon's output of ``ctr ARGS`` (where they may differ: pids, column widths)."""
    ours, theirs = pair
    return [said(ours, "ours", *args)[1], said(theirs, "theirs", *args)[1]]


def test_a_checkpoint_goes_to_the_shim_and_the_task_runs_on_after_criu_refuses(
    pair: tuple[Daemon, Containerd], tmp_path: Path
) -> None:
    both_say(pair, "run", "-d", IMAGE, "cp-{id}", "sleep", "300")
    ours, theirs = pair
    answers = [
        said(ours, "ours", "tasks", "checkpoint", "cp-{id}"),
        said(theirs, "theirs", "tasks", "checkpoint", "cp-{id}"),
    ]
    if answers[0][0] == 0:  # a kernel and a CRIU that can: both made a checkpoint image, named by the time
        assert [a[0] for a in answers] == [0, 0], answers
        for d, (_, out, _) in zip(pair, answers, strict=True):
            assert out.startswith("cp-ID-checkpoint:")
            assert (
                "application/vnd.containerd.container.criu.checkpoint.criu.tar"
                in d.ctr("content", "ls").stdout
            )
    else:
        assert answers[0] == answers[1]
        code, _, err = answers[0]
        assert code == 1 and "runc did not terminate successfully" in err and "criu" in err.lower()
    # The client paused the task for the checkpoint and resumed it after the refusal.
    assert all(re.search(r"cp-ID +\d+ +RUNNING", out) for out in each(pair, "tasks", "ls"))
    assert both_say(pair, "tasks", "checkpoint", "nope")[0] == 1  # container not found
    if answers[0][0] == 0:
        return
    images = tmp_path / "criu-images"
    code, _, err = both_say(pair, "tasks", "checkpoint", "--image-path", str(images), "cp-{id}")
    assert code == 1 and "criu" in err.lower()
    assert "checkpoint" not in both_say(pair, "images", "ls", "-q")[1]


def _checkpoint_image(d: Daemon | Containerd, suffix: str) -> str:
    """A checkpoint image as containerd's client writes one (an index of the checkpoint's tar, the
    container's spec and the image it ran), whose CRIU images are not CRIU's."""
    name = f"example.com/checkpoint/{suffix}:1"

    async def write() -> None:
        async with connect(d.socket) as client:
            source = await client.get_container(f"cp-{suffix}")
            assert source.spec is not None
            spec = bytes(source.spec)
            data = io.BytesIO()
            with tarfile.open(fileobj=data, mode="w") as tar:
                for member, body in (("inventory.img", b"not criu"), ("descriptors.json", b"[]")):
                    info = tarfile.TarInfo(member)
                    info.size = len(body)
                    tar.addfile(info, io.BytesIO(body))
            blobs = []
            for media_type, body in ((CHECKPOINT, data.getvalue()), (CONFIG, spec)):
                digest = await client.ingest(f"checkpoint-{media_type}", body, total=len(body), labels=ROOT)
                blobs.append({"mediaType": media_type, "digest": digest, "size": len(body)})
            index = json.dumps({
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.index.v1+json",
                "manifests": blobs,
                "annotations": {
                    "org.opencontainers.image.ref.name": IMAGE,
                    "io.containerd.checkpoint.runtime": "io.containerd.runc.v2",
                    "io.containerd.checkpoint.snapshotter": "overlayfs",
                },
            }).encode()  # fmt: skip
            digest = "sha256:" + hashlib.sha256(index).hexdigest()
            await client.ingest("checkpoint-index", index, total=len(index), expected=digest, labels=ROOT)
            target = ctypes.Descriptor(
                media_type="application/vnd.oci.image.index.v1+json", digest=digest, size=len(index)
            )
            await client.create_image(name, target, {"containerd.io/checkpoint": "true"})

    anyio.run(write)
    return name


def test_a_restore_unpacks_the_checkpoint_for_the_shim_and_criu_answers_in_both(
    pair: tuple[Daemon, Containerd],
) -> None:
    ours, theirs = pair
    both_say(pair, "containers", "create", IMAGE, "cp-{id}", "sleep", "300")
    for d, suffix in ((ours, "ours"), (theirs, "theirs")):
        _checkpoint_image(d, suffix)
    ref = "example.com/checkpoint/{id}:1"
    code, _, err = both_say(pair, "containers", "restore", "--live", "rs-{id}", ref)
    # The shim was asked to restore from the unpacked images; runc (CRIU) refused them.
    assert code == 1 and "restore" in err.lower(), err
    assert "rs-ID" in both_say(pair, "containers", "ls", "-q")[1]
    # Created, never started, in both: the restore failed as it started.
    assert all(re.search(r"rs-ID +0 +CREATED", out) for out in each(pair, "tasks", "ls"))
    # corrald keeps the unpacked images (CRIU's, a process's memory) in its own state, for the
    # task's start, and removes them with the task; containerd leaves them in /tmp for good.
    [images] = ours.base.glob("state/io.containerd.service.v1.tasks-service/restore/default/rs-ours")
    assert (images / "inventory.img").read_bytes() == b"not criu"
    ours.stop()
    ours.start()  # with the task still there: its images stay for its start
    assert images.is_dir()
    # Its shim gone (killed here), the daemon forgets the task; the images go at the next start.
    subprocess.run(["pkill", "-KILL", "-f", f"{SHIM} .* -id rs-ours "], check=True)
    deadline = time.monotonic() + 10
    while "rs-ours" in ours.ctr("tasks", "ls", "-q").stdout and time.monotonic() < deadline:
        time.sleep(0.1)
    ours.stop()
    ours.start()
    assert not images.exists()
