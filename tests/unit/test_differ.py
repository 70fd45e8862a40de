"""The walking differ: applying layers of every media type and entry kind, whiteouts in both
modes, diffID checks, and compare → apply round trips, through the namespaced content store."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import os
import re
import shutil
import stat
import struct
import subprocess
import tarfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import anyio
import pytest
import zstandard
from tooling import require_root

from corral.kernel import (
    DaemonConfig,
    FailedPrecondition,
    InvalidArgument,
    Kernel,
    NotFound,
    Platform,
    Unimplemented,
    builtin_candidate,
)
from corral.plugins.content.local import registration as local_content
from corral.plugins.content.memory import MemoryContentStore
from corral.plugins.core import (
    MEDIA_TYPE_LAYER,
    MEDIA_TYPE_LAYER_GZIP,
    MEDIA_TYPE_LAYER_ZSTD,
    UNCOMPRESSED,
    Descriptor,
    Mount,
    namespace,
)
from corral.plugins.core.tar import encode_header, parse_number, parse_pax_records
from corral.plugins.differs import Differ
from corral.plugins.differs._compression import Compression, layer_compression
from corral.plugins.differs._tar import TarReader
from corral.plugins.differs._whiteouts import Kind, classify
from corral.plugins.differs.apply import WhiteoutMode, apply_layer
from corral.plugins.differs.differ import WalkingDiffer, readonly
from corral.plugins.differs.walking import registration as walking
from corral.plugins.metadata import NamespacedContent
from corral.plugins.metadata.sqlite import SqliteMetadata, open_metadata
from corral.plugins.metadata.sqlite import registration as sqlite_metadata
from corral.plugins.services.diff import DiffService

pytestmark = pytest.mark.anyio

DOCKER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
ROOT = os.geteuid() == 0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclass
class Env:
    md: SqliteMetadata
    differ: WalkingDiffer
    tmp: Path

    async def ingest(self, data: bytes, labels: dict[str, str] | None = None) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        writer = await self.md.view(NamespacedContent).writer(f"ingest-{digest}")
        await writer.write(data)
        await writer.commit(len(data), digest, labels)
        return digest

    async def blob(self, digest: str) -> bytes:
        return b"".join([chunk async for chunk in await self.md.view(NamespacedContent).read(digest)])

    def dir(self, name: str) -> Path:
        path = self.tmp / name
        path.mkdir(parents=True, exist_ok=True)
        return path


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    md = open_metadata(tmp_path / "meta.db", content=MemoryContentStore())
    try:
        with namespace("default"):
            yield Env(md, WalkingDiffer(md.view(NamespacedContent)), tmp_path)
    finally:
        md.close()


def bind(path: Path, *options: str) -> list[Mount]:
    return [Mount("bind", str(path), ("rbind", *(options or ("rw",))))]


# -- building layers ------------------------------------------------------------------------------


@dataclass
class M:
    """A layer member, for tarfile."""

    name: str
    kind: bytes = b""
    """Default: a directory when the name ends in "/", else a regular file."""
    data: bytes = b""
    mode: int = -1
    """Default: 0o755 for a directory, 0o644 for anything else."""
    uid: int = 0
    gid: int = 0
    mtime: int = 1_600_000_000
    link: str = ""
    dev: tuple[int, int] = (0, 0)
    pax: dict[str, str] = field(default_factory=dict)


def tar_of(*members: M, fmt: int = tarfile.PAX_FORMAT) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt) as tar:
        for m in members:
            info = tarfile.TarInfo(m.name)
            kind = m.kind or (tarfile.DIRTYPE if m.name.endswith("/") else tarfile.REGTYPE)
            mode = m.mode if m.mode >= 0 else 0o755 if kind == tarfile.DIRTYPE else 0o644
            info.type, info.mode, info.uid, info.gid, info.mtime = kind, mode, m.uid, m.gid, m.mtime
            info.linkname, info.size = m.link, len(m.data)
            info.devmajor, info.devminor = m.dev
            info.pax_headers = dict(m.pax)
            tar.addfile(info, io.BytesIO(m.data) if m.data else None)
    return out.getvalue()


def compress(data: bytes, media_type: str) -> bytes:
    kind = layer_compression(media_type)
    if kind is Compression.GZIP:
        return gzip.compress(data, mtime=0)
    if kind is Compression.ZSTD:
        return zstandard.ZstdCompressor().compress(data)
    return data


async def apply(env: Env, target: Path, *members: M, media_type: str = MEDIA_TYPE_LAYER) -> Descriptor:
    raw = tar_of(*members)
    blob = compress(raw, media_type)
    desc = Descriptor(media_type, await env.ingest(blob), len(blob))
    return await env.differ.apply(desc, bind(target))


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# -- observing trees ------------------------------------------------------------------------------


def xattrs(path: Path) -> dict[str, bytes]:
    """The xattrs a diff carries, as containerd's: file capabilities only."""
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    return {n: os.getxattr(path, n, follow_symlinks=False) for n in names if n == "security.capability"}


CAP_NET_BIND_SERVICE = struct.pack("<5I", 0x02000001, 1 << 10, 0, 0, 0)
"""A version 2 ``security.capability`` value: effective, permitted cap_net_bind_service."""


