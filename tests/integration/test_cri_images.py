"""The CRI (runtime.v1) on corrald's socket, driven by a client built from the CRI's stubs: runtime
status, and images pulled from a real registry on loopback into the k8s.io namespace that
``ctr -n k8s.io`` shares; the same calls against Debian's containerd 1.6 CRI plugin where they
are comparable."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cri_client import CONTAINERD_CRI_CONFIG, CRIClient
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from harness import Daemon
from registry_fixture import Registry, StartRegistry
from tooling import require_root, require_tool

from corral.api.types.runtime import v1 as pb
from corral.plugins.images.build import build_busybox_image

pytestmark = pytest.mark.root


def skopeo(*args: str) -> None:
    result = subprocess.run([require_tool("skopeo"), *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"skopeo {' '.join(args)}: {result.stderr}"


def push(layout: Path, registry: Registry, repo: str, creds: str = "") -> str:
    flags = ["--dest-creds", creds] if creds else []
    skopeo(
        "copy", "--dest-tls-verify=false", *flags, f"oci:{layout}:latest", f"docker://{registry.host}/{repo}"
    )
    return f"{registry.host}/{repo}"


@pytest.fixture(scope="module")
def busybox() -> object:
    return build_busybox_image()


@pytest.fixture
def layout(busybox: object, tmp_path: Path) -> Path:
    return busybox.image.write_oci_layout(tmp_path / "layout", ["latest"])  # type: ignore[attr-defined]


def cri_config(cni: Path, extra: str = "") -> str:
    return f"""
        version = 3
        [plugins."io.containerd.cri.v1.runtime".cni]
          conf_dir = "{cni}"
        {extra}
    """


@pytest.fixture
def corral_cri(tmp_path: Path, ctr: str) -> Iterator[tuple[Daemon, CRIClient]]:
    require_root()
    cni = tmp_path / "net.d"
    cni.mkdir()
    d = Daemon(tmp_path / "corral", config=cri_config(cni)).start()
    try:
        yield d, CRIClient(d.socket)
    finally:
        d.stop()


class CRIContainerd:
    """Debian's containerd with its CRI plugin on, on a private root and socket."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.socket = str(base / "containerd.sock")
        self.cni = base / "net.d"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> CRIContainerd:
        self.cni.mkdir(parents=True, exist_ok=True)
        config = self.base / "config.toml"
        config.write_text(
            CONTAINERD_CRI_CONFIG.format(
                root=self.base / "root",
                state=self.base / "state",
                socket=self.socket,
                base=self.base,
                cni=self.cni,
            )
        )
        log = (self.base / "containerd.log").open("ab")
        self.proc = subprocess.Popen(
            [require_tool("containerd"), "--config", str(config)], stdout=log, stderr=log
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                CRIClient(self.socket).version()
                return self
            except (OSError, GRPCError):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise AssertionError((self.base / "containerd.log").read_text()) from None
                time.sleep(0.2)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def ctr(self, *args: str) -> str:
        result = subprocess.run(
            ["ctr", "-a", self.socket, "-n", "k8s.io", *args], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stderr
        return result.stdout


@pytest.fixture
def containerd_cri(tmp_path: Path, ctr: str) -> Iterator[tuple[CRIContainerd, CRIClient]]:
    require_root()
    c = CRIContainerd(tmp_path / "containerd").start()
    try:
        yield c, CRIClient(c.socket)
    finally:
        c.stop()


def conditions(status: pb.StatusResponse) -> dict[str, tuple[bool, str, str]]:
    assert status.status is not None
    return {c.type: (c.status, c.reason, c.message) for c in status.status.conditions}


def manifest_sizes(busybox: object) -> int:
    image = busybox.image  # type: ignore[attr-defined]
    return (
        len(image.manifest_bytes) + len(image.config_bytes) + sum(len(layer.blob) for layer in image.layers)
    )


def k8s_images(d: Daemon) -> dict[str, str]:
    """``ctr -n k8s.io images ls``: name -> labels column."""
    rows = d.ctr("images", "ls", namespace="k8s.io").stdout.splitlines()[1:]
    return {row.split()[0]: row.split()[-1] for row in rows}


# -- runtime status -------------------------------------------------------------------------------


def test_version_names_the_runtime_and_cri_v1(corral_cri: tuple[Daemon, CRIClient]) -> None:
    _, cri = corral_cri
    version = cri.version()
    assert (version.version, version.runtime_name, version.runtime_api_version) == ("0.1.0", "corral", "v1")
    assert version.runtime_version


def test_network_is_not_ready_until_a_cni_config_appears(
    corral_cri: tuple[Daemon, CRIClient], tmp_path: Path
) -> None:
    _, cri = corral_cri
    found = conditions(cri.status())
    assert found["RuntimeReady"] == (True, "", "")
    assert found["NetworkReady"] == (
        False,
        "NetworkPluginNotReady",
        "Network plugin returns error: cni plugin not initialized",
    )
    assert found["ContainerdHasNoDeprecationWarnings"][0] is True
    (tmp_path / "net.d" / "10-bridge.conflist").write_text(
        json.dumps({"cniVersion": "1.0.0", "name": "pods", "plugins": [{"type": "bridge"}]})
    )
    assert conditions(cri.status())["NetworkReady"] == (True, "", "")
    verbose = cri.status(verbose=True)
    assert verbose.info["lastCNILoadStatus"] == "OK"
    assert json.loads(verbose.info["cniconfig"])["Networks"][0]["name"] == "pods"
    assert [h.name for h in verbose.runtime_handlers] == ["", "runc"]


def test_runtime_config_reports_the_default_handlers_cgroup_driver(tmp_path: Path, ctr: str) -> None:
    require_root()
    cni = tmp_path / "net.d"
    cni.mkdir()
    extra = """
        [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
          runtime_type = "io.containerd.runc.v2"
          [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
            SystemdCgroup = true
    """
    for config, driver in (
        (cri_config(cni), pb.CgroupDriver.CGROUPFS),
        (cri_config(cni, extra), pb.CgroupDriver.SYSTEMD),
    ):
        d = Daemon(tmp_path / f"corral-{driver.name}", config=config).start()
        try:
            answer = CRIClient(d.socket).runtime("runtime_config", pb.RuntimeConfigRequest())
            assert answer.linux.cgroup_driver == driver
        finally:
            d.stop()


@pytest.mark.parametrize(
    ("method", "request_"),
    [
        ("update_pod_sandbox_resources", pb.UpdatePodSandboxResourcesRequest()),
        ("checkpoint_container", pb.CheckpointContainerRequest()),
        ("list_metric_descriptors", pb.ListMetricDescriptorsRequest()),
    ],
)
def test_container_calls_answer_unimplemented_by_name(
    corral_cri: tuple[Daemon, CRIClient], method: str, request_: object
) -> None:
    _, cri = corral_cri
    with pytest.raises(GRPCError) as failed:
        cri.runtime(method, request_)
    assert failed.value.status is Status.UNIMPLEMENTED
    rpc = "".join(p.capitalize() for p in method.split("_"))
    assert failed.value.message is not None and failed.value.message.startswith(f"{rpc} is not served yet")


def test_a_1_6_cri_section_loads_and_its_settings_apply(tmp_path: Path, ctr: str) -> None:
    """containerd 1.x's shape: runtimes under ``containerd.runtimes``, CNI under ``cni``."""
    require_root()
    cni = tmp_path / "elsewhere"
    cni.mkdir()
    config = f"""
        version = 2
        [plugins."io.containerd.grpc.v1.cri"]
          sandbox_image = "registry.k8s.io/pause:3.6"
          max_concurrent_downloads = 2
          [plugins."io.containerd.grpc.v1.cri".cni]
            conf_dir = "{cni}"
            bin_dir = "/usr/lib/cni"
          [plugins."io.containerd.grpc.v1.cri".containerd]
            snapshotter = "native"
            default_runtime_name = "crun"
            [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.crun]
              runtime_type = "io.containerd.runc.v2"
              [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.crun.options]
                SystemdCgroup = true
    """
    d = Daemon(tmp_path / "corral", config=config).start()
    try:
        cri = CRIClient(d.socket)
        assert (
            cri.runtime("runtime_config", pb.RuntimeConfigRequest()).linux.cgroup_driver
            == pb.CgroupDriver.SYSTEMD
        )
        assert [h.name for h in cri.status().runtime_handlers] == ["", "crun", "runc"]
        fs = cri.fs_info().image_filesystems
        assert fs[0].fs_id.mountpoint.endswith("io.containerd.snapshotter.v1.native")
        assert json.loads(cri.status(verbose=True).info["cniconfig"])["PluginConfDir"] == str(cni)
    finally:
        d.stop()


# -- images ---------------------------------------------------------------------------------------


def test_pulled_image_is_named_by_id_tag_and_digest_and_shared_with_ctr(
    corral_cri: tuple[Daemon, CRIClient], registry: Registry, layout: Path, busybox: object
) -> None:
    d, cri = corral_cri
    ref = push(layout, registry, "library/busybox:1")
    image = busybox.image  # type: ignore[attr-defined]
    config_digest = image.manifest.config.digest
    image_id = cri.pull(ref)
    assert image_id == config_digest
    repo_digest = f"{registry.host}/library/busybox@{image.digest}"
    [listed] = cri.list_images()
    assert (listed.id, listed.repo_tags, listed.repo_digests) == (image_id, [ref], [repo_digest])
    assert listed.size == manifest_sizes(busybox)
    names = k8s_images(d)
    assert set(names) == {ref, repo_digest, image_id}
    assert all("io.cri-containerd.image=managed" in labels for labels in names.values())
    # unpacked into the default snapshotter, in the shared namespace
    snapshots = d.ctr("snapshots", "ls", namespace="k8s.io").stdout
    assert "Committed" in snapshots
    # the default namespace holds none of it
    assert d.ctr("images", "ls", "-q").stdout.split() == []


def test_image_status_resolves_names_ids_and_unique_id_prefixes(
    corral_cri: tuple[Daemon, CRIClient], registry: Registry, layout: Path, busybox: object
) -> None:
    _, cri = corral_cri
    ref = push(layout, registry, "library/busybox:1")
    image_id = cri.pull(ref)
    digest = busybox.image.digest  # type: ignore[attr-defined]
    for name in (
        ref,
        image_id,
        image_id.removeprefix("sha256:")[:12],
        f"{registry.host}/library/busybox@{digest}",
    ):
        status = cri.image_status(name)
        assert status.image is not None and status.image.id == image_id, name
        assert status.info == {}
    verbose = cri.image_status(ref, verbose=True)
    info = json.loads(verbose.info["info"])
    assert info["chainID"].startswith("sha256:")
    assert info["imageSpec"]["rootfs"]["diff_ids"] == [layer.diff_id for layer in busybox.image.layers]  # type: ignore[attr-defined]
    missing = cri.image_status(f"{registry.host}/library/busybox:absent")
    assert missing.image is None and missing.info == {}
    assert [i.id for i in cri.list_images(filter_image=ref)] == [image_id]
    assert cri.list_images(filter_image="nothing:here") == []


def test_remove_image_drops_every_name_and_collects_its_content(
    corral_cri: tuple[Daemon, CRIClient], registry: Registry, layout: Path
) -> None:
    d, cri = corral_cri
    ref = push(layout, registry, "library/busybox:1")
    image_id = cri.pull(ref)
    assert d.ctr("content", "ls", "-q", namespace="k8s.io").stdout.split()
    cri.remove(image_id)
    assert cri.list_images() == []
    assert k8s_images(d) == {}
    assert d.ctr("content", "ls", "-q", namespace="k8s.io").stdout.split() == []
    cri.remove(ref)  # gone already: no error, as containerd


def test_an_image_imported_by_ctr_into_k8s_io_is_seen_by_cri(
    corral_cri: tuple[Daemon, CRIClient], layout: Path, tmp_path: Path, busybox: object
) -> None:
    d, cri = corral_cri
    archive = tmp_path / "busybox.tar"
    subprocess.run(["tar", "-C", str(layout), "-cf", str(archive), "."], check=True)
    d.ctr(
        "images",
        "import",
        "--index-name",
        "docker.io/library/busybox:imported",
        str(archive),
        namespace="k8s.io",
    )
    found = {i.id: i for i in cri.list_images()}
    config = busybox.image.manifest.config.digest  # type: ignore[attr-defined]
    assert config in found
    assert "docker.io/library/busybox:imported" in found[config].repo_tags


def test_pull_with_credentials_from_the_request(
    corral_cri: tuple[Daemon, CRIClient], start_registries: StartRegistry, layout: Path
) -> None:
    _, cri = corral_cri
    registry = start_registries(username="corral", password="s3cret-pass")
    ref = push(layout, registry, "library/busybox:1", creds="corral:s3cret-pass")
    with pytest.raises(GRPCError) as failed:
        cri.pull(ref, auth=pb.AuthConfig(username="corral", password="wrong"))
    assert (
        failed.value.message is not None
        and f'failed to pull and unpack image "{ref}"' in failed.value.message
    )
    assert cri.list_images() == []
    # containerd's ParseAuth: credentials for another server are not sent
    with pytest.raises(GRPCError):
        cri.pull(
            ref,
            auth=pb.AuthConfig(username="corral", password="s3cret-pass", server_address="https://other:1"),
        )
    assert cri.pull(ref, auth=pb.AuthConfig(username="corral", password="s3cret-pass")).startswith("sha256:")
    import base64

    encoded = base64.b64encode(b"corral:s3cret-pass").decode()
    assert cri.pull(ref, auth=pb.AuthConfig(auth=encoded, server_address=f"http://{registry.host}"))


def test_bad_references_and_missing_tags_fail_and_store_nothing(
    corral_cri: tuple[Daemon, CRIClient], registry: Registry, layout: Path
) -> None:
    d, cri = corral_cri
    push(layout, registry, "library/busybox:1")
    with pytest.raises(GRPCError) as bad:
        cri.pull("BusyBox:1")
    assert bad.value.status is Status.INVALID_ARGUMENT  # containerd 1.6: Unknown (its error has no kind)
    with pytest.raises(GRPCError) as missing:
        cri.pull(f"{registry.host}/library/busybox:absent")
    assert missing.value.status is Status.NOT_FOUND
    assert cri.list_images() == []
    assert d.ctr("content", "ls", "-q", namespace="k8s.io").stdout.split() == []
    assert d.ctr("leases", "ls", "-q", namespace="k8s.io").stdout.split() == []


def test_a_pull_killed_midway_leaves_nothing_listed_and_the_next_start_cleans_up(
    tmp_path: Path, ctr: str, busybox: object
) -> None:
    """corrald killed (SIGKILL) while a layer streams in: after a restart no image, no ingest and
    no lease of the pull remain, and the same pull then succeeds."""
    require_root()
    from stalling_registry import StallingRegistry

    cni = tmp_path / "net.d"
    cni.mkdir()
    with StallingRegistry(busybox.image, "library/busybox", "1") as registry:  # type: ignore[attr-defined]
        d = Daemon(tmp_path / "corral", config=cri_config(cni)).start()
        try:
            ref = f"{registry.host}/library/busybox:1"
            puller = subprocess.Popen(
                [
                    os.environ.get("PYTHON", "python3"),
                    "-c",
                    "import sys; sys.path.insert(0, sys.argv[1]); from cri_client import CRIClient; "
                    "CRIClient(sys.argv[2]).pull(sys.argv[3])",
                    str(Path(__file__).parent),
                    d.socket,
                    ref,
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env={**os.environ, "PYTHONPATH": os.pathsep.join(__import__("sys").path)},
            )
            assert registry.stalled.wait(60), "the pull never reached the layer"
            deadline = time.monotonic() + 20
            while not d.ctr("content", "active", namespace="k8s.io").stdout.strip().splitlines()[1:]:
                assert time.monotonic() < deadline, "no ingest in progress"
                time.sleep(0.1)
            assert d.proc is not None
            d.proc.send_signal(signal.SIGKILL)
            d.proc.wait()
            puller.wait(timeout=30)
            d.proc = None
            d.start()
            cri = CRIClient(d.socket)
            assert cri.list_images() == []
            assert k8s_images(d) == {}
            assert d.ctr("content", "active", namespace="k8s.io").stdout.strip().splitlines()[1:] == []
            assert d.ctr("leases", "ls", "-q", namespace="k8s.io").stdout.split() == []
            assert d.ctr("content", "ls", "-q", namespace="k8s.io").stdout.split() == []
            registry.release()
            assert cri.pull(ref) == busybox.image.manifest.config.digest  # type: ignore[attr-defined]
        finally:
            d.stop()


# -- side by side with containerd 1.6 -------------------------------------------------------------


def test_images_through_cri_match_containerd_1_6(
    corral_cri: tuple[Daemon, CRIClient],
    containerd_cri: tuple[CRIContainerd, CRIClient],
    registry: Registry,
    layout: Path,
) -> None:
    d, ours = corral_cri
    theirs_daemon, theirs = containerd_cri
    ref = push(layout, registry, "library/busybox:1")
    assert ours.pull(ref) == theirs.pull(ref)

    def seen(cri: CRIClient) -> list[tuple[str, list[str], list[str], int, bool]]:
        return [(i.id, i.repo_tags, i.repo_digests, i.size, i.pinned) for i in cri.list_images()]

    assert seen(ours) == seen(theirs)
    for name in (ref, ref.rsplit(":", 1)[0] + ":absent", seen(ours)[0][0][7:19]):
        a, b = ours.image_status(name, verbose=True), theirs.image_status(name, verbose=True)
        assert (a.image is None) == (b.image is None), name
        if a.image is not None and b.image is not None:
            assert (a.image.id, a.image.repo_tags, a.image.repo_digests, a.image.size) == (
                b.image.id, b.image.repo_tags, b.image.repo_digests, b.image.size,
            )  # fmt: skip
            ours_info, theirs_info = json.loads(a.info["info"]), json.loads(b.info["info"])
            assert ours_info["chainID"] == theirs_info["chainID"]
            assert ours_info["imageSpec"]["rootfs"] == theirs_info["imageSpec"]["rootfs"]
    # the same names with the same labels in the namespace ctr sees
    ours_names = k8s_images(d)
    theirs_rows = theirs_daemon.ctr("images", "ls").splitlines()[1:]
    theirs_names = {row.split()[0]: row.split()[-1] for row in theirs_rows}
    assert ours_names == theirs_names
    # status conditions as containerd reports them with no CNI config
    assert conditions(ours.status())["NetworkReady"] == conditions(theirs.status())["NetworkReady"]
    # a missing tag is NotFound for both; a malformed reference fails for both (containerd 1.6
    # answers Unknown, corral InvalidArgument: the project never answers Unknown for bad input)
    for bad, expected in (
        (f"{registry.host}/library/busybox:absent", (Status.NOT_FOUND, Status.NOT_FOUND)),
        ("BusyBox:1", (Status.INVALID_ARGUMENT, Status.UNKNOWN)),
    ):
        codes = []
        for cri in (ours, theirs):
            with pytest.raises(GRPCError) as failed:
                cri.pull(bad)
            codes.append(failed.value.status)
        assert tuple(codes) == expected, bad
    # removal: every name goes; a second removal is no error
    for cri in (ours, theirs):
        cri.remove(ref)
        cri.remove(ref)
    assert ours.list_images() == theirs.list_images() == []


# -- corral cri -----------------------------------------------------------------------------------


def test_corral_cri_verbs_over_the_cri(
    corral_cri: tuple[Daemon, CRIClient], registry: Registry, layout: Path, busybox: object
) -> None:
    d, cri = corral_cri
    ref = push(layout, registry, "library/busybox:1")
    version = d.corral("cri", "version").stdout
    assert "RuntimeName:  corral" in version and "RuntimeApiVersion:  v1" in version
    info = json.loads(d.corral("cri", "info").stdout)
    ready = {c["type"]: c["status"] for c in info["status"]["conditions"]}
    assert ready == {"RuntimeReady": True, "NetworkReady": False, "ContainerdHasNoDeprecationWarnings": True}
    assert info["lastCNILoadStatus"].startswith("cni config load failed")
    pulled = d.corral("cri", "pull", ref).stdout
    image_id = busybox.image.manifest.config.digest  # type: ignore[attr-defined]
    assert pulled == f"Image is up to date for {image_id}\n"
    listed = d.corral("cri", "images").stdout.splitlines()
    assert listed[0].split() == ["IMAGE", "TAG", "IMAGE", "ID", "SIZE"]
    assert listed[1].split()[:3] == [f"{registry.host}/library/busybox", "1", image_id[7:20]]
    assert d.corral("cri", "images", "-q").stdout.split() == [image_id]
    as_json = json.loads(d.corral("cri", "images", "--format", "json").stdout)
    assert as_json["images"][0]["repoTags"] == [ref]
    inspected = json.loads(d.corral("cri", "inspecti", ref).stdout)
    assert inspected["status"]["id"] == image_id
    assert inspected["info"]["imageSpec"]["rootfs"]["type"] == "layers"
    missing = d.corral("cri", "inspecti", "busybox:absent", check=False)
    assert missing.returncode == 1
    assert missing.stderr == "corral: no such image 'busybox:absent' present\n"
    failed = d.corral("cri", "pull", f"{registry.host}/library/busybox:absent", check=False)
    assert failed.returncode == 1 and len(failed.stderr.splitlines()) == 1
    assert failed.stderr.startswith(
        f'corral: failed to pull and unpack image "{registry.host}/library/busybox:absent"'
    )
    removed = d.corral("cri", "rmi", ref).stdout
    assert removed == f"Deleted: {ref}\nDeleted: {registry.host}/library/busybox@{busybox.image.digest}\n"  # type: ignore[attr-defined]
    assert cri.list_images() == []
    again = d.corral("cri", "rmi", ref, check=False)
    assert again.returncode == 1 and again.stderr == f"corral: no such image {ref}\n"


def test_a_runtime_handlers_snapshotter_receives_its_pulls_and_imagefsinfo_counts_them(
    tmp_path: Path, ctr: str, registry: Registry, layout: Path
) -> None:
    require_root()
    cni = tmp_path / "net.d"
    cni.mkdir()
    extra = """
        [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.plain]
          runtime_type = "io.containerd.runc.v2"
          snapshotter = "native"
    """
    d = Daemon(tmp_path / "corral", config=cri_config(cni, extra)).start()
    try:
        cri = CRIClient(d.socket)
        ref = push(layout, registry, "library/busybox:1")
        before = {
            f.fs_id.mountpoint.rsplit(".", 1)[-1]: f.used_bytes.value for f in cri.fs_info().image_filesystems
        }
        assert before == {"overlayfs": 0, "native": 0}
        cri.pull(ref, handler="plain")
        native = d.ctr("snapshots", "--snapshotter", "native", "ls", namespace="k8s.io").stdout
        overlay = d.ctr("snapshots", "--snapshotter", "overlayfs", "ls", namespace="k8s.io").stdout
        assert "Committed" in native and "Committed" not in overlay
        after = {f.fs_id.mountpoint.rsplit(".", 1)[-1]: f for f in cri.fs_info().image_filesystems}
        assert after["native"].used_bytes.value > 0 and after["native"].inodes_used.value > 0
        assert after["overlayfs"].used_bytes.value == 0
    finally:
        d.stop()


def test_credentials_are_honoured_and_refused_beside_containerd_1_6(
    corral_cri: tuple[Daemon, CRIClient],
    containerd_cri: tuple[CRIContainerd, CRIClient],
    start_registries: StartRegistry,
    layout: Path,
) -> None:
    (_, ours), (_, theirs) = corral_cri, containerd_cri
    registry = start_registries(username="corral", password="s3cret-pass")
    ref = push(layout, registry, "library/busybox:1", creds="corral:s3cret-pass")
    codes = []
    for cri in (ours, theirs):
        with pytest.raises(GRPCError) as failed:
            cri.pull(ref, auth=pb.AuthConfig(username="corral", password="wrong"))
        codes.append(failed.value.status)
        assert cri.list_images() == []
    # containerd 1.6 answers Unknown for the registry's 401; corral keeps the kind
    assert codes == [Status.PERMISSION_DENIED, Status.UNKNOWN]
    good = pb.AuthConfig(username="corral", password="s3cret-pass")
    assert ours.pull(ref, auth=good) == theirs.pull(ref, auth=good)


def test_concurrent_pulls_of_one_image_both_succeed_and_a_pinned_name_is_pinned(
    tmp_path: Path, ctr: str, registry: Registry, layout: Path
) -> None:
    require_root()
    import threading

    ref = push(layout, registry, "library/pause:3.10")
    cni = tmp_path / "net.d"
    cni.mkdir()
    extra = f"""
        [plugins."io.containerd.cri.v1.images".pinned_images]
          sandbox = "{ref}"
    """
    d = Daemon(tmp_path / "corral", config=cri_config(cni, extra)).start()
    try:
        cri = CRIClient(d.socket)
        results: list[str] = []
        errors: list[BaseException] = []

        def pull() -> None:
            try:
                results.append(cri.pull(ref))
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=pull) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors and len(set(results)) == 1
        [image] = cri.list_images()
        assert image.pinned is True
        assert all("io.cri-containerd.pinned=pinned" in labels for labels in k8s_images(d).values())
        assert d.ctr("leases", "ls", "-q", namespace="k8s.io").stdout.split() == []
    finally:
        d.stop()
