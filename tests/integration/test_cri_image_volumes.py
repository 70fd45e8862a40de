"""CRI image volumes (``Mount.image``, containerd 2.1): an image's layers mounted read-only in a
container, through the real socket with runc's shim.

Debian's containerd 1.6 CRI has no ``Mount.image`` (it came with containerd 2.1 and the kubelet's
OCI volume source): it ignores the field and bind-mounts the empty host path, so there is no
side-by-side run here. The expected behaviour and messages are containerd 2.1's
(``mutateImageMount``, ``cleanupImageMounts``): the volume belongs to the pod, held by a lease named
after it, unmounted at StopPodSandbox and released at RemovePodSandbox.
"""

from __future__ import annotations

import signal
import tempfile
from pathlib import Path

import pytest
from cri_client import CRIClient
from cri_node import (
    GIDS,
    NS,
    UIDS,
    Node,
    NodeDaemon,
    assert_nothing_left,
    code_of,
    container,
    container_in,
    containers,
    create,
    cstatus,
    import_busybox,
    listed,
    pod,
    remove,
    remove_all,
    run,
    start_daemon,
    stop,
    userns,
    with_userns,
    write_network,
)
from grpclib.const import Status
from netns_relay import relay_into
from registry_fixture import Registry, push_layout

from corral.api.types.runtime import v1 as pb
from corral.plugins.images.build import build_image, layer_from_directory

pytestmark = pytest.mark.root

DATA = "localhost/corral/models:1"


def import_data_image(daemon: NodeDaemon, base: Path) -> None:
    """An image with no program, only files: ``/models/weights.bin``."""
    with tempfile.TemporaryDirectory(dir=base) as scratch:
        root = Path(scratch) / "rootfs"
        (root / "models").mkdir(parents=True)
        (root / "models" / "weights.bin").write_text("0.25 0.5 0.75\n")
        built = build_image([layer_from_directory(root)], entrypoint=("/nothing",), history=["models"])
    archive = base / "models.tar"
    archive.write_bytes(built.oci_archive([DATA]))
    daemon.ctr("images", "import", str(archive), namespace=NS)


def with_volume(config: pb.ContainerConfig, path: str, image: str, *, readonly: bool = True,
                sub_path: str = "", host_path: str = "") -> pb.ContainerConfig:  # fmt: skip
    config.mounts = [
        pb.Mount(container_path=path, image=pb.ImageSpec(image=image), readonly=readonly,
                 image_sub_path=sub_path, host_path=host_path)
    ]  # fmt: skip
    return config


def exec_in(cri: CRIClient, cid: str, script: str) -> pb.ExecSyncResponse:
    return cri.runtime(
        "exec_sync", pb.ExecSyncRequest(container_id=cid, cmd=["sh", "-c", script], timeout=10)
    )


def volume_mounts(daemon: NodeDaemon) -> list[str]:
    base = str(daemon.base / "state")
    return [
        line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()
        if line.split()[4].startswith(base) and "/image-volumes/" in line.split()[4]
    ]  # fmt: skip


