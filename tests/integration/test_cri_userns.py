"""CRI pods with user namespaces of their own (``namespace_options.userns_options`` mode POD), on the
real socket with runc's shim: the pause process in a new user namespace that owns the pod's
network namespace, the pod's containers joining it, the rootfs idmapped (overlayfs lower layers
bound with ``mount_setattr(MOUNT_ATTR_IDMAP)``, no copy or chown of the image).

Debian's containerd 1.6 CRI silently ignores ``userns_options`` (user namespaces in CRI came with
containerd 1.7/2.0), so there is no side-by-side run here: the expected behaviour and messages are
containerd 2.x's (``parseUsernsIDs``, ``sameUsernsConfig``), except that corral accepts several
mapping ranges where containerd's CRI takes one line.
"""

from __future__ import annotations

import fcntl
import os
import signal
from pathlib import Path

import pytest
from cri_client import CRIClient
from cri_node import (
    BUSYBOX,
    CNI_BIN,
    GIDS,
    NS,
    UIDS,
    Node,
    NodeDaemon,
    assert_nothing_left,
    code_of,
    container_in,
    create,
    cstatus,
    import_busybox,
    pod,
    remove,
    remove_all,
    run,
    sandbox_pid,
    start_daemon,
    status,
    userns,
    with_userns,
    write_network,
)
from grpclib.const import Status

from corral.api.types.runtime import v1 as pb
from corral.plugins.images.build import build_busybox_image

pytestmark = pytest.mark.root


def exec_out(cri: CRIClient, cid: str, *cmd: str) -> str:
    reply = cri.runtime("exec_sync", pb.ExecSyncRequest(container_id=cid, cmd=list(cmd), timeout=10))
    assert reply.exit_code == 0, reply.stderr
    return str(reply.stdout.decode())


def owner_of_netns(pid: int) -> int:
    """The inode of the user namespace owning the process's network namespace (NS_GET_USERNS)."""
    with open(f"/proc/{pid}/ns/net", "rb") as netns:
        owner = fcntl.ioctl(netns.fileno(), 0xB701)
    try:
        return os.fstat(owner).st_ino
    finally:
        os.close(owner)


def task_pid(daemon: object, container_id: str) -> int:
    rows = daemon.ctr("tasks", "ls", namespace=NS).stdout.splitlines()  # type: ignore[attr-defined]
    return next(int(r.split()[1]) for r in rows if r.startswith(container_id))


def test_a_pod_with_its_own_user_namespace_maps_root_and_idmaps_the_rootfs(
    open_base: Path, node: Node
) -> None:
    tmp_path = open_base
    network = write_network(tmp_path)
    daemon = start_daemon(tmp_path, node, network)
    try:
        import_busybox(daemon, tmp_path)
        cri = CRIClient(daemon.socket)
        options = userns(pb.NamespaceMode.POD, UIDS, GIDS)
        sandbox = with_userns(pod("users"), options)
        pod_id = run(cri, sandbox)
        pod_pid = sandbox_pid(cri, pod_id)
        shown = status(cri, pod_id).status.linux.namespaces.options.userns_options
        assert (
            shown.mode == pb.NamespaceMode.POD
            and [(m.container_id, m.host_id, m.length) for m in shown.uids] == UIDS
        )
        assert os.readlink(f"/proc/{pod_pid}/ns/user") != os.readlink("/proc/self/ns/user")
        assert Path(f"/proc/{pod_pid}/uid_map").read_text().split() == [
            "0",
            "100000",
            "1000",
            "1000",
            "300000",
            "64536",
        ]
        # The pod's network namespace belongs to its user namespace (containerd's setupNetnsWithinUserns).
        assert owner_of_netns(pod_pid) == os.stat(f"/proc/{pod_pid}/ns/user").st_ino

        cid = create(cri, pod_id, container_in("main", options, "touch /made-by-root; sleep 1000"), sandbox)
        cri.runtime("start_container", pb.StartContainerRequest(container_id=cid))
        assert cstatus(cri, cid).state == pb.ContainerState.CONTAINER_RUNNING

        ident = exec_out(cri, cid, "id")
        assert ident.startswith("uid=0(root) gid=0(root)"), ident
        rows = [line.split() for line in exec_out(cri, cid, "cat", "/proc/self/uid_map").splitlines()]
        assert rows == [["0", "100000", "1000"], ["1000", "300000", "64536"]]
        assert exec_out(cri, cid, "cat", "/proc/self/gid_map").split() == ["0", "200000", "65536"]
        assert exec_out(cri, cid, "readlink", "/proc/self/ns/user").strip() == os.readlink(
            f"/proc/{pod_pid}/ns/user"
        )

        # Inside, the image's files are root's; on the host, through the container's root, the
        # mapped ids'; the image's layer on disk is untouched (idmapped, not chowned).
        assert exec_out(cri, cid, "stat", "-c", "%u:%g", "/bin/busybox").strip() == "0:0"
        pid = task_pid(daemon, cid)
        host_view = os.stat(f"/proc/{pid}/root/bin/busybox")
        assert (host_view.st_uid, host_view.st_gid) == (100000, 200000)
        made = os.stat(f"/proc/{pid}/root/made-by-root")
        assert (made.st_uid, made.st_gid) == (100000, 200000)
        layers = daemon.base / "root" / "io.containerd.snapshotter.v1.overlayfs" / "snapshots"
        busyboxes = [p for p in layers.glob("*/fs/bin/busybox")]
        assert busyboxes and all(p.stat().st_uid == 0 for p in busyboxes), busyboxes
        # The rootfs names idmapped layers (as containerd's does), which were detached once the
        # shim had mounted it: none is left mounted.
        mountinfo = [line.split() for line in Path("/proc/self/mountinfo").read_text().splitlines()]
        assert any("/idmapped/" in line[-1] for line in mountinfo if line[-3] == "overlay")
        assert [line[4] for line in mountinfo if "/idmapped/" in line[4]] == []

        remove(cri, pod_id)
        assert_nothing_left(daemon, node, network, [pod_id, cid], [])
    finally:
        remove_all(daemon)
        daemon.stop()


