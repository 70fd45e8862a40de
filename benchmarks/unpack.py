"""Unpacking a layer, and preparing and committing snapshots.

``unpack`` applies one generated gzip layer onto a fresh overlayfs snapshot through
``containerd.services.diff.v1.Diff/Apply``. ``ctr`` has no command that applies a single layer, so
that call is made with corral's own Python gRPC client (``corral.api.client``), the same client
against both daemons; everything else (ingest, prepare, remove) goes through ``ctr``. The floor it
is compared with is GNU ``tar -xzf`` of the same file into a fresh directory on the same
filesystem, timed in the same run. Nothing is removed between unpack runs (see ``QUIET_SECONDS``):
the snapshots and ``tar`` trees go in the scenario's ``cleanup``, after its last run.

``snapshot-prepare-commit`` times 100 sequential ``ctr snapshots prepare`` + ``commit`` pairs, a
chain (each prepare's parent is the previous commit), and removes the chain after each run.

The layer is generated once per benchmark run into the work dir (untimed) and is the same bytes
every time: 40,000 members (200 directories, 39,800 regular files) whose sizes come from
``random.Random(0)`` (mostly small, a few large) and whose contents are slices of a fixed 64 MiB
pool made with SHAKE-256: three quarters word-like text (gzip shrinks it about 2.4:1), one quarter
random bytes (incompressible, like already-compressed assets). It is compressed with ISA-L's
deflate (level 3) into a single gzip member.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import itertools
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from isal import isal_zlib

from benchmarks import content
from benchmarks.daemons import Ctr, Daemon
from benchmarks.registry import Metric, Sample, Target, scenario
from benchmarks.timing import PollTimeout, poll_until, time_command
from corral.api.client import connect
from corral.api.types.containerd import types as containerd_types
from corral.api.types.containerd.services.diff import v1 as diff_pb
from corral.api.types.containerd.services.snapshots import v1 as snapshots_pb

MS = 1000.0
TIMES = "\N{MULTIPLICATION SIGN}"
MB = 1_000_000.0

SNAPSHOTTER = "overlayfs"
NAMESPACE = "default"
NAMESPACE_HEADER = "containerd-namespace"
LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"

LAYER_DIRS = 200
LAYER_TOP_DIRS = 10
LAYER_MEMBERS = 40_000
LAYER_FILES = LAYER_MEMBERS - LAYER_DIRS
LAYER_FILE_BYTES = 700_000_000
"""The regular files' total size; with the pool's mix this makes a gzip layer of about 450 MB."""
LARGEST_FILE = 16 << 20
POOL_BYTES = 64 << 20
POOL_BLOCK = 64 << 10
RANDOM_BLOCK_SHARE = 0.25
VOCABULARY = 4096
GZIP_LEVEL = 3
MTIME = 1_700_000_000
CHUNK = 1 << 20

APPLY_TIMEOUT = 1800.0
"""Seconds one Apply (or one `tar -xzf`) may take before the run is called failed."""
GONE_TIMEOUT = 600.0
"""Seconds a removed snapshot's directory may take to disappear (containerd removes it in its GC)."""

SNAPSHOT_PAIRS = 100
VERSION_PROBES = 21

_serial = itertools.count(1)


# -------------------------------------------------------------------------------- the layer


@dataclass(frozen=True)
class Layer:
    """The generated layer file and what the daemons will call it."""

    path: Path
    digest: str
    """sha256 of the gzip file: the content store's name for it."""
    size: int
    diff_id: str
    """sha256 of the uncompressed tar: what a successful Apply returns."""
    tar_size: int
    members: int


@dataclass(frozen=True)
class _Member:
    name: str
    size: int
    """-1 for a directory."""
    offset: int
    mode: int


