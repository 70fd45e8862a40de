"""Rendering shared by every command: rich tables for people, JSON with stable keys for scripts."""

from __future__ import annotations

import io
import json
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal, TypeVar

import click
from rich.console import Console, RenderableType
from rich.table import Table
from rich.text import Text

F = TypeVar("F", bound=Callable[..., Any])
Format = Literal["table", "json"]
Cell = str | Text

# Wide enough that rich never truncates or folds a cell: long plugin URIs must stay copyable.
_UNBOUNDED_WIDTH = 10_000

STATUS_STYLES = {
    "ok": "green",
    "skip": "yellow",
    "error": "bold red",
    "disabled": "dim",
    "not-enabled": "cyan",
}


def format_option(*choices: str) -> Callable[[F], F]:
    """``--format`` with the given choices; the first is the default."""
    return click.option(
        "--format",
        "output_format",
        type=click.Choice(choices),
        default=choices[0],
        show_default=True,
        help="output format (json: machine-readable, stable keys)",
    )


def status_text(status: str) -> Text:
    return Text(status, style=STATUS_STYLES.get(status, ""))


def table(headers: Sequence[str], rows: Iterable[Sequence[Cell]]) -> Table:
    """A borderless table in the style of ctr's listings, with bold headers."""
    grid = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    for header in headers:
        grid.add_column(header, no_wrap=True)
    for row in rows:
        grid.add_row(*row)
    return grid


def to_text(renderable: RenderableType, *, color: bool = False) -> str:
    """Render to a string; without color the padding rich adds at line ends is dropped."""
    buffer = io.StringIO()
    console = Console(
        file=buffer,
        width=_UNBOUNDED_WIDTH,
        force_terminal=color,
        color_system="standard" if color else None,
        highlight=False,
        soft_wrap=True,
    )
    console.print(renderable)
    text = buffer.getvalue()
    if color:
        return text
    return "".join(line.rstrip() + "\n" for line in text.splitlines())


def to_json(data: Any) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def emit(renderable: RenderableType | str) -> None:
    """Print to stdout, in color only when stdout is a terminal and NO_COLOR is not set."""
    if isinstance(renderable, str):
        click.echo(renderable, nl=not renderable.endswith("\n"))
        return
    color = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
    click.echo(to_text(renderable, color=color), nl=False)


def join_or_dash(items: Iterable[str], sep: str = ",") -> str:
    text = sep.join(items)
    return text or "-"
