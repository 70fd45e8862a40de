"""Inputs for the content-store scenarios, and the ``ctr content`` calls that move them.

Every input lives in the benchmark's work dir and goes with it. The 256 MiB body is generated
once per benchmark run (SHAKE-256 output: deterministic, incompressible, not zeros); each big blob
is 8 bytes never used before in this run followed by that body, written to a fresh file (untimed),
so every run ingests a blob neither daemon has seen. Small blobs are distinct SHAKE-256 outputs.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from benchmarks.daemons import Ctr, Daemon

MIB = 1 << 20
BIG_BODY_MIB = 256
PREFIX_BYTES = 8
BIG_BLOB_BYTES = PREFIX_BYTES + BIG_BODY_MIB * MIB
SMALL_BLOBS = 1000
SMALL_BLOB_BYTES = 4096
BIG_TIMEOUT = 600.0
"""Seconds a 256 MiB ingest or read may take before the run is called failed."""
GC_ROOT = "containerd.io/gc.root"
"""Keeps the blob the read scenario reads from either daemon's garbage collector (ctr ingests
without a lease, so an unlabelled blob is fair game once a deletion triggers a collection)."""

_serial = itertools.count(1)
"""Numbers every blob made in this process: its prefix and ref, so none is ever made twice."""


@dataclass(frozen=True)
class Blob:
    """An input file and what the store will call it."""

    path: Path
    digest: str
    size: int
    ref: str
    """The ingest ref: distinct for every blob."""


def _body_chunk(index: int) -> bytes:
    return hashlib.shake_256(b"corral-bench body %d" % index).digest(MIB)


def big_body(workdir: Path) -> Path:
    """The shared 256 MiB body in ``workdir``, written on first use."""
    path = workdir / "content-body.bin"
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        with tmp.open("wb") as out:
            for i in range(BIG_BODY_MIB):
                out.write(_body_chunk(i))
        tmp.rename(path)
    return path


def _durable_copy(source: Path, target: Path, prefix: bytes) -> str:
    """Write ``prefix`` then ``source`` to ``target``, fsync it, return the sha256 digest.

    The fsync keeps the kernel's write-back of this file out of the timed call that follows.
    """
    hasher = hashlib.sha256(prefix)
    with source.open("rb") as src, target.open("wb") as out:
        out.write(prefix)
        while chunk := src.read(MIB):
            hasher.update(chunk)
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    return f"sha256:{hasher.hexdigest()}"


def fresh_big_blob(workdir: Path) -> Blob:
    """A new 256 MiB + 8 byte blob file in ``workdir`` (the caller removes it)."""
    n = next(_serial)
    path = workdir / f"content-blob-{n:04d}.bin"
    digest = _durable_copy(big_body(workdir), path, n.to_bytes(PREFIX_BYTES, "big"))
    return Blob(path=path, digest=digest, size=BIG_BLOB_BYTES, ref=f"bench-big-{n}")


@dataclass(frozen=True)
class SmallBatch:
    """Distinct small blob files in a directory of their own."""

    directory: Path
    blobs: list[Blob]

    def remove_files(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


def fresh_small_blobs(workdir: Path, count: int = SMALL_BLOBS) -> SmallBatch:
    """``count`` new, distinct 4 KiB blob files in a new directory of ``workdir``."""
    n = next(_serial)
    directory = workdir / f"content-small-{n:04d}"
    directory.mkdir()
    blobs = []
    for i in range(count):
        data = hashlib.shake_256(b"corral-bench small %d %d" % (n, i)).digest(SMALL_BLOB_BYTES)
        path = directory / f"{i:04d}.bin"
        path.write_bytes(data)
        digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
        blobs.append(Blob(path=path, digest=digest, size=SMALL_BLOB_BYTES, ref=f"bench-small-{n}-{i}"))
    return SmallBatch(directory, blobs)


def ingest(ctr: Ctr, daemon: Daemon, blob: Blob, *, timeout: float = 60.0) -> float:
    """Seconds of ``ctr content ingest --expected-digest D REF < FILE``."""
    return ctr.time(
        daemon.socket,
        "content",
        "ingest",
        "--expected-digest",
        blob.digest,
        blob.ref,
        stdin=blob.path,
        timeout=timeout,
    )


def get(ctr: Ctr, daemon: Daemon, digest: str) -> float:
    """Seconds of ``ctr content get D > /dev/null``."""
    return ctr.time(daemon.socket, "content", "get", digest, timeout=BIG_TIMEOUT)


def remove(ctr: Ctr, daemon: Daemon, digests: list[str]) -> None:
    """``ctr content rm D...`` (untimed): the daemon drops them, its collector frees the bytes."""
    ctr.check(daemon.socket, "content", "rm", *digests, timeout=BIG_TIMEOUT)


@functools.cache
def stored_big_blob(ctr: Ctr, daemon: Daemon, workdir: Path) -> str:
    """The digest of a 256 MiB blob ingested (once per daemon) and labelled as a GC root."""
    blob = fresh_big_blob(workdir)
    try:
        ingest(ctr, daemon, blob, timeout=BIG_TIMEOUT)
    finally:
        blob.path.unlink(missing_ok=True)
    ctr.check(daemon.socket, "content", "label", blob.digest, f"{GC_ROOT}=corral-bench")
    return blob.digest
