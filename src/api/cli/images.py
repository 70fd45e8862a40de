"""``corral images``: list, check, label and remove images, reading their content as ctr does."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import click
from rich.table import Table

from corral.api.cli._output import emit, format_labels, format_option, human_size, table, timestamp, to_json
from corral.api.cli._session import call, parse_labels, report_failures
from corral.api.client import Client
from corral.api.types.containerd import types as containerd_types
from corral.api.types.containerd.services.images import v1 as pb
from corral.kernel import CorralError, NotFound
from corral.plugins.images import oci

DEFAULT_SNAPSHOTTER = "overlayfs"


@dataclass
class ImageContents:
    """What an image's target leads to in the content store, for this host's platform."""

    platforms: list[str] = field(default_factory=list)
    size: int = 0
    """Bytes of every blob present, indexes and manifests included (ctr's SIZE)."""
    required: int = 0
    """Configs and layers the image needs (as ctr's check counts them)."""
    present: int = 0
    required_size: int = 0
    present_size: int = 0
    chain_ids: list[str] = field(default_factory=list)
    """The top chain ID of each manifest whose config could be read."""

    @property
    def complete(self) -> bool:
        return self.present == self.required


async def _read(client: Client, digest: str) -> bytes:
    return b"".join([chunk async for chunk in client.read_content(digest)])


async def _has(client: Client, digest: str) -> bool:
    try:
        await client.content_info(digest)
    except NotFound:
        return False
    return True


def _platform_text(platform: oci.Platform) -> str:
    return "/".join(p for p in (platform.os, platform.architecture, platform.variant) if p)


async def image_contents(client: Client, target: containerd_types.Descriptor) -> ImageContents:
    """Walk the target: an index's manifests for this host, each manifest's config and layers."""
    out = ImageContents()
    matcher = oci.default_matcher()

    async def visit(media_type: str, digest: str, size: int) -> None:
        counted = not (oci.is_index(media_type) or oci.is_manifest(media_type))
        if counted:
            out.required += 1
            out.required_size += size
        if not await _has(client, digest):
            return
        out.size += size
        if counted:
            out.present += 1
            out.present_size += size
        if oci.is_index(media_type):
            index = oci.parse_index(await _read(client, digest), media_type)
            for child in index.manifests:
                if child.platform is not None:
                    out.platforms.append(_platform_text(child.platform))
                if child.platform is None or matcher.match(child.platform):
                    await visit(child.media_type, child.digest, child.size)
        elif oci.is_manifest(media_type):
            manifest = oci.parse_manifest(await _read(client, digest), media_type)
            await visit(manifest.config.media_type, manifest.config.digest, manifest.config.size)
            for layer in manifest.layers:
                await visit(layer.media_type, layer.digest, layer.size)
            if await _has(client, manifest.config.digest):
                config = oci.parse_image_config(await _read(client, manifest.config.digest))
                platform = oci.Platform(config.os, config.architecture, config.variant)
                if not oci.is_index(target.media_type):
                    out.platforms.append(_platform_text(platform))
                if config.diff_ids:
                    out.chain_ids.append(oci.chain_id(config.diff_ids))

    await visit(target.media_type, target.digest, target.size)
    out.platforms = sorted(set(out.platforms))
    return out


async def _unpacked(client: Client, snapshotter: str, contents: ImageContents) -> bool:
    if not contents.chain_ids:
        return False
    for chain in contents.chain_ids:
        try:
            await client.snapshot_stat(snapshotter, chain)
        except NotFound:
            return False
    return True


def _target(image: pb.Image) -> containerd_types.Descriptor:
    assert image.target is not None
    return image.target


def images_table(items: Sequence[tuple[pb.Image, ImageContents]]) -> Table:
    return table(
        ("REF", "TYPE", "DIGEST", "SIZE", "PLATFORMS", "LABELS"),
        (
            (
                image.name,
                _target(image).media_type,
                _target(image).digest,
                human_size(contents.size),
                ",".join(contents.platforms) or "-",
                format_labels(image.labels),
            )
            for image, contents in items
        ),
    )


def image_json(image: pb.Image, contents: ImageContents | None = None) -> dict[str, Any]:
    target = _target(image)
    out: dict[str, Any] = {
        "name": image.name,
        "target": {
            "media_type": target.media_type,
            "digest": target.digest,
            "size": target.size,
            "annotations": dict(sorted(target.annotations.items())),
        },
        "labels": dict(sorted(image.labels.items())),
        "created_at": timestamp(image.created_at),
        "updated_at": timestamp(image.updated_at),
    }
    if contents is not None:
        out["size"] = contents.size
        out["platforms"] = contents.platforms
    return out


@click.group("images")
def images_group() -> None:
    """Manage images: names for manifests and indexes in the content store."""


@images_group.command("ls")
@click.argument("filters", nargs=-1, metavar="[FILTER]...")
@click.option("-q", "--quiet", is_flag=True, help="print only the names")
@format_option("table", "json")
def list_images(filters: tuple[str, ...], quiet: bool, output_format: str) -> None:
    """List images with their type, digest, size and platforms (as ctr images ls).

    FILTERs are containerd's, e.g. 'name~=busybox' or 'labels.team==web'.
    """

    async def fetch(client: Client) -> list[tuple[pb.Image, ImageContents]]:
        found = await client.list_images(filters)
        if quiet:
            return [(image, ImageContents()) for image in found]
        return [(image, await image_contents(client, _target(image))) for image in found]

    items = call(fetch)
    if quiet:
        for image, _ in items:
            click.echo(image.name)
    elif output_format == "json":
        emit(to_json([image_json(image, contents) for image, contents in items]))
    else:
        emit(images_table(items))


@images_group.command("check")
@click.argument("filters", nargs=-1, metavar="[FILTER]...")
@click.option(
    "--snapshotter",
    default=DEFAULT_SNAPSHOTTER,
    show_default=True,
    help="where UNPACKED looks for the layers",
)
@format_option("table", "json")
def check_images(filters: tuple[str, ...], snapshotter: str, output_format: str) -> None:
    """Check that every blob of each image is present for this platform, and whether it is unpacked."""

    async def fetch(client: Client) -> list[tuple[pb.Image, ImageContents, bool]]:
        rows = []
        for image in await client.list_images(filters):
            contents = await image_contents(client, _target(image))
            rows.append((image, contents, await _unpacked(client, snapshotter, contents)))
        return rows

    rows = call(fetch)
    if output_format == "json":
        out = []
        for image, contents, unpacked in rows:
            entry = image_json(image, contents)
            entry.update(
                complete=contents.complete,
                present=contents.present,
                required=contents.required,
                unpacked=unpacked,
            )
            out.append(entry)
        emit(to_json(out))
        return
    emit(
        table(
            ("REF", "TYPE", "DIGEST", "STATUS", "SIZE", "UNPACKED"),
            (
                (
                    image.name,
                    _target(image).media_type,
                    _target(image).digest,
                    f"{'complete' if contents.complete else 'incomplete'} ({contents.present}/{contents.required})",
                    f"{human_size(contents.present_size)}/{human_size(contents.required_size)}",
                    json.dumps(unpacked),
                )
                for image, contents, unpacked in rows
            ),
        )
    )


@images_group.command("rm")
@click.argument("names", nargs=-1, required=True, metavar="NAME...")
@click.option("--sync", is_flag=True, help="return once the image's garbage is collected")
def remove_images(names: tuple[str, ...], sync: bool) -> None:
    """Remove images by name; their blobs and snapshots go with the next collection unless held.

    Unlike ctr, an image that does not exist is an error.
    """

    async def remove(client: Client) -> list[str]:
        failures: list[str] = []
        for i, name in enumerate(names):
            try:
                # As ctr: only the last deletion waits for the collection.
                await client.delete_image(name, sync=sync and i == len(names) - 1)
            except CorralError as exc:
                failures.append(str(exc))
                continue
            click.echo(name)
        return failures

    report_failures(call(remove))


@images_group.command("label")
@click.argument("name")
@click.argument("labels", nargs=-1, required=True, metavar="KEY=[VALUE]...")
def label_image(name: str, labels: tuple[str, ...]) -> None:
    """Set labels on image NAME; KEY= removes KEY. Prints the image's labels after."""
    parsed = parse_labels(labels)

    async def label(client: Client) -> pb.Image:
        return await client.label_image(name, parsed)

    emit(f"{format_labels(call(label).labels)}\n")