def tree(root: Path) -> dict[str, tuple[object, ...]]:
    """Everything a layer can carry, per path: type and mode, owner, size, mtime (s), content,
    link target, device, xattrs, and which hard-link group it belongs to."""
    out: dict[str, tuple[object, ...]] = {}
    first_name: dict[int, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted([*dirnames, *filenames]):
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            st = path.lstat()
            content: object = None
            if stat.S_ISREG(st.st_mode):
                content = hashlib.sha256(path.read_bytes()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                content = os.readlink(path)
            group = first_name.setdefault(st.st_ino, rel) if not stat.S_ISDIR(st.st_mode) else rel
            out[rel] = (
                st.st_mode,
                st.st_uid,
                st.st_gid,
                st.st_size if not stat.S_ISDIR(st.st_mode) else 0,
                st.st_mtime_ns // 1_000_000_000,
                content,
                st.st_rdev,
                xattrs(path),
                group,
            )
    return out


# -- pure protocol pieces -------------------------------------------------------------------------


def test_numbers_are_octal_or_base_256() -> None:
    assert parse_number(b"0000644\0") == 0o644
    assert parse_number(b"   644 \0") == 0o644
    assert parse_number(b"\0" * 8) == 0
    assert parse_number(b"\x80" + (2**40).to_bytes(11, "big")) == 2**40
    with pytest.raises(InvalidArgument):
        parse_number(b"12x4\0")


def test_pax_records_carry_binary_values_and_later_records_win() -> None:
    data = b"21 SCHILY.xattr.a=\x00\xff\n" + b"11 path=ab\n" + b"11 path=cd\n"
    assert parse_pax_records(data) == {b"SCHILY.xattr.a": b"\x00\xff", b"path": b"cd"}
    with pytest.raises(InvalidArgument):
        parse_pax_records(b"99 path=x\n")


def test_headers_written_here_read_back_through_tarfile_and_our_reader() -> None:
    long_name = b"d" * 120 + b"/" + "ü".encode() * 60
    stream = (
        encode_header(
            b"short", b"0", mode=0o4755, uid=3_000_000, size=2, mtime=7, xattrs={b"user.k": b"\xff"}
        )
        + b"hi".ljust(512, b"\0")
        + encode_header(long_name, b"2", linkname=b"t" * 150)
        + bytes(1024)
    )
    with tarfile.open(fileobj=io.BytesIO(stream)) as archive:
        infos = archive.getmembers()
    assert [(i.name, i.mode, i.uid, i.mtime) for i in infos[:1]] == [("short", 0o4755, 3_000_000, 7)]
    assert infos[1].name == long_name.decode() and infos[1].linkname == "t" * 150
    reader = TarReader(io.BytesIO(stream))
    first = reader.next()
    assert first is not None and first.xattrs == {b"user.k": b"\xff"} and first.uid == 3_000_000
    second = reader.next()
    assert second is not None and second.name == long_name and reader.next() is None


def test_header_only_members_carry_no_data_whatever_their_size_says() -> None:
    stream = (
        encode_header(b"f", b"0", size=3)
        + b"abc".ljust(512, b"\0")
        + encode_header(b"h", b"1", size=3, linkname=b"f")
        + encode_header(b"d/", b"5", size=1024)
        + encode_header(b"last", b"0")
        + bytes(1024)
    )
    reader = TarReader(io.BytesIO(stream))
    names = []
    while (entry := reader.next()) is not None:
        names.append((entry.name, entry.size))
    assert names == [(b"f", 3), (b"h", 0), (b"d/", 0), (b"last", 0)]


@pytest.mark.parametrize(
    ("base", "expected"),
    [
        (b"file", (Kind.ENTRY, b"file")),
        (b".wh.file", (Kind.WHITEOUT, b"file")),
        (b".wh..wh..opq", (Kind.OPAQUE, b"")),
        (b".wh..wh.plnk", (Kind.META, b"")),
        (b".wh..hidden", (Kind.WHITEOUT, b".hidden")),
    ],
)
def test_whiteout_names(base: bytes, expected: tuple[Kind, bytes]) -> None:
    assert classify(base) == expected


@pytest.mark.parametrize(
    ("media_type", "compression"),
    [
        (MEDIA_TYPE_LAYER, Compression.NONE),
        (MEDIA_TYPE_LAYER_GZIP, Compression.GZIP),
        (MEDIA_TYPE_LAYER_ZSTD, Compression.ZSTD),
        (DOCKER_GZIP, Compression.GZIP),
        ("application/vnd.docker.image.rootfs.foreign.diff.tar.gzip", Compression.GZIP),
        ("application/vnd.oci.image.layer.nondistributable.v1.tar+gzip", Compression.GZIP),
    ],
)
def test_media_types_name_their_compression(media_type: str, compression: Compression) -> None:
    assert layer_compression(media_type) is compression


# -- apply ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "media_type",
    [
        MEDIA_TYPE_LAYER,
        MEDIA_TYPE_LAYER_GZIP,
        MEDIA_TYPE_LAYER_ZSTD,
        DOCKER_GZIP,
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    ],
)
async def test_apply_decompresses_each_media_type_and_returns_the_diff_id(env: Env, media_type: str) -> None:
    members = [M("etc/"), M("etc/hostname", data=b"box\n" * 1000), M("bin/sh", data=os.urandom(70_000))]
    raw = tar_of(*members)
    applied = await apply(env, env.dir("t"), *members, media_type=media_type)
    assert applied == Descriptor(MEDIA_TYPE_LAYER, sha(raw), len(raw))
    assert (env.tmp / "t/etc/hostname").read_bytes() == b"box\n" * 1000


async def test_multi_member_gzip_and_trailing_bytes_count_towards_the_diff_id(env: Env) -> None:
    raw = tar_of(M("a", data=b"1" * 3000)) + b"\0" * 4096
    blob = gzip.compress(raw[:1000], mtime=0) + gzip.compress(raw[1000:], mtime=0)
    desc = Descriptor(MEDIA_TYPE_LAYER_GZIP, await env.ingest(blob), len(blob))
    assert (await env.differ.apply(desc, bind(env.dir("t")))).digest == sha(raw)


@pytest.mark.parametrize(
    "media_type",
    ["application/vnd.oci.image.layer.v1.tar+lz4", "application/vnd.oci.image.config.v1+json", "text/plain"],
)
async def test_apply_refuses_what_is_not_a_layer_naming_it(env: Env, media_type: str) -> None:
    desc = Descriptor(media_type, await env.ingest(b"x"), 1)
    with pytest.raises(Unimplemented, match=media_type.replace("+", r"\+")):
        await env.differ.apply(desc, bind(env.dir("t")))


async def test_corrupt_compressed_data_is_invalid_argument(env: Env) -> None:
    blob = gzip.compress(tar_of(M("a", data=b"x" * 10_000)))
    blob = blob[:20] + bytes(b ^ 0x55 for b in blob[20:40]) + blob[40:]
    desc = Descriptor(MEDIA_TYPE_LAYER_GZIP, await env.ingest(blob), len(blob))
    with pytest.raises(InvalidArgument, match="gzip"):
        await env.differ.apply(desc, bind(env.dir("t")))


async def test_apply_needs_the_blob_and_a_writable_target(env: Env) -> None:
    with pytest.raises(NotFound):
        await env.differ.apply(Descriptor(MEDIA_TYPE_LAYER, sha(b"nope"), 4), bind(env.dir("t")))
    desc = Descriptor(MEDIA_TYPE_LAYER, await env.ingest(tar_of(M("a"))), 0)
    with pytest.raises(InvalidArgument, match="read-only"):
        await env.differ.apply(desc, bind(env.dir("t"), "ro"))
    with pytest.raises(InvalidArgument, match="upperdir"):
        await env.differ.apply(desc, [Mount("overlay", "overlay", ("lowerdir=/a:/b",))])
    with pytest.raises(InvalidArgument, match="no mounts"):
        await env.differ.apply(desc, [])


async def test_the_uncompressed_digest_promised_is_checked(env: Env) -> None:
    raw = tar_of(M("a", data=b"a"))
    blob = gzip.compress(raw)
    digest = await env.ingest(blob)
    good = Descriptor(MEDIA_TYPE_LAYER_GZIP, digest, len(blob), {UNCOMPRESSED: sha(raw)})
    assert (await env.differ.apply(good, bind(env.dir("t1")))).digest == sha(raw)
    bad = dataclasses.replace(good, annotations={UNCOMPRESSED: sha(b"other")})
    with pytest.raises(FailedPrecondition, match="expected"):
        await env.differ.apply(bad, bind(env.dir("t2")))


async def test_the_content_label_for_the_uncompressed_digest_is_checked_too(env: Env) -> None:
    raw = tar_of(M("a", data=b"a"))
    blob = gzip.compress(raw)
    digest = await env.ingest(blob, labels={UNCOMPRESSED: sha(b"a lie")})
    with pytest.raises(FailedPrecondition):
        await env.differ.apply(Descriptor(MEDIA_TYPE_LAYER_GZIP, digest, len(blob)), bind(env.dir("t")))


async def test_each_entry_kind_with_modes_times_links_and_xattrs(env: Env) -> None:
    target = env.dir("t")
    await apply(
        env,
        target,
        M("dir/", tarfile.DIRTYPE, mode=0o1777, mtime=1_000),
        M("dir/setuid", data=b"#!", mode=0o4755, mtime=2_000, pax={"SCHILY.xattr.user.note": "hi"}),
        M("dir/setgid", data=b"", mode=0o2750),
        M("dir/readonly", data=b"ro", mode=0o400),
        M("dir/link", tarfile.SYMTYPE, link="../elsewhere", mtime=3_000),
        M("dir/hard", tarfile.LNKTYPE, link="dir/setuid"),
        M("dir/fifo", tarfile.FIFOTYPE, mode=0o640),
        M("locked/", tarfile.DIRTYPE, mode=0o500),
        M("locked/inside", data=b"x"),
        M("p/" + "n" * 150 + "/" + "f" * 120, data=b"long"),
    )
    st = (target / "dir").lstat()
    assert stat.S_IMODE(st.st_mode) == 0o1777 and st.st_mtime == 1_000  # set after its contents
    setuid = (target / "dir/setuid").lstat()
    assert stat.S_IMODE(setuid.st_mode) == 0o4755 and setuid.st_mtime == 2_000 and setuid.st_nlink == 2
    assert os.getxattr(target / "dir/setuid", "user.note") == b"hi"
    assert (target / "dir/hard").lstat().st_ino == setuid.st_ino
    assert stat.S_IMODE((target / "dir/setgid").lstat().st_mode) == 0o2750
    assert stat.S_IMODE((target / "dir/readonly").lstat().st_mode) == 0o400
    assert os.readlink(target / "dir/link") == "../elsewhere"
    assert (target / "dir/link").lstat().st_mtime == 3_000
    assert stat.S_ISFIFO((target / "dir/fifo").lstat().st_mode)
    assert stat.S_IMODE((target / "locked").lstat().st_mode) == 0o500
    assert (target / "locked/inside").read_bytes() == b"x"
    assert (target / ("p/" + "n" * 150 + "/" + "f" * 120)).read_bytes() == b"long"


async def test_gnu_long_names_and_links(env: Env) -> None:
    target = env.dir("t")
    name = "g" * 200
    raw = tar_of(M(name, data=b"gnu"), M("l", tarfile.SYMTYPE, link="t" * 300), fmt=tarfile.GNU_FORMAT)
    desc = Descriptor(MEDIA_TYPE_LAYER, await env.ingest(raw), len(raw))
    await env.differ.apply(desc, bind(target))
    assert (target / name).read_bytes() == b"gnu"
    assert os.readlink(target / "l") == "t" * 300


async def test_owners_devices_and_trusted_xattrs_as_root(env: Env) -> None:
    require_root()
    target = env.dir("t")
    await apply(
        env,
        target,
        M("owned/", tarfile.DIRTYPE, uid=1000, gid=1001, mode=0o2775),
        M("owned/file", data=b"x", uid=1234, gid=5678, mode=0o4711),
        M("owned/link", tarfile.SYMTYPE, link="file", uid=42, gid=43),
        M("owned/plain", data=b"inherits the setgid group unless told"),
        M("dev/null", tarfile.CHRTYPE, mode=0o666, dev=(1, 3)),
        M("dev/loop0", tarfile.BLKTYPE, mode=0o660, dev=(7, 0), gid=6),
        M("cap", data=b"", pax={"SCHILY.xattr.trusted.x": "y"}),
    )
    st = (target / "owned/file").lstat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1234, 5678, 0o4711)
    assert (target / "owned").lstat().st_uid == 1000
    assert ((target / "owned/link").lstat().st_uid, (target / "owned/link").lstat().st_gid) == (42, 43)
    assert (target / "owned/plain").lstat().st_gid == 0
    null = (target / "dev/null").lstat()
    assert stat.S_ISCHR(null.st_mode) and null.st_rdev == os.makedev(1, 3)
    assert stat.S_IMODE(null.st_mode) == 0o666
    loop = (target / "dev/loop0").lstat()
    assert stat.S_ISBLK(loop.st_mode) and loop.st_rdev == os.makedev(7, 0) and loop.st_gid == 6
    assert os.getxattr(target / "cap", "trusted.x") == b"y"


