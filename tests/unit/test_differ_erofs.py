"""The erofs differ: layers applied to erofs snapshots become their EROFS image; everything else is
passed on or refused as containerd's erofs differ does; and the plugin's skip."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import tarfile
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest
import tooling
from tooling import require_root, require_tool

from corral.kernel import (
    DaemonConfig,
    FailedPrecondition,
    InvalidArgument,
    Kernel,
    Status,
    Unimplemented,
    builtin_candidate,
)
from corral.plugins.content.local import registration as local_content
from corral.plugins.content.memory import MemoryContentStore
from corral.plugins.core import (
    MEDIA_TYPE_LAYER,
    MEDIA_TYPE_LAYER_GZIP,
    UNCOMPRESSED,
    Descriptor,
    Mount,
    namespace,
)
from corral.plugins.core.mount import temporary_mount
from corral.plugins.differs.differ import WalkingDiffer
from corral.plugins.differs.erofs import ErofsDiffer, is_erofs_media_type
from corral.plugins.differs.erofs import plugin as erofs_differ_plugin
from corral.plugins.metadata import NamespacedContent
from corral.plugins.metadata.sqlite import SqliteMetadata, open_metadata
from corral.plugins.metadata.sqlite import registration as sqlite_metadata
from corral.plugins.services.diff import DiffService
from corral.plugins.snapshots.erofs import LAYER_BLOB, ErofsSnapshotter, layer_uuid, mkfs_path

pytestmark = pytest.mark.anyio
EROFS_NATIVE = "application/vnd.erofs.layer.v1.erofs"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def no_mounts_are_left_behind(tmp_path: Path) -> Iterator[None]:
    yield
    left = [line for line in Path("/proc/self/mounts").read_text().splitlines() if str(tmp_path) in line]
    assert not left, left


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def tar_of(*members: tuple[str, bytes | None, int, int]) -> bytes:
    """(name, data or None for a directory, mode, uid) members; a name ending in .wh.X is a whiteout."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data, mode, uid in members:
            info = tarfile.TarInfo(name)
            info.mode, info.uid, info.gid, info.mtime = mode, uid, uid, 1_600_000_000
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


@dataclass
class Env:
    md: SqliteMetadata
    differ: ErofsDiffer
    snapshotter: ErofsSnapshotter
    tmp: Path

    async def ingest(self, data: bytes) -> str:
        digest = sha(data)
        writer = await self.md.view(NamespacedContent).writer(f"ingest-{digest}")
        await writer.write(data)
        await writer.commit(len(data), digest)
        return digest

    async def layer(self, data: bytes, media_type: str = MEDIA_TYPE_LAYER, **annotations: str) -> Descriptor:
        return Descriptor(media_type, await self.ingest(data), len(data), annotations)

    def directory_of(self, key_id: int) -> Path:
        return self.snapshotter.directory(key_id)


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    mkfs = mkfs_path()
    if mkfs is None:
        require_tool("mkfs.erofs")
        raise AssertionError("unreachable")
    md = open_metadata(tmp_path / "meta.db", content=MemoryContentStore())
    snapshotter = ErofsSnapshotter(tmp_path / "erofs", mkfs=mkfs)
    try:
        with namespace("default"):
            yield Env(md, ErofsDiffer(md.view(NamespacedContent), mkfs=mkfs), snapshotter, tmp_path)
    finally:
        await snapshotter.aclose()
        md.close()


async def snapshot_dir(env: Env, key: str) -> Path:
    snapshot_id, _, _ = await env.snapshotter.store.get_info(key)
    return env.snapshotter.directory(snapshot_id)


async def tree_of_view(env: Env, parent: str) -> dict[str, tuple[object, ...]]:
    await env.snapshotter.view(f"{parent}-view", parent)
    try:
        async with temporary_mount(await env.snapshotter.mounts(f"{parent}-view")) as root:
            found: dict[str, tuple[object, ...]] = {}
            for directory, dirs, files in os.walk(root):
                for name in dirs + files:
                    path = Path(directory, name)
                    st = path.lstat()
                    content = path.read_bytes() if stat.S_ISREG(st.st_mode) else b""
                    found[str(path.relative_to(root))] = (oct(st.st_mode), st.st_uid, content)
            return found
    finally:
        await env.snapshotter.remove(f"{parent}-view")


