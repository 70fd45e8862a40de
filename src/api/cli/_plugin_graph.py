"""The plugin dependency graph as a readable text tree or a Graphviz digraph, with no I/O.

Edges are resolved as the kernel resolves them: a plugin depends on every listed plugin of each
type it names in ``requires`` (``*``: every other type) or ``after``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from corral.api.cli._plugin_views import plugin_uri
from corral.api.types.corral.introspection.v1 import PluginDetail

ALL_TYPES = "*"
_DOT_NODE_STYLES = {
    "skip": 'style=dashed, color="goldenrod"',
    "error": 'style="bold", color="red", fontcolor="red"',
    "disabled": 'style=dotted, color="gray50", fontcolor="gray50"',
    "not-enabled": 'style=dotted, color="gray50", fontcolor="gray50"',
}


@dataclass(frozen=True)
class Dependency:
    """One edge out of a plugin: to a listed plugin (``target``) or to a type nobody provides."""

    plugin_type: str
    kind: str
    """"requires" or "after"."""
    target: PluginDetail | None


def dependencies(detail: PluginDetail, details: Sequence[PluginDetail]) -> list[Dependency]:
    edges: list[Dependency] = []
    named = [(t, "requires") for t in detail.requires]
    named += [(t, "after") for t in detail.after if t not in detail.requires]
    for plugin_type, kind in named:
        if plugin_type == ALL_TYPES:
            providers = [d for d in details if d.type != detail.type]
        else:
            providers = [d for d in details if d.type == plugin_type]
        edges.extend(Dependency(plugin_type, kind, p) for p in providers)
        if not providers:
            edges.append(Dependency(plugin_type, kind, None))
    return edges


def _marker(dep: Dependency) -> str:
    return "(after)" if dep.kind == "after" else "(requires)"


def graph_text(details: Sequence[PluginDetail]) -> str:
    """Each plugin in start order with its direct dependencies below it."""
    lines: list[str] = []
    for detail in details:
        lines.append(f"{plugin_uri(detail)} [{detail.status}]")
        deps = dependencies(detail, details)
        for i, dep in enumerate(deps):
            branch = "└── " if i == len(deps) - 1 else "├── "
            if dep.target is None:
                lines.append(f"{branch}{dep.plugin_type} {_marker(dep)}: no plugin of this type")
            else:
                lines.append(f"{branch}{plugin_uri(dep.target)} [{dep.target.status}] {_marker(dep)}")
    return "\n".join(lines) + "\n" if lines else ""


def _quote(text: str) -> str:
    # A JSON string is a valid DOT quoted string: both escape '"' and '\' the same way.
    return json.dumps(text, ensure_ascii=False)


def graph_dot(details: Sequence[PluginDetail]) -> str:
    """A Graphviz digraph with an edge dependent -> dependency; skipped and failed nodes stand out."""
    out = [
        "digraph plugins {",
        "  rankdir=LR;",
        '  node [shape=box, fontname="monospace"];',
    ]
    missing: dict[str, None] = {}
    edges: list[str] = []
    for detail in details:
        uri = plugin_uri(detail)
        style = _DOT_NODE_STYLES.get(detail.status)
        label = _quote(uri + "\n" + detail.status)
        out.append(f"  {_quote(uri)} [label={label}{', ' + style if style else ''}];")
        for dep in dependencies(detail, details):
            target = plugin_uri(dep.target) if dep.target is not None else dep.plugin_type
            if dep.target is None:
                missing[dep.plugin_type] = None
            edge_style = ' [style=dashed, label="after"]' if dep.kind == "after" else ""
            edges.append(f"  {_quote(uri)} -> {_quote(target)}{edge_style};")
    for plugin_type in missing:
        label = _quote(f"{plugin_type}\nno plugin of this type")
        out.append(f"  {_quote(plugin_type)} [label={label}, shape=ellipse, style=dotted];")
    out.extend(edges)
    out.append("}")
    return "\n".join(out) + "\n"


def graph_json(details: Sequence[PluginDetail]) -> dict[str, object]:
    """Nodes in start order and edges dependent -> dependency, for scripts."""
    nodes = [{"uri": plugin_uri(d), "type": d.type, "id": d.id, "status": d.status} for d in details]
    edges = [
        {
            "from": plugin_uri(d),
            "to": plugin_uri(dep.target) if dep.target is not None else None,
            "type": dep.plugin_type,
            "kind": dep.kind,
        }
        for d in details
        for dep in dependencies(d, details)
    ]
    return {"nodes": nodes, "edges": edges}
