"""The edge every transport shares: request binding and the one error mapping.

gRPC (``corral.api.grpc``) and ttrpc (``corral.api.ttrpc``) both bind a request's namespace and
lease from its metadata here, and both turn the kernel's error kinds into status codes here —
containerd's errdefs table, with the codes gRPC and ttrpc share. Nothing here knows a transport.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from typing import Protocol, runtime_checkable

import structlog

from corral.kernel import (
    Aborted,
    AlreadyExists,
    Canceled,
    CorralError,
    DataLoss,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    OutOfRange,
    PermissionDenied,
    PluginUnavailable,
    ResourceExhausted,
    Unavailable,
    Unimplemented,
)
from corral.plugins.core import bound_lease, bound_namespace

NAMESPACE_HEADER = "containerd-namespace"
"""gRPC metadata carrying the request's namespace."""
NAMESPACE_TTRPC_HEADER = "containerd-namespace-ttrpc"
"""ttrpc metadata carrying the namespace (what shims send with their events)."""
LEASE_HEADER = "containerd-lease"
"""Metadata naming the lease that holds what the request creates."""

OK = 0
UNKNOWN = 2
UNIMPLEMENTED = 12

# containerd's errdefs kinds and their codes (the same numbers in gRPC and ttrpc).
_CODES: tuple[tuple[type[Exception], int], ...] = (
    (Canceled, 1),
    (InvalidArgument, 3),
    (DeadlineExceeded, 4),
    (NotFound, 5),
    (AlreadyExists, 6),
    (PermissionDenied, 7),
    (ResourceExhausted, 8),
    (FailedPrecondition, 9),
    (Aborted, 10),
    (OutOfRange, 11),
    (Unimplemented, UNIMPLEMENTED),
    (Internal, 13),
    (Unavailable, 14),
    (DataLoss, 15),
    (PluginUnavailable, 14),
)

_KINDS: dict[int, type[CorralError]] = {code: kind for kind, code in _CODES if issubclass(kind, CorralError)}

log = structlog.get_logger("corral.edge")


def first_value(metadata: Mapping[str, object], key: str) -> str | None:
    value = metadata.get(key)
    if isinstance(value, list | tuple):
        value = value[0] if value else None
    return str(value) if value else None


@contextmanager
def bound_request(metadata: Mapping[str, object]) -> Iterator[None]:
    """Run a handler with the request's namespace and lease bound (from either transport's header)."""
    ns = first_value(metadata, NAMESPACE_HEADER) or first_value(metadata, NAMESPACE_TTRPC_HEADER)
    with bound_namespace(ns), bound_lease(first_value(metadata, LEASE_HEADER)):
        yield


def code_for(exc: BaseException) -> int:
    """containerd's errdefs mapping: known kinds keep their code, anything else is Unknown."""
    for kind, code in _CODES:
        if isinstance(exc, kind):
            return code
    return UNKNOWN


def status_of(exc: BaseException, method: str) -> tuple[int, str]:
    """The status a handler's exception is answered with: a kind's code and message, or — for an
    exception no plugin mapped — Unknown with one line, the traceback going to the log."""
    if isinstance(exc, CorralError | PluginUnavailable):
        return code_for(exc), str(exc)
    log.error("handler_failed", method=method, exc_info=exc)
    return UNKNOWN, unexpected_error_message(exc)


def unexpected_error_message(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    detail = text[0][:200] if text and not text[0].startswith(("[", "(", "{")) else ""
    return (
        f"internal error: {type(exc).__name__}" + (f": {detail}" if detail else "") + " (logged by corrald)"
    )


CODE_NAMES = (
    "OK", "Canceled", "Unknown", "InvalidArgument", "DeadlineExceeded", "NotFound", "AlreadyExists",
    "PermissionDenied", "ResourceExhausted", "FailedPrecondition", "Aborted", "OutOfRange",
    "Unimplemented", "Internal", "Unavailable", "DataLoss", "Unauthenticated",
)  # fmt: skip
"""Status codes by number as grpc-go names them (metrics and logs use these names)."""


@runtime_checkable
class RequestObserver(Protocol):
    """A plugin instance that wants to see every request an edge serves (metrics, tracing).

    ``kind`` is ``unary``, ``client_stream``, ``server_stream`` or ``bidi_stream``; ``method`` the
    full path ``/package.Service/Method``. Observers must be quick and must not raise."""

    def request_started(self, method: str, kind: str) -> None: ...

    def request_finished(
        self, method: str, kind: str, code: int, seconds: float, received: int, sent: int
    ) -> None: ...


class RequestSpan(Protocol):
    """The span a request is served in; the edge says how the request ended before the span closes."""

    def finish(self, code: int, message: str) -> None: ...


@runtime_checkable
class RequestTracer(Protocol):
    """A plugin instance that serves every request an edge serves inside a span of its own (tracing).

    ``system`` is ``grpc`` or ``ttrpc``; ``method`` the full path ``/package.Service/Method``;
    ``metadata`` the request's, whose W3C ``traceparent`` and ``tracestate`` name the caller's span.
    The handler runs inside the returned context, so the spans it opens are the request span's
    children. Only ok plugins are asked, so with none configured requests are not wrapped at all."""

    def request_span(
        self, system: str, method: str, metadata: Mapping[str, object]
    ) -> AbstractContextManager[RequestSpan]: ...


@functools.cache
def _methods(protocol: object) -> tuple[str, ...]:
    members = vars(protocol)
    return tuple(n for n, v in members.items() if callable(v) and not n.startswith("_"))


def provides(instance: object, protocol: object) -> bool:
    """``isinstance(instance, protocol)`` for a runtime-checkable protocol of methods (the ones
    here, and the servers' plugin protocols): every public method it declares is there and callable.
    typing's own check costs 13 µs a plugin and protocol, a few milliseconds of every start."""
    return all(callable(getattr(instance, name, None)) for name in _methods(protocol))


def error_for(code: int, message: str) -> Exception:
    """The client side: a status back into the kernel's kind, its message kept as sent."""
    kind = _KINDS.get(code)
    if kind is None:
        return RuntimeError(message)
    err = kind.__new__(kind)
    Exception.__init__(err, message)
    err.detail = message
    return err
