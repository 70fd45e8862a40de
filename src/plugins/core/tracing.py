"""Spans any plugin can open: ``with span("pull.fetch", {"layer.media.digest": digest}): ...``.

A span nests under whatever span is current — the RPC being served, or a plugin call further up
(pull → fetch → unpack → apply) — and is exported by the tracing plugin
(``io.containerd.internal.v1.tracing``) when one is configured. Without one, ``span`` returns a
shared object that does nothing: one module-global read per call, no import of OpenTelemetry.
Attribute keys with dots (containerd's ``layer.media.digest``) go in the mapping argument; values
are strings, booleans, numbers or lists of one of those, anything else is recorded as its ``str()``.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager
from types import TracebackType
from typing import Protocol


class Span(Protocol):
    """The span a ``with span(...)`` block runs in."""

    def set_attributes(self, attributes: Mapping[str, object] | None = None, /, **more: object) -> None: ...

    def add_event(
        self, name: str, attributes: Mapping[str, object] | None = None, /, **more: object
    ) -> None: ...

    @property
    def recording(self) -> bool:
        """False when nothing is kept (tracing off, or this trace not sampled): skip costly attributes."""
        ...


class Tracer(Protocol):
    """What a tracing plugin installs: starts a span as a child of the current one and makes it
    current for the block; an exception leaving the block marks the span failed and propagates."""

    def start_span(self, name: str, attributes: Mapping[str, object]) -> AbstractContextManager[Span]: ...

    def current_span(self) -> Span: ...


class _NoSpan:
    """The span and context manager when tracing is off: one shared, stateless object."""

    __slots__ = ()

    recording = False

    def __enter__(self) -> _NoSpan:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None

    def set_attributes(self, attributes: Mapping[str, object] | None = None, /, **more: object) -> None:
        return None

    def add_event(self, name: str, attributes: Mapping[str, object] | None = None, /, **more: object) -> None:
        return None


NO_SPAN: Span = _NoSpan()
"""The span that records nothing."""

_tracer: Tracer | None = None


def span(
    name: str, attributes: Mapping[str, object] | None = None, /, **more: object
) -> AbstractContextManager[Span]:
    """A span named ``name`` (containerd's style: ``snapshots.prepare``, ``pkg.unpack.unpacker.unpack``)
    around the ``with`` block, a child of the current span, with ``attributes`` and ``more`` set."""
    tracer = _tracer
    if tracer is None:
        return _NO_SPAN_CONTEXT
    if attributes:
        more = {**attributes, **more}
    return tracer.start_span(name, more)


def current_span() -> Span:
    """The span the caller runs in (the RPC's, or an enclosing ``span``), to add attributes to."""
    tracer = _tracer
    return NO_SPAN if tracer is None else tracer.current_span()


def enabled() -> bool:
    """Whether a tracer is installed (spans may be exported)."""
    return _tracer is not None


def install(tracer: Tracer) -> None:
    """Make ``tracer`` the one every ``span`` uses (the tracing plugin, at init)."""
    global _tracer
    _tracer = tracer


def uninstall(tracer: Tracer) -> None:
    """Stop using ``tracer`` if it is the installed one (the tracing plugin, at close)."""
    global _tracer
    if _tracer is tracer:
        _tracer = None


_NO_SPAN_CONTEXT = _NoSpan()

__all__ = [
    "NO_SPAN",
    "Span",
    "Tracer",
    "current_span",
    "enabled",
    "install",
    "span",
    "uninstall",
]
