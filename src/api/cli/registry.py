"""``corral images pull`` and ``corral images push``: registry transfers made by the daemon.

corrald's transfer service downloads (or uploads) and unpacks; the command follows its progress
stream: a live line per blob on stderr (state, bytes, rate), a summary line at the end, or with
``--format json`` one JSON object per progress event on stdout and the summary last.
"""

from __future__ import annotations

import getpass
import json
import time
from dataclasses import dataclass, field

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TransferSpeedColumn,
)

from corral.api.cli._output import human_size
from corral.api.cli._session import UsageProblem, call, parse_labels
from corral.api.cli.transfer import _wire_platform
from corral.api.client import Client, PullOptions, RegistryOptions, TransferProgress

__all__ = ["add_registry_commands", "pull_command", "push_command"]

_DONE = {"complete", "already exists", "extracted"}
_BYTES = {"downloading", "uploading"}
_KINDS = {"layer", "config", "manifest", "index", "attestation", "unknown"}
"""How containerd's ref keys name the blobs of an image."""


@dataclass
class _Blob:
    name: str
    total: int = 0
    moved: int = 0
    state: str = "waiting"
    task: TaskID | None = None


@dataclass
class _Tally:
    """What the progress stream said, for the live display and the summary."""

    blobs: dict[str, _Blob] = field(default_factory=dict)
    saved: list[str] = field(default_factory=list)
    transferred: int = 0
    existed: int = 0
    started: float = field(default_factory=time.monotonic)

    def summary(self, verb: str, ref: str) -> dict[str, object]:
        elapsed = time.monotonic() - self.started
        moved = sum(b.moved for b in self.blobs.values() if b.state != "already exists")
        return {
            "event": "summary",
            "reference": ref,
            "action": verb,
            "blobs": len(self.blobs),
            "transferred": self.transferred,
            "already_present": self.existed,
            "bytes": moved,
            "seconds": round(elapsed, 3),
            "images": list(self.saved),
        }


def _short(name: str) -> str:
    kind, _, rest = name.partition("-")
    digest = rest.rpartition("@")[2] if "@" in rest else rest
    if digest.startswith("sha256:"):
        return f"{kind} {digest[7:19]}"
    return name[:40]


def _registry_options(user: str, plain_http: bool, hosts_dir: str) -> RegistryOptions:
    secret = ""
    if user:
        user, sep, secret = user.partition(":")
        if not user:
            raise UsageProblem("--user needs a user name: NAME[:SECRET]")
        if not sep:
            secret = getpass.getpass("Password: ")
    return RegistryOptions(user=user, secret=secret, plain_http=plain_http, hosts_dir=hosts_dir)


