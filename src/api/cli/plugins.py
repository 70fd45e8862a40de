"""``corral plugins``: list, describe, graph and explain the daemon's plugins."""

from __future__ import annotations

from collections.abc import Sequence

import click

from corral.api.cli._output import emit, format_option, to_json
from corral.api.cli._plugin_graph import graph_dot, graph_json, graph_text
from corral.api.cli._plugin_views import (
    explain,
    find_plugin,
    plugin_info,
    plugin_json,
    plugins_json,
    plugins_table,
)
from corral.api.cli._session import CommandError, call
from corral.api.client import Client
from corral.api.types.corral.introspection.v1 import PluginDetail

ALL_HELP = "include disabled plugins"


def fetch(filters: Sequence[str] = (), *, include_disabled: bool = False) -> list[PluginDetail]:
    async def plugin_details(client: Client) -> list[PluginDetail]:
        return await client.plugin_details(filters, all=include_disabled)

    return call(plugin_details)


def fetch_one(uri: str) -> tuple[PluginDetail, list[PluginDetail]]:
    """The plugin named ``uri`` (disabled ones included) and every plugin, for its context."""
    details = fetch(include_disabled=True)
    detail = find_plugin(details, uri)
    if detail is None:
        raise CommandError(f"plugin {uri} not found")
    return detail, details


@click.group("plugins")
def plugins_group() -> None:
    """Inspect the daemon's plugins."""


@plugins_group.command("ls")
@click.argument("filters", nargs=-1, metavar="[FILTER]...")
@click.option("--all", "include_disabled", is_flag=True, help=ALL_HELP)
@format_option("table", "json")
def list_plugins(filters: tuple[str, ...], include_disabled: bool, output_format: str) -> None:
    """List plugins with status, init time (ms) and origin.

    FILTERs are ctr's, e.g. 'type==io.containerd.snapshotter.v1' or 'status==skip'.
    """
    details = fetch(filters, include_disabled=include_disabled)
    emit(to_json(plugins_json(details)) if output_format == "json" else plugins_table(details))


@plugins_group.command("info")
@click.argument("uri", metavar="TYPE.ID")
@format_option("table", "json")
def plugin_info_command(uri: str, output_format: str) -> None:
    """Show everything the daemon knows about one plugin."""
    detail, _ = fetch_one(uri)
    emit(to_json(plugin_json(detail)) if output_format == "json" else plugin_info(detail))


@plugins_group.command("graph")
@click.option("--all", "include_disabled", is_flag=True, help=ALL_HELP)
@format_option("text", "dot", "json")
def plugin_graph(include_disabled: bool, output_format: str) -> None:
    """Show the plugin dependency graph.

    A text tree of each plugin's dependencies, a Graphviz digraph with --format dot, or nodes and
    edges with --format json.
    """
    details = fetch(include_disabled=include_disabled)
    if output_format == "json":
        emit(to_json(graph_json(details)))
    else:
        emit(graph_dot(details) if output_format == "dot" else graph_text(details))


@plugins_group.command("why")
@click.argument("uri", metavar="TYPE.ID")
def plugin_why(uri: str) -> None:
    """Explain why a plugin is not ok, down to the root cause."""
    _, details = fetch_one(uri)
    emit(explain(uri, details))
