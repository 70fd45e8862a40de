"""What an import refuses leaves nothing behind: verifier denials, malformed archives, a daemon killed mid-way."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import tarfile
import textwrap
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import anyio
import pytest
from containerd2 import containerd2_bin, ctr2
from harness import Daemon
from tooling import require_root

from corral.api.client import ImportOptions, connect
from corral.plugins.images.build import build_busybox_image

NAME = "docker.io/library/busybox:latest"
BAD = "docker.io/library/busybox:bad"

DENY_BAD = """\
#!/bin/sh
# a verifier as containerd documents them: -name NAME -digest DIGEST -stdin-media-type TYPE
echo "$@" >> "$(dirname "$0")/../calls"
cat >> "$(dirname "$0")/../stdin"
case "$2" in
  *:bad) echo "images tagged :bad are not allowed here"; exit 3 ;;
esac
echo "fine: $2"
"""


def verifier_config(bin_dir: Path) -> str:
    return f'version = 3\n[plugins."io.containerd.image-verifier.v1.bindir"]\n  bin_dir = "{bin_dir}"\n'


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("archives")
    build_busybox_image(base / "good.tar")
    build_busybox_image(base / "bad.tar", names=(BAD,))
    build_busybox_image(base / "docker.tar", archive_format="docker")
    return {p.stem: p for p in base.iterdir()}


@pytest.fixture
def verifier_dir(tmp_path: Path) -> Path:
    bin_dir = tmp_path / "verifiers" / "bin"
    bin_dir.mkdir(parents=True)
    script = bin_dir / "10-deny-bad"
    script.write_text(DENY_BAD)
    script.chmod(0o755)
    return bin_dir


@pytest.fixture
def verified(tmp_path: Path, verifier_dir: Path) -> Iterator[Daemon]:
    require_root()
    containerd2_bin()
    d = Daemon(tmp_path / "corral", config=verifier_config(verifier_dir)).start()
    try:
        yield d
    finally:
        d.stop()


def rows(d: Daemon, *args: str) -> list[str]:
    return [line.strip() for line in ctr2(d.socket, *args).stdout.splitlines()[1:] if line.strip()]


def assert_nothing_left(d: Daemon, *, client_lease: bool = False) -> None:
    """No image, blob, ingest, lease or snapshot: the refused import changed nothing. A ctr
    killed with its daemon never removed the lease it made for the call (``client_lease``);
    corral's transfer held nothing under it."""
    assert ctr2(d.socket, "images", "ls", "-q").stdout.split() == []
    assert rows(d, "content", "ls") == []
    assert rows(d, "content", "active") == []
    leases = rows(d, "leases", "ls")
    assert not any("corral.io/transfer" in lease for lease in leases)
    assert len(leases) == (1 if client_lease else 0), leases
    for snapshotter in ("overlayfs", "native"):
        assert rows(d, "snapshots", "--snapshotter", snapshotter, "ls") == []


