"""No layer writes outside its target: a corpus of malicious layers, applied in both whiteout modes.

Each test applies layers made here (tarfile, in memory) to ``<tmp>/a/b/root``, next to a sentinel
tree at ``<tmp>/outside`` that a naive extractor would reach with ``../../../outside``, and checks
that the sentinel tree, ``/etc/shadow`` and ``/etc/passwd`` are exactly as they were. Inside, the
escape is contained the way containerd contains it (resolved under the root, as by a chroot) or
refused with InvalidArgument.

Every write that would escape aims at the sentinel tree, never at the host's own files: if the
containment ever regresses, these tests fail instead of damaging the machine (CI runs as root).
Only hard links name ``/etc/shadow``; a regression there adds a link under tmp and changes no data.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from tooling import require_root

from corral.kernel import InvalidArgument
from corral.plugins.differs._tar import TarReader
from corral.plugins.differs.apply import WhiteoutMode, apply_layer, resolve_in_root

WATCHED = [Path("/etc/shadow"), Path("/etc/passwd")]


@dataclass
class Member:
    name: str
    kind: bytes = tarfile.REGTYPE
    data: bytes = b""
    link: str = ""
    mode: int = 0o644


def f(name: str, data: bytes = b"payload", mode: int = 0o644) -> Member:
    return Member(name, tarfile.REGTYPE, data, mode=mode)


def d(name: str, mode: int = 0o755) -> Member:
    return Member(name, tarfile.DIRTYPE, mode=mode)


def sym(name: str, target: str) -> Member:
    return Member(name, tarfile.SYMTYPE, link=target, mode=0o777)


def hard(name: str, target: str) -> Member:
    return Member(name, tarfile.LNKTYPE, link=target)


def layer(*members: Member, fmt: int = tarfile.PAX_FORMAT) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt) as tar:
        for m in members:
            info = tarfile.TarInfo(m.name)
            info.type = m.kind
            info.mode = m.mode
            info.linkname = m.link
            info.mtime = 1_000_000
            info.size = len(m.data)
            tar.addfile(info, io.BytesIO(m.data) if m.data else None)
    return out.getvalue()


def fingerprint(path: Path) -> tuple[object, ...]:
    st = path.lstat()
    content: object = None
    if stat.S_ISREG(st.st_mode):
        content = hashlib.sha256(path.read_bytes()).hexdigest()
    elif stat.S_ISLNK(st.st_mode):
        content = os.readlink(path)
    return (st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns, st.st_nlink, st.st_ino, content)


def snapshot(tmp: Path, target: Path) -> dict[str, tuple[object, ...]]:
    """Everything under ``tmp`` except the target, plus the watched system files."""
    seen: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(tmp):
        here = Path(dirpath)
        dirnames[:] = [n for n in dirnames if here / n != target]
        for name in [*dirnames, *filenames, "."]:
            seen[str(here / name)] = fingerprint(here / name)
    for path in WATCHED:
        if path.exists():
            seen[str(path)] = fingerprint(path)
    return seen


@pytest.fixture(params=[WhiteoutMode.REMOVE, WhiteoutMode.OVERLAY], ids=["plain-dir", "overlay-upper"])
def mode(request: pytest.FixtureRequest) -> WhiteoutMode:
    value: WhiteoutMode = request.param
    if value is WhiteoutMode.OVERLAY:
        require_root()  # overlay whiteouts are devices and trusted.* xattrs
    return value


@dataclass
class Arena:
    tmp: Path
    root: Path
    outside: Path
    mode: WhiteoutMode

    def apply(self, *members: Member, fmt: int = tarfile.PAX_FORMAT) -> None:
        apply_layer(io.BytesIO(layer(*members, fmt=fmt)), self.root, whiteouts=self.mode)

    def apply_raw(self, data: bytes) -> None:
        apply_layer(io.BytesIO(data), self.root, whiteouts=self.mode)


@pytest.fixture
def arena(tmp_path: Path, mode: WhiteoutMode) -> Iterator[Arena]:
    root = tmp_path / "a" / "b" / "root"
    root.mkdir(parents=True)
    outside = tmp_path / "outside"
    (outside / "dir").mkdir(parents=True)
    (outside / "sentinel").write_text("do not touch")
    (outside / "dir" / "inner").write_text("nor this")
    os.symlink("sentinel", outside / "link")
    outside.chmod(0o755)
    before = snapshot(tmp_path, root)
    yield Arena(tmp_path, root, outside, mode)
    assert snapshot(tmp_path, root) == before, "something outside the target changed"


def inside(arena: Arena, rel: str) -> Path:
    return arena.root / rel


def escape_to_sentinel(arena: Arena) -> str:
    """``../../../outside`` seen from the root: where a naive extractor would land."""
    return os.path.relpath(arena.outside, arena.root)


# -- names ----------------------------------------------------------------------------------------


def test_dot_dot_names_are_contained_under_the_root(arena: Arena) -> None:
    rel = escape_to_sentinel(arena)
    arena.apply(f("../../etc/x"), f(f"{rel}/sentinel", b"pwned"), f("a/../../../../b/c"))
    assert inside(arena, "etc/x").read_bytes() == b"payload"  # a naive extractor: <tmp>/a/etc/x
    assert inside(arena, "outside/sentinel").read_bytes() == b"pwned"
    assert inside(arena, "b/c").exists()


def test_absolute_names_are_relative_to_the_root(arena: Arena) -> None:
    absolute = arena.tmp / "abs" / "path"
    arena.apply(f(str(absolute)), f(f"{arena.outside}/sentinel", b"pwned"))
    assert inside(arena, str(absolute).lstrip("/")).read_bytes() == b"payload"
    assert inside(arena, str(arena.outside).lstrip("/") + "/sentinel").read_bytes() == b"pwned"


def test_long_pax_and_gnu_names_are_cleaned_the_same_way(arena: Arena) -> None:
    deep = "../" * 40 + str(arena.outside).lstrip("/") + "/" + "x" * 120 + "/evil"
    arena.apply(f(deep, b"pax"))
    arena.apply(
        f("/" + "y" * 120 + "/../../../../" + escape_to_sentinel(arena) + "/evil2", b"gnu"),
        fmt=tarfile.GNU_FORMAT,
    )
    assert inside(arena, str(arena.outside).lstrip("/") + "/" + "x" * 120 + "/evil").read_bytes() == b"pax"
    assert inside(arena, "outside/evil2").read_bytes() == b"gnu"


def test_the_root_entry_itself_changes_nothing(arena: Arena) -> None:
    before = arena.root.stat()
    arena.apply(d("./", mode=0o777), d("/", mode=0o700), d("..", mode=0o777))
    after = arena.root.stat()
    assert (after.st_mode, after.st_mtime_ns) == (before.st_mode, before.st_mtime_ns)


# -- symlinks -------------------------------------------------------------------------------------


def test_a_write_through_an_absolute_symlink_of_the_same_layer_stays_inside(arena: Arena) -> None:
    arena.apply(
        sym("esc", str(arena.outside)),
        f("esc/sentinel", b"pwned"),
        f("esc/dir/inner", b"pwned"),
        f("esc/link", b"pwned"),
    )
    # The symlink is followed as if the root were "/": /<tmp>/outside means <root>/<tmp>/outside.
    real = inside(arena, str(arena.outside).lstrip("/"))
    assert resolve_in_root(arena.root, "esc/sentinel") == str(real / "sentinel")
    assert (real / "sentinel").read_bytes() == b"pwned"
    assert (real / "dir" / "inner").read_bytes() == b"pwned"
    assert (real / "link").read_bytes() == b"pwned"


def test_a_symlink_to_itself_through_an_absolute_path_is_a_loop_and_refused(arena: Arena) -> None:
    # As etc -> /etc would be: inside the root, the absolute target is the link itself.
    here = str(arena.outside).lstrip("/")
    with pytest.raises(InvalidArgument, match="symbolic links"):
        arena.apply(d(here + "/"), sym(here + "/dir", "/" + here + "/dir"), f(here + "/dir/inner", b"pwned"))
    assert inside(arena, here + "/dir").is_symlink()


def test_a_relative_symlink_climbing_out_stops_at_the_root(arena: Arena) -> None:
    arena.apply(
        d("deep/"),
        sym("deep/x", "../../../../../.."),
        f("deep/x/y", b"top"),
        sym("up", escape_to_sentinel(arena)),
        f("up/sentinel", b"pwned"),
    )
    assert inside(arena, "y").read_bytes() == b"top"
    assert inside(arena, "outside/sentinel").read_bytes() == b"pwned"


def test_a_symlink_planted_by_an_earlier_layer_is_resolved_inside_the_root(arena: Arena) -> None:
    arena.apply(
        sym("etc", str(arena.outside / "dir")),
        sym("x", "../../.."),
        sym("esc", str(arena.outside)),
        sym("rel", escape_to_sentinel(arena) + "/dir"),
    )
    arena.apply(
        f("etc/passwd", b"root::0:0"),
        f("x/y", b"y"),
        f("esc/sentinel", b"pwned"),
        f("rel/inner", b"pwned"),
        d("esc/dir/", mode=0o777),
    )
    assert inside(arena, str(arena.outside).lstrip("/") + "/dir/passwd").read_bytes() == b"root::0:0"
    assert inside(arena, "y").read_bytes() == b"y"
    assert inside(arena, str(arena.outside).lstrip("/") + "/sentinel").read_bytes() == b"pwned"
    assert inside(arena, "outside/dir/inner").read_bytes() == b"pwned"


def test_a_file_over_a_symlink_replaces_the_link_not_its_target(arena: Arena) -> None:
    arena.apply(sym("l", str(arena.outside / "sentinel")), sym("dl", str(arena.outside)))
    arena.apply(f("l", b"new"), d("dl/", mode=0o777))
    assert not inside(arena, "l").is_symlink()
    assert inside(arena, "l").read_bytes() == b"new"
    assert inside(arena, "dl").is_dir() and not inside(arena, "dl").is_symlink()
    assert stat.S_IMODE(inside(arena, "dl").stat().st_mode) == 0o777


def test_symlink_loops_are_refused(arena: Arena) -> None:
    with pytest.raises(InvalidArgument, match="symbolic links"):
        arena.apply(sym("a", "b"), sym("b", "a"), f("a/x"))


def test_a_dangling_symlink_on_the_way_creates_its_target_inside(arena: Arena) -> None:
    nowhere = arena.outside / "nowhere" / "at" / "all"
    arena.apply(sym("ghost", str(nowhere)), f("ghost/file", b"g"))
    assert inside(arena, str(nowhere).lstrip("/") + "/file").read_bytes() == b"g"


# -- hard links -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "target",
    ["/etc/shadow", "../../etc/shadow", "../../../../../../../etc/shadow", "../../../outside/sentinel"],
)
def test_a_hard_link_to_a_file_outside_is_refused(arena: Arena, target: str) -> None:
    with pytest.raises(InvalidArgument, match="does not exist"):
        arena.apply(hard("h", target))
    assert not inside(arena, "h").exists()


def test_a_hard_link_outside_resolves_to_the_file_of_that_name_inside(arena: Arena) -> None:
    arena.apply(d("etc/"), f("etc/shadow", b"fake shadow"))
    arena.apply(hard("h1", "/etc/shadow"), hard("h2", "../../../etc/shadow"))
    fake = inside(arena, "etc/shadow").stat()
    assert inside(arena, "h1").stat().st_ino == fake.st_ino
    assert inside(arena, "h2").stat().st_ino == fake.st_ino
    assert fake.st_nlink == 3


def test_a_hard_link_through_a_symlinked_directory_stays_inside(arena: Arena) -> None:
    arena.apply(sym("sys", "/etc"), sym("out", str(arena.outside)))
    with pytest.raises(InvalidArgument, match="does not exist"):
        arena.apply(hard("h", "sys/shadow"))
    with pytest.raises(InvalidArgument, match="does not exist"):
        arena.apply(hard("h", "out/sentinel"))


def test_a_hard_link_to_a_symlink_links_the_symlink_itself(arena: Arena) -> None:
    arena.apply(
        sym("s", "/etc/shadow"), hard("h", "s"), sym("o", str(arena.outside / "sentinel")), hard("ho", "o")
    )
    assert inside(arena, "h").is_symlink()
    assert inside(arena, "h").lstat().st_ino == inside(arena, "s").lstat().st_ino
    assert os.readlink(inside(arena, "ho")) == str(arena.outside / "sentinel")


def test_a_file_written_over_a_hard_link_does_not_write_through_it(arena: Arena) -> None:
    arena.apply(f("victim", b"original"), hard("h", "victim"))
    arena.apply(f("h", b"replacement"))
    assert inside(arena, "victim").read_bytes() == b"original"
    assert inside(arena, "h").read_bytes() == b"replacement"
    assert inside(arena, "victim").stat().st_nlink == 1


def test_a_hard_link_to_a_directory_is_refused(arena: Arena) -> None:
    arena.apply(d("dir/"))
    with pytest.raises(InvalidArgument):
        arena.apply(hard("h", "dir"))


# -- whiteouts ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [".wh...", ".wh..", ".wh.", "sub/.wh...", "a/b/.wh.."])
def test_whiteouts_naming_a_directory_or_its_parent_are_refused(arena: Arena, name: str) -> None:
    arena.apply(d("sub/"), f("sub/keep"), f("keep"))
    with pytest.raises(InvalidArgument, match="whiteout"):
        arena.apply(f(name, b""))
    assert inside(arena, "sub/keep").exists() and inside(arena, "keep").exists()


def test_a_whiteout_climbing_with_dot_dot_only_reaches_the_root(arena: Arena) -> None:
    arena.apply(f("victim"), f("keep"))
    arena.apply(f("a/../../../../../.wh.victim", b""), f(f"{escape_to_sentinel(arena)}/.wh.sentinel", b""))
    if arena.mode is WhiteoutMode.REMOVE:
        assert not inside(arena, "victim").exists()
        assert list(inside(arena, "outside").iterdir()) == []
    else:
        assert stat.S_ISCHR(inside(arena, "victim").lstat().st_mode)
        assert stat.S_ISCHR(inside(arena, "outside/sentinel").lstat().st_mode)
    assert inside(arena, "keep").exists()


def test_a_whiteout_through_a_symlink_deletes_inside_the_root(arena: Arena) -> None:
    arena.apply(sym("esc", str(arena.outside)), sym("rel", escape_to_sentinel(arena)))
    arena.apply(f("esc/.wh.sentinel", b""), f("rel/.wh.dir", b""), f("esc/dir/.wh..wh..opq", b""))
    # Nothing outside changed (checked by the fixture); the symlinks themselves are intact.
    assert os.readlink(inside(arena, "esc")) == str(arena.outside)


# -- type changes ---------------------------------------------------------------------------------


def test_a_file_replaces_a_directory_and_a_directory_replaces_a_file(arena: Arena) -> None:
    arena.apply(d("d/"), f("d/child"), d("d/sub/"), f("x", b"file"))
    arena.apply(f("d", b"now a file"), d("x/"), f("x/y", b"inside"))
    assert inside(arena, "d").read_bytes() == b"now a file"
    assert inside(arena, "x/y").read_bytes() == b"inside"


def test_a_directory_replaced_by_a_symlink_mid_layer_is_not_written_through(arena: Arena) -> None:
    arena.apply(d("d/"), f("d/one"), sym("d", str(arena.outside)), f("d/sentinel", b"pwned"), d("d/dir/"))
    assert inside(arena, "d").is_symlink()
    assert inside(arena, str(arena.outside).lstrip("/") + "/sentinel").read_bytes() == b"pwned"


def test_device_nodes_are_made_only_inside_and_only_as_root(arena: Arena) -> None:
    dev = tarfile.TarInfo("../../../outside/null")
    dev.type = tarfile.CHRTYPE
    dev.devmajor, dev.devminor = 1, 3
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(dev)
    arena.apply_raw(out.getvalue())
    made = inside(arena, "outside/null")
    if os.geteuid() == 0:
        assert stat.S_ISCHR(made.lstat().st_mode)
        assert made.lstat().st_rdev == os.makedev(1, 3)
    else:
        assert not made.exists()


# -- malformed streams ----------------------------------------------------------------------------


def test_a_corrupt_header_is_invalid_argument(arena: Arena) -> None:
    data = bytearray(layer(f("a"), f("b")))
    data[1024 + 100] ^= 0x7F  # the second header's mode field; its checksum no longer matches
    with pytest.raises(InvalidArgument, match="checksum"):
        arena.apply_raw(bytes(data))


def test_a_truncated_stream_is_invalid_argument(arena: Arena) -> None:
    data = layer(f("a", b"x" * 5000))
    with pytest.raises(InvalidArgument, match="ends in the middle"):
        arena.apply_raw(data[:2000])


def test_huge_pax_records_are_refused_before_they_are_read(arena: Arena) -> None:
    header = tarfile.TarInfo("PaxHeaders/x")
    header.type = tarfile.XHDTYPE
    header.size = 1 << 30
    with pytest.raises(InvalidArgument, match="metadata"):
        arena.apply_raw(header.tobuf(tarfile.USTAR_FORMAT))


# -- resolve_in_root ------------------------------------------------------------------------------


def test_resolve_in_root_follows_symlinks_as_if_the_root_were_slash(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "real" / "dir").mkdir(parents=True)
    os.symlink("/real", root / "abs")
    os.symlink("../../../../real/dir", root / "real" / "up")
    os.symlink("/etc/shadow", root / "shadow")
    os.symlink("loop", root / "loop")
    assert resolve_in_root(root, "abs/dir/x") == str(root / "real" / "dir" / "x")
    assert resolve_in_root(root, "real/up/y") == str(root / "real" / "dir" / "y")
    assert resolve_in_root(root, "shadow") == str(root / "etc" / "shadow")
    assert resolve_in_root(root, "/../../..") == str(root)
    assert resolve_in_root(root, "missing/../../abs/../etc") == str(root / "etc")
    with pytest.raises(InvalidArgument, match="symbolic links"):
        resolve_in_root(root, "loop/x")


def test_the_reader_consumes_trailing_data_into_the_digest() -> None:
    data = layer(f("a")) + b"trailing garbage"
    reader = TarReader(io.BytesIO(data))
    while reader.next() is not None:
        pass
    digest, size = reader.finish()
    assert (digest, size) == ("sha256:" + hashlib.sha256(data).hexdigest(), len(data))
