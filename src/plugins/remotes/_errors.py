"""The one place where registry answers and transport failures become kernel error kinds.

Messages are one line naming the registry, the request and the HTTP status, followed by the
registry's own error code and message when its body carries the distribution error envelope.
"""

from __future__ import annotations

import json
import ssl
from typing import TYPE_CHECKING

from corral.kernel import (
    CorralError,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    OutOfRange,
    PermissionDenied,
    Unavailable,
    Unimplemented,
)

if TYPE_CHECKING:
    import httpx


def transport_errors() -> tuple[type[Exception], ...]:
    """What a request that got no usable answer raises; TLS alerts after the handshake escape httpx as
    SSLError. A function, so that httpx is imported with the first session (``except`` evaluates it
    only when something was raised), not with corrald."""
    import httpx

    return (httpx.TransportError, ssl.SSLError)


_KINDS: dict[int, type[CorralError]] = {
    400: InvalidArgument,
    401: PermissionDenied,
    403: PermissionDenied,
    404: NotFound,
    405: Unimplemented,
    408: Unavailable,
    412: FailedPrecondition,
    416: OutOfRange,
    429: Unavailable,
    501: Unimplemented,
}


def kind_for_status(status: int) -> type[CorralError]:
    if status in _KINDS:
        return _KINDS[status]
    if status >= 500:
        return Unavailable
    if 400 <= status < 500:
        return InvalidArgument
    return Internal


def registry_detail(body: bytes) -> str:
    """``CODE message`` of each error in a distribution error body; "" when it is not one."""
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return ""
    errors = document.get("errors") if isinstance(document, dict) else None
    if not isinstance(errors, list):
        return ""
    parts = []
    for error in errors:
        if isinstance(error, dict):
            text = " ".join(str(error[k]) for k in ("code", "message") if error.get(k))
            if text:
                parts.append(text)
    return "; ".join(parts)


def describe_request(request: httpx.Request) -> str:
    """``METHOD /path`` without the query, which may carry upload state or credentials."""
    return f"{request.method} {request.url.path}"


def status_error(registry: str, response: httpx.Response, body: bytes = b"") -> CorralError:
    """The kernel error for an unexpected status; ``body`` is what was read of the response, if any."""
    status = f"{response.status_code} {response.reason_phrase}".strip()
    detail = registry_detail(body)
    message = f"registry {registry}: {describe_request(response.request)}: {status}"
    if detail:
        message += f" ({detail})"
    return kind_for_status(response.status_code)(message)


def transport_error(registry: str, request: httpx.Request, exc: Exception) -> CorralError:
    """The kernel error for a request that got no answer: refused, reset, timed out, TLS rejected."""
    where = f"registry {registry}: {describe_request(request)}"
    import httpx

    if isinstance(exc, httpx.TimeoutException):
        return DeadlineExceeded(f"{where}: timed out ({type(exc).__name__})")
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return Unavailable(f"{where}: TLS certificate not trusted: {cause.verify_message}")
        if isinstance(cause, ssl.SSLError):
            return Unavailable(f"{where}: TLS failed: {cause.reason or cause}")
        cause = cause.__cause__ or cause.__context__
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return Unavailable(f"{where}: {text}")
