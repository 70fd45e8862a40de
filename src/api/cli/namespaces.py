"""``corral namespaces``: list, create, label and remove namespaces."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import click
from rich.table import Table

from corral.api.cli._output import emit, format_labels, format_option, table, to_json
from corral.api.cli._session import CommandError, call, parse_labels
from corral.api.client import Client
from corral.api.types.containerd.services.namespaces import v1 as pb
from corral.kernel import CorralError


def namespaces_table(items: Sequence[pb.Namespace]) -> Table:
    return table(("NAME", "LABELS"), ((ns.name, format_labels(ns.labels)) for ns in items))


def namespaces_json(items: Sequence[pb.Namespace]) -> list[dict[str, Any]]:
    return [{"name": ns.name, "labels": dict(sorted(ns.labels.items()))} for ns in items]


@click.group("namespaces")
def namespaces_group() -> None:
    """Manage namespaces (alias: ns)."""


@namespaces_group.command("ls")
@format_option("table", "json")
def list_namespaces(output_format: str) -> None:
    """List namespaces with their labels."""
    items = sorted(call(Client.list_namespaces), key=lambda ns: ns.name)
    emit(to_json(namespaces_json(items)) if output_format == "json" else namespaces_table(items))


@namespaces_group.command("create")
@click.argument("name")
@click.argument("labels", nargs=-1, metavar="[KEY=VALUE]...")
def create_namespace(name: str, labels: tuple[str, ...]) -> None:
    """Create namespace NAME with optional labels."""
    parsed = parse_labels(labels)

    async def create(client: Client) -> None:
        await client.create_namespace(name, parsed)

    call(create)


@namespaces_group.command("label")
@click.argument("name")
@click.argument("labels", nargs=-1, required=True, metavar="KEY=[VALUE]...")
def label_namespace(name: str, labels: tuple[str, ...]) -> None:
    """Set labels on namespace NAME; KEY= removes KEY."""
    parsed = parse_labels(labels)

    async def label(client: Client) -> None:
        await client.label_namespace(name, parsed)

    call(label)


@namespaces_group.command("rm")
@click.argument("names", nargs=-1, required=True, metavar="NAME...")
def remove_namespaces(names: tuple[str, ...]) -> None:
    """Remove namespaces; unlike ctr, a namespace that does not exist is an error."""

    async def remove(client: Client) -> list[str]:
        failures: list[str] = []
        for name in names:
            try:
                await client.delete_namespace(name)
            except CorralError as exc:  # go on with the others, as ctr does, and fail at the end
                failures.append(str(exc))
                continue
            click.echo(name)
        return failures

    failures = call(remove)
    for message in failures[:-1]:
        click.echo(f"corral: {message}", err=True)
    if failures:
        raise CommandError(failures[-1])
