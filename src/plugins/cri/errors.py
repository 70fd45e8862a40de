"""Errors in containerd's CRI words: Go's wrapped errors keep a kind's code but not its word, so
these carry exactly the message containerd sends."""

from __future__ import annotations

from corral.kernel import CorralError, FailedPrecondition, InvalidArgument

__all__ = ["invalid", "precondition", "worded"]


def worded(kind: type[CorralError], message: str) -> CorralError:
    """An error of ``kind`` whose text is exactly ``message`` (Go's wrapped errors keep the kind's
    code but not its word)."""
    err = kind.__new__(kind)
    Exception.__init__(err, message)
    err.detail = message
    return err


def invalid(message: str) -> CorralError:
    """Bad input, in containerd's words (where containerd answers Unknown, corral says InvalidArgument)."""
    return worded(InvalidArgument, message)


def precondition(message: str) -> CorralError:
    """A call the object's state refuses, in containerd's words (containerd: Unknown)."""
    return worded(FailedPrecondition, message)
