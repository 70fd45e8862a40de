"""``corral version``: this client's version and the daemon's version, revision and uuid."""

from __future__ import annotations

import platform
from dataclasses import dataclass
from typing import Any

import click

from corral import __version__
from corral.api.cli._output import emit, format_option, to_json
from corral.api.cli._session import call
from corral.api.client import Client


@dataclass(frozen=True)
class ServerVersion:
    version: str
    revision: str
    uuid: str


def client_lines() -> str:
    return f"Client:\n  Version:  {__version__}\n  Python:   {platform.python_version()}\n"


def server_lines(server: ServerVersion) -> str:
    return (
        f"Server:\n  Version:  {server.version}\n  Revision: {server.revision}\n  UUID:     {server.uuid}\n"
    )


def version_json(server: ServerVersion) -> dict[str, Any]:
    return {
        "client": {"version": __version__, "python": platform.python_version()},
        "server": {"version": server.version, "revision": server.revision, "uuid": server.uuid},
    }


async def fetch_server_version(client: Client) -> ServerVersion:
    reply = await client.version()
    info = await client.server()
    return ServerVersion(reply.version, reply.revision, info.uuid)


@click.command("version")
@format_option("table", "json")
def version_command(output_format: str) -> None:
    """Show the client's and the daemon's version."""
    if output_format == "json":
        emit(to_json(version_json(call(fetch_server_version))))
        return
    # The client's half is useful even when the daemon cannot be reached, as with ctr.
    emit(client_lines())
    emit(server_lines(call(fetch_server_version)))