def _word_block(index: int, words: list[bytes]) -> bytes:
    """POOL_BLOCK bytes of text: words from the vocabulary, picked by SHAKE-256, a line every ~12."""
    picks = memoryview(hashlib.shake_256(b"corral-bench words %d" % index).digest(POOL_BLOCK)).cast("H")
    out = bytearray()
    for i, pick in enumerate(picks):
        out += words[pick % VOCABULARY]
        out += b"\n" if i % 12 == 11 else b" "
        if len(out) >= POOL_BLOCK:
            break
    return bytes(out[:POOL_BLOCK])


@functools.cache
def _pool() -> bytes:
    """The 64 MiB every file's contents are a slice of (deterministic)."""
    rng = random.Random(0)
    letters = bytes(range(ord("a"), ord("z") + 1))
    table = bytes(letters[i % len(letters)] for i in range(256))
    words = [
        hashlib.shake_256(b"corral-bench word %d" % i).digest(2 + i % 11).translate(table)
        for i in range(VOCABULARY)
    ]
    blocks = []
    for b in range(POOL_BYTES // POOL_BLOCK):
        if rng.random() < RANDOM_BLOCK_SHARE:
            blocks.append(hashlib.shake_256(b"corral-bench random %d" % b).digest(POOL_BLOCK))
        else:
            blocks.append(_word_block(b, words))
    return b"".join(blocks)


def _raw_size(rng: random.Random) -> float:
    """A file size before scaling: 80% small (~2 KiB), 18% medium (~32 KiB), 2% large (~1 MiB)."""
    r = rng.random()
    if r < 0.80:
        return rng.lognormvariate(math.log(2 << 10), 1.0)
    if r < 0.98:
        return rng.lognormvariate(math.log(32 << 10), 0.7)
    return rng.lognormvariate(math.log(1 << 20), 0.8)


def _plan(files: int, file_bytes: int, dirs: int, top_dirs: int) -> list[_Member]:
    """The members in tar order: each directory, then its files, depth first."""
    rng = random.Random(0)
    raw = [_raw_size(rng) for _ in range(files)]
    scale = file_bytes / sum(raw)
    sizes = [min(LARGEST_FILE, max(0, round(s * scale))) for s in raw]
    top = [f"d{t:02d}" for t in range(top_dirs)]
    per_top = (dirs - top_dirs) // top_dirs
    tree: list[str] = []
    for t, name in enumerate(top):
        tree.append(name)
        extra = 1 if t < (dirs - top_dirs) % top_dirs else 0
        tree += [f"{name}/s{s:02d}" for s in range(per_top + extra)]
    in_dir: dict[str, list[int]] = {d: [] for d in tree}
    for f in range(files):
        in_dir[tree[rng.randrange(len(tree))]].append(f)
    exts = (".so", ".py", ".txt", ".json", "", ".h", ".gz")
    members = []
    for d in tree:
        members.append(_Member(d + "/", -1, 0, 0o755))
        for f in in_dir[d]:
            size = sizes[f]
            offset = rng.randrange(POOL_BYTES - size + 1)
            mode = 0o755 if rng.random() < 0.1 else 0o644
            members.append(_Member(f"{d}/f{f:05d}{exts[f % len(exts)]}", size, offset, mode))
    return members


def _header(member: _Member) -> bytes:
    info = tarfile.TarInfo(member.name)
    info.mode = member.mode
    info.mtime = MTIME
    info.uname = info.gname = "root"
    if member.size < 0:
        info.type = tarfile.DIRTYPE
    else:
        info.size = member.size
    return info.tobuf(format=tarfile.USTAR_FORMAT)


def _tar_stream(members: list[_Member]) -> Iterator[bytes | memoryview]:
    pool = memoryview(_pool())
    for m in members:
        yield _header(m)
        if m.size > 0:
            yield pool[m.offset : m.offset + m.size]
            if m.size % tarfile.BLOCKSIZE:
                yield bytes(tarfile.BLOCKSIZE - m.size % tarfile.BLOCKSIZE)
    yield bytes(2 * tarfile.BLOCKSIZE)


def build_layer(
    path: Path,
    *,
    files: int = LAYER_FILES,
    file_bytes: int = LAYER_FILE_BYTES,
    dirs: int = LAYER_DIRS,
    top_dirs: int = LAYER_TOP_DIRS,
) -> Layer:
    """Write the gzip layer to ``path`` (via a temp file beside it) and describe it."""
    members = _plan(files, file_bytes, dirs, top_dirs)
    tar_hash, gz_hash = hashlib.sha256(), hashlib.sha256()
    tar_size = gz_size = 0
    # wbits 16+15: a gzip wrapper with neither file name nor time in its header.
    deflate = isal_zlib.compressobj(GZIP_LEVEL, isal_zlib.DEFLATED, 16 + isal_zlib.MAX_WBITS)
    tmp = path.with_suffix(".tmp")
    with tmp.open("wb") as out:
        pending = bytearray()

        def emit(data: bytes) -> None:
            nonlocal gz_size
            if data:
                gz_hash.update(data)
                gz_size += len(data)
                out.write(data)

        for piece in _tar_stream(members):
            pending += piece
            if len(pending) >= CHUNK:
                tar_hash.update(pending)
                tar_size += len(pending)
                emit(deflate.compress(pending))
                pending.clear()
        tar_hash.update(pending)
        tar_size += len(pending)
        emit(deflate.compress(pending))
        emit(deflate.flush())
        out.flush()
        os.fsync(out.fileno())
    tmp.rename(path)
    return Layer(
        path=path,
        digest=f"sha256:{gz_hash.hexdigest()}",
        size=gz_size,
        diff_id=f"sha256:{tar_hash.hexdigest()}",
        tar_size=tar_size,
        members=len(members),
    )


@functools.cache
def layer(workdir: Path) -> Layer:
    """The benchmark's layer in ``workdir``, generated on first use (untimed)."""
    return build_layer(workdir / "unpack-layer.tar.gz")


@functools.cache
def stored_layer(ctr: Ctr, daemon: Daemon, workdir: Path) -> Layer:
    """The layer, ingested (once per daemon) with `ctr content ingest` and labelled as a GC root."""
    made = layer(workdir)
    blob = content.Blob(path=made.path, digest=made.digest, size=made.size, ref="bench-unpack-layer")
    content.ingest(ctr, daemon, blob, timeout=content.BIG_TIMEOUT)
    ctr.check(daemon.socket, "content", "label", made.digest, f"{content.GC_ROOT}=corral-bench")
    return made


# -------------------------------------------------------------------------------- the calls


def snapshot_dirs(daemon: Daemon) -> set[str]:
    """The overlayfs snapshotter's snapshot directories (both daemons keep them at the same path)."""
    where = daemon.root / f"io.containerd.snapshotter.v1.{SNAPSHOTTER}" / "snapshots"
    try:
        return set(os.listdir(where))
    except FileNotFoundError:
        return set()


def collect_garbage(ctr: Ctr, daemon: Daemon) -> None:
    """Make the daemon collect garbage now, and wait for it: `ctr leases rm --sync` of a new lease.

    containerd removes a removed snapshot's directory only in its garbage collection, which its
    scheduler may put off indefinitely (1.6 sometimes never schedules it again after skipping a
    collection); corral removes the directory in the call, so for it this is nearly a no-op.
    """
    lease = f"bench-gc-{next(_serial)}"
    ctr.check(daemon.socket, "leases", "create", "--id", lease)
    ctr.check(daemon.socket, "leases", "rm", "--sync", lease, timeout=GONE_TIMEOUT)


def wait_removed(daemon: Daemon, before: set[str]) -> None:
    """Wait until no snapshot directory beyond ``before`` is left (untimed clean-up)."""
    try:
        poll_until(lambda: snapshot_dirs(daemon) <= before, start=time.perf_counter(), timeout=GONE_TIMEOUT)
    except PollTimeout as exc:
        raise RuntimeError(f"{daemon.kind}: removed snapshots' directories still there: {exc}") from None


def snapshots(ctr: Ctr, daemon: Daemon, *args: str, timeout: float = 60.0) -> str:
    """``ctr snapshots --snapshotter overlayfs ARGS...`` (untimed)."""
    return ctr.check(daemon.socket, "snapshots", "--snapshotter", SNAPSHOTTER, *args, timeout=timeout)


async def _apply(socket: Path, key: str, made: Layer) -> tuple[float, containerd_types.Descriptor]:
    """Seconds of one Diff/Apply of ``made`` onto the active snapshot ``key``, and what it returned."""
    async with connect(str(socket), NAMESPACE) as client:
        metadata = {NAMESPACE_HEADER: NAMESPACE}
        snaps = snapshots_pb.SnapshotsStub(client.channel, metadata=metadata)
        diff = diff_pb.DiffStub(client.channel, metadata=metadata)
        # The Mounts call also opens the connection, so the timed call starts on a live one.
        mounts = (await snaps.mounts(snapshots_pb.MountsRequest(snapshotter=SNAPSHOTTER, key=key))).mounts
        request = diff_pb.ApplyRequest(
            diff=containerd_types.Descriptor(media_type=LAYER_MEDIA_TYPE, digest=made.digest, size=made.size),
            mounts=list(mounts),
        )
        start = time.perf_counter()
        reply = await diff.apply(request, timeout=APPLY_TIMEOUT)
        seconds = time.perf_counter() - start
    if reply.applied is None:
        raise RuntimeError("Diff/Apply returned no descriptor")
    return seconds, reply.applied


QUIET_SECONDS = 360.0
"""How long before the first timed unpack nothing of this benchmark's may have been removed.

On this machine's ext4 (it has no journal), the kernel does not reuse an inode freed less than
60 s ago, or 360 s while that inode's table block is dirty (``recently_deleted`` in
``fs/ext4/ialloc.c``), and it finds that out by scanning past every such inode on each new
inode: `tar -xzf` of the layer took 4.5 s 400 s after removing an earlier copy, 6.9 s after 120 s
and 16-33 s after 65 s, whoever did the removing. So no unpack run removes anything: every
snapshot and every `tar` tree stays until the scenario's last run (``cleanup``), and the first
timed run waits until ``QUIET_SECONDS`` after the scenario started (the earlier scenarios removed
thousands of files), the layer's generation and ingest included.
"""


@dataclass
class _Leftovers:
    """What one daemon's unpack runs left for ``cleanup``."""

    before: set[str]
    """The snapshot directories that were there before the first run."""
    keys: list[str]
    trees: list[Path]


class _State:
    started: float | None = None
    waited = False
    left: dict[str, _Leftovers] = {}


def _wait_quiet() -> None:
    """Before the scenario's first timed unpack: wait out ``QUIET_SECONDS`` (untimed)."""
    if not _State.waited:
        assert _State.started is not None
        time.sleep(max(0.0, _State.started + QUIET_SECONDS - time.monotonic()))
        _State.waited = True
    os.sync()  # earlier runs' files are written back before the clock starts


def untar(made: Layer, into: Path) -> float:
    """Seconds of GNU `tar -xzf LAYER -C INTO`."""
    return time_command(["tar", "-xzf", str(made.path), "-C", str(into)], timeout=APPLY_TIMEOUT)


def unpack_cleanup(target: Target) -> None:
    """After the last run: remove this daemon's snapshots and `tar` trees, wait until they are gone."""
    left = _State.left.pop(target.kind, None)
    if left is None:
        return
    daemon = target.daemon()
    try:
        for tree in left.trees:
            shutil.rmtree(tree, ignore_errors=True)
        if left.keys:
            snapshots(target.ctr, daemon, "rm", *left.keys, timeout=GONE_TIMEOUT)
        collect_garbage(target.ctr, daemon)
        wait_removed(daemon, left.before)
    finally:
        if not _State.left:
            _State.started, _State.waited = None, False


# -------------------------------------------------------------------------------- scenarios


CHAIN_ATTEMPTS = 10
CHAIN_FAILURES: dict[str, int] = {}
"""Chains per kind that failed because a snapshot just made was gone, and were redone.

corral's garbage collector sweeps backend snapshots that no metadata record names; a snapshot
prepared or committed while it sweeps is in the backend before its record is written, so the
sweep can remove it (``ctr: snapshot .../bench-N-kM does not exist``). Such a run is redone,
untimed, and counted here and on stderr; any other failure ends the benchmark.
"""


@scenario(
    "snapshot-prepare-commit",
    needs="running",
    metrics=(
        Metric(
            "snap-total",
            f"{SNAPSHOT_PAIRS} pairs of `ctr snapshots prepare` + `commit`, a chain on overlayfs",
            "ms",
        ),
        Metric("snap-pair", "Snapshot prepare + commit: per pair (two `ctr` calls)", "ms"),
        Metric("snap-extra", "Snapshot prepare + commit: per pair, beyond two `ctr version` calls", "ms"),
    ),
)
def snapshot_prepare_commit(target: Target) -> Sample:
    """100 sequential prepare + commit pairs, each on the previous commit; removed afterwards."""
    daemon, ctr = target.daemon(), target.ctr
    before = snapshot_dirs(daemon)
    version = statistics.median(ctr.time(daemon.socket, "version") for _ in range(VERSION_PROBES))
    for attempt in range(1, CHAIN_ATTEMPTS + 1):
        try:
            seconds = _chain(ctr, daemon, f"bench-{next(_serial)}")
            break
        except subprocess.CalledProcessError as err:
            if attempt == CHAIN_ATTEMPTS or "does not exist" not in str(err.stderr):
                raise
            CHAIN_FAILURES[target.kind] = CHAIN_FAILURES.get(target.kind, 0) + 1
            print(
                f"  {target.kind}: a snapshot of the chain vanished ({str(err.stderr).strip()}); "
                f"chain removed, run redone ({CHAIN_FAILURES[target.kind]} so far)",
                file=sys.stderr,
                flush=True,
            )
        finally:
            collect_garbage(ctr, daemon)
            wait_removed(daemon, before)
    per_pair = seconds / SNAPSHOT_PAIRS
    return {
        "snap-total": seconds * MS,
        "snap-pair": per_pair * MS,
        "snap-extra": (per_pair - 2 * version) * MS,
    }


def _chain(ctr: Ctr, daemon: Daemon, prefix: str) -> float:
    """Seconds of the 100 prepare + commit pairs; whatever was made is removed (untimed)."""
    made: list[str] = []
    """Every snapshot made, committed or not, in the order it was made (removed in reverse)."""
    parent: list[str] = []
    args = ("snapshots", "--snapshotter", SNAPSHOTTER)
    start = time.perf_counter()
    try:
        for i in range(SNAPSHOT_PAIRS):
            key, name = f"{prefix}-k{i:03d}", f"{prefix}-n{i:03d}"
            ctr.time(daemon.socket, *args, "prepare", key, *parent)
            made.append(key)
            ctr.time(daemon.socket, *args, "commit", name, key)
            made[-1] = name
            parent = [name]
        return time.perf_counter() - start
    finally:
        if made:
            try:
                snapshots(ctr, daemon, "rm", *reversed(made), timeout=GONE_TIMEOUT)
            except subprocess.CalledProcessError:
                # A failed chain: ctr stops at the first snapshot that is gone; remove the rest one by one.
                for key in reversed(made):
                    with contextlib.suppress(subprocess.CalledProcessError):
                        snapshots(ctr, daemon, "rm", key)


DEEP_CHAIN = 128
_deep_chains: dict[str, str] = {}
"""Per daemon socket, the top of its 128-layer committed chain (built once, untimed)."""


def _deep_chain_top(ctr: Ctr, daemon: Daemon) -> str:
    top = _deep_chains.get(str(daemon.socket))
    if top is None:
        args = ("snapshots", "--snapshotter", SNAPSHOTTER)
        parent: list[str] = []
        for i in range(DEEP_CHAIN):
            ctr.check(daemon.socket, *args, "prepare", f"deep-k{i:03d}", *parent)
            ctr.check(daemon.socket, *args, "commit", f"deep-n{i:03d}", f"deep-k{i:03d}")
            parent = [f"deep-n{i:03d}"]
        top = _deep_chains[str(daemon.socket)] = parent[0]
    return top


@scenario(
    "snapshot-deep-chain",
    needs="running",
    warmup=1,
    metrics=(
        Metric("deep-prepare", f"`ctr snapshots prepare` on a {DEEP_CHAIN}-layer overlayfs chain", "ms"),
        Metric("deep-mounts", f"`ctr snapshots mounts` of that snapshot ({DEEP_CHAIN} lowerdirs)", "ms"),
        Metric("deep-extra", "Deep chain prepare + mounts, beyond two `ctr version` calls", "ms"),
    ),
)
def snapshot_deep_chain(target: Target) -> Sample:
    """Prepare a snapshot on top of a 128-layer committed chain and ask for its mounts; removed after."""
    daemon, ctr = target.daemon(), target.ctr
    top = _deep_chain_top(ctr, daemon)
    version = statistics.median(ctr.time(daemon.socket, "version") for _ in range(VERSION_PROBES))
    key = f"deep-top-{next(_serial)}"
    args = ("snapshots", "--snapshotter", SNAPSHOTTER)
    prepare = ctr.time(daemon.socket, *args, "prepare", key, top)
    mounts = ctr.time(daemon.socket, *args, "mounts", "/mnt", key)
    snapshots(ctr, daemon, "rm", key)
    return {
        "deep-prepare": prepare * MS,
        "deep-mounts": mounts * MS,
        "deep-extra": (prepare + mounts - 2 * version) * MS,
    }


_LAYER = f"{LAYER_MEMBERS:,}-member gzip layer"


@scenario(
    "unpack",
    needs="running",
    runs_divisor=5,
    cleanup=unpack_cleanup,
    metrics=(
        Metric(
            "unpack",
            f"Unpack a {_LAYER}: Diff/Apply (corral's Python client) onto a fresh overlayfs snapshot",
            "s",
        ),
        Metric("unpack-members", "Unpack: members per second", "members/s", higher_is_better=True),
        Metric("unpack-tar-rate", "Unpack: uncompressed tar throughput", "MB/s", higher_is_better=True),
        Metric("unpack-gz-rate", "Unpack: gzip layer throughput", "MB/s", higher_is_better=True),
        Metric("unpack-floor", "Unpack floor: GNU `tar -xzf` of the same layer, same filesystem", "s"),
        Metric("unpack-vs-tar", "Unpack time / `tar -xzf` time, same run", TIMES),
    ),
)
def unpack(target: Target) -> Sample:
    """Apply the generated layer onto a fresh overlayfs snapshot; GNU `tar -xzf` of it, same run."""
    if _State.started is None:
        _State.started = time.monotonic()
    daemon, ctr = target.daemon(), target.ctr
    left = _State.left.setdefault(target.kind, _Leftovers(snapshot_dirs(daemon), [], []))
    made = stored_layer(ctr, daemon, target.workdir)
    n = next(_serial)
    key, into = f"bench-unpack-{n}", target.workdir / f"unpack-tar-{n}"
    snapshots(ctr, daemon, "prepare", key)
    left.keys.append(key)
    into.mkdir()
    left.trees.append(into)
    _wait_quiet()
    seconds, applied = asyncio.run(_apply(daemon.socket, key, made))
    if applied.digest != made.diff_id:
        raise RuntimeError(f"{daemon.kind}: Apply returned {applied.digest}, expected {made.diff_id}")
    os.sync()  # the Apply's files are written back before the floor's clock starts
    floor = untar(made, into)
    return {
        "unpack": seconds,
        "unpack-members": made.members / seconds,
        "unpack-tar-rate": made.tar_size / MB / seconds,
        "unpack-gz-rate": made.size / MB / seconds,
        "unpack-floor": floor,
        "unpack-vs-tar": seconds / floor,
    }