async def test_hard_links_reach_files_of_earlier_layers(env: Env) -> None:
    target = env.dir("t")
    await apply(env, target, M("usr/bin/python3.11", data=b"elf"))
    await apply(env, target, M("usr/bin/python3", tarfile.LNKTYPE, link="usr/bin/python3.11"))
    assert (target / "usr/bin/python3").stat().st_ino == (target / "usr/bin/python3.11").stat().st_ino


async def test_whiteouts_remove_files_and_directories_in_a_plain_directory(env: Env) -> None:
    target = env.dir("t")
    await apply(env, target, M("a", data=b"a"), M("d/"), M("d/x"), M("d/sub/y"), M("keep"))
    await apply(env, target, M(".wh.a"), M(".wh.d"), M(".wh.never-was"))
    assert sorted(p.name for p in target.iterdir()) == ["keep"]


async def test_an_opaque_directory_keeps_only_what_its_own_layer_adds(env: Env) -> None:
    target = env.dir("t")
    await apply(env, target, M("d/"), M("d/old"), M("d/sub/old"), M("d/sub2/"), M("other/x"))
    await apply(
        env, target, M("d/"), M("d/new1"), M("d/sub/"), M("d/.wh..wh..opq"), M("d/new2"), M("d/sub/fresh")
    )
    assert sorted(str(p.relative_to(target)) for p in target.rglob("*")) == [
        "d",
        "d/new1",
        "d/new2",
        "d/sub",
        "d/sub/fresh",
        "other",
        "other/x",
    ]