def _bar(console: Console, *, show: bool) -> Progress:
    return Progress(
        TextColumn("{task.description:<20}"),
        TextColumn("{task.fields[state]:<15}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=console,
        disable=not show,
        transient=False,
    )


class _Follower:
    """Turns progress events into the live display (or JSON lines) and the tally."""

    def __init__(self, bar: Progress, *, as_json: bool) -> None:
        self.bar = bar
        self.as_json = as_json
        self.tally = _Tally()

    def __call__(self, p: TransferProgress) -> None:
        if self.as_json:
            click.echo(
                json.dumps(
                    {
                        "event": p.event,
                        "name": p.name,
                        "parents": list(p.parents),
                        "progress": p.progress,
                        "total": p.total,
                        "digest": p.digest,
                    }
                )
            )
        if p.event == "saved" and p.name:
            self.tally.saved.append(p.name)
            return
        if p.name.partition("-")[0] not in _KINDS:
            return  # the image itself, or a whole-transfer message
        blob = self.tally.blobs.get(p.name)
        if blob is None:
            blob = self.tally.blobs[p.name] = _Blob(p.name, p.total)
            blob.task = self.bar.add_task(_short(p.name), total=p.total or None, state="waiting")
        previous = blob.state
        blob.state = p.event
        if p.event in _BYTES:
            blob.moved = max(blob.moved, p.progress)
        elif p.event in ("complete", "already exists"):
            blob.moved = blob.total
            if previous not in _DONE:
                if p.event == "already exists":
                    self.tally.existed += 1
                else:
                    self.tally.transferred += 1
        if blob.task is not None:
            self.bar.update(blob.task, completed=blob.moved, state=p.event)


def _summary_line(tally: _Tally, verb: str, ref: str) -> str:
    s = tally.summary(verb, ref)
    seconds = float(s["seconds"])  # type: ignore[arg-type]
    moved = int(s["bytes"])  # type: ignore[call-overload]
    rate = human_size(int(moved / seconds)) + "/s" if seconds > 0 else "-"
    return (
        f"{verb} {ref}: {s['blobs']} blobs, {s['transferred']} {'downloaded' if verb == 'pulled' else 'uploaded'}, "
        f"{s['already_present']} already present; {human_size(moved)} in {seconds:.1f}s ({rate})"
    )


@click.command("pull")
@click.argument("ref", metavar="REF")
@click.option("--platform", "platform_texts", multiple=True, metavar="PLATFORM", help="pull this platform")
@click.option("--all-platforms", is_flag=True, help="pull the content of every platform")
@click.option("--skip-metadata", is_flag=True, help="leave out the other platforms' manifests and configs")
@click.option("--snapshotter", default="", help="unpack into this snapshotter  [default: the daemon's]")
@click.option("--no-unpack", is_flag=True, help="store the image without unpacking it")
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE", help="label the image (repeatable)")
@click.option("-u", "--user", default="", metavar="NAME[:SECRET]", help="registry credentials")
@click.option("--plain-http", is_flag=True, help="speak plain HTTP to the registry")
@click.option(
    "--hosts-dir", default="", metavar="DIR", help="registry host configuration (certs.d) directory"
)
@click.option(
    "--format", "output_format", type=click.Choice(["table", "json"]), default="table", show_default=True
)
@click.option("-q", "--quiet", is_flag=True, help="no progress display")
def pull_command(
    ref: str,
    platform_texts: tuple[str, ...],
    all_platforms: bool,
    skip_metadata: bool,
    snapshotter: str,
    no_unpack: bool,
    labels: tuple[str, ...],
    user: str,
    plain_http: bool,
    hosts_dir: str,
    output_format: str,
    quiet: bool,
) -> None:
    """Pull REF from its registry into corrald's image store, unpacked while it downloads."""
    if platform_texts and all_platforms:
        raise UsageProblem("cannot specify both --platform and --all-platforms")
    if no_unpack and snapshotter:
        raise UsageProblem("--snapshotter and --no-unpack cannot be used together")
    options = PullOptions(
        platforms=tuple(_wire_platform(t) for t in platform_texts),
        all_platforms=all_platforms,
        unpack=not no_unpack,
        snapshotter=snapshotter,
        labels=parse_labels(labels),
        skip_metadata=skip_metadata,
    )
    registry = _registry_options(user, plain_http, hosts_dir)
    as_json = output_format == "json"
    console = Console(stderr=True)
    with _bar(console, show=not quiet and not as_json and console.is_terminal) as bar:
        follow = _Follower(bar, as_json=as_json)

        async def run(client: Client) -> None:
            await client.pull_image(ref, options, registry, progress=follow)

        call(run)
    _finish(follow.tally, "pulled", ref, as_json=as_json, quiet=quiet)


@click.command("push")
@click.argument("ref", metavar="REF")
@click.argument("local", metavar="[LOCAL]", default="")
@click.option(
    "--platform", "platform_texts", multiple=True, metavar="PLATFORM", help="push only this platform"
)
@click.option("-u", "--user", default="", metavar="NAME[:SECRET]", help="registry credentials")
@click.option("--plain-http", is_flag=True, help="speak plain HTTP to the registry")
@click.option(
    "--hosts-dir", default="", metavar="DIR", help="registry host configuration (certs.d) directory"
)
@click.option(
    "--format", "output_format", type=click.Choice(["table", "json"]), default="table", show_default=True
)
@click.option("-q", "--quiet", is_flag=True, help="no progress display")
def push_command(
    ref: str,
    local: str,
    platform_texts: tuple[str, ...],
    user: str,
    plain_http: bool,
    hosts_dir: str,
    output_format: str,
    quiet: bool,
) -> None:
    """Push the image LOCAL (default: REF) of corrald's store to REF."""
    platforms = [_wire_platform(t) for t in platform_texts]
    registry = _registry_options(user, plain_http, hosts_dir)
    as_json = output_format == "json"
    console = Console(stderr=True)
    with _bar(console, show=not quiet and not as_json and console.is_terminal) as bar:
        follow = _Follower(bar, as_json=as_json)

        async def run(client: Client) -> None:
            await client.push_image(ref, local, registry, platforms=platforms, progress=follow)

        call(run)
    _finish(follow.tally, "pushed", ref, as_json=as_json, quiet=quiet)


def _finish(tally: _Tally, verb: str, ref: str, *, as_json: bool, quiet: bool) -> None:
    if as_json:
        click.echo(json.dumps(tally.summary(verb, ref)))
    elif not quiet:
        click.echo(_summary_line(tally, verb, ref))


def add_registry_commands(images: click.Group) -> None:
    """Put ``pull`` and ``push`` into the ``images`` group."""
    images.add_command(pull_command)
    images.add_command(push_command)
