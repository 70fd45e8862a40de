"""``corral cri``: crictl's verbs over the CRI (runtime.v1) on corrald's socket.

``version``, ``info``, ``images``, ``pull``, ``rmi``, ``inspecti``, the pod verbs ``runp``,
``stopp``, ``rmp``, ``pods``, ``inspectp`` and ``statsp``, and the container verbs ``create``,
``start``, ``stop``, ``rm``, ``ps``, ``inspect``, ``logs``, ``exec``, ``stats`` and ``update``
call the RuntimeService and ImageService a kubelet calls, so a node operator can look at what the kubelet sees without
crictl. JSON output is the CRI messages in proto3 JSON, as crictl prints them.
"""

from __future__ import annotations

import base64
import json
import re
import time
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


def _each(
    ids: tuple[str, ...], fn: Callable[[pb.RuntimeServiceStub, str], Awaitable[Any]], said: str
) -> None:
    """``fn`` for each of ``ids`` in turn (crictl's verbs over several pods or containers), saying
    ``said`` (with ``{}`` for the id) after each one that succeeded."""
    for one in ids:
        _cri(lambda rt, _, i=one: fn(rt, i))  # type: ignore[misc]
        emit(said.format(one) + "\n")


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
    """What the kubelet sees: the CRI's runtime status, images and pods (crictl's verbs)."""


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


# -- pod sandboxes ----------------------------------------------------------------------------------
def _load_message(path: str, kind: type[T]) -> T:
    """A CRI message from a JSON file in proto3 JSON (crictl's pod and container config files)."""
    try:
        with open(path, encoding="utf-8") as f:
            document = json.load(f)
    except OSError as exc:
        raise UsageProblem(f"cannot read {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise UsageProblem(f"{path} is not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise UsageProblem(f"{path} must hold a JSON object")
    try:
        return kind.from_dict(document)  # type: ignore[attr-defined, no-any-return]
    except (TypeError, ValueError, KeyError) as exc:
        raise UsageProblem(f"{path} is not a {kind.__name__}: {exc}") from None


def _ago(nanos: int) -> str:
    """crictl's CREATED column: how long ago, in the largest whole unit."""
    seconds = max(0, int(time.time() - nanos / 1e9))
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            n = seconds // size
            return f"{n} {unit}{'s' if n != 1 else ''} ago"
    return "Less than a second ago" if seconds < 1 else f"{seconds} seconds ago"


def _labels(pairs: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key:
            raise UsageProblem(f"--label must be KEY=VALUE, not {pair!r}")
        out[key] = value
    return out


_POD_STATES = {"ready": pb.PodSandboxState.SANDBOX_READY, "notready": pb.PodSandboxState.SANDBOX_NOTREADY}


@cri_group.command("runp")
@click.argument("config_file", metavar="POD-CONFIG.json")
@click.option(
    "-r", "--runtime", "runtime_handler", default="", help="the runtime handler to run the pod with"
)
def runp_command(config_file: str, runtime_handler: str) -> None:
    """Run a pod sandbox from a PodSandboxConfig in JSON; prints its id."""
    config = _load_message(config_file, pb.PodSandboxConfig)
    request = pb.RunPodSandboxRequest(config=config, runtime_handler=runtime_handler)
    emit(f"{_cri(lambda rt, _: rt.run_pod_sandbox(request)).pod_sandbox_id}\n")


@cri_group.command("stopp")
@click.argument("pods", nargs=-1, required=True)
def stopp_command(pods: tuple[str, ...]) -> None:
    """Stop PODS (ids or unique prefixes): their processes end and their network is released."""
    _each(
        pods,
        lambda rt, i: rt.stop_pod_sandbox(pb.StopPodSandboxRequest(pod_sandbox_id=i)),
        "Stopped sandbox {}",
    )


@cri_group.command("rmp")
@click.argument("pods", nargs=-1, required=True)
def rmp_command(pods: tuple[str, ...]) -> None:
    """Remove PODS (stopping them first when they run)."""
    _each(
        pods,
        lambda rt, i: rt.remove_pod_sandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=i)),
        "Removed sandbox {}",
    )


