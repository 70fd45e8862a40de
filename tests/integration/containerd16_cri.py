"""Debian's containerd 1.6 with its CRI plugin, beside corrald, for the CRI tests' comparisons: the
same client, the same pause image (imported, so neither pulls) and a CNI network of its own, in the
node's network namespace."""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from cri_client import CRIClient
from cri_node import CNI_BIN, NS, Network, write_network
from grpclib.exceptions import GRPCError
from tooling import require_tool

from corral.api.types.runtime import v1 as pb
from corral.plugins.sandbox.podsandbox import PAUSE_IMAGE, build_pause_image

CONTAINERD_CONFIG = """\
version = 2
root = "{base}/root"
state = "{base}/state"
[grpc]
  address = "{socket}"
[ttrpc]
  address = "{socket}.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{base}/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    conf_dir = "{cni}"
    bin_dir = "{bin}"
"""


def answers(cri: CRIClient) -> bool:
    try:
        cri.version()
    except (OSError, GRPCError):
        return False
    return True


@contextlib.contextmanager
def containerd_16(
    base: Path,
    netns: str,
    extra: str = "",
    network_list: Callable[[Path], Network] = write_network,
    bin_dir: Path = CNI_BIN,
) -> Iterator[tuple[CRIClient, Callable[..., str], Network]]:
    """containerd 1.6 under ``base`` in ``netns`` (``extra`` appended to its config, its CNI list
    written by ``network_list``, its plugins found in ``bin_dir``): its CRI client, a ``ctr`` in
    ``k8s.io`` against it and its network; its pods removed and it stopped after, the last lines
    of its log printed."""
    containerd = require_tool("containerd")
    base.mkdir(parents=True, exist_ok=True)
    network = network_list(base / "net")
    socket = str(base / "containerd.sock")
    config = base / "config.toml"
    config.write_text(
        CONTAINERD_CONFIG.format(
            base=base, socket=socket, pause=PAUSE_IMAGE, cni=network.conf_dir, bin=bin_dir
        )
        + extra
    )
    log = (base / "containerd.log").open("ab")
    proc = subprocess.Popen(
        ["nsenter", f"--net={netns}", containerd, "--config", str(config)], stdout=log, stderr=log
    )

    def their_ctr(*args: str) -> str:
        done = subprocess.run(
            ["ctr", "-a", socket, "-n", NS, *args], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    cri = CRIClient(socket)
    try:
        _wait(lambda: answers(cri))
        pause = base / "pause.tar"
        pause.write_bytes(build_pause_image().oci_archive([PAUSE_IMAGE]))
        their_ctr("images", "import", str(pause))
        yield cri, their_ctr, network
    finally:
        with contextlib.suppress(Exception):
            for item in cri.runtime("list_pod_sandbox", pb.ListPodSandboxRequest()).items:
                cri.runtime("stop_pod_sandbox", pb.StopPodSandboxRequest(pod_sandbox_id=item.id))
                cri.runtime("remove_pod_sandbox", pb.RemovePodSandboxRequest(pod_sandbox_id=item.id))
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        for line in (base / "containerd.log").read_text().splitlines()[-5:]:
            print(line)


def _wait(predicate: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "containerd's CRI did not answer"
        time.sleep(0.1)
