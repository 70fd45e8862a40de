"""Deterministic start order over plugin types, with cycles reported by their members."""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property

from corral.kernel._registration import ALL_TYPES, Registration


class DependencyCycleError(ValueError):
    """Plugins that require each other's types, so none of them can start first."""

    def __init__(self, members: Sequence[str]) -> None:
        self.members = tuple(members)
        super().__init__("plugin dependency cycle: " + " -> ".join(self.members))


@dataclass(frozen=True)
class PluginGraph:
    """Registrations in start order plus the edges that produced it."""

    order: tuple[Registration, ...]
    disabled: tuple[Registration, ...]

    @cached_property
    def _by_type(self) -> dict[str, list[Registration]]:
        return _index(self.order)

    def providers(self, plugin_type: str) -> tuple[Registration, ...]:
        return tuple(self._by_type.get(plugin_type, ()))

    def dependencies(self, reg: Registration) -> tuple[Registration, ...]:
        """Every plugin that must finish initialising before ``reg`` starts."""
        return tuple(dict.fromkeys(_edges(reg, self.order, self._by_type)))

    @cached_property
    def dependents(self) -> dict[str, tuple[str, ...]]:
        """For each URI, the URIs of the plugins that start after it because of it."""
        out: dict[str, list[str]] = {r.uri: [] for r in self.order}
        for reg in self.order:
            for dep in self.dependencies(reg):
                out[dep.uri].append(reg.uri)
        return {uri: tuple(deps) for uri, deps in out.items()}


def _index(regs: Sequence[Registration]) -> dict[str, list[Registration]]:
    by_type: dict[str, list[Registration]] = {}
    for r in regs:
        by_type.setdefault(r.type, []).append(r)
    return by_type


def _edges(
    reg: Registration, regs: Sequence[Registration], by_type: dict[str, list[Registration]]
) -> Iterator[Registration]:
    for t in reg.ordering_types:
        if t == ALL_TYPES:
            yield from (r for r in regs if r.type != reg.type)
        else:
            yield from by_type.get(t, ())


def resolve_order(registrations: Sequence[Registration], disabled: Collection[str] = ()) -> PluginGraph:
    """Order plugins so each starts after every provider of the types it names.

    The order is containerd's: depth-first post-order, stable with respect to the input order,
    so the same inputs always give the same order. Plugins whose URI is in ``disabled`` are
    removed first and never pulled back in. A cycle raises ``DependencyCycleError``.
    """
    off = set(disabled)
    regs = [r for r in registrations if r.uri not in off]
    by_type = _index(regs)
    done: set[int] = set()
    on_path: dict[int, int] = {}
    order: list[Registration] = []
    for root in regs:
        if id(root) in done:
            continue
        # Iterative DFS: a chain of thousands of plugins must not hit the recursion limit.
        path: list[Registration] = [root]
        stack: list[Iterator[Registration]] = [_edges(root, regs, by_type)]
        on_path[id(root)] = 0
        while stack:
            dep = next(stack[-1], None)
            if dep is None:
                node = path.pop()
                stack.pop()
                del on_path[id(node)]
                done.add(id(node))
                order.append(node)
                continue
            if id(dep) in done or dep is path[-1]:
                continue
            if id(dep) in on_path:
                cycle = [r.uri for r in path[on_path[id(dep)] :]] + [dep.uri]
                raise DependencyCycleError(cycle)
            on_path[id(dep)] = len(path)
            path.append(dep)
            stack.append(_edges(dep, regs, by_type))
    return PluginGraph(tuple(order), tuple(r for r in registrations if r.uri in off))