async def test_a_top_level_opaque_marker_empties_the_root_of_what_the_layer_does_not_add(env: Env) -> None:
    target = env.dir("t")
    await apply(env, target, M("old"), M("d/"), M("d/x"), M(".hidden"))
    await apply(env, target, M("new"), M(".wh..wh..opq"), M("d/"), M("d/y"))
    assert sorted(str(p.relative_to(target)) for p in target.rglob("*")) == ["d", "d/y", "new"]


async def test_a_top_level_opaque_marker_makes_the_overlay_upper_root_opaque(env: Env) -> None:
    require_root()
    lower, upper, work = env.dir("lower"), env.dir("upper"), env.dir("work")
    (lower / "old").write_text("o")
    raw = tar_of(M(".wh..wh..opq"), M("new", data=b"n"))
    desc = Descriptor(MEDIA_TYPE_LAYER, await env.ingest(raw), len(raw))
    mount = Mount("overlay", "overlay", (f"workdir={work}", f"upperdir={upper}", f"lowerdir={lower}"))
    await env.differ.apply(desc, [mount])
    assert os.getxattr(upper, "trusted.overlay.opaque") == b"y"
    assert sorted(p.name for p in upper.iterdir()) == ["new"]


async def test_overlay_upper_directory_gets_overlay_whiteouts(env: Env) -> None:
    require_root()
    lower, upper, work = env.dir("lower"), env.dir("upper"), env.dir("work")
    (lower / "etc/conf.d").mkdir(parents=True)
    (lower / "etc/conf.d/x").write_text("x")
    (lower / "etc/old").write_text("o")
    os.chown(lower / "etc", 7, 8)
    (lower / "etc").chmod(0o750)
    os.utime(lower / "etc", (5_000, 5_000))
    raw = tar_of(M("etc/.wh.old"), M("etc/conf.d/.wh..wh..opq"), M("etc/conf.d/y", data=b"y"))
    desc = Descriptor(MEDIA_TYPE_LAYER, await env.ingest(raw), len(raw))
    mounts = [
        Mount(
            "overlay", "overlay", ("index=off", f"workdir={work}", f"upperdir={upper}", f"lowerdir={lower}")
        )
    ]
    assert (await env.differ.apply(desc, mounts)).digest == sha(raw)
    old = (upper / "etc/old").lstat()
    assert stat.S_ISCHR(old.st_mode) and old.st_rdev == 0
    assert os.getxattr(upper / "etc/conf.d", "trusted.overlay.opaque") == b"y"
    # Parents the layer needed were made with the attributes they have below.
    etc = (upper / "etc").lstat()
    assert (etc.st_uid, etc.st_gid, stat.S_IMODE(etc.st_mode)) == (7, 8, 0o750)
    async with mounted(mounts[0], env.dir("merged")) as merged:
        assert sorted(p.name for p in (merged / "etc").iterdir()) == ["conf.d"]
        assert sorted(p.name for p in (merged / "etc/conf.d").iterdir()) == ["y"]


