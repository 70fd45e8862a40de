"""The ``corral`` command: plugins, namespaces, config and version, against corrald or locally."""

from __future__ import annotations

from typing import Any

import click

from corral import __version__
from corral.api.cli._session import Settings, one_line_errors
from corral.api.cli.cdi import cdi_group
from corral.api.cli.config import config_group
from corral.api.cli.containers import containers_group
from corral.api.cli.content import content_group
from corral.api.cli.cri import cri_group
from corral.api.cli.events import events_command
from corral.api.cli.images import images_group
from corral.api.cli.leases import leases_group
from corral.api.cli.namespaces import namespaces_group
from corral.api.cli.plugins import plugins_group
from corral.api.cli.registry import add_registry_commands
from corral.api.cli.snapshots import snapshots_group
from corral.api.cli.tasks import run_command, tasks_group
from corral.api.cli.transfer import add_transfer_commands
from corral.api.cli.version import version_command
from corral.api.client import DEFAULT_NAMESPACE, default_address

__all__ = ["cli", "main"]


class CorralGroup(click.Group):
    """The root group: parse errors and expected failures leave as one line, never a traceback."""

    aliases = {
        "ns": "namespaces",
        "snapshot": "snapshots",
        "image": "images",
        "container": "containers",
        "i": "images",
        "c": "containers",
        "task": "tasks",
        "t": "tasks",
    }

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return super().get_command(ctx, self.aliases.get(cmd_name, cmd_name))

    def make_context(
        self, info_name: str | None, args: list[str], parent: click.Context | None = None, **extra: Any
    ) -> click.Context:
        with one_line_errors():
            return super().make_context(info_name, args, parent, **extra)

    def invoke(self, ctx: click.Context) -> Any:
        with one_line_errors():
            return super().invoke(ctx)


@click.group("corral", cls=CorralGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "-a",
    "--address",
    envvar="CORRAL_ADDRESS",
    metavar="SOCKET",
    help="corrald's socket  [env: CORRAL_ADDRESS; default: corrald's socket for this user]",
)
@click.option(
    "-n",
    "--namespace",
    envvar="CORRAL_NAMESPACE",
    default=DEFAULT_NAMESPACE,
    show_default=True,
    help="namespace for namespaced calls  [env: CORRAL_NAMESPACE]",
)
@click.version_option(__version__, "--version", prog_name="corral")
@click.pass_context
def cli(ctx: click.Context, address: str | None, namespace: str) -> None:
    """Inspect and manage corrald: its plugins, namespaces and configuration."""
    ctx.obj = Settings(address=address or default_address(), namespace=namespace)


cli.add_command(plugins_group)
cli.add_command(namespaces_group)
cli.add_command(config_group)
cli.add_command(content_group)
cli.add_command(leases_group)
cli.add_command(snapshots_group)
cli.add_command(images_group)
add_transfer_commands(images_group)
add_registry_commands(images_group)
cli.add_command(containers_group)
cli.add_command(run_command)
cli.add_command(tasks_group)
cli.add_command(events_command)
cli.add_command(version_command)
cli.add_command(cdi_group)
cli.add_command(cri_group)


def main() -> None:
    """Entry point of the ``corral`` script."""
    cli(prog_name="corral")
