"""The runtime spec module against the real thing: the spec Debian's containerd stores for a
``ctr containers create``, and containers that runc really runs from the module's specs."""

from __future__ import annotations

import copy
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from containerd_daemon import Containerd
from tooling import require_root, require_tool

from corral.plugins.runtimes import spec as oci
from corral.plugins.runtimes.spec import RunFlags

pytestmark = pytest.mark.root

BUSYBOX = Path("/bin/busybox")  # Debian's busybox-static
APPLETS = ("sh", "echo", "true", "cat", "id", "mkdir", "rmdir", "touch", "ls", "test")
MOUNT_POINTS = ("proc", "sys", "dev", "run", "tmp", "mnt", "etc")
CTR_NAMESPACE = "default"


def require_busybox() -> None:
    if not BUSYBOX.is_file():
        message = "Debian's busybox-static (/bin/busybox) is not installed"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def build_rootfs(root: Path, passwd: str = "", group: str = "") -> Path:
    """A busybox root filesystem with the mount points a runtime needs, world-readable."""
    (root / "bin").mkdir(parents=True)
    shutil.copy2(BUSYBOX, root / "bin" / "busybox")
    for applet in APPLETS:
        (root / "bin" / applet).symlink_to("busybox")
    for name in MOUNT_POINTS:
        (root / name).mkdir(exist_ok=True)
    if passwd:
        (root / "etc" / "passwd").write_text(passwd)
    if group:
        (root / "etc" / "group").write_text(group)
    for path in [root, *root.rglob("*")]:
        if not path.is_symlink():
            path.chmod(0o755)
    return root


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _layer(rootfs: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(rootfs.rglob("*")):
            info = tar.gettarinfo(str(path), str(path.relative_to(rootfs)))
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = 0
            if info.isfile():
                with path.open("rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
    return buf.getvalue()


def write_oci_archive(path: Path, rootfs: Path, image: dict[str, Any], name: str) -> None:
    """An OCI image layout tarball holding one image, named for ``ctr images import``."""
    layer = _layer(rootfs)
    config = json.dumps({**image, "rootfs": {"type": "layers", "diff_ids": [_digest(layer)]}}).encode()
    manifest = json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": _digest(config),
                   "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": _digest(layer),
                    "size": len(layer)}],
    }).encode()  # fmt: skip
    index = json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": _digest(manifest),
                       "size": len(manifest), "platform": {"architecture": image["architecture"], "os": "linux"},
                       "annotations": {"io.containerd.image.name": name}}],
    }).encode()  # fmt: skip
    with tarfile.open(path, "w") as tar:
        for member, data in [
            ("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'),
            ("index.json", index),
            *((f"blobs/sha256/{_digest(b)[7:]}", b) for b in (layer, config, manifest)),
        ]:
            info = tarfile.TarInfo(member)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))


def go_arch() -> str:
    machine = os.uname().machine
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386"}.get(machine, machine)


PASSWD = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n"
GROUP = "root:x:0:\napp:x:1000:\nstaff:x:50:other,app\nwheel:x:10:root,app\n"


def image_config(**config: Any) -> dict[str, Any]:
    return {"architecture": go_arch(), "os": "linux", "config": config}


PLAIN_IMAGE = image_config(
    Env=["PATH=/bin", "FOO=image"], Cmd=["/bin/sh"], WorkingDir="/tmp", StopSignal="SIGINT"
)
USER_IMAGE = image_config(Env=["PATH=/bin"], Cmd=["/bin/sh"], User="app")


@dataclass
class Images:
    containerd: Containerd
    rootfs: dict[str, Path]
    config: dict[str, dict[str, Any]]
    host_dir: Path
    version: str


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Images]:
    require_root()
    require_tool("containerd")
    require_tool("ctr")
    require_busybox()
    base = tmp_path_factory.mktemp("ctrd")
    rootfs = {
        "plain": build_rootfs(base / "plain-rootfs"),
        "user": build_rootfs(base / "user-rootfs", PASSWD, GROUP),
    }
    config = {"plain": PLAIN_IMAGE, "user": USER_IMAGE}
    daemon = Containerd(base, namespace=CTR_NAMESPACE).start()
    try:
        for key in rootfs:
            archive = base / f"{key}.tar"
            write_oci_archive(archive, rootfs[key], config[key], f"corral.test/bbox:{key}")
            daemon.ctr("images", "import", "--snapshotter", "native", str(archive))
        version = daemon.ctr("version").stdout
        host_dir = base / "host"
        host_dir.mkdir()
        yield Images(daemon, rootfs, config, host_dir, version)
    finally:
        daemon.stop()


