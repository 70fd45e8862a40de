"""Importing and exporting images: `ctr images import` (with its unpack into overlayfs) and
`ctr images export`, of the busybox archive and of a large generated image, against each daemon
through the same ``ctr``; and corral's server-side import (`corral images import`, the archive
streamed to corrald's transfer service, stored and unpacked there), which has no counterpart in
containerd 1.6.

The large image is generated once per benchmark run (untimed) from the unpack benchmark's layer
generator: ``LARGE_LAYERS`` gzip layers of ``LARGE_LAYER_FILES`` files each (distinct contents per
layer), written as an OCI image-layout tar. Each import is followed (untimed) by `ctr images rm`
and a synchronous collection, so every run imports into an empty store and unpacks every layer.
"""

from __future__ import annotations

import functools
import hashlib
import io
import itertools
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path

from benchmarks import unpack
from benchmarks.daemons import CORRAL, Ctr, Daemon, corrald_binary
from benchmarks.registry import Metric, Sample, Target, scenario
from benchmarks.tasks import IMAGE as BUSYBOX
from benchmarks.tasks import busybox_archive
from benchmarks.timing import time_command

MS = 1000.0
MB = 1_000_000.0
LARGE_IMAGE = "docker.io/library/bench-large:1"
LARGE_LAYERS = 4
LARGE_LAYER_FILES = 7_500
LARGE_LAYER_FILE_BYTES = 100_000_000
"""Per layer; with the unpack benchmark's content mix a layer's gzip is about 65 MB."""
IMPORT_TIMEOUT = 1800.0
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"

_serial = itertools.count(1)


@dataclass(frozen=True)
class Archive:
    path: Path
    size: int
    """Bytes of the archive file."""
    files: int
    """Regular files and directories in the unpacked image."""


