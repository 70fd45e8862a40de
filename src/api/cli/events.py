"""``corral events``: follow the daemon's events, one line each, until interrupted."""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import Any

import betterproto2
import click

from corral.api.cli._output import StdoutClosed, format_option, silence_stdout, stdout_closed_quietly
from corral.api.cli._session import call
from corral.api.client import Client

# Imported for its side effect too: it registers containerd's event messages in the message pool.
from corral.api.types.containerd import events as containerd_events
from corral.api.types.containerd.types import Envelope
from corral.api.types.google import protobuf
from corral.api.types.message_pool import default_message_pool

_POOL_PREFIX = "type.googleapis.com/"
# Types that are not protobuf messages travel as JSON under this prefix (containerd's typeurl).
_JSON_PREFIX = "types.containerd.io/"


def event_class(type_url: str) -> type[betterproto2.Message] | None:
    """The generated message for a type_url: by its full name, else by its last component."""
    name = type_url.removeprefix(_POOL_PREFIX)
    found = default_message_pool.url_to_type.get(_POOL_PREFIX + name)
    if found is not None:
        return found
    candidate = getattr(containerd_events, name.rsplit(".", 1)[-1], None)
    if isinstance(candidate, type) and issubclass(candidate, betterproto2.Message):
        return candidate
    return None


def decode_event(event: protobuf.Any | None) -> Any:
    """The event as JSON-ready data: its fields by proto name, unset ones left out (as ctr prints them).

    An event of a type this client does not know keeps its type and its bytes in base64.
    """
    if event is None:
        return None
    if event.type_url.startswith(_JSON_PREFIX):
        try:
            return json.loads(event.value)
        except ValueError:
            pass
    cls = event_class(event.type_url)
    if cls is not None:
        try:
            message = cls.parse(event.value)
        except Exception:  # a payload that does not match its type: show it as it came
            pass
        else:
            return _jsonable(
                message.to_dict(
                    output_format=betterproto2.OutputFormat.PYTHON, casing=betterproto2.Casing.SNAKE
                )
            )
    return {"@type": event.type_url, "value": base64.b64encode(event.value).decode()}


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, datetime):
        return rfc3339_nano(value)
    if isinstance(value, timedelta):
        return f"{value.total_seconds():g}s"
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, betterproto2.Message):
        return _jsonable(
            value.to_dict(output_format=betterproto2.OutputFormat.PYTHON, casing=betterproto2.Casing.SNAKE)
        )
    return value


def rfc3339_nano(moment: datetime) -> str:
    """RFC 3339 in UTC with the fraction of a second when there is one."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def go_time(moment: datetime | None) -> str:
    """A time as ctr prints an envelope's (Go's Time.String), e.g. ``2024-05-01 10:11:12.5 +0000 UTC``."""
    if moment is None:
        return "0001-01-01 00:00:00 +0000 UTC"
    utc = moment.astimezone(UTC)
    fraction = f".{utc.microsecond:06d}".rstrip("0").rstrip(".")
    return f"{utc:%Y-%m-%d %H:%M:%S}{fraction} +0000 UTC"


def _compact(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


def event_line(envelope: Envelope) -> str:
    """``timestamp namespace topic {event}``, as ``ctr events`` prints it."""
    decoded = decode_event(envelope.event)
    payload = "" if decoded is None else _compact(decoded)
    return f"{go_time(envelope.timestamp)} {envelope.namespace} {envelope.topic} {payload}".rstrip()


def event_json(envelope: Envelope) -> str:
    """One JSON object with stable keys, on one line."""
    return _compact(
        {
            "timestamp": rfc3339_nano(envelope.timestamp) if envelope.timestamp is not None else None,
            "namespace": envelope.namespace,
            "topic": envelope.topic,
            "type": envelope.event.type_url if envelope.event is not None else None,
            "event": decode_event(envelope.event),
        }
    )


def watch(filters: Sequence[str], output_format: str) -> None:
    render = event_json if output_format == "json" else event_line

    async def follow(client: Client) -> None:
        with stdout_closed_quietly():
            async for envelope in client.subscribe(filters):
                click.echo(render(envelope))  # flushed per line, so a pipe sees each event as it comes

    try:
        call(follow)
    except KeyboardInterrupt:  # Ctrl-C is how one stops following
        pass
    except StdoutClosed:
        silence_stdout()


@click.command("events")
@click.argument("filters", nargs=-1, metavar="[FILTER]...")
@format_option("text", "json")
def events_command(filters: tuple[str, ...], output_format: str) -> None:
    """Print events as they happen, until Ctrl-C.

    Without FILTERs, events of every namespace are shown (as with ctr). FILTERs are containerd's,
    e.g. 'topic~="/content/"' or 'namespace==default'. Each line reads
    'timestamp namespace topic {event}'; with --format json, each line is one JSON object.
    """
    watch(filters, output_format)