def test_an_image_volume_is_readable_not_writable_shared_in_the_pod_and_released_with_it(
    tmp_path: Path, node: Node
) -> None:
    network = write_network(tmp_path)
    daemon = start_daemon(tmp_path, node, network)
    try:
        import_busybox(daemon, tmp_path)
        import_data_image(daemon, tmp_path)
        cri = CRIClient(daemon.socket)
        sandbox = pod("ai")
        pod_id = run(cri, sandbox)
        first = create(cri, pod_id, with_volume(container("first", "sleep 1000"), "/data", DATA), sandbox)
        second = create(
            cri,
            pod_id,
            with_volume(container("second", "sleep 1000"), "/weights", DATA, sub_path="models"),
            sandbox,
        )
        for cid in (first, second):
            cri.runtime("start_container", pb.StartContainerRequest(container_id=cid))
            assert cstatus(cri, cid).state == pb.ContainerState.CONTAINER_RUNNING

        read = exec_in(cri, first, "cat /data/models/weights.bin")
        assert (read.exit_code, read.stdout) == (0, b"0.25 0.5 0.75\n")
        write = exec_in(cri, first, "touch /data/models/new")
        assert write.exit_code != 0 and b"Read-only file system" in write.stderr, write
        sub = exec_in(cri, second, "ls /weights; cat /weights/weights.bin")
        assert sub.stdout == b"weights.bin\n0.25 0.5 0.75\n"

        # One mount for the pod, one active snapshot of the image's chain, held by the pod's lease.
        mounted = volume_mounts(daemon)
        assert len(mounted) == 1 and mounted[0].endswith(
            f"/image-volumes/{pod_id}/" + mounted[0].rsplit("/", 1)[1]
        )
        assert cstatus(cri, first).mounts[0].host_path == mounted[0]
        assert cstatus(cri, second).mounts[0].host_path == mounted[0] + "/models"
        snapshots = daemon.ctr("snapshots", "ls", namespace=NS).stdout
        assert any(line.startswith(mounted[0]) and "Active" in line for line in snapshots.splitlines()), (
            snapshots
        )
        leases = daemon.ctr("leases", "ls", namespace=NS).stdout
        assert pod_id in leases, leases

        # The volume outlives a container (it is the pod's), and goes when the pod stops.
        cri.runtime("remove_container", pb.RemoveContainerRequest(container_id=first))
        assert volume_mounts(daemon) == mounted
        stop(cri, pod_id)
        assert volume_mounts(daemon) == []
        assert mounted[0] not in daemon.ctr("snapshots", "ls", namespace=NS).stdout
        remove(cri, pod_id)
        assert pod_id not in daemon.ctr("leases", "ls", namespace=NS).stdout
        assert list(daemon.base.glob(f"**/image-volumes/{pod_id}")) == []
        assert_nothing_left(daemon, node, network, [pod_id, first, second], [])
    finally:
        remove_all(daemon)
        daemon.stop()


def test_an_image_volume_that_cannot_be_mounted_is_refused_as_containerd_refuses_it(
    tmp_path: Path, node: Node
) -> None:
    network = write_network(tmp_path)
    daemon = start_daemon(tmp_path, node, network)
    try:
        import_busybox(daemon, tmp_path)
        import_data_image(daemon, tmp_path)
        cri = CRIClient(daemon.socket)
        sandbox = pod("bad")
        pod_id = run(cri, sandbox)
        prefix = "failed to mount image volume: ImageVolumeMountFailed: "
        # Not on the node and no registry answers for it: the pull it needs fails, naming it.
        missing = "localhost/corral/nonesuch:1"
        code, message = code_of(
            lambda: create(cri, pod_id, with_volume(container("a", "true"), "/m", missing), sandbox)
        )
        assert code != Status.OK and message.startswith(f'{prefix}failed to pull image "{missing}": '), (
            message
        )
        cases = [
            (dict(readonly=False), "readonly must be true while mount image: "),
            (dict(host_path="/tmp"), "hostpath must be empty while mount image: "),
        ]
        for i, (extra, why) in enumerate(cases):
            config = with_volume(container(f"b{i}", "true"), "/m", DATA, **extra)  # type: ignore[arg-type]
            code, message = code_of(lambda c=config: create(cri, pod_id, c, sandbox))
            assert code == Status.INVALID_ARGUMENT and message.startswith(prefix + why), message
        config = with_volume(container("c", "true"), "/m", DATA, sub_path="models/weights.bin")
        code, message = code_of(lambda: create(cri, pod_id, config, sandbox))
        assert code == Status.INVALID_ARGUMENT and "only directory subpath is supported" in message, message
        config = with_volume(container("d", "true"), "/m", DATA, sub_path="../../..")
        code, message = code_of(lambda: create(cri, pod_id, config, sandbox))
        assert code == Status.INVALID_ARGUMENT and "escapes" in message, message
        assert containers(cri) == []
        remove(cri, pod_id)
        assert_nothing_left(daemon, node, network, [pod_id], [])
        assert pod_id not in daemon.ctr("leases", "ls", namespace=NS).stdout
    finally:
        remove_all(daemon)
        daemon.stop()


