"""The namespace of the current request, carried in a context variable, and identifier rules."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar

from corral.kernel._errors import FailedPrecondition, InvalidArgument

IDENTIFIER_PATTERN = r"^[A-Za-z0-9]+(?:[._-](?:[A-Za-z0-9]+))*$"
_IDENTIFIER = re.compile(IDENTIFIER_PATTERN)
MAX_IDENTIFIER_LENGTH = 76
MAX_LABEL_SIZE = 4096

_current: ContextVar[str | None] = ContextVar("corral_namespace", default=None)


def validate_identifier(value: str) -> None:
    """Namespaces, container ids and lease ids follow containerd's identifier rule."""
    if not value:
        raise InvalidArgument("identifier must not be empty")
    if len(value) > MAX_IDENTIFIER_LENGTH:
        raise InvalidArgument(
            f'identifier "{value}" greater than maximum length ({MAX_IDENTIFIER_LENGTH} characters)'
        )
    if not _IDENTIFIER.match(value):
        raise InvalidArgument(f'identifier "{value}" must match {IDENTIFIER_PATTERN}')


def validate_namespace(name: str) -> None:
    try:
        validate_identifier(name)
    except InvalidArgument as exc:
        raise InvalidArgument(f"namespace validation: {exc.detail}") from None


def validate_labels(labels: Mapping[str, str]) -> None:
    """containerd caps each label's key plus value at 4096 bytes."""
    for key, value in labels.items():
        if not key:
            raise InvalidArgument("label key must not be empty")
        size = len(key.encode()) + len(value.encode())
        if size > MAX_LABEL_SIZE:
            raise InvalidArgument(
                f"label key and value length ({size} bytes) greater than maximum size ({MAX_LABEL_SIZE} bytes)"
            )


def update_labels(
    current: Mapping[str, str], labels: Mapping[str, str], paths: Sequence[str], *, what: str
) -> dict[str, str]:
    """containerd's field-mask rules for labels: ``labels`` (or no paths) replaces them all,
    ``labels.KEY`` sets one or, with an empty value, removes it; other paths are refused."""
    result = dict(current)
    if not paths:
        result = dict(labels)
    for path in paths:
        if path == "labels":
            result = dict(labels)
        elif path.startswith("labels."):
            key = path[len("labels.") :]
            if labels.get(key):
                result[key] = labels[key]
            else:
                result.pop(key, None)
        else:
            raise InvalidArgument(f'cannot update "{path}" field on {what}')
    validate_labels(result)
    return result


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
