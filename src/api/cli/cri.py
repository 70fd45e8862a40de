"""``corral cri``: crictl's verbs over the CRI (runtime.v1) on corrald's socket.

``version``, ``info``, ``images``, ``pull``, ``rmi`` and ``inspecti`` call the RuntimeService and
ImageService a kubelet calls, so a node operator can look at what the kubelet sees without
crictl. JSON output is the CRI messages in proto3 JSON, as crictl prints them.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click

from corral.api.cli._output import emit, format_option, human_size, table, to_json
from corral.api.cli._session import CommandError, UsageProblem, call
from corral.api.client import Client
from corral.api.types.runtime import v1 as pb

T = TypeVar("T")


def _cri(fn: Callable[[pb.RuntimeServiceStub, pb.ImageServiceStub], Awaitable[T]]) -> T:
    """One conversation with the CRI services on the daemon's socket; statuses become error kinds."""

    async def talk(client: Client) -> T:
        return await client.call(
            fn(pb.RuntimeServiceStub(client.channel), pb.ImageServiceStub(client.channel))
        )

    return call(talk)


def _parsed_info(info: dict[str, str]) -> dict[str, Any]:
    """crictl's rendering of an ``info`` map: values that are JSON are shown as JSON."""
    out: dict[str, Any] = {}
    for key, value in sorted(info.items()):
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


@click.group("cri")
def cri_group() -> None:
    """What the kubelet sees: the CRI's runtime status and images (crictl's verbs)."""


@cri_group.command("version")
@format_option("table", "json")
def version_command(output_format: str) -> None:
    """The runtime's name and version and the CRI version it speaks."""
    reply = _cri(lambda rt, _: rt.version(pb.VersionRequest(version="v1")))
    if output_format == "json":
        emit(to_json(reply.to_dict(include_default_values=True)))
        return
    emit(
        f"Version:  {reply.version}\nRuntimeName:  {reply.runtime_name}\n"
        f"RuntimeVersion:  {reply.runtime_version}\nRuntimeApiVersion:  {reply.runtime_api_version}\n"
    )


@cri_group.command("info")
@format_option("json", "table")
def info_command(output_format: str) -> None:
    """The runtime's conditions (RuntimeReady, NetworkReady …), handlers and configuration."""
    reply = _cri(lambda rt, _: rt.status(pb.StatusRequest(verbose=True)))
    status = reply.to_dict(include_default_values=True)
    if output_format == "json":
        emit(to_json({"status": status.get("status"), "runtimeHandlers": status.get("runtimeHandlers"),
                      **_parsed_info(dict(reply.info))}))  # fmt: skip
        return
    conditions = reply.status.conditions if reply.status else []
    emit(
        table(
            ("CONDITION", "STATUS", "REASON", "MESSAGE"),
            [(c.type, str(c.status).lower(), c.reason, c.message) for c in conditions],
        )
    )


def _split_name(name: str) -> tuple[str, str]:
    """``host/repo:tag`` to (``host/repo``, ``tag``); the colon of a port is not a tag's."""
    repo, colon, tag = name.rpartition(":")
    if not colon or "/" in tag:
        return name, "<none>"
    return repo, tag


def _short_id(image_id: str) -> str:
    return image_id.partition(":")[2][:13] or image_id[:13]


@cri_group.command("images")
@click.argument("reference", required=False, default="")
@click.option("-q", "--quiet", is_flag=True, help="only image ids")
@click.option("--digests", is_flag=True, help="show digests")
@click.option("--no-trunc", is_flag=True, help="show whole image ids")
@format_option("table", "json")
def images_command(reference: str, quiet: bool, digests: bool, no_trunc: bool, output_format: str) -> None:
    """List images (only those REFERENCE names, when given)."""
    request = pb.ListImagesRequest(
        filter=pb.ImageFilter(image=pb.ImageSpec(image=reference)) if reference else None
    )
    images = _cri(lambda _, im: im.list_images(request)).images
    if output_format == "json":
        emit(to_json({"images": [i.to_dict(include_default_values=True) for i in images]}))
        return
    if quiet:
        emit("".join(f"{i.id}\n" for i in images))
        return
    rows = []
    for image in images:
        shown_id = image.id if no_trunc else _short_id(image.id)
        digest = image.repo_digests[0].rpartition("@")[2] if image.repo_digests else "<none>"
        names = (
            [_split_name(tag) for tag in image.repo_tags]
            or [(d.rpartition("@")[0], "<none>") for d in image.repo_digests[:1]]
            or [("<none>", "<none>")]
        )
        for repo, tag in names:
            row = [repo, tag] + ([_short_id(digest) if not no_trunc else digest] if digests else [])
            rows.append([*row, shown_id, human_size(image.size)])
    headers = ["IMAGE", "TAG"] + (["DIGEST"] if digests else []) + ["IMAGE ID", "SIZE"]
    emit(table(headers, rows))


