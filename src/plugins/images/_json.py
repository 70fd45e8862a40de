"""JSON bytes as Go's encoding/json writes them, and strict decoding of untrusted documents.

Documents that containerd synthesises (the manifests of a ``docker save`` import, an exported
``index.json``) are addressed by the digest of their bytes, so ours must be byte-identical:
compact, keys in the order given (maps sorted), ``<``, ``>``, ``&``, U+2028 and U+2029 escaped.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from corral.kernel import InvalidArgument

JSON_LIMIT = 20 << 20
"""The largest JSON document read from an archive or a store (containerd's import limit)."""

_GO_ESCAPES = {
    "<": "\\u003c",
    ">": "\\u003e",
    "&": "\\u0026",
    "\u2028": "\\u2028",
    "\u2029": "\\u2029",
}


def go_json(value: Any) -> bytes:
    """``value`` encoded as Go's ``json.Marshal`` would encode the same struct."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    for char, escape in _GO_ESCAPES.items():
        if char in text:
            text = text.replace(char, escape)
    return text.encode()


def sorted_map(mapping: Mapping[str, str]) -> dict[str, str]:
    """Go marshals a map with its keys sorted."""
    return {key: mapping[key] for key in sorted(mapping)}


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise InvalidArgument(f"duplicate key {key!r}")
        result[key] = value
    return result


def _refuse_constant(name: str) -> Any:
    raise InvalidArgument(f"{name} is not valid JSON")


def load_json(data: bytes, what: str) -> Any:
    """``data`` decoded as UTF-8 JSON; InvalidArgument naming ``what`` for anything malformed,
    oversized, or with a key given twice (a document two parsers could read differently)."""
    if len(data) > JSON_LIMIT:
        raise InvalidArgument(f"{what} is {len(data)} bytes, more than the {JSON_LIMIT}-byte limit")
    try:
        text = data.decode("utf-8")
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_refuse_constant)
    except InvalidArgument as err:
        raise InvalidArgument(f"{what} is not valid JSON: {err}") from err
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise InvalidArgument(f"{what} is not valid JSON: {err}") from err


def load_object(data: bytes, what: str) -> dict[str, Any]:
    value = load_json(data, what)
    if not isinstance(value, dict):
        raise InvalidArgument(f"{what} must be a JSON object, not {type(value).__name__}")
    return value
