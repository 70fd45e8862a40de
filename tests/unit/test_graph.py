"""Start order: containerd's depth-first order, stable, cycles named, disabled plugins removed."""

from __future__ import annotations

import random
from typing import Any

import pytest

from corral.kernel import (
    ALL_TYPES,
    DependencyCycleError,
    InitContext,
    Registration,
    RegistrationError,
    resolve_order,
)


async def _noop(ic: InitContext) -> Any:
    return None


def reg(uri: str, *requires: str, after: tuple[str, ...] = ()) -> Registration:
    plugin_type, _, plugin_id = uri.rpartition(".")
    return Registration(type=plugin_type, id=plugin_id, init=_noop, requires=requires, after=after)


def uris(regs: Any) -> list[str]:
    return [r.uri for r in regs]


def test_providers_start_before_the_plugin_that_requires_their_type() -> None:
    regs = [
        reg("svc.v1.tasks", "runtime.v1", "metadata.v1"),
        reg("content.v1.content"),
        reg("metadata.v1.bolt", "content.v1", "snap.v1"),
        reg("snap.v1.native"),
        reg("snap.v1.overlayfs"),
        reg("runtime.v1.task"),
    ]
    order = uris(resolve_order(regs).order)
    assert order == [
        "runtime.v1.task",
        "content.v1.content",
        "snap.v1.native",
        "snap.v1.overlayfs",
        "metadata.v1.bolt",
        "svc.v1.tasks",
    ]


def test_star_requirement_starts_after_every_other_type() -> None:
    # containerd's TestRequiresAll
    regs = [
        reg("internal.v1.system"),
        reg("service.v1.introspection", ALL_TYPES),
        reg("service2.v1.task", "internal.v1"),
        reg("version.v1.version"),
    ]
    assert uris(resolve_order(regs).order) == [
        "internal.v1.system",
        "service2.v1.task",
        "version.v1.version",
        "service.v1.introspection",
    ]


def test_ordering_hints_order_like_requirements() -> None:
    regs = [reg("b.v1.x", after=("a.v1",)), reg("a.v1.y")]
    assert uris(resolve_order(regs).order) == ["a.v1.y", "b.v1.x"]


def test_order_is_deterministic_for_the_same_input() -> None:
    regs = [reg(f"t{i % 7}.v1.p{i}", *(f"t{j}.v1" for j in range(i % 7))) for i in range(50)]
    assert uris(resolve_order(regs).order) == uris(resolve_order(list(regs)).order)


def test_disabled_plugins_are_removed_and_never_pulled_back_in() -> None:
    regs = [reg("a.v1.one"), reg("b.v1.two", "a.v1")]
    graph = resolve_order(regs, disabled={"a.v1.one"})
    assert uris(graph.order) == ["b.v1.two"]
    assert uris(graph.disabled) == ["a.v1.one"]


def test_cycle_names_its_members() -> None:
    regs = [reg("a.v1.one", "b.v1"), reg("b.v1.two", "c.v1"), reg("c.v1.three", "a.v1"), reg("d.v1.free")]
    with pytest.raises(DependencyCycleError) as info:
        resolve_order(regs)
    assert info.value.members == ("a.v1.one", "b.v1.two", "c.v1.three", "a.v1.one")
    assert "a.v1.one -> b.v1.two -> c.v1.three -> a.v1.one" in str(info.value)


def test_two_star_plugins_form_a_cycle() -> None:
    with pytest.raises(DependencyCycleError):
        resolve_order([reg("a.v1.x", ALL_TYPES), reg("b.v1.y", ALL_TYPES)])


def test_requiring_a_type_nobody_provides_only_affects_nothing_in_order() -> None:
    assert uris(resolve_order([reg("a.v1.x", "missing.v1")]).order) == ["a.v1.x"]


def test_long_chains_do_not_hit_the_recursion_limit() -> None:
    regs = [reg(f"t{i}.v1.p", *([f"t{i - 1}.v1"] if i else [])) for i in range(5000)]
    random.Random(1).shuffle(regs)
    order = uris(resolve_order(regs).order)
    assert order == [f"t{i}.v1.p" for i in range(5000)]


def test_dependents_and_dependencies_are_reported() -> None:
    graph = resolve_order([reg("a.v1.x"), reg("b.v1.y", "a.v1"), reg("c.v1.z", after=("a.v1",))])
    assert graph.dependents["a.v1.x"] == ("b.v1.y", "c.v1.z")
    assert uris(graph.dependencies(graph.order[1])) == ["a.v1.x"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"type": "", "id": "x"}, "no type"),
        ({"type": "a.v1", "id": ""}, "no id"),
        ({"type": "a.v1", "id": "x", "requires": (ALL_TYPES, "b.v1")}, "'*' must be the only entry"),
        ({"type": "a.v1", "id": "x", "requires": ("a.v1",)}, "its own type"),
        ({"type": "a.v1", "id": "x", "requires": "b.v1"}, "tuple of types"),
        ({"type": "a.v1", "id": "x", "config": dict}, "dataclass"),
    ],
)
def test_invalid_registrations_are_refused_when_made(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(RegistrationError, match=message):
        Registration(init=_noop, **kwargs)