def test_user_namespace_options_are_checked_as_containerd_checks_them(open_base: Path, node: Node) -> None:
    tmp_path = open_base
    network = write_network(tmp_path)
    daemon = start_daemon(tmp_path, node, network)
    try:
        import_busybox(daemon, tmp_path)
        cri = CRIClient(daemon.socket)
        refused = [
            (userns(pb.NamespaceMode.POD, [], []),
             'can\'t use user namespace mode "POD" without UID and GID mappings'),
            (userns(pb.NamespaceMode.NODE, UIDS, GIDS),
             'can\'t use user namespace mode "NODE" with mappings. Got 2 UID mappings and 1 GID mappings'),
            (userns(pb.NamespaceMode.POD, [(0, 100000, 0)], GIDS), "UID mapping: invalid mapping length: 0"),
            (userns(pb.NamespaceMode.CONTAINER, [], []), 'unsupported user namespace mode: "CONTAINER"'),
            (userns(pb.NamespaceMode.POD, [(1, 100000, 10)], GIDS),
             "container UID/GID mapping entries of 0 are required but not found"),
        ]  # fmt: skip
        for i, (options, why) in enumerate(refused):
            code, message = code_of(lambda o=options, i=i: run(cri, with_userns(pod(f"bad{i}"), o)))
            assert code == Status.INVALID_ARGUMENT and f"user namespace configuration: {why}" in message, (
                message
            )
        code, message = code_of(
            lambda: run(
                cri,
                with_userns(
                    pod("overlap"), userns(pb.NamespaceMode.POD, [(0, 100000, 100), (50, 200000, 100)], GIDS)
                ),
            )
        )
        assert code == Status.INVALID_ARGUMENT and "overlap" in message, message
        assert cri.runtime("list_pod_sandbox", pb.ListPodSandboxRequest()).items == []

        # NODE: the host's user namespace.
        host = with_userns(pod("host"), userns(pb.NamespaceMode.NODE, [], []))
        host_id = run(cri, host)
        assert os.readlink(f"/proc/{sandbox_pid(cri, host_id)}/ns/user") == os.readlink("/proc/self/ns/user")

        # A container must ask for its pod's user namespace, mappings and all.
        options = userns(pb.NamespaceMode.POD, UIDS, GIDS)
        sandbox = with_userns(pod("users"), options)
        pod_id = run(cri, sandbox)
        other = userns(pb.NamespaceMode.POD, [(0, 100000, 65536)], GIDS)
        for asked in (None, other):
            code, message = code_of(
                lambda a=asked: create(cri, pod_id, container_in("c", a, "true"), sandbox)
            )
            assert code == Status.INVALID_ARGUMENT, message
            assert "user namespace config for sandbox is different from container" in message, message
        assert cri.runtime("list_containers", pb.ListContainersRequest()).containers == []
        cid = create(cri, pod_id, container_in("c", options, "true"), sandbox)
        assert cstatus(cri, cid).state == pb.ContainerState.CONTAINER_CREATED
    finally:
        remove_all(daemon)
        daemon.stop()


