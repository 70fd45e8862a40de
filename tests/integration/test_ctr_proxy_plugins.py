"""Proxy plugins end to end: a snapshotter process the tests start (corral's native snapshotter served
by ``python -m corral.api.proxy``), configured in ``[proxy_plugins]``, driven by the real ``ctr``
through corrald — and the same process served to Debian's real containerd, proving the wire is
containerd's own."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest
from containerd_daemon import Containerd
from harness import Daemon, run_corrald_once
from tooling import require_tool

from corral.api.client import connect
from corral.api.proxy import ProxySnapshotter
from corral.api.types.containerd.services.diff import v1 as diff_pb
from corral.api.types.containerd.services.snapshots.v1 import (
    MountsRequest,
    PrepareSnapshotRequest,
    SnapshotsStub,
    ViewSnapshotRequest,
)
from corral.kernel import AlreadyExists

TESTS = Path(__file__).resolve().parents[1]
NATIVE_DIR = "io.containerd.snapshotter.v1.native"
REF = "containerd.io/snapshot.ref"


@dataclass
class ProxyProcess:
    """A snapshotter served on a unix socket by a process of its own."""

    command: list[str]
    root: Path
    address: str
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ProxyProcess:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(self.command, stdout=log, stderr=log)
        deadline = time.monotonic() + 20
        while not os.path.exists(self.address):
            assert self.proc.poll() is None, f"the proxy exited: {self.log.read_text()}"
            assert time.monotonic() < deadline, f"the proxy did not listen: {self.log.read_text()}"
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def snapshot_dirs(self) -> set[str]:
        directory = self.root / NATIVE_DIR / "snapshots"
        return set(os.listdir(directory)) if directory.exists() else set()

    def backend_keys(self) -> dict[str, str]:
        """What the process itself holds (key -> kind), asked over its own socket."""

        async def walk() -> dict[str, str]:
            proxy = ProxySnapshotter(self.address, "direct")
            try:
                return {i.name: i.kind.name async for i in proxy.walk()}
            finally:
                proxy.close()

        return anyio.run(walk)


@pytest.fixture
def sockets() -> Iterator[Path]:
    # unix socket paths are limited to 107 bytes: pytest's tmp_path can be longer
    path = Path(tempfile.mkdtemp(prefix="corral-proxy-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def native_proxy(tmp_path: Path, sockets: Path) -> ProxyProcess:
    address = str(sockets / "native.sock")
    root = tmp_path / "remote"
    command = [
        sys.executable,
        "-m",
        "corral.api.proxy",
        "snapshotter",
        "--root",
        str(root),
        "--address",
        address,
    ]
    return ProxyProcess(command, root, address, tmp_path / "proxy.log")


def proxy_config(name: str, address: str, extra: str = "") -> str:
    return f'version = 3\n[proxy_plugins.{name}]\ntype = "snapshot"\naddress = "{address}"\n{extra}'


@pytest.fixture
def remote(tmp_path: Path, sockets: Path) -> Iterator[ProxyProcess]:
    process = native_proxy(tmp_path, sockets).start()
    yield process
    process.stop()


@pytest.fixture
def served(tmp_path: Path, remote: ProxyProcess, ctr: str) -> Iterator[Daemon]:
    extra = 'platform = "linux/arm64"\ncapabilities = ["remote-snapshots"]\nexports = { cache = "/var/cache/x" }\n'
    d = Daemon(tmp_path / "corral", proxy_config("remote", remote.address, extra)).start()
    yield d
    d.stop()


def test_ctr_lists_the_proxy_plugin_with_its_platform_exports_and_capabilities(
    served: Daemon, remote: ProxyProcess
) -> None:
    listing = served.ctr("plugins", "ls").stdout
    (row,) = [line.split() for line in listing.splitlines() if " remote " in f" {line} "]
    assert row == ["io.containerd.snapshotter.v1", "remote", "linux/arm64", "ok"]
    detail = served.ctr("plugins", "ls", "-d", "id==remote").stdout
    assert "Capabilities:     remote-snapshots" in detail
    assert f"address      {remote.address}" in detail and "cache        /var/cache/x" in detail
    (plugin,) = json.loads(served.corral("plugins", "ls", "id==remote", "--format", "json").stdout)
    assert plugin["origin"]["distribution"] == "proxy" and plugin["origin"]["builtin"] is False
    assert plugin["origin"]["entry_point"] == "proxy_plugins.remote"
    assert "io.containerd.metadata.v1.sqlite" in plugin["dependents"]


def test_ctr_snapshots_through_corrald_reach_the_proxy_process(served: Daemon, remote: ProxyProcess) -> None:
    def snap(*args: str) -> str:
        return served.ctr("snapshots", "--snapshotter", "remote", *args).stdout

    snap("prepare", "base")
    (mount,) = snap("mounts", "/mnt", "base").splitlines()
    assert mount.startswith(f"mount -t bind {remote.root / NATIVE_DIR / 'snapshots'}/")
    source = Path(mount.split()[3])
    (source / "hello").write_text("through the proxy\n")
    snap("commit", "base-c", "base")
    snap("prepare", "child", "base-c")
    (child_mount,) = snap("mounts", "/mnt", "child").splitlines()
    assert (Path(child_mount.split()[3]) / "hello").read_text() == "through the proxy\n"
    listed = {line.split()[0]: line.split()[1:] for line in snap("ls").splitlines()[1:]}
    assert listed == {"base-c": ["Committed"], "child": ["base-c", "Active"]}
    usage = snap("usage", "base-c").splitlines()[1].split()
    assert usage[0] == "base-c" and usage[-1] == "2"  # the directory and its one file
    # the process holds them under the daemon's namespaced keys
    assert sorted(remote.backend_keys().values()) == ["ACTIVE", "COMMITTED"]
    assert all(k.startswith("default/") for k in remote.backend_keys())
    snap("rm", "child")
    snap("rm", "base-c")
    assert remote.backend_keys() == {}
    assert snap("ls").splitlines()[1:] == []


def test_the_collector_removes_on_the_remote_what_no_record_names(
    served: Daemon, remote: ProxyProcess
) -> None:
    async def orphan() -> None:
        proxy = ProxySnapshotter(remote.address, "remote")
        try:
            await proxy.prepare("left-by-a-crash")
        finally:
            proxy.close()

    anyio.run(orphan)
    assert "left-by-a-crash" in remote.backend_keys()
    served.ctr("leases", "create", "--id", "trigger")
    served.ctr("leases", "delete", "--sync", "trigger")
    assert "left-by-a-crash" not in remote.backend_keys()


def test_a_proxy_that_is_down_fails_unavailable_and_plugins_why_says_so(
    tmp_path: Path, sockets: Path, ctr: str
) -> None:
    process = native_proxy(tmp_path, sockets)
    d = Daemon(tmp_path / "corral", proxy_config("later", process.address)).start()
    try:
        assert " later " in d.ctr("plugins", "ls").stdout
        failed = d.ctr("snapshots", "--snapshotter", "later", "prepare", "x", check=False)
        assert failed.returncode == 1
        assert failed.stderr == (
            f'ctr: connection error: desc = "transport: Error while dialing dial unix://{process.address}:'
            ' timeout": unavailable\n'
        )
        why = d.corral("plugins", "why", "io.containerd.snapshotter.v1.later").stdout
        assert why.startswith("io.containerd.snapshotter.v1.later is ok, but proxy at ")
        assert "unreachable" in why and "Unavailable" in why
        # connected lazily: once the process listens, the same daemon reaches it
        process.start()
        d.ctr("snapshots", "--snapshotter", "later", "prepare", "x")
        assert d.corral("plugins", "why", "io.containerd.snapshotter.v1.later").stdout.endswith("is ok\n")
        assert list(process.backend_keys().values()) == ["ACTIVE"]
        process.stop()
        failed = d.ctr("snapshots", "--snapshotter", "later", "mounts", "/mnt", "x", check=False)
        assert failed.returncode == 1 and "unavailable" in failed.stderr
    finally:
        d.stop()
        process.stop()


@pytest.mark.parametrize(
    ("entry", "key", "says"),
    [
        (
            'type = "snapshots"\naddress = "/x.sock"',
            "proxy_plugins.p.type",
            'unknown proxy plugin type "snapshots"',
        ),
        ('type = "snapshot"', "proxy_plugins.p.address", "missing key"),
    ],
)
def test_a_bad_proxy_entry_stops_corrald_naming_file_and_key(
    tmp_path: Path, entry: str, key: str, says: str
) -> None:
    result = run_corrald_once(tmp_path, f"version = 3\n[proxy_plugins.p]\n{entry}\n")
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"corrald: config error: {tmp_path / 'config.toml'}: {key}: ")
    assert says in line


def test_the_handshake_through_corrald_records_a_layer_the_remote_provides(
    tmp_path: Path, sockets: Path, ctr: str
) -> None:
    chain = "sha256:" + "ab" * 32
    layers = tmp_path / "layers.json"
    layers.write_text(json.dumps({chain: {"lazy.txt": "provided by the remote\n"}}))
    address = str(sockets / "lazy.sock")
    script = str(TESTS / "lazy_snapshotter.py")
    env_path = os.pathsep.join(p for p in sys.path if p)
    command = [
        "env",
        f"PYTHONPATH={env_path}",
        sys.executable,
        script,
        str(tmp_path / "lazy"),
        address,
        str(layers),
    ]
    process = ProxyProcess(command, tmp_path / "lazy", address, tmp_path / "lazy.log").start()
    d = Daemon(tmp_path / "corral", proxy_config("lazy", address)).start()
    labels = {REF: chain, "containerd.io/snapshot/cri.layer-digest": "sha256:" + "cd" * 32}

    async def unpack_as_containerd_does() -> None:
        # as the unpacker: under a lease, Prepare with the chain ID as snapshot.ref, then Stat it
        async with connect(d.socket) as client:
            stub = SnapshotsStub(client.channel)
            held = {"containerd-namespace": "default", "containerd-lease": "unpack"}
            request = PrepareSnapshotRequest(snapshotter="lazy", key=f"extract-1 {chain}", labels=labels)
            with pytest.raises(AlreadyExists, match="target snapshot"):
                await client.call(stub.prepare(request, metadata=held))
            info = await client.snapshot_stat("lazy", chain)
            assert info.kind == 3 and info.labels[REF] == chain

    try:
        d.ctr("leases", "create", "--id", "unpack")
        anyio.run(unpack_as_containerd_does)
        d.ctr("snapshots", "--snapshotter", "lazy", "prepare", "container", chain)
        listed = d.ctr("snapshots", "--snapshotter", "lazy", "ls").stdout.splitlines()[1:]
        assert sorted(line.split() for line in listed) == [
            ["container", chain, "Active"],
            [chain, "Committed"],
        ]
        mounts = d.ctr("snapshots", "--snapshotter", "lazy", "mounts", "/mnt", "container").stdout
        (mount,) = mounts.splitlines()
        assert (Path(mount.split()[3]) / "lazy.txt").read_text() == "provided by the remote\n"
        d.ctr("snapshots", "--snapshotter", "lazy", "rm", "container")
        # the lease holds the layer; once it goes, the collector removes it on the remote
        assert list(process.backend_keys()) == [chain]
        d.ctr("leases", "delete", "--sync", "unpack")
        assert process.backend_keys() == {}
        assert d.ctr("snapshots", "--snapshotter", "lazy", "ls").stdout.splitlines()[1:] == []
    finally:
        d.stop()
        process.stop()


# -- the same process, served to Debian's containerd ---------------------------------------------------


def test_debian_containerd_drives_the_served_corral_snapshotter(
    tmp_path: Path, sockets: Path, remote: ProxyProcess
) -> None:
    require_tool("containerd")
    if os.geteuid() != 0:
        pytest.skip("containerd runs as root")
    containerd = Containerd(sockets / "containerd").start(
        f'[proxy_plugins.corral]\n  type = "snapshot"\n  address = "{remote.address}"\n'
    )
    try:
        assert "io.containerd.snapshotter.v1    corral" in containerd.ctr("plugins", "ls").stdout

        def snap(*args: str) -> str:
            return containerd.ctr("snapshots", "--snapshotter", "corral", *args).stdout

        snap("prepare", "base")
        (mount,) = snap("mounts", "/mnt", "base").splitlines()
        (Path(mount.split()[3]) / "hello").write_text("from containerd\n")
        snap("commit", "base-c", "base")
        snap("prepare", "child", "base-c")
        (child,) = snap("mounts", "/mnt", "child").splitlines()
        assert (Path(child.split()[3]) / "hello").read_text() == "from containerd\n"
        listed = sorted(line.split() for line in snap("ls").splitlines()[1:])
        assert listed == [["base-c", "Committed"], ["child", "base-c", "Active"]]
        assert sorted(remote.backend_keys().values()) == ["ACTIVE", "COMMITTED"]
        assert all(key.startswith("default/") for key in remote.backend_keys())
        usage = snap("usage", "base-c").splitlines()[1].split()
        assert usage[0] == "base-c" and usage[-1] == "2"
        snap("rm", "child")
        snap("rm", "base-c")
        assert snap("ls").splitlines()[1:] == []
        # containerd removes backend snapshots in a collection it schedules at a pace set by how long
        # the last one took (through a proxy on a loaded machine, seconds): ask for one and wait for it.
        containerd.ctr("leases", "create", "--id", "collect")
        containerd.ctr("leases", "rm", "--sync", "collect")
        assert remote.backend_keys() == {}
    finally:
        containerd.stop()


# -- a proxy differ: another daemon's Diff service -------------------------------------------------------


def test_a_proxy_differ_applies_and_makes_layers_in_the_remote_process(tmp_path: Path, ctr: str) -> None:
    remote = Daemon(tmp_path / "remote-differ").start()
    config = (
        f'version = 3\n[proxy_plugins.far]\ntype = "diff"\naddress = "{remote.socket}"\n'
        '[plugins."io.containerd.service.v1.diff-service"]\ndefault = ["far"]\n'
    )
    d = Daemon(tmp_path / "corral", config).start()
    s = ("snapshots", "--snapshotter", "native")

    def source(key: str) -> Path:
        (mount,) = d.ctr(*s, "mounts", "/mnt", key).stdout.splitlines()
        return Path(mount.split()[3])

    async def compare_then_apply() -> tuple[str, int]:
        async with connect(d.socket) as client:
            md = {"containerd-namespace": "default"}
            snaps = SnapshotsStub(client.channel, metadata=md)
            differ = diff_pb.DiffStub(client.channel, metadata=md)
            lower = (
                await snaps.view(ViewSnapshotRequest(snapshotter="native", key="lower", parent="base-c"))
            ).mounts
            upper = (await snaps.mounts(MountsRequest(snapshotter="native", key="child"))).mounts
            made = await client.call(differ.diff(diff_pb.DiffRequest(left=lower, right=upper)))
            assert made.diff is not None
            fresh = (
                await snaps.prepare(
                    PrepareSnapshotRequest(snapshotter="native", key="fresh", parent="base-c")
                )
            ).mounts
            applied = await client.call(differ.apply(diff_pb.ApplyRequest(diff=made.diff, mounts=fresh)))
            assert applied.applied is not None and applied.applied.digest.startswith("sha256:")
            return made.diff.digest, made.diff.size

    try:
        row = next(
            line.split() for line in d.ctr("plugins", "ls").stdout.splitlines() if " far " in f" {line} "
        )
        assert row[:2] == ["io.containerd.differ.v1", "far"] and row[-1] == "ok"
        d.ctr(*s, "prepare", "base")
        (source("base") / "kept").write_text("in the parent\n")
        d.ctr(*s, "commit", "base-c", "base")
        d.ctr(*s, "prepare", "child", "base-c")
        (source("child") / "added").write_text("in the layer\n")
        digest, _ = anyio.run(compare_then_apply)
        # the layer was made by the remote daemon, in its own content store, not in this one
        assert digest in remote.ctr("content", "ls", "-q").stdout.split()
        assert digest not in d.ctr("content", "ls", "-q").stdout.split()
        # and applied by it onto this daemon's snapshot
        assert (source("fresh") / "added").read_text() == "in the layer\n"
        assert (source("fresh") / "kept").read_text() == "in the parent\n"
    finally:
        d.stop()
        remote.stop()


# -- a proxy content store ----------------------------------------------------------------------------------


def test_a_proxy_content_store_holds_the_blobs_ctr_writes_through_corrald(
    tmp_path: Path, sockets: Path, ctr: str
) -> None:
    address = str(sockets / "content.sock")
    root = tmp_path / "remote-content"
    command = [sys.executable, "-m", "corral.api.proxy", "content", "--root", str(root), "--address", address]
    process = ProxyProcess(command, root, address, tmp_path / "content.log").start()
    config = (
        'version = 3\ndisabled_plugins = ["io.containerd.content.v1.content"]\n'
        f'[proxy_plugins.far]\ntype = "content"\naddress = "{address}"\n'
    )
    d = Daemon(tmp_path / "corral", config).start()
    blobs = root / "io.containerd.content.v1.content" / "blobs" / "sha256"
    data = b"kept by another process\n" * 50_000  # more than one 1 MiB chunk
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    try:
        row = next(
            line.split() for line in d.ctr("plugins", "ls").stdout.splitlines() if " far " in f" {line} "
        )
        assert row[:2] == ["io.containerd.content.v1", "far"] and row[-1] == "ok"
        ingested = subprocess.run(
            ["ctr", "-a", d.socket, "content", "ingest", "--expected-digest", digest, "upload"],
            input=data, capture_output=True, timeout=60,
        )  # fmt: skip
        assert ingested.returncode == 0, ingested.stderr
        assert (blobs / digest.removeprefix("sha256:")).read_bytes() == data
        assert digest in d.ctr("content", "ls", "-q").stdout.split()
        got = subprocess.run(
            ["ctr", "-a", d.socket, "content", "get", digest], capture_output=True, check=True
        )
        assert got.stdout == data
        # namespaces stay the daemon's: another namespace does not see the blob
        assert d.ctr("content", "ls", "-q", namespace="other").stdout.split() == []
        d.ctr("content", "label", digest, "purpose=test")
        assert "purpose=test" in d.ctr("content", "ls").stdout
        # removed from the namespace, then from the remote by the collector
        d.ctr("content", "rm", digest)
        d.ctr("leases", "create", "--id", "trigger")
        d.ctr("leases", "delete", "--sync", "trigger")
        assert not (blobs / digest.removeprefix("sha256:")).exists()
    finally:
        d.stop()
        process.stop()


def test_the_served_plugin_takes_its_section_of_a_config_file(tmp_path: Path, sockets: Path) -> None:
    snapshots = tmp_path / "elsewhere"
    config = tmp_path / "proxy.toml"
    config.write_text(f'[plugins."io.containerd.snapshotter.v1.native"]\nroot_path = "{snapshots}"\n')
    process = native_proxy(tmp_path, sockets)
    process.command += ["--config", str(config)]
    process.start()
    try:

        async def prepare() -> None:
            proxy = ProxySnapshotter(process.address, "p")
            try:
                await proxy.prepare("here")
            finally:
                proxy.close()

        anyio.run(prepare)
        assert os.listdir(snapshots / "snapshots") == ["1"]
    finally:
        process.stop()
    config.write_text('[plugins."io.containerd.snapshotter.v1.native"]\nroot_pth = "/x"\n')
    bad = subprocess.run(process.command, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2
    assert bad.stderr.strip().endswith(
        f'corral proxy: config error: {config}: plugins."io.containerd.snapshotter.v1.native".root_pth: unknown key'
    )


def test_a_proxy_that_is_down_does_not_stop_the_collection_of_everything_else(
    tmp_path: Path, sockets: Path, ctr: str
) -> None:
    d = Daemon(tmp_path / "corral", proxy_config("down", str(sockets / "nobody.sock"))).start()
    blobs = tmp_path / "corral" / "root" / "io.containerd.content.v1.content" / "blobs" / "sha256"
    data = b"collect me\n"
    try:
        ingested = subprocess.run(
            ["ctr", "-a", d.socket, "content", "ingest", "blob"], input=data, capture_output=True, timeout=60
        )
        assert ingested.returncode == 0, ingested.stderr
        d.ctr("snapshots", "--snapshotter", "native", "prepare", "local")
        d.ctr("content", "rm", "sha256:" + hashlib.sha256(data).hexdigest())
        d.ctr("leases", "create", "--id", "trigger")
        d.ctr("leases", "delete", "--sync", "trigger")  # as containerd: the sweep of "down" is logged
        assert not (blobs / hashlib.sha256(data).hexdigest()).exists()
        assert "gc_snapshotter_sweep_failed" in d.log()
        assert "local" in d.ctr("snapshots", "--snapshotter", "native", "ls").stdout
    finally:
        d.stop()
