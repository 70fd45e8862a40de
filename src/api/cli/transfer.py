"""``corral images import`` and ``corral images export``: image archives moved by the daemon.

The archive streams to (or from) corrald's transfer service, which stores, verifies and unpacks
on its side; a progress bar on stderr follows the bytes, and the images saved are printed.
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import BinaryIO

import anyio
import anyio.to_thread
import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)

from corral.api.cli._session import UsageProblem, call, parse_labels
from corral.api.client import Client, ImportOptions, TransferProgress
from corral.api.types.containerd import types as ctypes
from corral.kernel import InvalidArgument
from corral.plugins.images.oci import Platform

__all__ = ["add_transfer_commands", "export_command", "import_command"]

READ_SIZE = 1 << 20


def _wire_platform(text: str) -> ctypes.Platform:
    try:
        p = Platform.parse(text)
    except InvalidArgument as exc:
        raise UsageProblem(f"invalid platform {text!r}: {exc.detail}") from None
    return ctypes.Platform(os=p.os, architecture=p.architecture, variant=p.variant)


def _bar(console: Console, *, show: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=not show,
        transient=False,
    )


async def _file_chunks(file: BinaryIO) -> AsyncIterator[bytes]:
    while chunk := await anyio.to_thread.run_sync(file.read, READ_SIZE):
        yield chunk


@click.command("import")
@click.argument("archive", metavar="FILE", type=click.Path(dir_okay=False, allow_dash=True))
@click.option(
    "--base-name", default="", help="name images with this prefix; only those named so are imported"
)
@click.option("--snapshotter", default="", help="unpack into this snapshotter  [default: the daemon's]")
@click.option("--no-unpack", is_flag=True, help="store the images without unpacking them")
@click.option("--platform", "platform_text", default="", metavar="PLATFORM", help="import this platform")
@click.option("--all-platforms", is_flag=True, help="import the content of every platform")
@click.option("--digests", is_flag=True, help="also name each image BASE@DIGEST")
@click.option(
    "--skip-digest-for-named", is_flag=True, help="with --digests: not for images the archive names"
)
@click.option("--index-name", default="", help="keep the archive's index as an image of this name")
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE", help="label the images (repeatable)")
@click.option("-q", "--quiet", is_flag=True, help="no progress bar")
def import_command(
    archive: str,
    base_name: str,
    snapshotter: str,
    no_unpack: bool,
    platform_text: str,
    all_platforms: bool,
    digests: bool,
    skip_digest_for_named: bool,
    index_name: str,
    labels: tuple[str, ...],
    quiet: bool,
) -> None:
    """Import an OCI or docker-save archive (FILE, or - for stdin): corrald stores, verifies and
    unpacks it. The images saved are printed, one per line."""
    if skip_digest_for_named and not digests:
        raise UsageProblem("--skip-digest-for-named must be used together with --digests")
    if no_unpack and snapshotter:
        raise UsageProblem("--snapshotter and --no-unpack cannot be used together")
    options = ImportOptions(
        base_name=base_name,
        index_name=index_name,
        digests=digests,
        skip_digest_for_named=skip_digest_for_named,
        platform=_wire_platform(platform_text) if platform_text else None,
        all_platforms=all_platforms,
        unpack=not no_unpack,
        snapshotter=snapshotter,
        labels=parse_labels(labels),
    )
    file: BinaryIO = sys.stdin.buffer if archive == "-" else Path(archive).open("rb")  # noqa: SIM115
    size = os.fstat(file.fileno()).st_size if archive != "-" else None
    console = Console(stderr=True)
    saved: list[str] = []
    with file, _bar(console, show=not quiet and console.is_terminal) as bar:
        task = bar.add_task(f"importing {Path(archive).name}", total=size or None)
        unpacks: dict[str, TaskID] = {}

        def on_progress(p: TransferProgress) -> None:
            if p.event == "saved" and p.name:
                saved.append(p.name)
            elif p.event in ("unpacking", "unpacked", "exists") and p.name:
                if p.name not in unpacks:
                    unpacks[p.name] = bar.add_task(f"unpacking {p.name[7:19]}", total=p.total or None)
                if p.event != "unpacking":
                    bar.update(unpacks[p.name], completed=p.total)

        async def run(client: Client) -> None:
            await client.import_archive(
                _file_chunks(file),
                options,
                progress=on_progress,
                sent=lambda n: bar.update(task, completed=n),
            )

        call(run)
    for name in saved:
        click.echo(name)


@click.command("export")
@click.argument("out", metavar="OUT", type=click.Path(dir_okay=False, allow_dash=True))
@click.argument("names", nargs=-1, required=True, metavar="NAME...")
@click.option("--platform", "platform_texts", multiple=True, metavar="PLATFORM", help="export this platform")
@click.option("--all-platforms", is_flag=True, help="export every platform (all must be present)")
@click.option("--skip-manifest-json", is_flag=True, help="leave out docker's manifest.json")
@click.option("--skip-non-distributable", is_flag=True, help="leave out non-distributable layers")
@click.option("-q", "--quiet", is_flag=True, help="no progress bar")
def export_command(
    out: str,
    names: tuple[str, ...],
    platform_texts: tuple[str, ...],
    all_platforms: bool,
    skip_manifest_json: bool,
    skip_non_distributable: bool,
    quiet: bool,
) -> None:
    """Export images as an OCI archive to OUT (- for stdout), written by corrald's exporter.

    A failed export leaves no OUT file behind."""
    platforms = [_wire_platform(text) for text in platform_texts]
    console = Console(stderr=True)
    to_stdout = out == "-"
    target = Path(out)
    partial = target.with_name(f".{target.name}.partial") if not to_stdout else target
    file: BinaryIO = sys.stdout.buffer if to_stdout else partial.open("wb")
    done = False
    try:
        with _bar(console, show=not quiet and console.is_terminal) as bar:
            task = bar.add_task(f"exporting {len(names)} image{'s' if len(names) != 1 else ''}", total=None)
            written = 0

            async def write(data: bytes) -> None:
                nonlocal written
                await anyio.to_thread.run_sync(file.write, data)
                written += len(data)
                bar.update(task, completed=written)

            def on_progress(p: TransferProgress) -> None:
                if p.event == "Completed export" and p.total:
                    bar.update(task, total=written)

            async def run(client: Client) -> None:
                await client.export_images(
                    names,
                    write,
                    platforms=platforms,
                    all_platforms=all_platforms,
                    skip_manifest_json=skip_manifest_json,
                    skip_non_distributable=skip_non_distributable,
                    progress=on_progress,
                )

            call(run)
        file.flush()
        done = True
    finally:
        if not to_stdout:
            file.close()
            if done:
                partial.replace(target)
            else:
                partial.unlink(missing_ok=True)


def add_transfer_commands(images: click.Group) -> None:
    """Put ``import`` and ``export`` into the ``images`` group."""
    images.add_command(import_command)
    images.add_command(export_command)