def test_on_a_snapshotter_without_idmapped_mounts_the_rootfs_is_a_chowned_copy_shared_by_the_pod(
    open_base: Path, node: Node
) -> None:
    """containerd's fallback for snapshotters other than overlayfs (``WithUserNSRemappedSnapshot``)."""
    network = write_network(open_base)
    config = f"""
        version = 3
        [plugins."io.containerd.podsandbox.controller.v1.podsandbox"]
        cni_conf_dir = "{network.conf_dir}"
        cni_bin_dirs = ["{CNI_BIN}"]
        snapshotter = "native"
        [plugins."io.containerd.cri.v1.images"]
        snapshotter = "native"
        [plugins."io.containerd.cri.v1.runtime".cni]
        conf_dir = "{network.conf_dir}"
    """
    daemon = NodeDaemon(open_base / "corral", config, node_netns=node.netns).start()
    try:
        archive = open_base / "busybox.tar"
        build_busybox_image(archive, names=(BUSYBOX,))
        daemon.ctr("images", "import", "--snapshotter", "native", str(archive), namespace=NS)
        cri = CRIClient(daemon.socket)
        options = userns(pb.NamespaceMode.POD, UIDS, GIDS)
        sandbox = with_userns(pod("chowned"), options)
        pod_id = run(cri, sandbox)
        first = create(cri, pod_id, container_in("first", options, "touch /mine; sleep 1000"), sandbox)
        second = create(cri, pod_id, container_in("second", options, "sleep 1000"), sandbox)
        for cid in (first, second):
            cri.runtime("start_container", pb.StartContainerRequest(container_id=cid))
        assert exec_out(cri, first, "id").startswith("uid=0(root) gid=0(root)")
        assert exec_out(cri, first, "stat", "-c", "%u:%g", "/bin/busybox").strip() == "0:0"
        made = os.stat(f"/proc/{task_pid(daemon, first)}/root/mine")
        assert (made.st_uid, made.st_gid) == (100000, 200000)
        # One chowned copy of the image for the mappings, the parent of both containers' rootfs;
        # the pause image has its own. Each copy is a committed child of its image's chain.
        ls = daemon.ctr("snapshots", "--snapshotter", "native", "ls", namespace=NS).stdout
        parents = {key: parent for key, parent, *_ in (line.split() for line in ls.splitlines()[1:])}
        assert parents[first] == parents[second] != parents[pod_id]
        for copy in (parents[first], parents[pod_id]):
            assert copy.startswith("sha256:") and parents[copy].startswith("sha256:"), ls
        remove(cri, pod_id)
        assert_nothing_left(daemon, node, network, [pod_id, first, second], [])
    finally:
        remove_all(daemon)
        daemon.stop()


def test_corrald_killed_with_a_user_namespaced_pod_running_finds_it_and_removes_it_leaving_nothing(
    open_base: Path, node: Node
) -> None:
    network = write_network(open_base)
    daemon = start_daemon(open_base, node, network)
    try:
        import_busybox(daemon, open_base)
        cri = CRIClient(daemon.socket)
        options = userns(pb.NamespaceMode.POD, UIDS, GIDS)
        sandbox = with_userns(pod("durable"), options)
        pod_id = run(cri, sandbox)
        cid = create(cri, pod_id, container_in("main", options, "sleep 1000"), sandbox)
        cri.runtime("start_container", pb.StartContainerRequest(container_id=cid))
        pinned = list(daemon.base.glob(f"**/pinned-namespaces/*/{pod_id}/user"))
        assert len(pinned) == 1 and os.path.ismount(pinned[0])
        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGKILL)
        daemon.proc.wait()
        daemon.proc = None
        daemon.start()

        cri = CRIClient(daemon.socket)
        assert cstatus(cri, cid).state == pb.ContainerState.CONTAINER_RUNNING
        assert exec_out(cri, cid, "id", "-u").strip() == "0"
        # A new container after the restart still joins the pod's user namespace.
        late = create(cri, pod_id, container_in("late", options, "sleep 1000"), sandbox)
        cri.runtime("start_container", pb.StartContainerRequest(container_id=late))
        pod_pid = sandbox_pid(cri, pod_id)
        assert exec_out(cri, late, "readlink", "/proc/self/ns/user").strip() == os.readlink(
            f"/proc/{pod_pid}/ns/user"
        )
        remove(cri, pod_id)
        assert not pinned[0].exists()
        assert_nothing_left(daemon, node, network, [pod_id, cid, late], [])
    finally:
        remove_all(daemon)
        daemon.stop()