def ctr_spec(
    images: Images, key: str, container_id: str, flags: list[str], args: list[str]
) -> dict[str, Any]:
    """The spec ctr builds and containerd stores for ``ctr containers create``."""
    # A value-taking flag last: ctr 1.6 reorders arguments and a bool flag would swallow the image ref.
    images.containerd.ctr(
        "containers",
        "create",
        *flags,
        "--snapshotter",
        "native",
        f"corral.test/bbox:{key}",
        container_id,
        "--",
        *args,
    )
    try:
        stored: dict[str, Any] = json.loads(
            images.containerd.ctr("containers", "info", "--spec", container_id).stdout
        )
        return stored
    finally:
        images.containerd.ctr("containers", "rm", container_id, check=False)


# What containerd 1.6 (Debian's) stores differently from 2.1, which this module follows. Each
# adjustment turns the module's 2.1 spec into the 1.6 one, and asserts the difference is there.


def as_containerd_1_6(ours: dict[str, Any], theirs: dict[str, Any]) -> dict[str, Any]:
    expected = copy.deepcopy(ours)
    # runtime-spec 1.2.1 (2.1) versus the 1.0.2-dev snapshot 1.6.20 vendors.
    assert ours["ociVersion"] == "1.2.1"
    assert theirs["ociVersion"] == "1.0.2-dev"
    expected["ociVersion"] = theirs["ociVersion"]
    # 2.x masks /sys/devices/virtual/powercap as well (unless privileged, which masks nothing).
    masked = expected["linux"].get("maskedPaths")
    if masked is not None:
        assert "/sys/devices/virtual/powercap" in masked
        masked.remove("/sys/devices/virtual/powercap")
    return expected


def keeps_default_run_mount(ours: dict[str, Any], theirs: dict[str, Any]) -> dict[str, Any]:
    # ctr 1.6 appends --mount after the default mounts; 2.1 first drops a default mount at the same
    # destination, so 1.6's spec has two /run mounts where 2.1's has one.
    expected = as_containerd_1_6(ours, theirs)
    assert [m["destination"] for m in ours["mounts"]].count("/run") == 1
    index = next(i for i, m in enumerate(theirs["mounts"]) if m["destination"] == "/run")
    expected["mounts"].insert(index, oci.default_spec("x", "y")["mounts"][-1])
    return expected


@dataclass(frozen=True)
class Case:
    name: str
    ctr_flags: list[str]
    flags: RunFlags
    image: str = "plain"
    adjust: Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]] = as_containerd_1_6
    args: tuple[str, ...] = ("/bin/true",)


