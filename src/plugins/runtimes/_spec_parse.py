"""The ctr-style flag syntaxes: ``--mount type=bind,src=/a,dst=/b,options=rbind:ro`` and id maps.

``parse_mount`` reads its argument as ctr does: one record of Go's ``encoding/csv`` (so a field
may be double-quoted to hold a comma), each field ``key=value``. ID maps are ctr's
``container-id:host-id:size`` triples, numbers in Go's base-prefix syntax (``0x10``, ``0o17``,
``010``, ``1_000``), and, beyond what ctr checks, the ranges the kernel would refuse (empty,
overflowing, overlapping on either side, more than 340) are refused here with a reason.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from corral.kernel import InvalidArgument

MAX_ID_MAP_RANGES = 340
_UINT32_MAX = 2**32 - 1


def _csv_error(column: int, what: str) -> InvalidArgument:
    return InvalidArgument(f"invalid mount specification: parse error on line 1, column {column}: {what}")


def read_csv_record(text: str) -> list[str]:
    """The first record of ``text`` as Go's ``csv.Reader.Read`` returns it (default settings)."""
    lines = text.split("\n")
    while lines and lines[0] in ("", "\r"):
        lines.pop(0)  # blank lines before the record are skipped, as Go's reader does
    if not lines or (len(lines) == 1 and lines[0] == ""):
        raise InvalidArgument("invalid mount specification: empty")
    line = lines.pop(0).removesuffix("\r")
    fields: list[str] = []
    pos = 0
    while True:
        if not line[pos:].startswith('"'):
            end = line.find(",", pos)
            field = line[pos:] if end < 0 else line[pos:end]
            quote = field.find('"')
            if quote >= 0:
                raise _csv_error(pos + quote + 1, 'bare " in non-quoted-field')
            fields.append(field)
            if end < 0:
                return fields
            pos = end + 1
            continue
        pos += 1
        value: list[str] = []
        while True:
            close = line.find('"', pos)
            if close < 0:
                value.append(line[pos:])
                if not lines:
                    raise _csv_error(len(line) + 1, 'extraneous or missing " in quoted-field')
                value.append("\n")
                line, pos = lines.pop(0).removesuffix("\r"), 0
                continue
            value.append(line[pos:close])
            pos = close + 1
            following = line[pos : pos + 1]
            if following == '"':
                value.append('"')
                pos += 1
                continue
            if following == ",":
                fields.append("".join(value))
                pos += 1
                break
            if following == "":
                fields.append("".join(value))
                return fields
            raise _csv_error(pos, 'extraneous or missing " in quoted-field')


def parse_mount(flag: str) -> dict[str, Any]:
    """One ``--mount`` value as ctr parses it, as a spec mount (``options`` split on ``:``)."""
    mount: dict[str, Any] = {"destination": ""}
    for field in read_csv_record(flag):
        key, sep, value = field.partition("=")
        if not sep:
            raise InvalidArgument("invalid mount specification: expected key=val")
        if key == "type":
            mount["type"] = value
        elif key in ("source", "src"):
            mount["source"] = value
        elif key in ("destination", "dst"):
            mount["destination"] = value
        elif key == "options":
            mount["options"] = value.split(":")
        else:
            raise InvalidArgument(f"mount option {key!r} not supported")
    return {k: v for k, v in mount.items() if k == "destination" or v}


@dataclass(frozen=True)
class IDMapping:
    """One user-namespace range: ``size`` ids from ``container_id`` map to ``host_id`` onwards."""

    container_id: int
    host_id: int
    size: int

    def to_spec(self) -> dict[str, int]:
        return {"containerID": self.container_id, "hostID": self.host_id, "size": self.size}

    def __str__(self) -> str:
        return f"{self.container_id}:{self.host_id}:{self.size}"


def _underscores_ok(text: str) -> bool:
    saw = "^"
    i = 0
    hexadecimal = False
    if len(text) >= 2 and text[0] == "0" and text[1].lower() in "box":
        i, saw, hexadecimal = 2, "0", text[1].lower() == "x"
    for ch in text[i:]:
        if ch.isascii() and (ch.isdigit() or (hexadecimal and ch.lower() in "abcdef")):
            saw = "0"
        elif ch == "_":
            if saw != "0":
                return False
            saw = "_"
        elif saw == "_":
            return False
        else:
            saw = "!"
    return saw != "_"


