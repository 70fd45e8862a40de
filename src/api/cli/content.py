"""``corral content``: list, read, ingest, label and remove blobs, and see ingests in progress."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import click
from rich.table import Table

from corral.api.cli._output import (
    StdoutClosed,
    age,
    ago,
    emit,
    format_labels,
    format_option,
    human_size,
    silence_stdout,
    stdout_closed_quietly,
    table,
    timestamp,
    to_json,
)
from corral.api.cli._session import call, digest_argument, parse_labels, report_failures
from corral.api.client import Client
from corral.api.types.containerd.services.content import v1 as pb
from corral.kernel import CorralError

# ------------------------------------------------------------------------------ content


def content_table(items: Sequence[pb.Info], now: datetime | None = None) -> Table:
    return table(
        ("DIGEST", "SIZE", "AGE", "LABELS"),
        (
            (info.digest, human_size(info.size), age(info.created_at, now), format_labels(info.labels))
            for info in items
        ),
    )


def content_json(items: Sequence[pb.Info]) -> list[dict[str, Any]]:
    return [
        {
            "digest": info.digest,
            "size": info.size,
            "created_at": timestamp(info.created_at),
            "updated_at": timestamp(info.updated_at),
            "labels": dict(sorted(info.labels.items())),
        }
        for info in items
    ]


def statuses_table(items: Sequence[pb.Status], now: datetime | None = None) -> Table:
    return table(
        ("REF", "SIZE", "TOTAL", "STARTED", "UPDATED"),
        (
            (
                st.ref,
                human_size(st.offset),
                human_size(st.total) if st.total else "-",
                ago(st.started_at, now),
                ago(st.updated_at, now),
            )
            for st in items
        ),
    )


def statuses_json(items: Sequence[pb.Status]) -> list[dict[str, Any]]:
    return [
        {
            "ref": st.ref,
            "offset": st.offset,
            "total": st.total,
            "expected": st.expected,
            "started_at": timestamp(st.started_at),
            "updated_at": timestamp(st.updated_at),
        }
        for st in items
    ]


@click.group("content")
def content_group() -> None:
    """Manage blobs in the content store."""


@content_group.command("ls")
@click.argument("filters", nargs=-1, metavar="[FILTER]...")
@click.option("-q", "--quiet", is_flag=True, help="print only the digests")
@format_option("table", "json")
def list_content(filters: tuple[str, ...], quiet: bool, output_format: str) -> None:
    """List blobs with their size, age and labels.

    FILTERs are containerd's, e.g. 'labels."containerd.io/gc.root"' or 'digest==sha256:…'.
    """

    async def fetch(client: Client) -> list[pb.Info]:
        return await client.list_content(filters)

    items = sorted(call(fetch), key=lambda info: info.digest)
    if quiet:
        for info in items:
            click.echo(info.digest)
    else:
        emit(to_json(content_json(items)) if output_format == "json" else content_table(items))


@content_group.command("get")
@click.argument("digest", callback=digest_argument)
def get_content(digest: str) -> None:
    """Write the blob DIGEST to stdout, byte for byte."""
    out = sys.stdout.buffer

    async def read(client: Client) -> None:
        with stdout_closed_quietly():
            async for chunk in client.read_content(digest):
                out.write(chunk)
            out.flush()

    try:
        call(read)
    except StdoutClosed:
        silence_stdout()


@content_group.command("ingest")
@click.argument("ref")
@click.option(
    "--expected-digest",
    "expected",
    default="",
    metavar="DIGEST",
    help="verify the blob's digest",
    callback=digest_argument,
)
@click.option(
    "--expected-size", "total", type=click.IntRange(min=0), default=0, metavar="N", help="verify its size"
)
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE", help="label the committed blob")
@click.option("--lease", metavar="ID", help="hold the blob with this lease (else GC may soon remove it)")
def ingest_content(ref: str, expected: str, total: int, labels: tuple[str, ...], lease: str | None) -> None:
    """Store stdin as a blob under ingest reference REF and print its digest.

    An interrupted ingest of a regular file resumes where the daemon stopped; an existing blob is a success.
    """
    parsed = parse_labels(labels)
    source = sys.stdin.buffer

    async def ingest(client: Client) -> str:
        return await client.ingest(
            ref, source, total=total, expected=expected, labels=parsed, lease=lease or None
        )

    emit(f"{call(ingest)}\n")


@content_group.command("rm")
@click.argument("digests", nargs=-1, required=True, metavar="DIGEST...", callback=digest_argument)
def remove_content(digests: tuple[str, ...]) -> None:
    """Remove blobs; unlike ctr, a blob that does not exist is an error."""

    async def remove(client: Client) -> list[str]:
        failures: list[str] = []
        for digest in digests:
            try:
                await client.delete_content(digest)
            except CorralError as exc:  # go on with the others, as ctr does, and fail at the end
                failures.append(str(exc))
                continue
            click.echo(digest)
        return failures

    report_failures(call(remove))


@content_group.command("label")
@click.argument("digest", callback=digest_argument)
@click.argument("labels", nargs=-1, required=True, metavar="KEY=[VALUE]...")
def label_content(digest: str, labels: tuple[str, ...]) -> None:
    """Set labels on blob DIGEST; KEY= removes KEY."""
    parsed = parse_labels(labels)

    async def label(client: Client) -> None:
        await client.label_content(digest, parsed)

    call(label)


@content_group.command("active")
@click.argument("filters", nargs=-1, metavar="[FILTER]...")
@format_option("table", "json")
def active_ingests(filters: tuple[str, ...], output_format: str) -> None:
    """List ingests in progress: bytes written so far (SIZE) and the expected TOTAL."""

    async def fetch(client: Client) -> list[pb.Status]:
        return await client.content_statuses(filters)

    items = sorted(call(fetch), key=lambda st: st.ref)
    emit(to_json(statuses_json(items)) if output_format == "json" else statuses_table(items))
