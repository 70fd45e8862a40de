"""The one place kernel error kinds become gRPC statuses."""

from __future__ import annotations

from grpclib.const import Status

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

_CODES: tuple[tuple[type[Exception], Status], ...] = (
    (InvalidArgument, Status.INVALID_ARGUMENT),
    (NotFound, Status.NOT_FOUND),
    (AlreadyExists, Status.ALREADY_EXISTS),
    (FailedPrecondition, Status.FAILED_PRECONDITION),
    (Unavailable, Status.UNAVAILABLE),
    (Unimplemented, Status.UNIMPLEMENTED),
    (Canceled, Status.CANCELLED),
    (DeadlineExceeded, Status.DEADLINE_EXCEEDED),
    (PermissionDenied, Status.PERMISSION_DENIED),
    (ResourceExhausted, Status.RESOURCE_EXHAUSTED),
    (OutOfRange, Status.OUT_OF_RANGE),
    (Aborted, Status.ABORTED),
    (Internal, Status.INTERNAL),
    (DataLoss, Status.DATA_LOSS),
    (PluginUnavailable, Status.UNAVAILABLE),
)

_KINDS: dict[Status, type[CorralError]] = {
    code: kind for kind, code in _CODES if issubclass(kind, CorralError)
}


def status_for(exc: BaseException) -> Status:
    """containerd's errdefs mapping: known kinds keep their code, anything else is Unknown."""
    for kind, code in _CODES:
        if isinstance(exc, kind):
            return code
    return Status.UNKNOWN


def error_from_status(status: Status, message: str) -> Exception:
    """The client side: a gRPC status back into the kernel's kind (message kept as sent)."""
    kind = _KINDS.get(status)
    if kind is None:
        return RuntimeError(message)
    err = kind.__new__(kind)
    Exception.__init__(err, message)
    err.detail = message
    return err
