"""``corral config``: defaults, effective config, migration and validation, all local (no daemon)."""

from __future__ import annotations

import dataclasses
import logging
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import structlog

from corral.api.cli._output import emit
from corral.api.cli._session import CommandError
from corral.api.daemon import default_paths, finish, read_config
from corral.kernel import (
    Candidate,
    ConfigError,
    DaemonConfig,
    Kernel,
    StartupError,
    Status,
    encode,
    load_written,
    render_toml,
)


@dataclass(frozen=True)
class PreparedConfig:
    """A config after the kernel's prepare step: what to print and what to warn about."""

    config: DaemonConfig
    sections: dict[str, Any]
    """Plugin sections to print, by URI: decoded (defaults filled in) or, if not decoded, as written."""
    configured: int
    """Enabled plugins that were loaded, ordered and given their config."""
    warnings: tuple[str, ...]


@contextmanager
def kernel_logs_silenced() -> Iterator[None]:
    """Keep the kernel's log lines out of the TOML on stdout; what matters is reported as warnings."""
    saved = structlog.get_config()
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )
    try:
        yield
    finally:
        structlog.configure(**saved)


def prepare(
    config: DaemonConfig,
    *,
    kernel_config: DaemonConfig | None = None,
    candidates: Sequence[Candidate] | None = None,
) -> PreparedConfig:
    """Run the kernel's prepare (import, migrate, order, decode) without starting any plugin."""
    kernel = Kernel(kernel_config or config, candidates=candidates)
    with kernel_logs_silenced():
        ordered, decoded = kernel.prepare()
    sections: dict[str, Any] = {uri: dict(raw) for uri, raw in kernel.plugin_configs.items()}
    sections.update((uri, encode(cfg)) for uri, cfg in decoded.items() if cfg is not None)
    warnings = [
        f"{rec.uri}: {' '.join(rec.reason.split())}" for rec in kernel.records() if rec.status is Status.ERROR
    ]
    warnings += kernel.config_notes()
    return PreparedConfig(config, dict(sorted(sections.items())), len(ordered), tuple(warnings))


def render(prepared: PreparedConfig) -> str:
    data = encode(prepared.config)
    # Without "version", render_toml writes the current one: the sections are already migrated.
    data.pop("version", None)
    data["plugins"] = prepared.sections
    return render_toml(data)


def default_config(candidates: Sequence[Candidate] | None = None) -> PreparedConfig:
    """Every discovered plugin's defaults: importing third-party plugins is what the operator asked for."""
    _, defaults = default_paths()
    config = finish(defaults)
    everything = dataclasses.replace(config, enabled_distributions=("*",))
    return prepare(config, kernel_config=everything, candidates=candidates)


def effective_config(path: Path | None, candidates: Sequence[Candidate] | None = None) -> PreparedConfig:
    """The config corrald would run with: ``path`` (or the default file) merged, migrated and decoded."""
    default_path, _ = default_paths()
    source = path if path is not None else (default_path if default_path.exists() else None)
    loaded = read_config(source)
    config = finish(loaded.config)
    try:
        return prepare(config, candidates=candidates)
    except ConfigError as exc:  # plugin sections are decoded after loading: say which file they came from
        raise loaded.attribute(exc) from None
    except StartupError as exc:  # what corrald would refuse before starting any plugin
        raise CommandError(f"{source}: {exc}" if source else str(exc)) from None


def report(warnings: Sequence[str]) -> None:
    # TOML comments, so a stream redirected into the config file still parses.
    for warning in warnings:
        click.echo(f"# warning: {warning}", err=True)


config_path_option = click.option(
    "-c",
    "--config",
    "path",
    type=click.Path(path_type=Path, dir_okay=False),
    help="config.toml to read (default: corrald's default path, if it exists)",
)


@click.group("config")
def config_group() -> None:
    """Show, migrate and check corrald's config.toml (local; no daemon needed)."""


@config_group.command("default")
def default_command() -> None:
    """Print a config with every plugin's defaults.

    Third-party plugins are imported to read their defaults, but are not enabled in the output.
    """
    prepared = default_config()
    report(prepared.warnings)
    emit(render(prepared))


@config_group.command("dump")
@config_path_option
def dump_command(path: Path | None) -> None:
    """Print the effective config: files merged, plugin defaults filled in."""
    prepared = effective_config(path)
    report(prepared.warnings)
    emit(render(prepared))


@config_group.command("migrate")
@config_path_option
def migrate_command(path: Path | None) -> None:
    """Print your config file migrated to version 3: only what it sets, plugin sections upgraded.

    As ``containerd config migrate``: imported files are merged in; defaults are not added.
    """
    emit(migrated_config(path))


def migrated_config(path: Path | None, candidates: Sequence[Candidate] | None = None) -> str:
    """The operator's own settings (``path``, else the default file) as a version-3 config."""
    default_path, _ = default_paths()
    source = path if path is not None else default_path
    if not source.exists():
        hint = "" if path is not None else " (give one with --config)"
        raise CommandError(f"no config file to migrate: {source} does not exist{hint}")
    written, oldest = load_written(source)
    config = finish(read_config(source).config)
    kernel = Kernel(dataclasses.replace(config, version=oldest), candidates=candidates)
    with kernel_logs_silenced():
        kernel.migrate_config(kernel.load_registrations())
    written["version"] = DaemonConfig().version
    plugins = {uri: section for uri, section in kernel.plugin_configs.items() if section}
    if plugins:
        written["plugins"] = dict(sorted(plugins.items()))
    else:
        written.pop("plugins", None)
    return render_toml(written)


@config_group.command("validate")
@config_path_option
def validate_command(path: Path | None) -> None:
    """Check the config as corrald would load it."""
    prepared = effective_config(path)
    report(prepared.warnings)
    if prepared.config.version < DaemonConfig().version:
        report([f"config version {prepared.config.version} is migrated on load; see `corral config migrate`"])
    click.echo(f"config ok: {prepared.configured} plugins configured")
