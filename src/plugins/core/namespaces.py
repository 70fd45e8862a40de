"""The namespace of the current request, carried in a context variable.

Every namespaced store reads it with ``namespace_required()``; the gRPC and ttrpc edges bind it
from the request's metadata with ``bound_namespace``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from corral.kernel import FailedPrecondition, InvalidArgument
from corral.plugins.core.identifiers import validate_identifier

DEFAULT_NAMESPACE = "default"

_current: ContextVar[str | None] = ContextVar("corral_namespace", default=None)


def validate_namespace(name: str) -> None:
    try:
        validate_identifier(name)
    except InvalidArgument as exc:
        raise InvalidArgument(f"namespace validation: {exc.detail}") from None


def current_namespace() -> str | None:
    return _current.get()


def namespace_required() -> str:
    """The request's namespace, or FailedPrecondition as containerd answers when it is missing."""
    ns = _current.get()
    if not ns:
        raise FailedPrecondition("namespace is required")
    validate_namespace(ns)
    return ns


@contextmanager
def namespace(name: str) -> Iterator[str]:
    """Run the block with ``name`` as the current namespace."""
    validate_namespace(name)
    token = _current.set(name)
    try:
        yield name
    finally:
        _current.reset(token)


@contextmanager
def bound_namespace(name: str | None) -> Iterator[str | None]:
    """Carry a request's namespace as sent; it is validated only where a service needs it."""
    token = _current.set(name or None)
    try:
        yield name
    finally:
        _current.reset(token)