@cri_group.command("pods")
@click.option("--id", "pod_id", default="", help="only the pod with this id (or unique prefix)")
@click.option("--name", default="", help="only pods whose name matches this regular expression")
@click.option("--namespace", default="", help="only pods whose namespace matches this regular expression")
@click.option("--state", type=click.Choice(sorted(_POD_STATES)), default=None, help="only pods in this state")
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE", help="only pods with this label")
@click.option("-q", "--quiet", is_flag=True, help="only pod ids")
@click.option("--no-trunc", is_flag=True, help="show whole pod ids")
@format_option("table", "json")
def pods_command(
    pod_id: str,
    name: str,
    namespace: str,
    state: str | None,
    labels: tuple[str, ...],
    quiet: bool,
    no_trunc: bool,
    output_format: str,
) -> None:
    """List pod sandboxes, newest first (crictl pods)."""
    request = pb.ListPodSandboxRequest(
        filter=pb.PodSandboxFilter(
            id=pod_id,
            state=None if state is None else pb.PodSandboxStateValue(_POD_STATES[state]),
            label_selector=_labels(labels),
        )
    )
    items = _cri(lambda rt, _: rt.list_pod_sandbox(request)).items
    try:
        by_name, by_namespace = re.compile(name), re.compile(namespace)
    except re.error as exc:
        raise UsageProblem(f"bad regular expression: {exc}") from None
    items = sorted(
        (i for i in items if i.metadata is None
         or (by_name.search(i.metadata.name) and by_namespace.search(i.metadata.namespace))),
        key=lambda i: i.created_at,
        reverse=True,
    )  # fmt: skip
    if output_format == "json":
        emit(to_json({"items": [i.to_dict(include_default_values=True) for i in items]}))
        return
    if quiet:
        if items:
            emit("".join(f"{i.id}\n" for i in items))
        return
    rows = []
    for i in items:
        meta = i.metadata or pb.PodSandboxMetadata()
        shown = "Ready" if i.state == pb.PodSandboxState.SANDBOX_READY else "NotReady"
        rows.append((i.id if no_trunc else i.id[:13], _ago(i.created_at), shown, meta.name, meta.namespace,
                     str(meta.attempt), i.runtime_handler or "(default)"))  # fmt: skip
    emit(table(("POD ID", "CREATED", "STATE", "NAME", "NAMESPACE", "ATTEMPT", "RUNTIME"), rows))


@cri_group.command("inspectp")
@click.argument("pods", nargs=-1, required=True)
@format_option("json", "table")
def inspectp_command(pods: tuple[str, ...], output_format: str) -> None:
    """The status of PODS with the runtime's verbose info (process, network namespace, config)."""
    found = []
    for pod_id in pods:
        request = pb.PodSandboxStatusRequest(pod_sandbox_id=pod_id, verbose=True)
        found.append(_cri(lambda rt, _, r=request: rt.pod_sandbox_status(r)))  # type: ignore[misc]
    if output_format == "json":
        documents = [
            {"status": f.status.to_dict(include_default_values=True), "info": _parsed_info(dict(f.info))}
            for f in found
        ]
        emit(to_json(documents[0] if len(documents) == 1 else documents))
        return
    rows = []
    for f in found:
        s = f.status
        meta = s.metadata or pb.PodSandboxMetadata()
        shown = "Ready" if s.state == pb.PodSandboxState.SANDBOX_READY else "NotReady"
        rows.append((s.id, meta.name, meta.namespace, shown, s.network.ip if s.network else ""))
    emit(table(("POD ID", "NAME", "NAMESPACE", "STATE", "IP"), rows))


# -- containers -------------------------------------------------------------------------------------
_CONTAINER_STATES = {
    "created": pb.ContainerState.CONTAINER_CREATED,
    "running": pb.ContainerState.CONTAINER_RUNNING,
    "exited": pb.ContainerState.CONTAINER_EXITED,
    "unknown": pb.ContainerState.CONTAINER_UNKNOWN,
}
_STATE_WORDS = {v: k.capitalize() for k, v in _CONTAINER_STATES.items()}