async def test_a_hard_link_to_a_lower_layer_file_copies_it_up_into_the_upper_directory(env: Env) -> None:
    require_root()
    lower, upper, work = env.dir("lower"), env.dir("upper"), env.dir("work")
    (lower / "usr/bin").mkdir(parents=True)
    (lower / "usr/bin/python3.11").write_bytes(b"\x7fELF python")
    os.chown(lower / "usr/bin/python3.11", 0, 50)
    (lower / "usr/bin/python3.11").chmod(0o755)
    raw = tar_of(M("usr/bin/python3", tarfile.LNKTYPE, link="usr/bin/python3.11"))
    desc = Descriptor(MEDIA_TYPE_LAYER, await env.ingest(raw), len(raw))
    mount = Mount("overlay", "overlay", (f"workdir={work}", f"upperdir={upper}", f"lowerdir={lower}"))
    await env.differ.apply(desc, [mount])
    copied, link = (upper / "usr/bin/python3.11").lstat(), (upper / "usr/bin/python3").lstat()
    assert copied.st_ino == link.st_ino and copied.st_nlink == 2
    assert (copied.st_gid, stat.S_IMODE(copied.st_mode)) == (50, 0o755)
    assert (upper / "usr/bin/python3").read_bytes() == b"\x7fELF python"
    assert (lower / "usr/bin/python3.11").stat().st_nlink == 1  # the lower layer is untouched


async def test_anything_else_is_applied_through_a_temporary_mount(env: Env) -> None:
    require_root()
    below, above = env.dir("below"), env.dir("above")
    raw = tar_of(M("through-mount", data=b"m"))
    desc = Descriptor(MEDIA_TYPE_LAYER, await env.ingest(raw), len(raw))
    # Two mounts stacked: only a real mount shows the top one, so this takes the mounting path.
    await env.differ.apply(
        desc, [Mount("bind", str(below), ("rbind",)), Mount("bind", str(above), ("rbind",))]
    )
    assert (above / "through-mount").read_bytes() == b"m"
    assert not (below / "through-mount").exists()


# -- compare --------------------------------------------------------------------------------------


def populate_lower(root: Path) -> None:
    (root / "etc").mkdir()
    (root / "etc/passwd").write_text("root:x:0:0\n")
    (root / "etc/gone").write_text("bye")
    (root / "etc/dir-gone/deep").mkdir(parents=True)
    (root / "etc/dir-gone/deep/f").write_text("f")
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/tool").write_bytes(b"\x7fELF" + os.urandom(5000))
    os.link(root / "usr/bin/tool", root / "usr/bin/tool-alias")
    os.symlink("tool", root / "usr/bin/link")
    (root / "var/cache").mkdir(parents=True)
    (root / "var/cache/old").write_text("stale")
    (root / "becomes-dir").write_text("file")
    (root / "becomes-file").mkdir()
    (root / "becomes-file/child").write_text("c")
    os.setxattr(root / "etc/passwd", "user.origin", b"lower")


def mutate_upper(root: Path) -> None:
    (root / "etc/passwd").write_text("root:x:0:0\nuser:x:1000:1000\n")
    (root / "etc/gone").unlink()
    shutil.rmtree(root / "etc/dir-gone")
    (root / "etc/new.d/nested").mkdir(parents=True)
    (root / "etc/new.d/nested/conf").write_text("c")
    (root / "etc/new.d/nested/conf").chmod(0o4751)
    os.setxattr(root / "etc/new.d/nested/conf", "user.tag", b"\x00binary\xff")
    os.link(root / "etc/new.d/nested/conf", root / "etc/new.d/alias")
    os.symlink("/usr/bin/tool", root / "etc/new.d/abs-link")
    os.mkfifo(root / "etc/new.d/fifo", 0o600)
    (root / "usr/bin/link").unlink()
    os.symlink("tool-alias", root / "usr/bin/link")
    (root / "var/cache").chmod(0o700)
    (root / "becomes-dir").unlink()
    (root / "becomes-dir").mkdir()
    (root / "becomes-dir/inside").write_text("i")
    shutil.rmtree(root / "becomes-file")
    (root / "becomes-file").write_text("now a file")
    os.setxattr(root / "usr/bin/tool", "user.origin", b"changed")  # not a change to containerd
    (root / "usr/bin/tool").chmod(0o750)