def _auth(creds: str, auth: str, server: str) -> pb.AuthConfig | None:
    if creds and auth:
        raise UsageProblem("--creds and --auth cannot both be given")
    if creds:
        user, colon, password = creds.partition(":")
        if not colon or not user:
            raise UsageProblem("--creds must be USERNAME:PASSWORD")
        return pb.AuthConfig(username=user, password=password, server_address=server)
    if auth:
        try:
            base64.b64decode(auth, validate=True)
        except ValueError:
            raise UsageProblem("--auth must be base64 of USERNAME:PASSWORD") from None
        return pb.AuthConfig(auth=auth, server_address=server)
    return None


@cri_group.command("pull")
@click.argument("image")
@click.option("--creds", default="", metavar="USER:PASSWORD", help="registry credentials")
@click.option("--auth", "auth_b64", default="", metavar="BASE64", help="base64 of USER:PASSWORD")
@click.option("--server", default="", help="the registry the credentials are for (their ServerAddress)")
@click.option("-r", "--runtime-handler", default="", help="pull for this runtime handler's snapshotter")
@format_option("table", "json")
def pull_command(
    image: str, creds: str, auth_b64: str, server: str, runtime_handler: str, output_format: str
) -> None:
    """Pull IMAGE through the CRI (into the k8s.io namespace, unpacked)."""
    request = pb.PullImageRequest(
        image=pb.ImageSpec(image=image, runtime_handler=runtime_handler), auth=_auth(creds, auth_b64, server)
    )
    reply = _cri(lambda _, im: im.pull_image(request))
    if output_format == "json":
        emit(to_json({"imageRef": reply.image_ref}))
        return
    emit(f"Image is up to date for {reply.image_ref}\n")


async def _status(im: pb.ImageServiceStub, name: str, verbose: bool = False) -> pb.ImageStatusResponse:
    return await im.image_status(pb.ImageStatusRequest(image=pb.ImageSpec(image=name), verbose=verbose))


def _image_status(name: str, *, verbose: bool = False) -> pb.ImageStatusResponse:
    async def ask(_: pb.RuntimeServiceStub, im: pb.ImageServiceStub) -> pb.ImageStatusResponse:
        return await _status(im, name, verbose)

    return _cri(ask)


def _remove(image_id: str) -> None:
    async def remove(_: pb.RuntimeServiceStub, im: pb.ImageServiceStub) -> pb.RemoveImageResponse:
        return await im.remove_image(pb.RemoveImageRequest(image=pb.ImageSpec(image=image_id)))

    _cri(remove)


@cri_group.command("rmi")
@click.argument("images", nargs=-1, required=True)
def rmi_command(images: tuple[str, ...]) -> None:
    """Remove IMAGES (every name of each), as crictl rmi."""
    failures = []
    for name in images:
        found = _image_status(name).image
        if found is None:
            failures.append(f"no such image {name}")
            continue
        _remove(found.id)
        for removed in [*found.repo_tags, *found.repo_digests] or [found.id]:
            emit(f"Deleted: {removed}\n")
    for message in failures[:-1]:
        click.echo(f"corral: {message}", err=True)
    if failures:
        raise CommandError(failures[-1])


@cri_group.command("inspecti")
@click.argument("images", nargs=-1, required=True)
@format_option("json", "table")
def inspecti_command(images: tuple[str, ...], output_format: str) -> None:
    """The status of IMAGES, with the runtime's verbose info (the image config, its chain ID)."""
    found: list[tuple[pb.Image, dict[str, str]]] = []
    for name in images:
        reply = _image_status(name, verbose=True)
        if reply.image is None:
            raise CommandError(f"no such image {name!r} present")
        found.append((reply.image, dict(reply.info)))
    if output_format == "json":
        documents = [
            {"status": i.to_dict(include_default_values=True), **_parsed_info(info)} for i, info in found
        ]
        emit(to_json(documents[0] if len(documents) == 1 else documents))
        return
    rows = [
        (i.id, ",".join(i.repo_tags) or "<none>", ",".join(i.repo_digests) or "<none>", human_size(i.size),
         "true" if i.pinned else "false")
        for i, _ in found
    ]  # fmt: skip
    emit(table(("IMAGE ID", "TAGS", "DIGESTS", "SIZE", "PINNED"), rows))