@cri_group.command("create")
@click.argument("pod_id", metavar="POD-ID")
@click.argument("container_file", metavar="CONTAINER-CONFIG.json")
@click.argument("pod_file", metavar="POD-CONFIG.json")
def create_command(pod_id: str, container_file: str, pod_file: str) -> None:
    """Create a container in pod POD-ID from a ContainerConfig in JSON; prints its id."""
    request = pb.CreateContainerRequest(
        pod_sandbox_id=pod_id,
        config=_load_message(container_file, pb.ContainerConfig),
        sandbox_config=_load_message(pod_file, pb.PodSandboxConfig),
    )
    emit(f"{_cri(lambda rt, _: rt.create_container(request)).container_id}\n")


@cri_group.command("start")
@click.argument("containers", nargs=-1, required=True)
def start_command(containers: tuple[str, ...]) -> None:
    """Start created CONTAINERS."""
    _each(containers, lambda rt, i: rt.start_container(pb.StartContainerRequest(container_id=i)), "{}")


@cri_group.command("stop")
@click.option(
    "-t", "--timeout", "grace", default=0, type=click.IntRange(min=0), help="seconds before SIGKILL"
)
@click.argument("containers", nargs=-1, required=True)
def stop_command(grace: int, containers: tuple[str, ...]) -> None:
    """Stop CONTAINERS: the stop signal, then SIGKILL after --timeout seconds."""
    _each(
        containers,
        lambda rt, i: rt.stop_container(pb.StopContainerRequest(container_id=i, timeout=grace)),
        "{}",
    )


@cri_group.command("rm")
@click.argument("containers", nargs=-1, required=True)
def rm_command(containers: tuple[str, ...]) -> None:
    """Remove CONTAINERS (a running one is killed first)."""
    _each(containers, lambda rt, i: rt.remove_container(pb.RemoveContainerRequest(container_id=i)), "{}")


@cri_group.command("ps")
@click.option("-a", "--all", "show_all", is_flag=True, help="all containers, not only running ones")
@click.option("--id", "container_id", default="", help="only the container with this id (or unique prefix)")
@click.option("-p", "--pod", "pod_id", default="", help="only containers of this pod")
@click.option("--name", default="", help="only containers whose name matches this regular expression")
@click.option("--state", type=click.Choice(sorted(_CONTAINER_STATES)), default=None, help="only this state")
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE", help="only containers with this label")
@click.option("-q", "--quiet", is_flag=True, help="only container ids")
@click.option("--no-trunc", is_flag=True, help="show whole ids")
@format_option("table", "json")
def ps_command(
    show_all: bool,
    container_id: str,
    pod_id: str,
    name: str,
    state: str | None,
    labels: tuple[str, ...],
    quiet: bool,
    no_trunc: bool,
    output_format: str,
) -> None:
    """List containers, newest first (crictl ps)."""
    wanted = (
        _CONTAINER_STATES[state] if state else (None if show_all else pb.ContainerState.CONTAINER_RUNNING)
    )
    request = pb.ListContainersRequest(
        filter=pb.ContainerFilter(
            id=container_id,
            pod_sandbox_id=pod_id,
            state=None if wanted is None else pb.ContainerStateValue(wanted),
            label_selector=_labels(labels),
        )
    )
    try:
        by_name = re.compile(name)
    except re.error as exc:
        raise UsageProblem(f"bad regular expression: {exc}") from None
    found = _cri(lambda rt, _: rt.list_containers(request)).containers
    items = sorted(
        (c for c in found if c.metadata is None or by_name.search(c.metadata.name)),
        key=lambda c: c.created_at,
        reverse=True,
    )
    if output_format == "json":
        emit(to_json({"containers": [c.to_dict(include_default_values=True) for c in items]}))
        return
    if quiet:
        if items:
            emit("".join(f"{c.id}\n" for c in items))
        return
    rows = []
    for c in items:
        meta = c.metadata or pb.ContainerMetadata()
        image = c.image.image if c.image else ""
        rows.append((
            c.id if no_trunc else c.id[:13], image if no_trunc else _short_id(image), _ago(c.created_at),
            _STATE_WORDS.get(c.state, "Unknown"), meta.name, str(meta.attempt),
            c.pod_sandbox_id if no_trunc else c.pod_sandbox_id[:13],
        ))  # fmt: skip
    emit(table(("CONTAINER", "IMAGE", "CREATED", "STATE", "NAME", "ATTEMPT", "POD ID"), rows))