def mutate_upper_as_root(root: Path) -> None:
    os.chown(root / "etc/passwd", 0, 42)
    os.mknod(root / "etc/new.d/null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.chown(root / "etc/new.d", 1000, 1000)
    os.setxattr(root / "etc/new.d/nested/conf", "security.capability", CAP_NET_BIND_SERVICE)


def copy_tree(src: Path, dst: Path) -> None:
    subprocess.run(["cp", "-a", f"{src}/.", str(dst)], check=True)


@pytest.fixture
def trees(env: Env) -> tuple[Path, Path]:
    lower, upper = env.dir("lower"), env.dir("upper")
    populate_lower(lower)
    copy_tree(lower, upper)
    mutate_upper(upper)
    if ROOT:
        mutate_upper_as_root(upper)
    return lower, upper


def members(layer: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(layer)) as archive:
        return archive.getnames()


async def test_compare_then_apply_on_the_same_parent_reproduces_the_upper_tree(
    env: Env, trees: tuple[Path, Path]
) -> None:
    lower, upper = trees
    desc = await env.differ.compare(bind(lower, "ro"), bind(upper))
    assert desc.media_type == MEDIA_TYPE_LAYER_GZIP
    blob = await env.blob(desc.digest)
    assert (desc.size, desc.digest) == (len(blob), sha(blob))
    raw = gzip.decompress(blob)
    names = members(raw)
    assert "etc/.wh.gone" in names and "etc/.wh.dir-gone" in names
    assert "var/cache/old" not in names  # unchanged, though its directory changed
    # The mode changed on the inode both names share: the second name is a link to the first.
    with tarfile.open(fileobj=io.BytesIO(raw)) as archive:
        alias = archive.getmember("usr/bin/tool-alias")
    assert alias.islnk() and alias.linkname == "usr/bin/tool"
    target = env.dir("target")
    copy_tree(lower, target)
    applied = await env.differ.apply(desc, bind(target))
    assert applied.digest == sha(raw)
    assert tree(target) == tree(upper)


async def test_an_unchanged_name_of_an_inode_linked_anew_goes_in_as_a_hard_link(env: Env) -> None:
    lower, upper = env.dir("lower"), env.dir("upper")
    (lower / "a").write_bytes(b"shared")
    copy_tree(lower, upper)
    os.link(upper / "a", upper / "b")
    desc = await env.differ.compare(bind(lower), bind(upper), media_type=MEDIA_TYPE_LAYER)
    with tarfile.open(fileobj=io.BytesIO(await env.blob(desc.digest))) as archive:
        entries = {m.name: m for m in archive.getmembers()}
    # containerd: "a" is unmodified, but its inode's new name "b" carries it, so "a" links to "b".
    assert sorted(entries) == ["a", "b"]
    assert entries["b"].isfile() and entries["a"].islnk() and entries["a"].linkname == "b"
    target = env.dir("target")
    copy_tree(lower, target)
    await env.differ.apply(desc, bind(target))
    assert (target / "a").stat().st_ino == (target / "b").stat().st_ino
    assert tree(target) == tree(upper)


async def test_a_diff_carries_file_capabilities_and_no_other_xattr(env: Env) -> None:
    require_root()
    lower, upper = env.dir("lower"), env.dir("upper")
    (upper / "ping").write_bytes(b"\x7fELF")
    os.setxattr(upper / "ping", "security.capability", CAP_NET_BIND_SERVICE)
    os.setxattr(upper / "ping", "user.note", b"host-local")
    os.setxattr(upper / "ping", "trusted.note", b"host-local")
    desc = await env.differ.compare(bind(lower), bind(upper), media_type=MEDIA_TYPE_LAYER)
    with tarfile.open(fileobj=io.BytesIO(await env.blob(desc.digest))) as archive:
        ping = archive.getmember("ping")
    assert {k: v for k, v in ping.pax_headers.items() if k.startswith("SCHILY.xattr.")} == {
        "SCHILY.xattr.security.capability": CAP_NET_BIND_SERVICE.decode("utf-8", "surrogateescape")
    }
    # A capability changed is a change (continuity compares it); other xattrs are not.
    copy_tree(upper, lower)
    os.setxattr(upper / "ping", "user.note", b"changed")
    unchanged = await env.differ.compare(bind(lower), bind(upper), media_type=MEDIA_TYPE_LAYER)
    assert members(await env.blob(unchanged.digest)) == []
    os.setxattr(upper / "ping", "security.capability", struct.pack("<5I", 0x02000001, 1 << 13, 0, 0, 0))
    changed = await env.differ.compare(bind(lower), bind(upper), media_type=MEDIA_TYPE_LAYER)
    assert members(await env.blob(changed.digest)) == ["ping"]


async def test_whiteouts_are_empty_files_owned_by_root_at_the_epoch(
    env: Env, trees: tuple[Path, Path]
) -> None:
    lower, upper = trees
    desc = await env.differ.compare(bind(lower), bind(upper), media_type=MEDIA_TYPE_LAYER)
    with tarfile.open(fileobj=io.BytesIO(await env.blob(desc.digest))) as archive:
        gone = archive.getmember("etc/.wh.gone")
    assert (gone.type, gone.size, gone.mode, gone.uid, gone.gid, gone.mtime) == (
        tarfile.REGTYPE,
        0,
        0,
        0,
        0,
        0,
    )
    assert (gone.uname, gone.gname) == ("", "")


async def test_compare_labels_the_blob_with_its_diff_id_and_the_callers_labels(
    env: Env, trees: tuple[Path, Path]
) -> None:
    lower, upper = trees
    desc = await env.differ.compare(bind(lower), bind(upper), ref="my-ref", labels={"a": "b"})
    info = await env.md.view(NamespacedContent).info(desc.digest)
    assert info.labels == {"a": "b", UNCOMPRESSED: sha(gzip.decompress(await env.blob(desc.digest)))}
    assert await env.md.view(NamespacedContent).list_statuses() == []
    again = await env.differ.compare(bind(lower), bind(upper), ref="my-ref")
    assert again == desc  # deterministic, and a layer the namespace already has is no error


@pytest.mark.parametrize(
    ("media_type", "magic"),
    [
        ("", b"\x1f\x8b"),
        (MEDIA_TYPE_LAYER_GZIP, b"\x1f\x8b"),
        (MEDIA_TYPE_LAYER_ZSTD, b"\x28\xb5\x2f\xfd"),
        (MEDIA_TYPE_LAYER, b""),
    ],
)
async def test_compare_compresses_as_asked(
    env: Env, trees: tuple[Path, Path], media_type: str, magic: bytes
) -> None:
    lower, upper = trees
    desc = await env.differ.compare(bind(lower), bind(upper), media_type=media_type)
    assert desc.media_type == (media_type or MEDIA_TYPE_LAYER_GZIP)
    blob = await env.blob(desc.digest)
    assert blob.startswith(magic)
    if media_type == MEDIA_TYPE_LAYER:
        assert blob[257:263] == b"ustar\0"
    target = env.dir("target")
    copy_tree(lower, target)
    await env.differ.apply(desc, bind(target))
    assert tree(target) == tree(upper)


@pytest.mark.parametrize(
    "media_type",
    ["application/x-tar+lz4", DOCKER_GZIP, "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"],
)
async def test_compare_refuses_what_containerd_does_not_write(
    env: Env, trees: tuple[Path, Path], media_type: str
) -> None:
    lower, upper = trees
    with pytest.raises(Unimplemented, match=re.escape(f"unsupported diff media type: {media_type}")):
        await env.differ.compare(bind(lower), bind(upper), media_type=media_type)
    assert await env.md.view(NamespacedContent).list_statuses() == []


async def test_an_uncompressed_diff_is_not_labelled_with_its_own_digest(
    env: Env, trees: tuple[Path, Path]
) -> None:
    lower, upper = trees
    desc = await env.differ.compare(bind(lower), bind(upper), media_type=MEDIA_TYPE_LAYER, labels={"a": "b"})
    info = await env.md.view(NamespacedContent).info(desc.digest)
    assert info.labels == {"a": "b"}  # containerd labels only compressed layers with the diffID


async def test_a_callers_ref_is_written_from_the_start_whatever_it_held(
    env: Env, trees: tuple[Path, Path]
) -> None:
    lower, upper = trees
    stale = await env.md.view(NamespacedContent).writer("my-ref")
    await stale.write(b"left over by an earlier attempt")
    await stale.close()
    desc = await env.differ.compare(bind(lower), bind(upper), ref="my-ref", media_type=MEDIA_TYPE_LAYER)
    blob = await env.blob(desc.digest)
    assert blob[257:263] == b"ustar\0" and desc.digest == sha(blob)


async def test_compare_against_nothing_adds_everything(env: Env, trees: tuple[Path, Path]) -> None:
    _, upper = trees
    desc = await env.differ.compare([], bind(upper), media_type=MEDIA_TYPE_LAYER)
    target = env.dir("target")
    await env.differ.apply(desc, bind(target))
    assert tree(target) == tree(upper)


def overlay(lowers: list[Path], upper: Path, work: Path) -> Mount:
    lowerdir = ":".join(str(p) for p in lowers)
    return Mount(
        "overlay", "overlay", ("index=off", f"workdir={work}", f"upperdir={upper}", f"lowerdir={lowerdir}")
    )


@asynccontextmanager
async def mounted(m: Mount, where: Path) -> AsyncIterator[Path]:
    await anyio.run_process(["mount", "-t", m.type, m.source, "-o", ",".join(m.options), str(where)])
    try:
        yield where
    finally:
        await anyio.run_process(["umount", str(where)])


async def test_compare_reads_an_overlay_upper_directory_and_apply_reproduces_the_merged_view(
    env: Env,
) -> None:
    require_root()
    lower, upper, work = env.dir("lower"), env.dir("upper"), env.dir("work")
    populate_lower(lower)
    snapshot = overlay([lower], upper, work)
    async with mounted(snapshot, env.dir("merged")) as merged:
        mutate_upper(merged)
        mutate_upper_as_root(merged)
        (merged / "var/cache/old").unlink()
        shutil.rmtree(merged / "var/cache")
        (merged / "var/cache").mkdir()  # overlayfs marks the new directory opaque
        (merged / "var/cache/fresh").write_text("new")
        expected = tree(merged)
    assert os.getxattr(upper / "var/cache", "trusted.overlay.opaque") == b"y"
    desc = await env.differ.compare(bind(lower, "ro"), [snapshot], media_type=MEDIA_TYPE_LAYER)
    names = members(await env.blob(desc.digest))
    assert "var/cache/.wh..wh..opq" in names and "etc/.wh.gone" in names
    # Only the upper directory was read: the unchanged lower files are not in the layer.
    assert "usr/bin/tool-alias" not in names and "etc/passwd" in names

    plain = env.dir("plain")
    copy_tree(lower, plain)
    await env.differ.apply(desc, bind(plain))
    assert tree(plain) == expected

    upper2, work2 = env.dir("upper2"), env.dir("work2")
    await env.differ.apply(desc, [overlay([lower], upper2, work2)])
    async with mounted(overlay([lower], upper2, work2), env.dir("merged2")) as merged2:
        assert tree(merged2) == expected


async def test_compare_mounts_what_it_cannot_read_directly(env: Env, trees: tuple[Path, Path]) -> None:
    require_root()
    lower, upper = trees
    # An overlay whose lowers are not the lower mount: both sides are mounted read-only and walked.
    empty, work = env.dir("empty-upper"), env.dir("work")
    desc = await env.differ.compare(bind(lower), [overlay([upper], empty, work)], media_type=MEDIA_TYPE_LAYER)
    target = env.dir("target")
    copy_tree(lower, target)
    await env.differ.apply(desc, bind(target))
    assert tree(target) == tree(upper)
    assert list(empty.iterdir()) == []  # mounted read-only: the upper directory saw no write


def test_read_only_versions_of_mounts_follow_containerd() -> None:
    ro = readonly(
        [overlay([Path("/l1"), Path("/l2")], Path("/u"), Path("/w")), Mount("bind", "/b", ("rw", "rbind"))]
    )
    assert ro[0].options == ("index=off", "lowerdir=/u:/l1:/l2")
    assert ro[1].options == ("rbind", "ro")


# -- the plugin -----------------------------------------------------------------------------------


async def test_the_plugin_serves_the_host_platform_over_the_metadata_content_store(tmp_path: Path) -> None:
    config = DaemonConfig(root=str(tmp_path / "root"), state=str(tmp_path / "state"))
    candidates = [builtin_candidate(r) for r in (local_content, sqlite_metadata, walking)]
    kernel = Kernel(config, candidates=candidates)
    async with kernel.running():
        record = kernel.get("io.containerd.differ.v1.walking")
        assert record is not None and record.ok, record
        assert record.meta.platforms == [Platform.host()]
        assert isinstance(record.instance, Differ)
        raw = tar_of(M("hello", data=b"world"))
        with namespace("default"):
            md = kernel.get("io.containerd.metadata.v1.sqlite")
            assert md is not None
            content = md.instance.view(NamespacedContent)
            writer = await content.writer("layer")
            await writer.write(raw)
            await writer.commit(len(raw), sha(raw))
            target = tmp_path / "target"
            target.mkdir()
            applied = await record.instance.apply(
                Descriptor(MEDIA_TYPE_LAYER, sha(raw), len(raw)), bind(target)
            )
        assert applied.digest == sha(raw)
        assert (target / "hello").read_bytes() == b"world"


def test_apply_layer_is_usable_without_the_plugin(tmp_path: Path) -> None:
    raw = tar_of(M("x/y", data=b"z"))
    result = apply_layer(io.BytesIO(raw), tmp_path, whiteouts=WhiteoutMode.REMOVE)
    assert (result.digest, result.size, result.entries) == (sha(raw), len(raw), 1)


def test_the_package_exports_the_contract_and_nothing_else() -> None:
    import corral.plugins.differs as contract

    assert sorted(contract.__all__) == ["Differ"]
    assert all(getattr(contract, name) is not None for name in contract.__all__)
    assert isinstance(WalkingDiffer(None), Differ)  # type: ignore[arg-type]


@pytest.mark.parametrize("dev", [(1 << 32, 0), (0, 1 << 40)])
async def test_a_device_number_no_device_can_have_is_invalid(env: Env, dev: tuple[int, int]) -> None:
    require_root()
    raw = tar_of(M("dev/bad", tarfile.CHRTYPE, dev=dev), fmt=tarfile.GNU_FORMAT)  # base-256 numbers
    desc = Descriptor(MEDIA_TYPE_LAYER, await env.ingest(raw), len(raw))
    with pytest.raises(InvalidArgument, match="out of range"):
        await env.differ.apply(desc, bind(env.dir("t")))


class CountingWriter:
    def __init__(self, inner: object, counts: list[int]) -> None:
        self._inner = inner
        self._counts = counts

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)

    async def write(self, data: bytes) -> int:
        self._counts[0] += len(data)
        return await self._inner.write(data)  # type: ignore[attr-defined, no-any-return]


