"""``corral cdi``: the CDI devices the spec directories offer, and spec files checked as corrald
checks them (the same parser and validation, no daemon needed)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from corral.api.cli._output import emit, format_option, table, to_json
from corral.plugins.cdi import Registry, SpecError, read_spec
from corral.plugins.cdi.plugin import CDIConfig

DEFAULT_SPEC_DIRS = tuple(CDIConfig().spec_dirs)


@click.group("cdi")
def cdi_group() -> None:
    """Container Device Interface devices and specs."""


spec_dir_option = click.option(
    "--spec-dir",
    "spec_dirs",
    multiple=True,
    metavar="DIR",
    help=f"a spec directory, later ones override earlier ones  [default: {' '.join(DEFAULT_SPEC_DIRS)}]",
)


@cdi_group.command("list")
@spec_dir_option
@format_option("table", "json")
def list_devices(spec_dirs: tuple[str, ...], output_format: str) -> None:
    """List the devices by fully qualified name, with the spec file each comes from; specs that
    cannot be used are named on stderr."""
    registry = Registry(spec_dirs or DEFAULT_SPEC_DIRS)
    devices = registry.devices()
    if output_format == "json":
        emit(to_json([{"name": d.name, "spec": d.spec_path} for d in devices]))
    else:
        emit(table(("DEVICE", "SPEC"), ((d.name, d.spec_path) for d in devices)))
    for path, reasons in registry.errors().items():
        for reason in reasons:
            click.echo(f"{path}: {reason}", err=True)


@cdi_group.command("validate")
@click.argument("files", nargs=-1, type=click.Path(dir_okay=False, path_type=Path))
@spec_dir_option
def validate_specs(files: tuple[Path, ...], spec_dirs: tuple[str, ...]) -> None:
    """Check spec FILEs (or every spec in the spec directories): one line per file, exit status 1
    if any is invalid."""
    failed = False
    if files:
        for path in files:
            try:
                spec = read_spec(path)
            except (SpecError, OSError, UnicodeDecodeError) as exc:
                failed = True
                click.echo(f"{path}: invalid: {exc}")
                continue
            click.echo(f"{path}: ok ({spec.kind}, {len(spec.devices)} devices)")
    else:
        registry = Registry(spec_dirs or DEFAULT_SPEC_DIRS)
        errors = registry.errors()
        valid = {d.spec_path for d in registry.devices()}
        for spec_path in sorted(valid):
            click.echo(f"{spec_path}: ok")
        for spec_path, reasons in errors.items():
            failed = True
            click.echo(f"{spec_path}: invalid: {'; '.join(reasons)}")
    sys.exit(1 if failed else 0)
