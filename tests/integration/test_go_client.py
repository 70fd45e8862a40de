"""containerd's own Go client against corrald and against containerd: the same transcript.

``tests/goclient/main.go`` is built here with Debian's Go and Debian's packaged containerd 1.6
client (``golang-github-containerd-containerd-dev``, no network): it drives namespaces, content
(writes, labels, readers, filters, ingests resumed and aborted), leases, both snapshotters,
plugin filters, ``Client.Import`` and unpack, images, ``Export``, the Diff service, containers with
new snapshots and specs, tasks with their output, exit codes, exec, pause, metrics and kill, and the
event topics all that published, and prints one line per step with the error kind and message it
got. Each daemon gets a namespace of its own (so their containers' runc
state and cgroups never meet), named NS in the transcript, and neither collects garbage on its own.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from containerd_daemon import Containerd
from harness import Daemon
from task_leaks import SHIM
from tooling import ON_CI, require_tool

from corral.plugins.images.build import build_busybox_image

SOURCE = Path(__file__).resolve().parents[1] / "goclient"
GOPATH = Path("/usr/share/gocode")
CLIENT = GOPATH / "src/github.com/containerd/containerd"


@pytest.fixture(scope="module")
def goclient(tmp_path_factory: pytest.TempPathFactory) -> Path:
    go = require_tool("go")
    if not CLIENT.is_dir():
        message = (
            f"containerd's Go client is not installed ({CLIENT}: golang-github-containerd-containerd-dev)"
        )
        if ON_CI:
            pytest.fail(message)
        pytest.skip(message)
    out = tmp_path_factory.mktemp("goclient") / "goclient"
    env = {
        **os.environ,
        "GOPATH": str(GOPATH),
        "GO111MODULE": "off",
        "GOFLAGS": "",
        "GOCACHE": str(out.parent / "cache"),
    }
    built = subprocess.run(
        [go, "build", "-o", str(out), "."], cwd=SOURCE, env=env, capture_output=True, text=True, timeout=900
    )
    assert built.returncode == 0, built.stderr
    return out


def transcript(goclient: Path, d: Daemon | Containerd, namespace: str, archive: Path) -> list[str]:
    done = subprocess.run(
        [str(goclient), d.socket, namespace, str(archive)], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout.replace(str(d.base), "BASE").splitlines()


def test_the_go_client_reads_the_same_from_corrald_as_from_containerd(
    goclient: Path, still: tuple[Daemon, Containerd], tmp_path: Path
) -> None:
    archive = tmp_path / "busybox.tar"
    build_busybox_image(archive)
    require_tool(SHIM)
    ours, theirs = still
    corral_says = transcript(goclient, ours, "goours", archive)
    containerd_says = transcript(goclient, theirs, "gotheirs", archive)
    # corrald publishes /content/create for every blob committed, as containerd 2.1 does (1.6 does
    # not): the one line that differs on purpose.
    events = next(i for i, line in enumerate(corral_says) if line.startswith("events seen: "))
    assert " /content/create " in corral_says[events]
    corral_says[events] = corral_says[events].replace(" /content/create ", " ")
    # and where containerd 2, whose messages corral follows, words a refusal unlike 1.6
    containerd_says = [line.replace("Target.", "target.") for line in containerd_says]
    assert corral_says == containerd_says
    # and the steps did what they say: the images, tasks and clean-up worked
    for line in (
        "import: [docker.io/library/busybox:latest] ok",
        "is unpacked after: true ok",
        "task exit: 7 ok",
        'task output: "out\\n" "err\\n"',
        "exec exit: 3",
        "killed exit: 137",
        "snapshot cleaned up: NotFound",
        "content left: 0",
        "diff compare empty: application/vnd.oci.image.layer.v1.tar+gzip ok",
        "diff apply: application/vnd.oci.image.layer.v1.tar ok",
        "export: true ok",
    ):
        assert line in corral_says
    assert len(corral_says) > 165
