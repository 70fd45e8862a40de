"""Content digests (``algorithm:hex``), checked once where they enter and refused when malformed.

The rules and the reasons are go-digest's, which containerd uses: an algorithm containerd
supports, then lower-case hex of that algorithm's length. ``sha256:../..``, ``md5:…`` or an
upper-case digest never reach a path, a query or a lease.
"""

from __future__ import annotations

import re

from corral.kernel import InvalidArgument

HEX_LENGTHS = {"sha256": 64, "sha384": 96, "sha512": 128}
"""The algorithms containerd supports, and the length of each one's lower-case hex."""
_HEX = re.compile(r"^[a-f0-9]+$")
_DIGEST_SHAPE = re.compile(r"^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$")

INVALID_FORMAT = "invalid checksum digest format"
INVALID_LENGTH = "invalid checksum digest length"
UNSUPPORTED = "unsupported digest algorithm"


def digest_error(digest: str) -> str | None:
    """Why ``digest`` is malformed, in go-digest's words; None when it is well formed."""
    algorithm, sep, encoded = digest.partition(":")
    if not sep or not algorithm or not encoded:
        return INVALID_FORMAT
    length = HEX_LENGTHS.get(algorithm)
    if length is None:
        return UNSUPPORTED if _DIGEST_SHAPE.match(digest) else INVALID_FORMAT
    if len(encoded) != length:
        return INVALID_LENGTH
    if not _HEX.match(encoded):
        return INVALID_FORMAT
    return None


def validate_digest(digest: str) -> str:
    """``digest`` unchanged when well formed, else InvalidArgument ``<digest>: <reason>``."""
    problem = digest_error(digest)
    if problem is not None:
        raise InvalidArgument(f"{digest}: {problem}")
    return digest


def digest_algorithm(digest: str) -> str:
    return digest.partition(":")[0]


def digest_hex(digest: str) -> str:
    return digest.partition(":")[2]
