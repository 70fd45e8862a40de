"""``python -m corral.api.proxy snapshotter URI --root DIR --address SOCKET``: serve an installed
snapshotter plugin over containerd's Snapshots API, for corrald's or containerd's ``[proxy_plugins]``."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import anyio
import click

from corral.api.proxy._serve import find_registration, run_snapshotter_server
from corral.kernel import configure_logging


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Serve corral plugins to a daemon as proxy plugins."""


@main.command("snapshotter")
@click.argument("uri", default="io.containerd.snapshotter.v1.native")
@click.option("--root", required=True, type=click.Path(path_type=Path), help="the plugin's state directory")
@click.option("--address", required=True, help="unix socket to listen on")
@click.option("--state", type=click.Path(path_type=Path), help="runtime state (default ROOT/state)")
@click.option("--mode", default="0660", help="socket mode, octal")
@click.option("-l", "--log-level", default="info")
def snapshotter_command(
    uri: str, root: Path, address: str, state: Path | None, mode: str, log_level: str
) -> None:
    """Serve the snapshotter plugin URI (default: corral's native snapshotter)."""
    configure_logging(log_level, "")
    try:
        registration = find_registration(uri)
    except LookupError as exc:
        click.echo(f"corral proxy: {exc}", err=True)
        sys.exit(2)
    anyio.run(
        run_snapshotter_server,
        registration,
        Path(os.path.abspath(root)),
        address,
        Path(os.path.abspath(state)) if state else None,
        int(mode, 8),
    )


if __name__ == "__main__":
    main()