def _container_status(cid: str) -> tuple[pb.ContainerStatus, dict[str, str]]:
    request = pb.ContainerStatusRequest(container_id=cid, verbose=True)
    reply = _cri(lambda rt, _: rt.container_status(request))
    if reply.status is None:
        raise CommandError(f"no status for container {cid}")
    return reply.status, dict(reply.info)


@cri_group.command("inspect")
@click.argument("containers", nargs=-1, required=True)
@format_option("json", "table")
def inspect_command(containers: tuple[str, ...], output_format: str) -> None:
    """The status of CONTAINERS: state, exit code and reason, times, mounts, log path."""
    found = [_container_status(cid) for cid in containers]
    if output_format == "json":
        documents = [
            {"status": s.to_dict(include_default_values=True), "info": _parsed_info(info)}
            for s, info in found
        ]
        emit(to_json(documents[0] if len(documents) == 1 else documents))
        return
    rows = []
    for s, _ in found:
        rows.append((s.id, s.metadata.name if s.metadata else "", _STATE_WORDS.get(s.state, "Unknown"),
                     str(s.exit_code), s.reason))  # fmt: skip
    emit(table(("CONTAINER", "NAME", "STATE", "EXIT CODE", "REASON"), rows))


@cri_group.command("logs")
@click.argument("container_id", metavar="CONTAINER")
@click.option("--tail", "tail_lines", type=int, default=-1, help="only the last N lines")
@click.option("-t", "--timestamps", is_flag=True, help="show each line's timestamp")
def logs_command(container_id: str, tail_lines: int, timestamps: bool) -> None:
    """The container's log (the kubelet's file), stdout lines to stdout and stderr lines to stderr;
    partial records are joined into their line."""
    path = _container_status(container_id)[0].log_path
    if not path:
        raise CommandError(f"container {container_id} has no log path")
    try:
        with open(path, "rb") as f:
            records = f.read().splitlines()
    except OSError as exc:
        raise CommandError(f"cannot read the log {path}: {exc.strerror}") from None
    lines: list[tuple[str, bytes, bytes]] = []
    pending: dict[bytes, bytes] = {}
    for record in records:
        parts = record.split(b" ", 3)
        if len(parts) < 3:
            continue
        stamp, stream, tag = parts[:3]
        text = parts[3] if len(parts) > 3 else b""
        if tag == b"P":
            pending[stream] = pending.get(stream, b"") + text
            continue
        lines.append((stream.decode(), stamp, pending.pop(stream, b"") + text))
    if tail_lines >= 0:
        lines = lines[len(lines) - tail_lines :] if tail_lines else []
    for name, stamp, line in lines:
        shown = (stamp + b" " + line if timestamps else line).decode(errors="replace")
        click.echo(shown, err=name == "stderr")
    for stream_name, rest in pending.items():  # the output ended mid-line
        click.echo(rest.decode(errors="replace"), err=stream_name == b"stderr")


@cri_group.command("exec", context_settings={"ignore_unknown_options": True})
@click.option("--timeout", "limit", default=0, type=click.IntRange(min=0), help="seconds (0: no limit)")
@click.argument("container_id", metavar="CONTAINER")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_command(limit: int, container_id: str, command: tuple[str, ...]) -> None:
    """Run COMMAND in the container and wait (ExecSync); its output, and its exit status as ours."""
    request = pb.ExecSyncRequest(container_id=container_id, cmd=list(command), timeout=limit)
    reply = _cri(lambda rt, _: rt.exec_sync(request))
    click.echo(reply.stdout, nl=False)
    click.echo(reply.stderr, nl=False, err=True)
    if reply.exit_code:
        raise SystemExit(reply.exit_code)