def test_corrald_killed_with_an_image_volume_mounted_cleans_it_up_when_the_pod_goes(
    tmp_path: Path, node: Node
) -> None:
    network = write_network(tmp_path)
    daemon = start_daemon(tmp_path, node, network)
    try:
        import_busybox(daemon, tmp_path)
        import_data_image(daemon, tmp_path)
        cri = CRIClient(daemon.socket)
        sandbox = pod("durable")
        pod_id = run(cri, sandbox)
        cid = create(cri, pod_id, with_volume(container("reader", "sleep 1000"), "/data", DATA), sandbox)
        cri.runtime("start_container", pb.StartContainerRequest(container_id=cid))
        mounted = volume_mounts(daemon)
        assert len(mounted) == 1
        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGKILL)
        daemon.proc.wait()
        daemon.proc = None
        daemon.start()

        cri = CRIClient(daemon.socket)
        assert [(c.id, c.state) for c in containers(cri)] == [(cid, pb.ContainerState.CONTAINER_RUNNING)]
        assert exec_in(cri, cid, "cat /data/models/weights.bin").stdout == b"0.25 0.5 0.75\n"
        assert volume_mounts(daemon) == mounted
        remove(cri, pod_id)
        assert listed(cri) == [] and volume_mounts(daemon) == []
        assert mounted[0] not in daemon.ctr("snapshots", "ls", namespace=NS).stdout
        assert pod_id not in daemon.ctr("leases", "ls", namespace=NS).stdout
        assert_nothing_left(daemon, node, network, [pod_id, cid], [])
    finally:
        remove_all(daemon)
        daemon.stop()


def test_an_image_volume_in_a_pod_with_its_own_user_namespace_shows_its_files_as_root_s(
    open_base: Path, node: Node
) -> None:
    network = write_network(open_base)
    daemon = start_daemon(open_base, node, network)
    try:
        import_busybox(daemon, open_base)
        import_data_image(daemon, open_base)
        cri = CRIClient(daemon.socket)
        options = userns(pb.NamespaceMode.POD, UIDS, GIDS)
        sandbox = with_userns(pod("mapped"), options)
        pod_id = run(cri, sandbox)
        config = with_volume(container_in("reader", options, "sleep 1000"), "/data", DATA)
        cid = create(cri, pod_id, config, sandbox)
        cri.runtime("start_container", pb.StartContainerRequest(container_id=cid))
        seen = exec_in(cri, cid, "stat -c %u:%g /data/models/weights.bin; cat /data/models/weights.bin")
        assert seen.stdout == b"0:0\n0.25 0.5 0.75\n", seen
        # Without the idmap the image's root-owned files would show as the overflow id inside.
        host = (Path(volume_mounts(daemon)[0]) / "models" / "weights.bin").stat()
        assert (host.st_uid, host.st_gid) == (100000, 200000)
        remove(cri, pod_id)
        assert volume_mounts(daemon) == []
        assert_nothing_left(daemon, node, network, [pod_id, cid], [])
    finally:
        remove_all(daemon)
        daemon.stop()


def test_an_image_volume_of_an_image_not_on_the_node_is_pulled_from_its_registry_first(
    tmp_path: Path, node: Node, registry: Registry, busybox_layout: Path
) -> None:
    """Where containerd 2.1 fails (the kubelet pulls image volumes itself), corral pulls: the
    volume a node is asked for is there; a name the registry does not have is containerd's
    NotFound."""
    push_layout(busybox_layout, registry, "library/volume:1")
    ref = f"{registry.host}/library/volume:1"
    relay = relay_into(node.netns, int(registry.host.rsplit(":", 1)[1]))
    network = write_network(tmp_path)
    daemon = start_daemon(tmp_path, node, network)
    try:
        import_busybox(daemon, tmp_path)
        assert ref not in daemon.ctr("images", "ls", "-q", namespace=NS).stdout
        cri = CRIClient(daemon.socket)
        sandbox = pod("pulled")
        pod_id = run(cri, sandbox)
        cid = create(cri, pod_id, with_volume(container("c", "sleep 1000"), "/vol", ref), sandbox)
        cri.runtime("start_container", pb.StartContainerRequest(container_id=cid))
        seen = exec_in(cri, cid, "test -x /vol/bin/busybox && echo there")
        assert (seen.exit_code, seen.stdout) == (0, b"there\n"), seen
        assert ref in daemon.ctr("images", "ls", "-q", namespace=NS).stdout.split()
        nonesuch = f"{registry.host}/library/nonesuch:1"
        code, message = code_of(
            lambda: create(cri, pod_id, with_volume(container("d", "true"), "/m", nonesuch), sandbox)
        )
        assert (code, message) == (
            Status.NOT_FOUND,
            "failed to mount image volume: ImageVolumeMountFailed: "
            f'failed to resolve image "{nonesuch}": not found',
        )
        stop(cri, pod_id)
        remove(cri, pod_id)
        assert_nothing_left(daemon, node, network, [pod_id, cid], [])
    finally:
        remove_all(daemon)
        daemon.stop()
        relay.kill()
        relay.wait()