def assert_disk_clean(d: Daemon) -> None:
    """Nothing of the interrupted import on disk either: no blob, ingest or snapshot directory."""
    root = d.base / "root"
    patterns = (
        "io.containerd.content.v1.content/blobs/*/*",
        "io.containerd.content.v1.content/ingest/*",
        "io.containerd.snapshotter.v1.overlayfs/snapshots/*",
    )
    deadline = time.monotonic() + 20
    while (left := [p for pattern in patterns for p in root.glob(pattern)]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert left == []


# --- image verifiers ---------------------------------------------------------------------


def test_a_bindir_verifier_blocks_exactly_the_images_it_denies_with_its_reason(
    verified: Daemon, archives: dict[str, Path], verifier_dir: Path
) -> None:
    denied = ctr2(verified.socket, "images", "import", str(archives["bad"]), check=False)
    assert denied.returncode == 1
    assert f"image verifier bindir blocked import of {BAD}" in denied.stderr
    assert (
        "verifier 10-deny-bad rejected image (exit code 3): images tagged :bad are not allowed here"
        in denied.stderr
    )
    assert_nothing_left(verified)
    ctr2(verified.socket, "images", "import", str(archives["good"]))
    assert ctr2(verified.socket, "images", "ls", "-q").stdout.split() == [NAME]
    calls = (verifier_dir.parent / "calls").read_text().splitlines()
    digest = build_busybox_image(names=(BAD,)).digest
    assert (
        calls[0] == f"-name {BAD} -digest {digest} -stdin-media-type application/vnd.oci.descriptor.v1+json"
    )
    first = json.loads((verifier_dir.parent / "stdin").read_text().splitlines()[0])
    assert first["digest"] == digest and first["mediaType"] == "application/vnd.oci.image.manifest.v1+json"


def test_the_corral_cli_shows_the_verifiers_reason(verified: Daemon, archives: dict[str, Path]) -> None:
    result = verified.corral("images", "import", str(archives["bad"]), check=False)
    assert result.returncode == 1
    assert result.stderr.startswith(
        f"corral: image verifier bindir blocked import of {BAD} with digest sha256:"
    )
    assert "images tagged :bad are not allowed here" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert_nothing_left(verified)


def test_removing_the_verifier_lets_the_image_in(
    verified: Daemon, archives: dict[str, Path], verifier_dir: Path
) -> None:
    assert ctr2(verified.socket, "images", "import", str(archives["bad"]), check=False).returncode == 1
    (verifier_dir / "10-deny-bad").unlink()
    ctr2(verified.socket, "images", "import", str(archives["bad"]))
    assert ctr2(verified.socket, "images", "ls", "-q").stdout.split() == [BAD]


def test_a_verifier_that_hangs_is_killed_and_blocks_the_import(
    tmp_path: Path, archives: dict[str, Path]
) -> None:
    require_root()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    hang = bin_dir / "hang"
    hang.write_text("#!/bin/sh\nsleep 60\n")
    hang.chmod(0o755)
    config = verifier_config(bin_dir) + '  per_verifier_timeout = "500ms"\n'
    d = Daemon(tmp_path / "corral", config=config).start()
    try:
        result = ctr2(d.socket, "images", "import", str(archives["good"]), check=False)
        assert result.returncode == 1
        assert "image verifier bindir returned error: failed to call verifier hang" in result.stderr
        assert "timed out, killed" in result.stderr
        assert_nothing_left(d)
    finally:
        d.stop()


def test_with_no_image_verifier_loaded_imports_work(tmp_path: Path, archives: dict[str, Path]) -> None:
    """containerd 2.0 to 2.2 cannot start their transfer service without a verifier; corral can."""
    require_root()
    config = 'version = 3\ndisabled_plugins = ["io.containerd.image-verifier.v1.bindir"]\n'
    d = Daemon(tmp_path / "corral", config=config).start()
    try:
        plugins = ctr2(d.socket, "plugins", "ls").stdout
        assert "bindir" not in plugins
        assert any("transfer" in line and line.split()[-1] == "ok" for line in plugins.splitlines())
        ctr2(d.socket, "images", "import", str(archives["good"]))
        assert ctr2(d.socket, "images", "ls", "-q").stdout.split() == [NAME]
    finally:
        d.stop()


# --- malformed archives ------------------------------------------------------------------


def rewrite(
    source: Path, dest: Path, change: Callable[[tarfile.TarInfo, bytes], tuple[tarfile.TarInfo, bytes] | None]
) -> Path:
    """A copy of the archive ``source`` with each member passed through ``change`` (None drops it)."""
    with tarfile.open(source) as src, tarfile.open(dest, "w", format=tarfile.USTAR_FORMAT) as out:
        for member in src.getmembers():
            data = src.extractfile(member).read() if member.isfile() else b""  # type: ignore[union-attr]
            changed = change(member, data)
            if changed is None:
                continue
            info, payload = changed
            info.size = len(payload)
            out.addfile(info, io.BytesIO(payload) if info.isfile() else None)
    return dest


def _layer(data: bytes) -> bool:
    return len(data) > 100_000


def corrupted_layer(member: tarfile.TarInfo, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    if member.isfile() and _layer(data):
        data = data[:-1] + bytes([data[-1] ^ 1])
    return member, data


def missing_layer(member: tarfile.TarInfo, data: bytes) -> tuple[tarfile.TarInfo, bytes] | None:
    return None if member.isfile() and _layer(data) else (member, data)


def layer_outside(member: tarfile.TarInfo, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    if member.name == "manifest.json":
        entries = json.loads(data)
        entries[0]["Layers"] = ["../../../etc/passwd"]
        data = json.dumps(entries).encode()
    return member, data


def index_names_an_absent_manifest(member: tarfile.TarInfo, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    if member.name == "index.json":
        index = json.loads(data)
        index["manifests"][0]["digest"] = "sha256:" + "ab" * 32
        data = json.dumps(index).encode()
    return member, data


def member_outside(member: tarfile.TarInfo, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    if member.name == "oci-layout":
        member.name = "../oci-layout"
    return member, data


MALFORMED: dict[str, tuple[str, Callable[..., tuple[tarfile.TarInfo, bytes] | None], str]] = {
    "wrong-digest": ("good", corrupted_layer, "its bytes have digest sha256:"),
    "missing-blob": ("good", missing_layer, "which the archive does not hold"),
    "absent-manifest": ("good", index_names_an_absent_manifest, "which the archive does not hold"),
    "layer-outside": ("docker", layer_outside, "not found"),
    "member-outside": ("good", member_outside, "'..' would leave the archive"),
}


@pytest.mark.parametrize("kind", sorted(MALFORMED))
def test_a_malformed_archive_is_refused_with_a_clear_error_and_leaves_nothing(
    corral: Daemon, archives: dict[str, Path], tmp_path: Path, kind: str
) -> None:
    source, change, words = MALFORMED[kind]
    broken = rewrite(archives[source], tmp_path / f"{kind}.tar", change)
    result = ctr2(corral.socket, "images", "import", str(broken), check=False)
    assert result.returncode == 1, result.stdout
    assert words in result.stderr
    assert "invalid argument" in result.stderr
    assert_nothing_left(corral)


def test_a_truncated_archive_is_refused_and_leaves_nothing(
    corral: Daemon, archives: dict[str, Path], tmp_path: Path
) -> None:
    data = archives["good"].read_bytes()
    for cut in (len(data) // 2, len(data) - 1024, 700):
        truncated = tmp_path / f"truncated-{cut}.tar"
        truncated.write_bytes(data[:cut])
        result = corral.corral("images", "import", str(truncated), check=False)
        assert result.returncode == 1
        assert result.stderr.startswith("corral: tar stream is truncated"), result.stderr
        assert_nothing_left(corral)


def test_a_file_that_is_no_archive_is_refused(corral: Daemon, tmp_path: Path) -> None:
    junk = tmp_path / "junk.tar"
    junk.write_bytes(os.urandom(4096))
    result = ctr2(corral.socket, "images", "import", str(junk), check=False)
    assert result.returncode == 1 and "invalid argument" in result.stderr
    assert_nothing_left(corral)


# --- a daemon killed in the middle --------------------------------------------------------


def test_corrald_killed_mid_import_leaves_no_half_image_and_the_import_repeats(
    corral: Daemon, archives: dict[str, Path]
) -> None:
    data = archives["good"].read_bytes()
    half = len(data) // 2

    async def slow_import() -> None:
        async def chunks() -> AsyncIterator[bytes]:
            yield data[:half]
            await anyio.sleep(1.0)  # the daemon ingests the manifest and half the layer meanwhile
            assert corral.proc is not None
            os.kill(corral.proc.pid, signal.SIGKILL)
            await anyio.sleep(60)  # never reached: the Transfer call fails with the connection
            yield data[half:]

        async with connect(corral.socket) as client:
            try:
                await client.import_archive(chunks(), ImportOptions())
            except Exception as exc:  # the connection dies with the daemon, in whichever way
                failures.append(exc)

    failures: list[Exception] = []
    anyio.run(slow_import)
    assert len(failures) == 1
    assert corral.proc is not None
    corral.proc.wait()
    corral.proc = None
    corral.start()
    assert '"count": 1, "event": "transfer_leases_removed"' in corral.log()
    assert_nothing_left(corral)
    assert_disk_clean(corral)
    ctr2(corral.socket, "images", "import", str(archives["good"]))
    assert ctr2(corral.socket, "images", "ls", "-q").stdout.split() == [NAME]


def test_a_config_naming_an_unknown_differ_fails_the_transfer_plugin_with_its_name(tmp_path: Path) -> None:
    require_root()
    config = textwrap.dedent(
        """\
        version = 3
        [[plugins."io.containerd.transfer.v1.local".unpack_config]]
          snapshotter = "overlayfs"
          differ = "nope"
        """
    )
    d = Daemon(tmp_path / "corral", config=config).start()
    try:
        listed = ctr2(d.socket, "plugins", "ls").stdout
        line = next(row for row in listed.splitlines() if "transfer.v1" in row)
        assert line.split()[-1] == "error"
        detail = ctr2(d.socket, "plugins", "ls", "-d", "id==local").stdout
        assert "differ 'nope' is not loaded" in detail
    finally:
        d.stop()


def many_files_archive(path: Path) -> Path:
    """An image whose unpack takes long enough to be interrupted: 20 000 small files."""
    from corral.plugins.images.build import LayerEntry, build_image, build_layer

    entries = [LayerEntry.directory(f"d{i}") for i in range(20)]
    entries += [LayerEntry.file(f"d{i % 20}/f{i}", os.urandom(512)) for i in range(20_000)]
    image = build_image([build_layer(entries)])
    image.write_oci_archive(path, ["docker.io/library/many:files"])
    return path


def wait_for(predicate: Callable[[], bool], seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("the import never reached the point to interrupt")
        time.sleep(0.02)


@pytest.mark.parametrize("phase", ["verifying", "unpacking"])
def test_corrald_killed_while_verifying_or_unpacking_leaves_nothing_after_a_restart(
    tmp_path: Path, archives: dict[str, Path], phase: str
) -> None:
    require_root()
    bin_dir = tmp_path / "verifiers"
    bin_dir.mkdir()
    marker = tmp_path / "verifying"
    if phase == "verifying":
        (bin_dir / "slow").write_text(f'#!/bin/sh\necho $$ > "{marker}"\nexec sleep 30\n')
        (bin_dir / "slow").chmod(0o755)
    archive = archives["good"] if phase == "verifying" else many_files_archive(tmp_path / "many.tar")
    d = Daemon(tmp_path / "corral", config=verifier_config(bin_dir)).start()
    importer = subprocess.Popen(
        [str(containerd2_bin() / "ctr"), "-a", d.socket, "images", "import", str(archive)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        if phase == "verifying":
            wait_for(marker.exists)
        else:
            wait_for(lambda: any(r.startswith("extract-") for r in rows(d, "snapshots", "ls")))
        assert d.proc is not None
        os.kill(d.proc.pid, signal.SIGKILL)
        d.proc.wait()
        d.proc = None
        assert importer.wait(timeout=30) != 0
        if marker.exists():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(marker.read_text()), signal.SIGKILL)
            (bin_dir / "slow").unlink()
        d.start()
        assert '"event": "transfer_leases_removed"' in d.log()
        assert_nothing_left(d, client_lease=True)
        assert_disk_clean(d)
        ctr2(d.socket, "images", "import", str(archive))
        assert len(ctr2(d.socket, "images", "ls", "-q").stdout.split()) == 1
    finally:
        if importer.poll() is None:
            importer.kill()
        d.stop()