def _blob_member(tar: tarfile.TarFile, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    info = tarfile.TarInfo(f"blobs/sha256/{digest}")
    info.size, info.mode, info.mtime = len(data), 0o444, unpack.MTIME
    tar.addfile(info, io.BytesIO(data))
    return f"sha256:{digest}"


@functools.cache
def large_archive(workdir: Path) -> Archive:
    """The large image's OCI archive in ``workdir``, generated on first use."""
    layers = [
        unpack.build_layer(
            workdir / f"image-layer-{n}.tar.gz",
            files=LARGE_LAYER_FILES + n,  # a distinct plan (and so distinct bytes) per layer
            file_bytes=LARGE_LAYER_FILE_BYTES,
            dirs=60,
            top_dirs=6,
        )
        for n in range(LARGE_LAYERS)
    ]
    if len({layer.digest for layer in layers}) != LARGE_LAYERS:
        raise RuntimeError("the generated layers are not distinct")
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Cmd": ["/bin/sh"]},
            "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
        },
        separators=(",", ":"),
    ).encode()
    path = workdir / "large-image.tar"
    tmp = path.with_suffix(".tmp")
    with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
        config_digest = _blob_member(tar, config)
        for layer in layers:
            info = tarfile.TarInfo(f"blobs/sha256/{layer.digest[7:]}")
            info.size, info.mode, info.mtime = layer.size, 0o444, unpack.MTIME
            with layer.path.open("rb") as blob:
                tar.addfile(info, blob)
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config)},
                "layers": [
                    {"mediaType": unpack.LAYER_MEDIA_TYPE, "digest": layer.digest, "size": layer.size}
                    for layer in layers
                ],
            },
            separators=(",", ":"),
        ).encode()
        manifest_digest = _blob_member(tar, manifest)
        for name, data in (
            ("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'),
            (
                "index.json",
                json.dumps(
                    {
                        "schemaVersion": 2,
                        "manifests": [
                            {
                                "mediaType": OCI_MANIFEST,
                                "digest": manifest_digest,
                                "size": len(manifest),
                                "annotations": {"org.opencontainers.image.ref.name": LARGE_IMAGE},
                            }
                        ],
                    }
                ).encode(),
            ),
        ):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o444, unpack.MTIME
            tar.addfile(info, io.BytesIO(data))
    for layer in layers:
        layer.path.unlink()
    tmp.rename(path)
    return Archive(path, path.stat().st_size, sum(layer.members for layer in layers))


def _forget(ctr: Ctr, daemon: Daemon, name: str) -> None:
    """Remove the image and collect, synchronously: the next import starts from an empty store."""
    ctr.ok(daemon.socket, "images", "rm", "--sync", name)
    unpack.collect_garbage(ctr, daemon)


def _import(ctr: Ctr, daemon: Daemon, archive: Path, name: str) -> float:
    _forget(ctr, daemon, name)
    try:
        return ctr.time(daemon.socket, "images", "import", str(archive), timeout=IMPORT_TIMEOUT)
    finally:
        _forget(ctr, daemon, name)


@scenario(
    "import-busybox",
    needs="running",
    warmup=1,
    metrics=(Metric("import-busybox", "`ctr images import` of the busybox archive, with unpack", "ms"),),
)
def import_busybox(target: Target) -> Sample:
    """Import (and unpack) the small busybox image into an empty store."""
    return {"import-busybox": _import(target.ctr, target.daemon(), busybox_archive(target), BUSYBOX) * MS}


@scenario(
    "import-large",
    needs="running",
    runs_divisor=3,
    metrics=(
        Metric(
            "import-large",
            f"`ctr images import` of a large image ({LARGE_LAYERS} gzip layers, "
            f"{LARGE_LAYERS * LARGE_LAYER_FILES:,} files), with unpack",
            "ms",
        ),
        Metric("import-large-rate", "Large import: archive MB per second", "MB/s", higher_is_better=True),
    ),
)
def import_large(target: Target) -> Sample:
    """Import (and unpack) the large generated image into an empty store."""
    archive = large_archive(target.workdir)
    seconds = _import(target.ctr, target.daemon(), archive.path, LARGE_IMAGE)
    return {"import-large": seconds * MS, "import-large-rate": archive.size / MB / seconds}


def _stored(target: Target, daemon: Daemon) -> None:
    """The large image imported (untimed) and kept for the export runs."""
    listing = target.ctr.check(daemon.socket, "images", "ls", "-q")
    if LARGE_IMAGE not in listing.split():
        target.ctr.check(
            daemon.socket, "images", "import", str(large_archive(target.workdir).path), timeout=IMPORT_TIMEOUT
        )


def _drop_export(target: Target) -> None:
    daemon = target.daemon()
    _forget(target.ctr, daemon, LARGE_IMAGE)


@scenario(
    "export-large",
    needs="running",
    runs_divisor=3,
    cleanup=_drop_export,
    metrics=(Metric("export-large", "`ctr images export` of the large image to a file", "ms"),),
)
def export_large(target: Target) -> Sample:
    """Export the large image (imported once, untimed) to a fresh file."""
    daemon = target.daemon()
    _stored(target, daemon)
    out = target.workdir / f"export-{next(_serial)}.tar"
    try:
        seconds = target.ctr.time(
            daemon.socket, "images", "export", str(out), LARGE_IMAGE, timeout=IMPORT_TIMEOUT
        )
    finally:
        out.unlink(missing_ok=True)
    return {"export-large": seconds * MS}


def corral_cli() -> str:
    """The `corral` CLI installed beside the corrald being measured."""
    return str(Path(corrald_binary()).with_name("corral"))


@scenario(
    "server-import-large",
    needs="running",
    kinds=(CORRAL,),
    runs_divisor=3,
    metrics=(
        Metric(
            "server-import-large",
            "`corral images import -q` of the large image (stored and unpacked by corrald's transfer service)",
            "ms",
        ),
    ),
)
def server_import_large(target: Target) -> Sample:
    """The same import, server-side: the archive streamed to the Transfer service."""
    daemon = target.daemon()
    archive = large_archive(target.workdir)
    _forget(target.ctr, daemon, LARGE_IMAGE)
    argv = [corral_cli(), "-a", str(daemon.socket), "images", "import", "-q", str(archive.path)]
    try:
        seconds = time_command(argv, timeout=IMPORT_TIMEOUT)
    finally:
        _forget(target.ctr, daemon, LARGE_IMAGE)
    return {"server-import-large": seconds * MS}