# -- passed on, or refused ------------------------------------------------------------------------


def test_media_types_ending_in_erofs_are_native() -> None:
    assert is_erofs_media_type(EROFS_NATIVE)
    assert not is_erofs_media_type(EROFS_NATIVE + "+zstd")
    assert not is_erofs_media_type(MEDIA_TYPE_LAYER_GZIP)


async def test_mounts_of_other_snapshotters_are_passed_on(env: Env) -> None:
    plain = env.tmp / "plain"
    plain.mkdir()
    desc = await env.layer(tar_of(("file", b"x", 0o644, 0)))
    with pytest.raises(Unimplemented, match="erofs-layer"):
        await env.differ.apply(desc, [Mount("bind", str(plain), ("rw", "rbind"))])
    with pytest.raises(Unimplemented, match="erofs-layer"):
        await env.differ.compare([], [Mount("bind", str(plain), ("rw", "rbind"))])
    assert not list(plain.iterdir())
    # The diff service then asks the next differ, which applies it.
    service = DiffService([env.differ, WalkingDiffer(env.md.view(NamespacedContent))])
    await service.apply(desc, [Mount("bind", str(plain), ("rw", "rbind"))])
    assert (plain / "file").read_bytes() == b"x"


async def test_an_unsupported_media_type_is_refused_not_passed_on(env: Env) -> None:
    mounts = await env.snapshotter.prepare("active")
    desc = await env.layer(b"{}", "application/vnd.oci.image.config.v1+json")
    with pytest.raises(InvalidArgument, match="currently unsupported media type"):
        await env.differ.apply(desc, mounts)
    assert not (await snapshot_dir(env, "active") / LAYER_BLOB).exists()


async def test_read_only_mounts_of_erofs_snapshots_are_refused(env: Env) -> None:
    desc = await env.layer(tar_of(("file", b"x", 0o644, 0)))
    view = await env.snapshotter.view("empty-view")
    with pytest.raises(InvalidArgument, match="read-only"):
        await env.differ.apply(desc, view)
    assert not (await snapshot_dir(env, "empty-view") / LAYER_BLOB).exists()


# -- layers as images -------------------------------------------------------------------------------


async def test_a_layer_becomes_the_snapshots_image_and_the_commit_keeps_it(env: Env) -> None:
    require_root()
    base = tar_of(
        ("etc/", None, 0o755, 0),
        ("etc/passwd", b"root:x:0:0::/root:/bin/sh\n", 0o644, 0),
        ("home/", None, 0o755, 0),
        ("home/user/", None, 0o700, 1000),
        ("home/user/gone", b"g", 0o600, 1000),
    )
    mounts = await env.snapshotter.prepare("base-active")
    desc = await env.layer(base)
    applied = await env.differ.apply(desc, mounts)
    assert applied == Descriptor(MEDIA_TYPE_LAYER, sha(base), len(base))
    directory = await snapshot_dir(env, "base-active")
    image = directory / LAYER_BLOB
    assert image.is_file() and not list((directory / "fs").iterdir()), (
        "the layer went into the upper directory"
    )
    superblock_uuid = image.read_bytes()[1024 + 48 : 1024 + 64]
    assert uuid.UUID(bytes=superblock_uuid) == uuid.UUID(layer_uuid(desc.digest))  # containerd's UUID
    before = image.stat().st_ino
    await env.snapshotter.commit("base", "base-active")
    assert image.stat().st_ino == before, "the commit made another image instead of keeping the differ's"

    child = tar_of(("home/user/.wh.gone", b"", 0o600, 0), ("home/user/new", b"n", 0o640, 1000))
    mounts = await env.snapshotter.prepare("child-active", "base")
    await env.differ.apply(await env.layer(child), mounts)
    await env.snapshotter.commit("child", "child-active")
    seen = await tree_of_view(env, "child")
    assert seen["home/user"][:2] == ("0o40700", 1000)
    assert seen["home/user/new"] == ("0o100640", 1000, b"n")
    assert "home/user/gone" not in seen
    assert seen["etc/passwd"][2].startswith(b"root:")


