"""How a command talks to corrald, and how expected failures become one line on stderr."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Any, TypeVar

import anyio
import click
from grpclib.exceptions import GRPCError, ProtocolError, StreamTerminatedError

from corral.api.client import Client, connect
from corral.kernel import ConfigError, CorralError
from corral.plugins.core.digests import digest_error

T = TypeVar("T")


@dataclass(frozen=True)
class Settings:
    """The global options every command sees through ``click.Context.obj``."""

    address: str
    namespace: str


class CommandError(click.ClickException):
    """An expected failure, shown as ``corral: <message>``; exit status 1."""

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"corral: {self.format_message()}", file=file, err=file is None)


class UsageProblem(CommandError):
    """Bad arguments or a config that cannot be used; exit status 2."""

    exit_code = 2


def settings() -> Settings:
    obj = click.get_current_context().find_object(Settings)
    if obj is None:  # a command invoked outside the corral group, e.g. by a test
        raise UsageProblem("no daemon address configured")
    return obj


def call(fn: Callable[[Client], Awaitable[T]]) -> T:
    """Run one async conversation with the daemon, turning transport failures into CommandError."""
    current = settings()

    async def conversation() -> T:
        async with connect(current.address, current.namespace) as client:
            return await fn(client)

    try:
        return anyio.run(conversation)
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise CommandError(f"cannot connect to corrald at {current.address}: {reason}") from None
    except (StreamTerminatedError, ProtocolError) as exc:
        raise CommandError(f"connection to corrald at {current.address} failed: {exc}") from None
    except GRPCError as exc:  # the client translates statuses; this is a stub that bypassed it
        raise CommandError(exc.message or exc.status.name) from None
    except RuntimeError as exc:
        # The client's rendering of an UNKNOWN status: the daemon's own message, kept as sent.
        raise CommandError(str(exc) or "unknown error from corrald") from None


@contextmanager
def one_line_errors() -> Iterator[None]:
    """Where expected errors that reach the top become ``corral: <message>`` (exit 1, or 2 for usage/config).

    Transport failures are worded in ``call``, the one place that knows which socket was dialled.
    """
    try:
        yield
    except (CommandError, click.exceptions.NoArgsIsHelpError):
        raise
    except click.UsageError as exc:
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
        raise UsageProblem(f"{_lower_first(exc.format_message())}{hint}") from None
    except click.ClickException as exc:
        raise CommandError(exc.format_message()) from None
    except ConfigError as exc:
        raise UsageProblem(f"config error: {exc.detail}") from None
    except CorralError as exc:
        raise CommandError(str(exc)) from None
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        raise CommandError(f"{exc.strerror or exc}{where}") from None


def _lower_first(text: str) -> str:
    # click says "Missing argument 'URI'."; corral's messages read as one lower-case clause.
    text = text.rstrip(".")
    return text[:1].lower() + text[1:]


def parse_labels(args: Iterable[str]) -> dict[str, str]:
    """``k=v`` pairs as ctr reads them: ``k`` alone means "true", ``k=`` an empty value."""
    labels: dict[str, str] = {}
    for arg in args:
        key, sep, value = arg.partition("=")
        if not key:
            raise UsageProblem(f"invalid label {arg!r}: expected KEY=VALUE")
        labels[key] = value if sep else "true"
    return labels


def report_failures(failures: Sequence[str]) -> None:
    """All but the last failure on stderr, the last as the command's error (exit 1)."""
    for message in failures[:-1]:
        click.echo(f"corral: {message}", err=True)
    if failures:
        raise CommandError(failures[-1])


def digest_argument(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """A click callback: refuse a malformed digest before any call, as ctr does (one line, go-digest's reason)."""
    values = value if isinstance(value, tuple) else (value,)
    for digest in values:
        if digest:
            problem = digest_error(digest)
            if problem is not None:
                raise UsageProblem(f"invalid digest {digest!r}: {problem}")
    return value