def go_parse_uint32(text: str) -> int:
    """Go's ``strconv.ParseUint(text, 0, 32)``; ValueError with Go's reason otherwise."""
    if not text:
        raise ValueError(f'strconv.ParseUint: parsing "{text}": invalid syntax')
    base, digits = 10, text
    if text[0] == "0":
        prefix = text[1:2].lower()
        if len(text) >= 3 and prefix in ("b", "o", "x"):
            base, digits = {"b": 2, "o": 8, "x": 16}[prefix], text[2:]
        else:
            base, digits = 8, text[1:]
    value = 0
    underscores = False
    for ch in digits:
        if ch == "_":
            underscores = True
            continue
        digit = int(ch, 16) if ch.isascii() and ch.lower() in "0123456789abcdef" else 99
        if digit >= base:
            raise ValueError(f'strconv.ParseUint: parsing "{text}": invalid syntax')
        value = value * base + digit
    if underscores and not _underscores_ok(text):
        raise ValueError(f'strconv.ParseUint: parsing "{text}": invalid syntax')
    if value > _UINT32_MAX:
        raise ValueError(f'strconv.ParseUint: parsing "{text}": value out of range')
    return value


def parse_id_mapping(entry: str) -> IDMapping:
    """One ``--uidmap``/``--gidmap`` value, ``container-id:host-id:size``, exactly as ctr reads it."""
    parts = entry.split(":", 3)
    if len(parts) != 3:
        raise InvalidArgument(
            f"user namespace mappings require the format `container-id:host-id:size`, got {entry!r}"
        )
    values = []
    for part, what in zip(parts, ("container id", "host id", "size"), strict=True):
        try:
            values.append(go_parse_uint32(part))
        except ValueError as e:
            raise InvalidArgument(f"invalid {what} for user namespace remapping: {e}") from None
    return IDMapping(*values)


def _overlapping(ranges: Iterable[tuple[int, int]]) -> tuple[int, int, int, int] | None:
    ordered = sorted(ranges)
    for (a_start, a_size), (b_start, b_size) in itertools.pairwise(ordered):
        if b_start < a_start + a_size:
            return a_start, a_size, b_start, b_size
    return None


def validate_id_map(mappings: Sequence[IDMapping], kind: str = "uid") -> None:
    """Refuse what the kernel's ``{uid,gid}_map`` would: empty, overflowing or overlapping ranges."""
    if len(mappings) > MAX_ID_MAP_RANGES:
        raise InvalidArgument(f"{kind} map has {len(mappings)} ranges; the kernel takes {MAX_ID_MAP_RANGES}")
    for m in mappings:
        if m.size == 0:
            raise InvalidArgument(f"{kind} map range {m} is empty")
        if m.container_id + m.size > _UINT32_MAX or m.host_id + m.size > _UINT32_MAX:
            raise InvalidArgument(f"{kind} map range {m} runs past the last id")
    sides: tuple[tuple[str, Callable[[IDMapping], int]], ...] = (
        ("container", lambda m: m.container_id),
        ("host", lambda m: m.host_id),
    )
    for side, pick in sides:
        clash = _overlapping((pick(m), m.size) for m in mappings)
        if clash is not None:
            a, an, b, bn = clash
            raise InvalidArgument(f"{kind} map ranges overlap on the {side} side: {a}+{an} and {b}+{bn}")


def parse_id_map(value: str | Sequence[str], kind: str = "uid") -> tuple[IDMapping, ...]:
    """A whole id map: ``"0:666:1000,1000:6666:64536"`` or one ``--uidmap`` value per item.

    ctr 2.1 takes one range per ``--uidmap`` and repeats the flag for more; the comma-joined
    form is how containerd writes a map in snapshot labels and ``uidmap=`` mount options.
    Either is accepted, and the result is checked with ``validate_id_map``.
    """
    items = [value] if isinstance(value, str) else list(value)
    entries = [entry for item in items for entry in item.split(",")]
    if not entries or entries == [""]:
        raise InvalidArgument(f"{kind} map is empty")
    mappings = tuple(parse_id_mapping(entry.strip()) for entry in entries)
    validate_id_map(mappings, kind)
    return mappings


def format_id_map(mappings: Iterable[IDMapping]) -> str:
    """The comma-joined form containerd uses in labels and mount options."""
    return ",".join(str(m) for m in mappings)