async def test_a_wrong_diff_id_is_refused_and_leaves_no_image(env: Env) -> None:
    mounts = await env.snapshotter.prepare("active")
    data = tar_of(("file", b"x", 0o644, 0))
    desc = await env.layer(data, **{UNCOMPRESSED: sha(b"something else")})
    with pytest.raises(FailedPrecondition, match="was expected"):
        await env.differ.apply(desc, mounts)
    directory = await snapshot_dir(env, "active")
    assert sorted(p.name for p in directory.iterdir()) == [".erofslayer", "fs", "work"]


async def test_a_native_erofs_layer_is_the_image_itself(env: Env) -> None:
    require_root()
    source = env.tmp / "source"
    source.mkdir()
    (source / "hello").write_bytes(b"from an erofs layer")
    built = env.tmp / "built.erofs"
    await anyio.run_process([env.differ.mkfs, "--quiet", str(built), str(source)])
    blob = built.read_bytes()
    desc = await env.layer(blob, EROFS_NATIVE)
    mounts = await env.snapshotter.prepare("active")
    assert await env.differ.apply(desc, mounts) == desc
    assert (await snapshot_dir(env, "active") / LAYER_BLOB).read_bytes() == blob
    await env.snapshotter.commit("native", "active")
    assert (await tree_of_view(env, "native"))["hello"][2] == b"from an erofs layer"


async def test_a_layer_mkfs_erofs_cannot_image_falls_back_and_stays_a_directory(env: Env) -> None:
    require_root()
    longest = "n" * 255
    probe = env.tmp / "probe"
    (probe / "src").mkdir(parents=True)
    (probe / "src" / longest).write_bytes(b"")
    made = await anyio.run_process(
        [env.differ.mkfs, "--quiet", str(probe / "o"), str(probe / "src")], check=False
    )
    refuses = made.returncode != 0
    if not refuses:
        pytest.skip("this mkfs.erofs encodes 255-byte names: there is nothing to fall back from")
    data = tar_of((longest, b"a name of 255 bytes", 0o644, 0))
    desc = await env.layer(data)
    mounts = await env.snapshotter.prepare("active")
    with pytest.raises(Unimplemented, match=r"mkfs\.erofs could not make the layer image"):
        await env.differ.apply(desc, mounts)
    service = DiffService([env.differ, WalkingDiffer(env.md.view(NamespacedContent))])
    assert (await service.apply(desc, mounts)).digest == sha(data)
    await env.snapshotter.commit("long", "active")
    directory = await snapshot_dir(env, "long")
    assert not (directory / LAYER_BLOB).exists() and (directory / ".directory-layer").exists()
    assert (await tree_of_view(env, "long"))[longest][2] == b"a name of 255 bytes"
    await env.snapshotter.prepare("on-long", "long")  # a directory layer is a lower like any other
    async with temporary_mount(await env.snapshotter.mounts("on-long")) as root:
        assert (root / longest).read_bytes() == b"a name of 255 bytes"


async def test_with_tar_input_the_uncompressed_stream_goes_to_mkfs_whole(env: Env) -> None:
    """erofs-utils 1.7 and later read the tar themselves; a stand-in mkfs.erofs records what it is
    given (and reads only the first block, as a real one stops at the end-of-archive marker)."""
    captured, args = env.tmp / "stdin", env.tmp / "argv"
    tool = env.tmp / "mkfs.erofs"
    tool.write_text(
        f'#!/bin/sh\necho "$@" > {args}\nhead -c 512 > {captured}\n'
        f'for last; do :; done\ncp {env.tmp / "image"} "$last"\n'
    )
    tool.chmod(0o755)
    (env.tmp / "image").write_bytes(b"an image")
    differ = ErofsDiffer(
        env.md.view(NamespacedContent), mkfs=str(tool), mkfs_options=("-zlz4",), tar_input=True
    )
    data = tar_of(("file", os.urandom(100_000), 0o644, 0))
    desc = await env.layer(gzip.compress(data), MEDIA_TYPE_LAYER_GZIP)
    mounts = await env.snapshotter.prepare("active")
    applied = await differ.apply(desc, mounts)
    assert applied == Descriptor(MEDIA_TYPE_LAYER, sha(data), len(data))  # digested to its end
    assert captured.read_bytes() == data[:512]
    blob = await snapshot_dir(env, "active") / LAYER_BLOB
    assert args.read_text().split() == [
        "--tar=f", "--aufs", "--quiet", "-Enoinline_data", "-zlz4", "-U", layer_uuid(desc.digest),
        str(blob.parent / "layer.erofs.new"),
    ]  # fmt: skip
    assert blob.read_bytes() == b"an image"


