"""Rendering shared by every command: rich tables for people, JSON with stable keys for scripts."""

from __future__ import annotations

import io
import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

import click
from rich.console import Console, RenderableType
from rich.table import Table
from rich.text import Text

from corral.api.client import rfc3339

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
        help="output format" + (" (json: machine-readable, stable keys)" if "json" in choices else ""),
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


def format_labels(labels: Mapping[str, str]) -> str:
    return join_or_dash(f"{k}={v}" for k, v in sorted(labels.items()))


def is_set(moment: datetime | None) -> bool:
    """containerd sends Go's zero time (year 1) for a time it never set."""
    return moment is not None and moment.year > 1


def timestamp(moment: datetime | None) -> str | None:
    """RFC 3339 in UTC for JSON; None for a time that was never set."""
    return rfc3339(moment) if moment is not None and is_set(moment) else None


def human_size(size: int) -> str:
    """Decimal units to 4 significant digits, as ctr shows sizes (docker's units.HumanSize)."""
    value = float(size)
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if value < 1000 or unit == "PB":
            return f"{value:.4g}{unit}"
        value /= 1000
    raise AssertionError("unreachable")


def human_duration(seconds: float) -> str:
    """How long ago, in ctr's words (docker's units.HumanDuration)."""
    whole = int(seconds)
    if whole < 1:
        return "Less than a second"
    if whole == 1:
        return "1 second"
    if whole < 60:
        return f"{whole} seconds"
    minutes = whole // 60
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = int(seconds / 3600 + 0.5)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{int(seconds / 3600) // 24 // 365} years"


def age(moment: datetime | None, now: datetime | None = None) -> str:
    if moment is None or not is_set(moment):
        return "-"
    return human_duration(((now or datetime.now(UTC)) - moment).total_seconds())


def ago(moment: datetime | None, now: datetime | None = None) -> str:
    text = age(moment, now)
    return text if text == "-" else f"{text} ago"


class StdoutClosed(Exception):
    """The reader of stdout went away (``| head``): stop quietly."""


@contextmanager
def stdout_closed_quietly() -> Iterator[None]:
    """Turn a broken pipe on stdout into StdoutClosed, not a "cannot connect" error."""
    try:
        yield
    except BrokenPipeError:
        raise StdoutClosed from None


def silence_stdout() -> None:
    """After a broken pipe, point stdout at /dev/null so the interpreter's final flush does not fail."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # not a real file (a test runner's buffer): nothing to silence
        pass
    finally:
        os.close(devnull)
