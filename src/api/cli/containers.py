"""``corral containers``: list, inspect, create, label and remove containers."""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from corral.api.cli._output import emit, format_labels, format_option, table, timestamp, to_json
from corral.api.cli._session import call, parse_labels, report_failures, settings
from corral.api.client import Client
from corral.api.types.containerd import types as containerd_types
from corral.api.types.containerd.services.containers import v1 as pb
from corral.api.types.google import protobuf
from corral.api.wire import RUNC_OPTIONS_TYPE_URL, mounts_from_wire
from corral.kernel import CorralError, InvalidArgument, NotFound
from corral.plugins.core.mount import temporary_mount
from corral.plugins.images import oci
from corral.plugins.runtimes.spec import RunFlags, image_stop_signal, run_spec, spec_json

SPEC_TYPE_URL = "types.containerd.io/opencontainers/runtime-spec/1/Spec"
"""Where containerd (and ctr) keep a container's OCI spec, as JSON."""
STOP_SIGNAL_LABEL = "io.containerd.image.config.stop-signal"
DEFAULT_RUNTIME = "io.containerd.runc.v2"


def containers_table(items: Sequence[pb.Container]) -> Table:
    return table(
        ("CONTAINER", "IMAGE", "RUNTIME", "LABELS"),
        (
            (c.id, c.image or "-", c.runtime.name if c.runtime else "-", format_labels(c.labels))
            for c in items
        ),
    )


def _any_json(value: protobuf.Any | None) -> dict[str, str] | None:
    if value is None:
        return None
    return {"type_url": value.type_url, "value": base64.b64encode(value.value).decode()}


def _spec_json(value: protobuf.Any | None) -> Any:
    """The spec as the document it is, when it is containerd's spec type; else the raw Any."""
    if value is not None and value.type_url.removeprefix("type.googleapis.com/") == SPEC_TYPE_URL:
        try:
            return json.loads(value.value)
        except ValueError:
            pass
    return _any_json(value)


def container_json(c: pb.Container) -> dict[str, Any]:
    return {
        "id": c.id,
        "labels": dict(sorted(c.labels.items())),
        "image": c.image,
        "runtime": {
            "name": c.runtime.name if c.runtime else "",
            "options": _any_json(c.runtime.options if c.runtime else None),
        },
        "snapshotter": c.snapshotter,
        "snapshot_key": c.snapshot_key,
        "created_at": timestamp(c.created_at),
        "updated_at": timestamp(c.updated_at),
        "extensions": {k: _any_json(v) for k, v in sorted(c.extensions.items())},
        "sandbox": c.sandbox,
        "spec": _spec_json(c.spec),
    }


@click.group("containers")
def containers_group() -> None:
    """Manage containers: what a task is made from (image, spec, runtime, snapshot)."""


@containers_group.command("ls")
@click.argument("filters", nargs=-1, metavar="[FILTER]...")
@click.option("-q", "--quiet", is_flag=True, help="print only the ids")
@format_option("table", "json")
def list_containers(filters: tuple[str, ...], quiet: bool, output_format: str) -> None:
    """List containers with their image, runtime and labels.

    FILTERs are containerd's, e.g. 'image~=busybox' or 'labels.team==web'.
    """

    async def fetch(client: Client) -> list[pb.Container]:
        return await client.list_containers(filters)

    items = call(fetch)
    if quiet:
        for c in items:
            click.echo(c.id)
    elif output_format == "json":
        emit(to_json([container_json(c) for c in items]))
    else:
        emit(containers_table(items))


@containers_group.command("info")
@click.argument("container_id", metavar="ID")
def container_info(container_id: str) -> None:
    """Show a container as JSON: runtime, snapshot, labels, extensions and its spec."""

    async def fetch(client: Client) -> pb.Container:
        return await client.get_container(container_id)

    emit(to_json(container_json(call(fetch))))


async def _image_config(client: Client, name: str) -> tuple[str, dict[str, str], dict[str, Any], str]:
    """The image's name and labels, its config document for this host, and its layers' chain ID."""
    image = await client.get_image(name)
    assert image.target is not None
    media_type, digest = image.target.media_type, image.target.digest
    matcher = oci.default_matcher()

    async def read(d: str) -> bytes:
        return b"".join([chunk async for chunk in client.read_content(d)])

    if oci.is_index(media_type):
        index = oci.parse_index(await read(digest), media_type)
        chosen = [m for m in index.manifests if m.platform is None or matcher.match(m.platform)]
        if not chosen:
            raise NotFound(f"image {name!r} has no manifest for this platform")
        media_type, digest = chosen[0].media_type, chosen[0].digest
    manifest = oci.parse_manifest(await read(digest), media_type)
    config_bytes = await read(manifest.config.digest)
    config = oci.parse_image_config(config_bytes)
    if not config.diff_ids:
        raise InvalidArgument(f"image {name!r} has no layers")
    document: dict[str, Any] = json.loads(config_bytes)
    return image.name, dict(image.labels), document, oci.chain_id(config.diff_ids)