# -- the plugin -----------------------------------------------------------------------------------


async def start_differ(tmp_path: Path) -> tuple[Status, str]:
    config = DaemonConfig(root=str(tmp_path / "root"), state=str(tmp_path / "state"))
    candidates = [
        builtin_candidate(r) for r in (local_content, sqlite_metadata, erofs_differ_plugin.registration)
    ]
    async with Kernel(config, candidates=candidates).running() as kernel:
        record = kernel.get("io.containerd.differ.v1.erofs")
        assert record is not None
        return record.status, record.reason


async def test_the_plugin_is_skipped_without_mkfs_erofs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    status, reason = await start_differ(tmp_path)
    assert status is Status.SKIP
    assert "could not find mkfs.erofs" in reason


async def test_the_plugin_starts_where_mkfs_erofs_is(tmp_path: Path) -> None:
    if mkfs_path() is None:
        if tooling.ON_CI:
            pytest.fail("mkfs.erofs is not installed (Debian's erofs-utils)")
        pytest.skip("mkfs.erofs is not installed")
    status, reason = await start_differ(tmp_path)
    assert status is Status.OK, reason


async def test_one_layer_per_snapshot_and_nothing_beside_it(env: Env) -> None:
    first = await env.layer(tar_of(("first", b"1", 0o644, 0)))
    second = await env.layer(tar_of(("second", b"2", 0o644, 0)))
    mounts = await env.snapshotter.prepare("applied")
    await env.differ.apply(first, mounts)
    image = (await snapshot_dir(env, "applied")) / LAYER_BLOB
    before = image.read_bytes()
    with pytest.raises(FailedPrecondition, match="already holds an applied EROFS layer"):
        await env.differ.apply(second, mounts)
    assert image.read_bytes() == before

    (written,) = await env.snapshotter.prepare("written")
    (Path(written.source) / "by-a-container").write_bytes(b"x")  # a bind mount of the upper directory
    with pytest.raises(FailedPrecondition, match="already holds files"):
        await env.differ.apply(first, [written])
    assert not ((await snapshot_dir(env, "written")) / LAYER_BLOB).exists()

    # Files beside an applied image could not both be committed: the commit says so.
    (image.parent / "fs" / "late").write_bytes(b"late")
    with pytest.raises(FailedPrecondition, match="cannot both be committed"):
        await env.snapshotter.commit("applied-layer", "applied")
    assert (await env.snapshotter.stat("applied")).kind.name == "ACTIVE"


async def test_the_same_layer_may_be_applied_again(env: Env) -> None:
    layer = await env.layer(tar_of(("again", b"and again", 0o644, 0)))
    mounts = await env.snapshotter.prepare("repeated")
    first = await env.differ.apply(layer, mounts)
    assert await env.differ.apply(layer, mounts) == first  # an apply cut short is simply repeated


async def test_with_tar_input_a_failing_mkfs_passes_the_layer_on(env: Env) -> None:
    tool = env.tmp / "mkfs.erofs"
    tool.write_text("#!/bin/sh\necho 'erofs: unsupported tar header' >&2\nexit 1\n")
    tool.chmod(0o755)
    differ = ErofsDiffer(env.md.view(NamespacedContent), mkfs=str(tool), tar_input=True)
    desc = await env.layer(tar_of(("file", os.urandom(50_000), 0o644, 0)))
    mounts = await env.snapshotter.prepare("active")
    with pytest.raises(Unimplemented, match="unsupported tar header"):
        await differ.apply(desc, mounts)
    assert sorted(p.name for p in (await snapshot_dir(env, "active")).iterdir()) == [
        ".erofslayer",
        "fs",
        "work",
    ]