CASES = [
    Case("plain", [], RunFlags()),
    Case("tty", ["--tty"], RunFlags(tty=True)),
    Case("env", ["--env", "FOO=cli", "--env", "NEW=1", "--env", "BARE"], RunFlags(env=("FOO=cli", "NEW=1", "BARE"))),
    Case("read-only", ["--read-only"], RunFlags(read_only=True)),
    Case("privileged", ["--privileged"], RunFlags(privileged=True)),
    Case("cwd", ["--cwd", "/bin"], RunFlags(cwd="/bin")),
    Case("args", [], RunFlags(), args=("/bin/sh", "-c", "echo hi")),
    Case("caps", ["--cap-add", "CAP_SYS_ADMIN", "--cap-drop", "CAP_NET_RAW"],
         RunFlags(cap_add=("CAP_SYS_ADMIN",), cap_drop=("CAP_NET_RAW",))),
    Case("limits", ["--memory-limit", "67108864", "--cpu-quota", "50000", "--cpu-period", "100000"],
         RunFlags(memory_limit=67108864, cpu_quota=50000, cpu_period=100000)),
    Case("allow-new-privs", ["--allow-new-privs"], RunFlags(allow_new_privs=True)),
    Case("net-host", ["--net-host"], RunFlags(net_host=True)),
    Case("with-ns", ["--with-ns", "network:/proc/1/ns/net"], RunFlags(with_ns=("network:/proc/1/ns/net",))),
    Case("labels", ["--label", "tier", "--label", "a=b", "--annotation", "x=y"],
         RunFlags(labels=("tier", "a=b"), annotations=("x=y",))),
    Case("device", ["--device", "/dev/null"], RunFlags(devices=("/dev/null",))),
    Case("propagation", ["--rootfs-propagation", "rslave"], RunFlags(rootfs_propagation="rslave")),
    Case("image-user", [], RunFlags(), image="user"),
    Case("replace-run", ["--mount", "type=tmpfs,src=tmpfs,dst=/run,options=size=1k"],
         RunFlags(mounts=("type=tmpfs,src=tmpfs,dst=/run,options=size=1k",)), adjust=keeps_default_run_mount),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_spec_matches_what_ctr_create_stores(images: Images, case: Case) -> None:
    container_id = f"spec-{case.name}"
    ctr_flags, flags = case.ctr_flags, replace(case.flags, args=case.args)
    devices_before = {d["path"] for d in oci.host_devices()} if case.flags.privileged else set()
    theirs = ctr_spec(images, case.image, container_id, ctr_flags, list(case.args))
    ours = oci.run_spec(
        CTR_NAMESPACE, container_id, flags, image=images.config[case.image], rootfs=images.rootfs[case.image]
    )
    if case.flags.privileged:
        # Device nodes other tests create or remove meanwhile (loop devices) are not compared.
        churn = devices_before ^ {d["path"] for d in oci.host_devices()}
        for spec in (ours, theirs):
            spec["linux"]["devices"] = [d for d in spec["linux"]["devices"] if d["path"] not in churn]
    assert case.adjust(ours, theirs) == theirs


def test_bind_mount_flag_with_rro_is_stored_as_ctr_stores_it(images: Images) -> None:
    flag = f"type=bind,src={images.host_dir},dst=/mnt,options=rbind:rro"
    theirs = ctr_spec(images, "plain", "spec-mount", ["--mount", flag], ["/bin/true"])
    ours = oci.run_spec(
        CTR_NAMESPACE, "spec-mount", RunFlags(args=("/bin/true",), mounts=(flag,)),
        image=images.config["plain"], rootfs=images.rootfs["plain"],
    )  # fmt: skip
    assert ours["mounts"][-1] == {
        "destination": "/mnt", "type": "bind", "source": str(images.host_dir), "options": ["rbind", "rro"]
    }  # fmt: skip
    assert as_containerd_1_6(ours, theirs) == theirs


def test_stop_signal_label_matches_the_image(images: Images) -> None:
    images.containerd.ctr(
        "containers", "create", "--snapshotter", "native", "corral.test/bbox:plain", "spec-label"
    )
    try:
        info = json.loads(images.containerd.ctr("containers", "info", "spec-label").stdout)
    finally:
        images.containerd.ctr("containers", "rm", "spec-label", check=False)
    assert info["Labels"][oci.STOP_SIGNAL_LABEL] == oci.image_stop_signal(images.config["plain"]) == "SIGINT"


# runc runs what the module builds.


@dataclass
class Runc:
    """runc with its own state directory; every container and mount it leaves is cleaned up."""

    base: Path
    namespace: str = field(default_factory=lambda: f"corral-spec-{uuid.uuid4().hex[:8]}")
    started: list[str] = field(default_factory=list)
    mounts: list[Path] = field(default_factory=list)

    @property
    def state(self) -> Path:
        return self.base / "runc-state"

    def bundle(self, name: str, *opts: oci.SpecOpt) -> tuple[str, Path]:
        """A bundle with a busybox rootfs and a config.json from the default spec and ``opts``."""
        bundle = self.base / name
        build_rootfs(bundle / "rootfs")
        container_id = f"{name}-{uuid.uuid4().hex[:6]}"
        spec = oci.generate_spec(
            self.namespace, container_id, oci.with_default_unix_devices, oci.with_default_path_env, *opts
        )
        (bundle / "config.json").write_bytes(oci.spec_json(spec))
        return container_id, bundle

    def run(self, container_id: str, bundle: Path) -> subprocess.CompletedProcess[str]:
        self.started.append(container_id)
        return subprocess.run(
            ["runc", "--root", str(self.state), "run", "--bundle", str(bundle), container_id],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    def mount_tmpfs(self, target: Path) -> None:
        target.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(target)], check=True)
        self.mounts.append(target)

    def clean(self) -> None:
        for container_id in self.started:
            subprocess.run(["runc", "--root", str(self.state), "delete", "--force", container_id],
                           capture_output=True, timeout=60, check=False)  # fmt: skip
        for target in reversed(self.mounts):
            subprocess.run(["umount", "-l", str(target)], capture_output=True, check=False)
        for hierarchy in Path("/sys/fs/cgroup").iterdir():
            parent = hierarchy / self.namespace
            if parent.is_dir():
                for sub in sorted((p for p in parent.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                    sub.rmdir()
                parent.rmdir()
        if (Path("/sys/fs/cgroup") / self.namespace).is_dir():
            (Path("/sys/fs/cgroup") / self.namespace).rmdir()
        shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture
def runc() -> Iterator[Runc]:
    require_root()
    require_tool("runc")
    require_busybox()
    # Under /tmp and world-searchable: a user namespace's root is an unprivileged host uid.
    base = Path(tempfile.mkdtemp(prefix="corral-spec-", dir="/tmp"))
    base.chmod(0o755)
    r = Runc(base)
    try:
        yield r
    finally:
        r.clean()


def runc_version() -> str:
    return subprocess.run(["runc", "--version"], capture_output=True, text=True, check=False).stdout.strip()


def test_runc_runs_the_spec_and_output_is_captured(runc: Runc) -> None:
    container_id, bundle = runc.bundle("echo", oci.with_process_args("/bin/echo", "hello from corral"))
    result = runc.run(container_id, bundle)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "hello from corral\n"


def test_read_only_rootfs_from_run_flags_refuses_writes(runc: Runc) -> None:
    flags = RunFlags(args=("/bin/sh", "-c", "touch /probe"), read_only=True)
    container_id, bundle = runc.bundle("ro", *oci.run_spec_opts(flags, image=PLAIN_IMAGE, rootfs=runc.base))
    result = runc.run(container_id, bundle)
    assert result.returncode != 0
    assert "Read-only file system" in result.stderr


def test_non_contiguous_id_maps_show_in_proc_self_uid_map(runc: Runc) -> None:
    uids = oci.parse_id_map("0:666:1000,1000:6666:64536")
    gids = oci.parse_id_map("0:777:1000,1000:7777:64536")
    container_id, bundle = runc.bundle(
        "userns",
        oci.with_process_args("/bin/sh", "-c", "cat /proc/self/uid_map; echo --; cat /proc/self/gid_map"),
        oci.with_user_namespace(uids, gids),
    )
    result = runc.run(container_id, bundle)
    assert result.returncode == 0, result.stderr
    uid_text, gid_text = result.stdout.split("--\n")
    assert [tuple(map(int, line.split())) for line in uid_text.splitlines()] == [
        (0, 666, 1000),
        (1000, 6666, 64536),
    ]
    assert [tuple(map(int, line.split())) for line in gid_text.splitlines()] == [
        (0, 777, 1000),
        (1000, 7777, 64536),
    ]


def test_rro_bind_mount_makes_sub_mounts_read_only_where_ro_does_not(runc: Runc) -> None:
    version = runc_version()
    print(f"runc --version: {version}")
    features = subprocess.run(["runc", "features"], capture_output=True, text=True, check=False)
    supported = features.returncode == 0 and oci.supports_recursive_read_only(json.loads(features.stdout))
    if not supported:
        pytest.skip(
            f"runc or kernel lacks recursive read-only mounts ({version}; kernel {os.uname().release})"
        )
    host = runc.base / "host"
    host.mkdir()
    runc.mount_tmpfs(host / "sub")
    script = "touch /mnt/top; echo top=$?; touch /mnt/sub/probe; echo sub=$?"
    outcomes = {}
    for mode in ("rro", "ro"):
        container_id, bundle = runc.bundle(
            mode,
            oci.with_process_args("/bin/sh", "-c", script),
            oci.with_mount_flags([f"type=bind,src={host},dst=/mnt,options=rbind:{mode}"]),
        )
        result = runc.run(container_id, bundle)
        assert result.returncode == 0, result.stderr
        outcomes[mode] = (result.stdout, result.stderr)
    assert outcomes["rro"][0] == "top=1\nsub=1\n"
    assert outcomes["rro"][1].count("Read-only file system") == 2
    assert outcomes["ro"][0] == "top=1\nsub=0\n"  # plain ro leaves the sub-mount writable
    assert (host / "sub" / "probe").exists()


def _cgroup_probe_dir() -> str:
    """Where a container makes a sub-cgroup: its own cgroup is /sys/fs/cgroup (v2) or per controller (v1)."""
    if Path("/sys/fs/cgroup/cgroup.controllers").exists():
        return "/sys/fs/cgroup/corral-sub"
    for controller in ("pids", "memory", "cpu", "devices"):
        if (Path("/sys/fs/cgroup") / controller / "cgroup.procs").exists():
            return f"/sys/fs/cgroup/{controller}/corral-sub"
    pytest.skip("no cgroup v2 nor a v1 pids/memory/cpu/devices hierarchy on this host")


def test_writable_cgroup_mount_lets_the_container_make_a_sub_cgroup(runc: Runc) -> None:
    probe = _cgroup_probe_dir()
    script = f"mkdir {probe} && test -e {probe}/cgroup.procs && echo made && rmdir {probe}"
    results = {}
    for name, opt in (("cgroup-rw", oci.with_cgroup_writable), ("cgroup-ro", oci.with_cgroup_mount())):
        container_id, bundle = runc.bundle(name, oci.with_process_args("/bin/sh", "-c", script), opt)
        results[name] = runc.run(container_id, bundle)
    assert results["cgroup-rw"].returncode == 0, results["cgroup-rw"].stderr
    assert results["cgroup-rw"].stdout == "made\n"
    assert results["cgroup-ro"].returncode != 0
    assert "Read-only file system" in results["cgroup-ro"].stderr
