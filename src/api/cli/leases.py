"""``corral leases``: list, create and remove the leases that keep content from garbage collection."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import click
from rich.table import Table

from corral.api.cli._output import emit, format_labels, format_option, table, timestamp, to_json
from corral.api.cli._session import UsageProblem, call, parse_labels, report_failures
from corral.api.client import Client
from corral.api.types.containerd.services.leases import v1 as pb
from corral.kernel import CorralError

_UNIT_SECONDS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,  # Go accepts both micro signs
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_TERM = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_duration(text: str) -> timedelta:
    """A Go duration as ctr reads ``--expires``: ``24h``, ``1h30m``, ``90s``, ``1.5h``; ``0`` alone has no unit."""
    if text in ("0", "+0", "-0"):
        return timedelta(0)
    body = text[1:] if text.startswith("+") else text
    seconds, end = 0.0, 0
    for term in _TERM.finditer(body):
        if term.start() != end:
            break
        seconds += float(term.group(1)) * _UNIT_SECONDS[term.group(2)]
        end = term.end()
    if not body or end != len(body):
        raise UsageProblem(f"invalid duration {text!r}: expected e.g. 24h, 30m, 1h30m or 0")
    return timedelta(seconds=seconds)


class Duration(click.ParamType[timedelta]):
    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> timedelta:
        if isinstance(value, timedelta):
            return value
        try:
            return parse_duration(str(value))
        except UsageProblem as exc:
            self.fail(exc.format_message(), param, ctx)


def leases_table(items: Sequence[pb.Lease]) -> Table:
    return table(
        ("ID", "CREATED", "LABELS"),
        ((lease.id, timestamp(lease.created_at) or "-", format_labels(lease.labels)) for lease in items),
    )


def leases_json(items: Sequence[pb.Lease]) -> list[dict[str, Any]]:
    return [
        {
            "id": lease.id,
            "created_at": timestamp(lease.created_at),
            "labels": dict(sorted(lease.labels.items())),
        }
        for lease in items
    ]


@click.group("leases")
def leases_group() -> None:
    """Manage leases, which keep content from garbage collection."""


@leases_group.command("ls")
@click.argument("filters", nargs=-1, metavar="[FILTER]...")
@click.option("-q", "--quiet", is_flag=True, help="print only the lease ids")
@format_option("table", "json")
def list_leases(filters: tuple[str, ...], quiet: bool, output_format: str) -> None:
    """List leases with their creation time (UTC) and labels.

    FILTERs are containerd's, e.g. 'id==import-1' or 'labels."containerd.io/gc.expire"'.
    """

    async def fetch(client: Client) -> list[pb.Lease]:
        return await client.list_leases(filters)

    items = call(fetch)
    if quiet:
        for lease in items:
            click.echo(lease.id)
    else:
        emit(to_json(leases_json(items)) if output_format == "json" else leases_table(items))


@leases_group.command("create")
@click.argument("labels", nargs=-1, metavar="[KEY=VALUE]...")
@click.option(
    "--id", "lease_id", default="", metavar="ID", help="the lease's id (default: one the daemon makes)"
)
@click.option(
    "--expires",
    "-x",
    type=Duration(),
    default="24h",
    show_default=True,
    metavar="DURATION",
    help="time until the garbage collector may drop the lease, e.g. 30m or 2h; 0: never",
)
def create_lease(labels: tuple[str, ...], lease_id: str, expires: timedelta) -> None:
    """Create a lease and print its id."""
    parsed = parse_labels(labels)

    async def create(client: Client) -> pb.Lease:
        return await client.create_lease(lease_id, parsed, expire=expires or None)

    emit(f"{call(create).id}\n")


@leases_group.command("rm")
@click.argument("ids", nargs=-1, required=True, metavar="ID...")
@click.option("--sync", is_flag=True, help="wait until the garbage collector has run")
def remove_leases(ids: tuple[str, ...], sync: bool) -> None:
    """Remove leases; a lease that does not exist is an error (as with ctr)."""

    async def remove(client: Client) -> list[str]:
        failures: list[str] = []
        for lease_id in ids:
            try:
                await client.delete_lease(lease_id, sync=sync)
            except CorralError as exc:  # go on with the others, and fail at the end
                failures.append(str(exc))
                continue
            click.echo(lease_id)
        return failures

    report_failures(call(remove))