class CountingContent:
    """The namespaced content store, counting what the differ writes."""

    def __init__(self, inner: NamespacedContent) -> None:
        self._inner = inner
        self.written = [0]

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)

    async def writer(self, ref: str, total: int = 0, expected: str = "") -> CountingWriter:
        return CountingWriter(await self._inner.writer(ref, total, expected), self.written)


async def test_a_cancelled_diff_stops_writing_within_a_chunk(env: Env) -> None:
    lower, upper = env.dir("lower"), env.dir("upper")
    with (upper / "big").open("wb") as big:
        big.truncate(8 << 30)  # sparse: reading it costs no disk, compressing it takes seconds
    content = CountingContent(env.md.view(NamespacedContent))
    differ = WalkingDiffer(content)  # type: ignore[arg-type]
    with anyio.move_on_after(0.3) as scope:
        await differ.compare(bind(lower), bind(upper))
    at_cancel = content.written[0]
    await anyio.sleep(0.5)
    assert scope.cancelled_caught
    # compare returned only once its thread had stopped: nothing was written after.
    assert content.written[0] - at_cancel == 0
    assert await env.md.view(NamespacedContent).list_statuses() == []


async def test_a_source_date_epoch_bounds_every_mtime_in_the_diff(env: Env) -> None:
    lower, upper = env.dir("lower"), env.dir("upper")
    (lower / "gone").write_text("g")
    (upper / "old").write_text("o")
    os.utime(upper / "old", (1_000_000_000, 1_000_000_000))
    (upper / "dir").mkdir()
    (upper / "dir/new").write_text("n")  # now: later than the epoch
    epoch = datetime(2020, 1, 1, tzinfo=UTC)
    service = DiffService([env.differ])
    desc = await service.compare(
        bind(lower), bind(upper), media_type=MEDIA_TYPE_LAYER, ref="", labels={}, source_date_epoch=epoch
    )
    with tarfile.open(fileobj=io.BytesIO(await env.blob(desc.digest))) as archive:
        mtimes = {m.name: m.mtime for m in archive.getmembers()}
    assert mtimes == {"dir": 1_577_836_800, "dir/new": 1_577_836_800, "old": 1_000_000_000, ".wh.gone": 0}


async def test_an_apply_asking_for_sync_fs_flushes_what_it_wrote(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[bool] = []
    monkeypatch.setattr("corral.plugins.services.diff.os.sync", lambda: synced.append(True))
    raw = tar_of(M("f", data=b"x"))
    desc = Descriptor(MEDIA_TYPE_LAYER, await env.ingest(raw), len(raw))
    service = DiffService([env.differ])
    await service.apply(desc, bind(env.dir("a")))
    assert synced == []
    await service.apply(desc, bind(env.dir("b")), sync_fs=True)
    assert synced == [True]
