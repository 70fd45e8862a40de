"""Error kinds shared by every plugin, after containerd's errdefs.

Each kind is an exception class. Its message ends with the kind's text, as containerd's do
(``namespace "x": not found``), so clients that match on it keep working. The api layer
maps kinds to gRPC status codes in exactly one place.
"""

from __future__ import annotations


class CorralError(Exception):
    """Base of every error kind; ``kind`` is the text containerd appends to messages."""

    kind = "unknown"

    def __init__(self, message: str = "") -> None:
        self.detail = message
        super().__init__(f"{message}: {self.kind}" if message else self.kind)


class InvalidArgument(CorralError):
    kind = "invalid argument"


class NotFound(CorralError):
    kind = "not found"


class AlreadyExists(CorralError):
    kind = "already exists"


class FailedPrecondition(CorralError):
    kind = "failed precondition"


class Unavailable(CorralError):
    kind = "unavailable"


class Unimplemented(CorralError):
    kind = "not implemented"


class Canceled(CorralError):
    kind = "canceled"


class DeadlineExceeded(CorralError):
    kind = "deadline exceeded"


class PermissionDenied(CorralError):
    kind = "permission denied"


class ResourceExhausted(CorralError):
    kind = "resource exhausted"


class OutOfRange(CorralError):
    kind = "out of range"


class Aborted(CorralError):
    kind = "aborted"


class Internal(CorralError):
    kind = "internal"


class DataLoss(CorralError):
    kind = "data loss"


class ConfigError(InvalidArgument):
    """A config file that cannot be used; the message names the file and the TOML key path.

    ``key`` is the TOML key path the error is about, when there is one, so the file that set it can
    be named (``LoadedConfig.attribute``)."""

    def __init__(self, message: str = "", *, key: str = "") -> None:
        super().__init__(message)
        self.key = key
