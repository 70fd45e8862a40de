"""``python -m corral.api.proxy snapshotter|content URI --root DIR --address SOCKET``: serve an
installed snapshotter (Snapshots API) or content store (Content API) plugin, for corrald's or
containerd's ``[proxy_plugins]``."""

from __future__ import annotations

import os
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path

import anyio
import click

from corral.api.proxy._serve import find_registration, run_proxy_server
from corral.kernel import ConfigError, configure_logging


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Serve corral plugins to a daemon as proxy plugins."""


def _options(default: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    def decorate(command: Callable[..., None]) -> Callable[..., None]:
        for option in reversed(
            [
                click.argument("uri", default=default),
                click.option(
                    "--root", required=True, type=click.Path(path_type=Path), help="the plugin's root"
                ),
                click.option("--address", required=True, help="unix socket to listen on"),
                click.option(
                    "--state", type=click.Path(path_type=Path), help="runtime state (default ROOT/state)"
                ),
                click.option("--mode", default="0660", help="socket mode, octal"),
                click.option(
                    "-c",
                    "--config",
                    "config_path",
                    type=click.Path(path_type=Path, dir_okay=False, exists=True),
                    help='a TOML file whose [plugins."URI"] section configures the plugin',
                ),
                click.option("-l", "--log-level", default="info"),
            ]
        ):
            command = option(command)
        return command

    return decorate


def _serve(
    uri: str,
    root: Path,
    address: str,
    state: Path | None,
    mode: str,
    config_path: Path | None,
    log_level: str,
) -> None:
    configure_logging(log_level, "")
    try:
        registration = find_registration(uri)
        plugins = tomllib.loads(config_path.read_text()).get("plugins", {}) if config_path else {}
        anyio.run(
            run_proxy_server,
            registration,
            Path(os.path.abspath(root)),
            address,
            Path(os.path.abspath(state)) if state else None,
            int(mode, 8),
            plugins,
        )
    except LookupError as exc:
        click.echo(f"corral proxy: {exc}", err=True)
        sys.exit(2)
    except tomllib.TOMLDecodeError as exc:
        click.echo(f"corral proxy: config error: {config_path}: {exc}", err=True)
        sys.exit(2)
    except ConfigError as exc:
        click.echo(f"corral proxy: config error: {config_path}: {exc.detail}", err=True)
        sys.exit(2)


@main.command("snapshotter")
@_options("io.containerd.snapshotter.v1.native")
def snapshotter_command(
    uri: str,
    root: Path,
    address: str,
    state: Path | None,
    mode: str,
    config_path: Path | None,
    log_level: str,
) -> None:
    """Serve the snapshotter plugin URI over the Snapshots API (default: corral's native snapshotter)."""
    _serve(uri, root, address, state, mode, config_path, log_level)


@main.command("content")
@_options("io.containerd.content.v1.content")
def content_command(
    uri: str,
    root: Path,
    address: str,
    state: Path | None,
    mode: str,
    config_path: Path | None,
    log_level: str,
) -> None:
    """Serve the content store plugin URI over the Content API (default: corral's local store)."""
    _serve(uri, root, address, state, mode, config_path, log_level)


if __name__ == "__main__":
    main()