# -- stats and resources ---------------------------------------------------------------------------
_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1024, "m": 1024**2, "mb": 1024**2, "g": 1024**3, "gb": 1024**3}


def _bytes(value: str | None) -> int:
    """``134217728``, ``128m``, ``1g``: docker's RAMInBytes (binary units)."""
    if not value:
        return 0
    found = re.fullmatch(r"(\d+)\s*([a-zA-Z]*)", value.strip())
    if found is None or found.group(2).lower() not in _SIZE_UNITS:
        raise UsageProblem(f"--memory must be bytes or a size such as 128m, not {value!r}")
    return int(found.group(1)) * _SIZE_UNITS[found.group(2).lower()]


def _cpu_percent(new: pb.CpuUsage | None, old: pb.CpuUsage | None) -> str:
    """crictl's CPU %: the usage between two samples over the time between them."""
    if (
        new is None
        or old is None
        or new.usage_core_nano_seconds is None
        or old.usage_core_nano_seconds is None
    ):
        return "0.00"
    span = new.timestamp - old.timestamp
    used = new.usage_core_nano_seconds.value - old.usage_core_nano_seconds.value
    return f"{used / span * 100:.2f}" if span > 0 and new.usage_core_nano_seconds.value else "0.00"


def _value(v: pb.UInt64Value | None) -> int:
    return v.value if v is not None else 0


@cri_group.command("stats")
@click.argument("containers", nargs=-1)
@click.option("-a", "--all", "show_all", is_flag=True, help="containers that are not running too")
@click.option("--id", "container_id", default="", help="only the container with this id (or unique prefix)")
@click.option("-p", "--pod", "pod_id", default="", help="only containers of this pod")
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE", help="only containers with this label")
@click.option("--pods", "pods", is_flag=True, help="the pods' stats instead (as statsp)")
@click.option("-s", "--seconds", default=1.0, type=click.FloatRange(min=0.1), help="the CPU sample's length")
@format_option("table", "json")
def stats_command(
    containers: tuple[str, ...], show_all: bool, container_id: str, pod_id: str, labels: tuple[str, ...],
    pods: bool, seconds: float, output_format: str,
) -> None:  # fmt: skip
    """Containers' CPU, memory and writable layer (CONTAINERS, or those the filters match), as
    crictl stats shows them: CPU % over a sample of --seconds."""
    if pods:
        _pod_stats(container_id or (containers[0] if containers else ""), labels, seconds, output_format)
        return
    wanted = [container_id] if container_id else list(containers) or [""]

    def request(cid: str) -> pb.ListContainerStatsRequest:
        return pb.ListContainerStatsRequest(
            filter=pb.ContainerStatsFilter(id=cid, pod_sandbox_id=pod_id, label_selector=_labels(labels))
        )

    def sample() -> list[pb.ContainerStats]:
        found: list[pb.ContainerStats] = []
        for cid in wanted:
            asked = request(cid)
            found += _cri(lambda rt, _, r=asked: rt.list_container_stats(r)).stats  # type: ignore[misc]
        return found

    if output_format == "json":
        emit(to_json({"stats": [s.to_dict() for s in sample()]}))
        return
    old = {s.attributes.id: s for s in sample() if s.attributes is not None}
    time.sleep(seconds)
    rows = []
    for s in sample():
        attributes = s.attributes or pb.ContainerAttributes()
        memory = _value(s.memory.working_set_bytes) if s.memory is not None else 0
        cpu = _value(s.cpu.usage_core_nano_seconds) if s.cpu is not None else 0
        if (not show_all and cpu == 0 and memory == 0) or attributes.id not in old:
            continue
        layer = s.writable_layer or pb.FilesystemUsage()
        rows.append((
            attributes.id[:13], attributes.metadata.name if attributes.metadata else "",
            _cpu_percent(s.cpu, old[attributes.id].cpu), human_size(memory),
            human_size(_value(layer.used_bytes)), str(_value(layer.inodes_used)),
        ))  # fmt: skip
    emit(table(("CONTAINER", "NAME", "CPU %", "MEM", "DISK", "INODES"), rows))


