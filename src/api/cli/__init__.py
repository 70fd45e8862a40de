"""The ``corral`` command: plugins, namespaces, config and version, against corrald or locally."""

from __future__ import annotations

from typing import Any

import click

from corral import __version__
from corral.api.cli._session import Settings, one_line_errors
from corral.api.cli.config import config
from corral.api.cli.namespaces import namespaces
from corral.api.cli.plugins import plugins
from corral.api.cli.version import version
from corral.api.client import DEFAULT_NAMESPACE, default_address

__all__ = ["cli", "main"]


class CorralGroup(click.Group):
    """The root group: parse errors and expected failures leave as one line, never a traceback."""

    def make_context(
        self, info_name: str | None, args: list[str], parent: click.Context | None = None, **extra: Any
    ) -> click.Context:
        with one_line_errors():
            return super().make_context(info_name, args, parent, **extra)

    def invoke(self, ctx: click.Context) -> Any:
        with one_line_errors():
            return super().invoke(ctx)


@click.group(cls=CorralGroup, context_settings={"help_option_names": ["-h", "--help"]})
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


cli.add_command(plugins)
cli.add_command(namespaces)
cli.add_command(namespaces, name="ns")
cli.add_command(config)
cli.add_command(version)


def main() -> None:
    """Entry point of the ``corral`` script."""
    cli(prog_name="corral")