@containers_group.command("create")
@click.argument("image")
@click.argument("container_id", metavar="ID")
@click.argument("args", nargs=-1)
@click.option("--snapshotter", default="overlayfs", show_default=True, help="where the image is unpacked")
@click.option("--runtime", default=DEFAULT_RUNTIME, show_default=True, help="the runtime's name")
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE", help="label the container")
@click.option("--env", multiple=True, metavar="KEY=VALUE", help="set an environment variable")
def create_container(
    image: str,
    container_id: str,
    args: tuple[str, ...],
    snapshotter: str,
    runtime: str,
    labels: tuple[str, ...],
    env: tuple[str, ...],
) -> None:
    """Create container ID from the unpacked IMAGE, with its writable snapshot, as ctr does.

    The spec is containerd's default with the image's config (env, args or ARGS, cwd, user);
    the image must be unpacked in --snapshotter (ctr images import does that).
    """
    parsed = parse_labels(labels)

    async def create(client: Client) -> pb.Container:
        flags = RunFlags(args=args, env=env)
        return await create_from_image(client, image, container_id, flags, snapshotter, runtime, parsed)

    click.echo(call(create).id)


async def create_from_image(
    client: Client,
    image: str,
    container_id: str,
    flags: RunFlags,
    snapshotter: str,
    runtime: str,
    labels: dict[str, str],
    adjust: Callable[[dict[str, Any], Path], None] | None = None,
) -> pb.Container:
    """Container ``container_id`` from the unpacked ``image``, as ctr makes it: the image's config
    and ctr's default spec, its writable snapshot prepared under a short lease. ``adjust`` may change
    the spec while the rootfs is mounted (``corral run``'s user namespaces and terminal)."""
    namespace = settings().namespace
    name, labels_of_image, config, chain = await _image_config(client, image)
    options = protobuf.Any(type_url=RUNC_OPTIONS_TYPE_URL) if runtime == DEFAULT_RUNTIME else None
    container = pb.Container(
        id=container_id,
        # As ctr: the config's labels, then the image's, then the command line's.
        labels={
            **(config.get("config") or {}).get("Labels", {}),
            **labels_of_image,
            **labels,
            STOP_SIGNAL_LABEL: image_stop_signal(config),
        },
        image=name,
        runtime=pb.ContainerRuntime(name=runtime, options=options),
        snapshotter=snapshotter,
        snapshot_key=container_id,
    )

    async def with_spec(mounts: list[containerd_types.Mount]) -> pb.Container:
        # As containerd: the user and groups are looked up in the image's own files.
        async with temporary_mount(mounts_from_wire(mounts)) as rootfs:
            spec = run_spec(namespace, container_id, flags, image=config, rootfs=rootfs)
            if adjust is not None:
                adjust(spec, rootfs)
        container.spec = protobuf.Any(type_url=SPEC_TYPE_URL, value=spec_json(spec))
        return container

    return await client.create_container_with_rootfs(container, chain, with_spec)


@containers_group.command("rm")
@click.argument("container_ids", nargs=-1, required=True, metavar="ID...")
@click.option("--keep-snapshot", is_flag=True, help="leave the container's snapshot in place")
def remove_containers(container_ids: tuple[str, ...], keep_snapshot: bool) -> None:
    """Remove containers and (as ctr) their snapshots."""

    async def remove(client: Client) -> list[str]:
        failures: list[str] = []
        for container_id in container_ids:
            try:
                found = await client.get_container(container_id)
                if not keep_snapshot and found.snapshotter and found.snapshot_key:
                    with contextlib.suppress(NotFound):
                        await client.snapshot_remove(found.snapshotter, found.snapshot_key)
                await client.delete_container(container_id)
            except CorralError as exc:
                failures.append(str(exc))
                continue
            click.echo(container_id)
        return failures

    report_failures(call(remove))


@containers_group.command("label")
@click.argument("container_id", metavar="ID")
@click.argument("labels", nargs=-1, required=True, metavar="KEY=[VALUE]...")
def label_container(container_id: str, labels: tuple[str, ...]) -> None:
    """Set labels on container ID; KEY= removes KEY. Prints the container's labels after."""
    parsed = parse_labels(labels)

    async def label(client: Client) -> pb.Container:
        return await client.label_container(container_id, parsed)

    emit(f"{format_labels(call(label).labels)}\n")
