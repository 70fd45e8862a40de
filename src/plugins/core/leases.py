"""The lease of the current request: what a call creates is held by it (the ``containerd-lease`` header)."""

from __future__ import annotations

import secrets
import string
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime

from corral.kernel import InvalidArgument
from corral.plugins.core.labels import GC_EXPIRE

_current: ContextVar[str | None] = ContextVar("corral_lease", default=None)


@contextmanager
def bound_lease(lease_id: str | None) -> Iterator[str | None]:
    """Attach objects created in this block to ``lease_id``."""
    token = _current.set(lease_id or None)
    try:
        yield lease_id
    finally:
        _current.reset(token)


def current_lease() -> str | None:
    return _current.get()


def generate_lease_id() -> str:
    """Like containerd's: the time of day, then four random characters."""
    suffix = "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(4))
    return f"{time.strftime('%H%M%S')}{time.time_ns() % 100:02d}-{suffix}"


def validate_lease_id(lease_id: str) -> None:
    """Looser than namespace names: containerd's clients make ids like ``196387498--6tY``
    (nanoseconds, a dash, URL-safe base64), so only empty, overlong or blank-containing ids fail."""
    if (
        not lease_id
        or len(lease_id) > 255
        or not lease_id.isprintable()
        or any(c.isspace() for c in lease_id)
    ):
        raise InvalidArgument(f'invalid lease id "{lease_id}"')


def parse_expiry(text: str) -> datetime:
    """``containerd.io/gc.expire`` holds an RFC 3339 time."""
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidArgument(f'invalid {GC_EXPIRE} label "{text}": not an RFC 3339 time') from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)
