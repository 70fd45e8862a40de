"""UpdateRuntimeConfig: the node's pod CIDR from the kubelet, after containerd 2.x's
``internal/cri/server/update_runtime_config.go``.

The kubelet sends the pod CIDR(s) its node was given. With ``cni.conf_template`` set and no CNI
config loadable yet, containerd writes ``10-containerd-net.conflist`` into ``cni.conf_dir`` from
that template (a Go ``text/template`` with ``.PodCIDR``, ``.PodCIDRRanges`` and ``.Routes``); with
none, or with a network already configured, the call changes nothing. The templates operators use
need fields, ``range`` with its index and value variables, ``if``/``else`` and ``-`` trimming: that
much of Go's template language is rendered here.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["CNI_CONFIG_FILE", "TemplateError", "pod_cidr_routes", "render_go_template", "write_cni_config"]

CNI_CONFIG_FILE = "10-containerd-net.conflist"


class TemplateError(ValueError):
    """A template that does not parse or names what its data does not have."""


def pod_cidr_routes(cidrs: Sequence[str]) -> list[str]:
    """containerd's getRoutes: a default route per address family the CIDRs use."""
    families = set()
    for cidr in cidrs:
        try:
            families.add(ipaddress.ip_network(cidr, strict=False).version)
        except ValueError:
            raise ValueError(f"invalid CIDR address: {cidr}") from None
    return [route for version, route in ((4, "0.0.0.0/0"), (6, "::/0")) if version in families]


def write_cni_config(conf_dir: str, template: str, cidrs: Sequence[str]) -> Path:
    """The conflist from ``template`` for ``cidrs``, written atomically into ``conf_dir``."""
    try:
        text = Path(template).read_text()
    except OSError as exc:
        raise TemplateError(f"failed to parse cni config template {template!r}: {exc.strerror}") from None
    data = {"PodCIDR": cidrs[0], "PodCIDRRanges": list(cidrs), "Routes": pod_cidr_routes(cidrs)}
    try:
        rendered = render_go_template(text, data)
    except TemplateError as exc:
        raise TemplateError(f"failed to parse cni config template {template!r}: {exc}") from None
    directory = Path(conf_dir)
    directory.mkdir(mode=0o755, parents=True, exist_ok=True)
    target = directory / CNI_CONFIG_FILE
    fd, scratch = tempfile.mkstemp(dir=directory, prefix=f".{CNI_CONFIG_FILE}.")
    try:
        with os.fdopen(fd, "w") as out:
            out.write(rendered)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(scratch, 0o644)
        os.replace(scratch, target)
    except BaseException:
        Path(scratch).unlink(missing_ok=True)
        raise
    return target


# -- a small Go text/template ----------------------------------------------------------------------
_ACTION = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.S)
_RANGE = re.compile(r"range\s+(?:(\$\w+)\s*(?:,\s*(\$\w+))?\s*:=\s*)?(\S+)$")


@dataclass
class _Node:
    kind: str  # "text", "value", "range", "if"
    arg: str = ""
    names: tuple[str, ...] = ()
    body: list[_Node] | None = None
    otherwise: list[_Node] | None = None


def render_go_template(text: str, data: Mapping[str, Any]) -> str:
    """``text`` rendered as Go's text/template renders it for the constructs named above."""
    tokens: list[tuple[str, str]] = []
    pos = 0
    for match in _ACTION.finditer(text):
        literal = text[pos : match.start()]
        if match.group(1):
            literal = literal.rstrip()
        if tokens and tokens[-1][0] == "trim-next":
            tokens.pop()
            literal = literal.lstrip()
        tokens.append(("text", literal))
        tokens.append(("action", match.group(2).strip()))
        if match.group(3):
            tokens.append(("trim-next", ""))
        pos = match.end()
    tail = text[pos:]
    if tokens and tokens[-1][0] == "trim-next":
        tokens.pop()
        tail = tail.lstrip()
    tokens.append(("text", tail))
    nodes, stop, rest = _parse(tokens, 0)
    if stop:
        raise TemplateError(f"unexpected {{{{{stop}}}}}")
    del rest
    out: list[str] = []
    _render(nodes, {"$": data}, data, out)
    return "".join(out)


def _parse(tokens: list[tuple[str, str]], at: int) -> tuple[list[_Node], str, int]:
    nodes: list[_Node] = []
    while at < len(tokens):
        kind, value = tokens[at]
        at += 1
        if kind == "text":
            if value:
                nodes.append(_Node("text", value))
            continue
        if value.startswith("/*"):
            continue
        if value in ("end", "else"):
            return nodes, value, at
        if value.startswith(("range ", "if ")):
            is_range = value.startswith("range ")
            node = _Node("range" if is_range else "if")
            if is_range:
                match = _RANGE.match(value)
                if match is None:
                    raise TemplateError(f"cannot parse {{{{{value}}}}}")
                node.names = tuple(n for n in match.groups()[:2] if n)
                node.arg = match.group(3)
            else:
                node.arg = value[3:].strip()
            node.body, stop, at = _parse(tokens, at)
            if stop == "else":
                node.otherwise, stop, at = _parse(tokens, at)
            if stop != "end":
                raise TemplateError(f"unexpected EOF in {{{{{value}}}}}")
            nodes.append(node)
            continue
        nodes.append(_Node("value", value))
    return nodes, "", at


def _lookup(expr: str, scope: Mapping[str, Any], dot: Any) -> Any:
    if expr == ".":
        return dot
    if expr.startswith("$"):
        name, _, path = expr.partition(".")
        if name not in scope:
            raise TemplateError(f"undefined variable {name!r}")
        value = scope[name]
        fields = [f for f in path.split(".") if f]
    elif expr.startswith("."):
        value, fields = dot, [f for f in expr.split(".") if f]
    else:
        raise TemplateError(f"function {expr!r} not defined")
    for field_name in fields:
        if not isinstance(value, Mapping) or field_name not in value:
            raise TemplateError(f"can't evaluate field {field_name}")
        value = value[field_name]
    return value


def _show(value: Any) -> str:
    if isinstance(value, list):
        return "[" + " ".join(_show(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _render(nodes: list[_Node], scope: dict[str, Any], dot: Any, out: list[str]) -> None:
    for node in nodes:
        if node.kind == "text":
            out.append(node.arg)
        elif node.kind == "value":
            out.append(_show(_lookup(node.arg, scope, dot)))
        elif node.kind == "if":
            branch = node.body if _lookup(node.arg, scope, dot) else node.otherwise
            _render(branch or [], scope, dot, out)
        else:
            items = _lookup(node.arg, scope, dot)
            if not isinstance(items, list):
                raise TemplateError(f"range can't iterate over {_show(items)}")
            if not items:
                _render(node.otherwise or [], scope, dot, out)
            for index, item in enumerate(items):
                inner = dict(scope)
                if len(node.names) == 2:
                    inner[node.names[0]], inner[node.names[1]] = index, item
                elif node.names:
                    inner[node.names[0]] = item
                _render(node.body or [], inner, item, out)