def _pod_stats(pod_id: str, labels: tuple[str, ...], seconds: float, output_format: str) -> None:
    request = pb.ListPodSandboxStatsRequest(
        filter=pb.PodSandboxStatsFilter(id=pod_id, label_selector=_labels(labels))
    )

    def sample() -> list[pb.PodSandboxStats]:
        return list(_cri(lambda rt, _: rt.list_pod_sandbox_stats(request)).stats)

    if output_format == "json":
        emit(to_json({"stats": [s.to_dict() for s in sample()]}))
        return
    old = {s.attributes.id: s for s in sample() if s.attributes is not None}
    time.sleep(seconds)
    rows = []
    for s in sample():
        attributes = s.attributes or pb.PodSandboxAttributes()
        if attributes.id not in old:
            continue
        linux, before = (
            s.linux or pb.LinuxPodSandboxStats(),
            old[attributes.id].linux or pb.LinuxPodSandboxStats(),
        )
        memory = _value(linux.memory.working_set_bytes) if linux.memory is not None else 0
        name = attributes.metadata.name if attributes.metadata else ""
        rows.append((name, attributes.id[:13], _cpu_percent(linux.cpu, before.cpu), human_size(memory)))
    emit(table(("POD", "POD ID", "CPU %", "MEM"), rows))


@cri_group.command("statsp")
@click.option("--id", "pod_id", default="", help="only the pod with this id (or unique prefix)")
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE", help="only pods with this label")
@click.option("-s", "--seconds", default=1.0, type=click.FloatRange(min=0.1), help="the CPU sample's length")
@format_option("table", "json")
def statsp_command(pod_id: str, labels: tuple[str, ...], seconds: float, output_format: str) -> None:
    """Ready pods' CPU and memory (their cgroup), as crictl statsp shows them."""
    _pod_stats(pod_id, labels, seconds, output_format)


@cri_group.command("update")
@click.argument("containers", nargs=-1, required=True)
@click.option("--cpu-period", default=0, type=click.IntRange(min=0), help="CFS period (µs)")
@click.option("--cpu-quota", default=0, type=int, help="CFS quota (µs per period)")
@click.option("--cpu-share", "cpu_shares", default=0, type=click.IntRange(min=0), help="CPU shares (weight)")
@click.option("--cpuset-cpus", default="", help="CPUs it may run on (0-3, 0,1)")
@click.option("--cpuset-mems", default="", help="memory nodes it may use")
@click.option("--memory", default=None, help="memory limit: bytes, or 128m, 1g …")
@click.option("--memory-swap", default=None, help="memory and swap limit: bytes, or 256m …")
@format_option("table", "json")
def update_command(
    containers: tuple[str, ...], cpu_period: int, cpu_quota: int, cpu_shares: int, cpuset_cpus: str,
    cpuset_mems: str, memory: str | None, memory_swap: str | None, output_format: str,
) -> None:  # fmt: skip
    """Change running (or created) CONTAINERS' resource limits; options left out stay as they are."""
    resources = pb.LinuxContainerResources(
        cpu_period=cpu_period, cpu_quota=cpu_quota, cpu_shares=cpu_shares, cpuset_cpus=cpuset_cpus,
        cpuset_mems=cpuset_mems, memory_limit_in_bytes=_bytes(memory),
        memory_swap_limit_in_bytes=_bytes(memory_swap),
    )  # fmt: skip
    answers = []
    for cid in containers:
        request = pb.UpdateContainerResourcesRequest(container_id=cid, linux=resources)
        _cri(lambda rt, _, r=request: rt.update_container_resources(r))  # type: ignore[misc]
        if output_format == "json":
            status = _cri(
                lambda rt, _, c=cid: rt.container_status(pb.ContainerStatusRequest(container_id=c))  # type: ignore[misc]
            ).status
            answers.append(
                {"id": status.id, "resources": status.resources.to_dict() if status.resources else {}}
            )
        else:
            emit(f"{cid}\n")
    if output_format == "json":
        emit(to_json(answers))
