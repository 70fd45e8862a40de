"""Plugin listings, details and explanations rendered from PluginDetail messages, with no I/O."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from grpclib.const import Status as GRPCStatus
from rich.table import Table
from rich.text import Text

from corral.api.cli._output import join_or_dash, status_text, table
from corral.api.types.corral.introspection.v1 import PluginDetail

OK = "ok"


def plugin_uri(detail: PluginDetail) -> str:
    return f"{detail.type}.{detail.id}"


def find_plugin(details: Iterable[PluginDetail], uri: str) -> PluginDetail | None:
    return next((d for d in details if plugin_uri(d) == uri), None)


def platforms_of(detail: PluginDetail) -> list[str]:
    return ["/".join(p for p in (pl.os, pl.architecture, pl.variant) if p) for pl in detail.platforms]


def origin_label(detail: PluginDetail) -> str:
    """ "builtin" for corral's own plugins, else "distribution version"."""
    origin = detail.origin
    if origin is None:
        return "-"
    if origin.builtin:
        return "builtin"
    return " ".join(p for p in (origin.distribution, origin.version) if p) or "-"


def init_label(detail: PluginDetail) -> str:
    """Init time in milliseconds; "-" for plugins whose init never ran."""
    if detail.status != OK and detail.init_seconds == 0:
        return "-"
    return f"{detail.init_seconds * 1000:.2f}"


def error_label(detail: PluginDetail) -> str:
    if not detail.error_code:
        return "-"
    try:
        name = GRPCStatus(detail.error_code).name
    except ValueError:
        name = "UNKNOWN"
    return f"{name} (code {detail.error_code})"


def config_of(detail: PluginDetail) -> Any:
    """The config in effect as data; None for plugins without one."""
    if not detail.config_json:
        return None
    try:
        return json.loads(detail.config_json)
    except ValueError:  # keep what the daemon sent rather than hide it
        return detail.config_json


def plugins_table(details: Sequence[PluginDetail]) -> Table:
    return table(
        ("TYPE", "ID", "PLATFORMS", "STATUS", "INIT", "ORIGIN"),
        (
            (
                d.type,
                d.id,
                join_or_dash(platforms_of(d)),
                status_text(d.status),
                init_label(d),
                origin_label(d),
            )
            for d in details
        ),
    )


def plugin_json(detail: PluginDetail) -> dict[str, Any]:
    origin = detail.origin
    return {
        "uri": plugin_uri(detail),
        "type": detail.type,
        "id": detail.id,
        "status": detail.status,
        "reason": detail.reason,
        "requires": list(detail.requires),
        "after": list(detail.after),
        "dependents": list(detail.dependents),
        "blocked_by": list(detail.blocked_by),
        "platforms": platforms_of(detail),
        "exports": dict(sorted(detail.exports.items())),
        "capabilities": list(detail.capabilities),
        "origin": None
        if origin is None
        else {
            "distribution": origin.distribution,
            "version": origin.version,
            "entry_point": origin.entry_point,
            "value": origin.value,
            "builtin": origin.builtin,
        },
        "init_seconds": detail.init_seconds,
        "config": config_of(detail),
        "error_code": detail.error_code,
        "order": detail.order,
    }


def plugins_json(details: Sequence[PluginDetail]) -> list[dict[str, Any]]:
    return [plugin_json(d) for d in details]


def _lines(items: Iterable[str]) -> str:
    return join_or_dash(items, "\n")


def plugin_info(detail: PluginDetail) -> Table:
    """Every field of one plugin, one per row; lists one item per line."""
    origin = detail.origin
    entry_point = f"{origin.entry_point} = {origin.value}" if origin and origin.entry_point else "-"
    if origin is None:
        source = "-"
    else:
        source = " ".join(p for p in (origin.distribution, origin.version) if p) or "-"
        source += " (builtin)" if origin.builtin else " (third-party)"
    config = config_of(detail)
    rows: list[tuple[str, str | Text]] = [
        ("type", detail.type),
        ("id", detail.id),
        ("status", status_text(detail.status)),
        ("reason", detail.reason or "-"),
        ("requires", _lines(detail.requires)),
        ("after", _lines(detail.after)),
        ("dependents", _lines(detail.dependents)),
        ("blocked by", _lines(detail.blocked_by)),
        ("exports", _lines(f"{k}={v}" for k, v in sorted(detail.exports.items()))),
        ("capabilities", _lines(detail.capabilities)),
        ("platforms", _lines(platforms_of(detail))),
        ("origin", source),
        ("entry point", entry_point),
        ("init", "-" if init_label(detail) == "-" else f"{init_label(detail)} ms"),
        ("config", "-" if config is None else json.dumps(config, indent=2, sort_keys=True)),
        ("error", error_label(detail)),
    ]
    grid = Table(box=None, pad_edge=False, show_edge=False, show_header=False)
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(no_wrap=True)
    for key, value in rows:
        grid.add_row(f"{key}:", value)
    return grid


def _state(uri: str, detail: PluginDetail) -> str:
    return f"{uri} [{detail.status}]" + (f": {detail.reason}" if detail.reason else "")


def _hint(detail: PluginDetail) -> list[str]:
    # A not-enabled plugin's reason already says how to enable it; a disabled one's does not.
    if detail.status == "disabled":
        return ["  remove it from disabled_plugins in config.toml to start it"]
    return []


def explain(uri: str, details: Sequence[PluginDetail]) -> str:
    """Why ``uri`` is not ok: its own state, then each blocker's, indented, down to the root causes."""
    by_uri = {plugin_uri(d): d for d in details}
    detail = by_uri[uri]
    if detail.status == OK:
        # an ok plugin with a reason is registered but unusable now (a proxy whose process is down)
        return f"{uri} is ok, but {detail.reason}\n" if detail.reason else f"{uri} is ok\n"
    lines = [_state(uri, detail)]
    if not detail.blocked_by:
        lines.extend(_hint(detail))
    causes: dict[str, list[str]] = {}
    seen = {uri}

    def walk(blockers: Sequence[str], depth: int) -> None:
        indent = "  " * depth
        for blocker in blockers:
            found = by_uri.get(blocker)
            if found is None:
                lines.append(f"{indent}blocked by {blocker}: not known to the daemon")
                causes[f"{blocker} is not installed"] = []
            elif blocker in seen:
                lines.append(f"{indent}blocked by {blocker} (see above)")
            else:
                seen.add(blocker)
                lines.append(f"{indent}blocked by {_state(blocker, found)}")
                if found.blocked_by:
                    walk(found.blocked_by, depth + 1)
                else:
                    causes[_state(blocker, found)] = _hint(found)

    walk(detail.blocked_by, 1)
    for cause, hint in causes.items():
        lines.append(f"root cause: {cause}")
        lines.extend(hint)
    return "\n".join(lines) + "\n"
