"""Content digests (``algorithm:hex``), parsed once where they enter and refused when malformed."""

from __future__ import annotations

import re

from corral.kernel import InvalidArgument

_HEX_LENGTHS = {"sha256": 64, "sha384": 96, "sha512": 128}
_HEX = re.compile(r"^[a-f0-9]+$")


def validate_digest(digest: str) -> str:
    """``digest`` unchanged if it is a well-formed digest, else InvalidArgument as containerd answers.

    As go-digest: the algorithm must be one containerd supports and the hex lower-case and of its
    length, so ``sha256:../..``, ``md5:…`` or an uppercase digest never reach a path or a query.
    """
    algorithm, sep, encoded = digest.partition(":")
    if not sep or not algorithm or not encoded:
        raise InvalidArgument(f"invalid digest {digest!r}: invalid checksum digest format")
    length = _HEX_LENGTHS.get(algorithm)
    if length is None:
        raise InvalidArgument(f"invalid digest {digest!r}: unsupported digest algorithm")
    if len(encoded) != length:
        raise InvalidArgument(f"invalid digest {digest!r}: invalid checksum digest length")
    if not _HEX.match(encoded):
        raise InvalidArgument(f"invalid digest {digest!r}: invalid checksum digest format")
    return digest


def digest_algorithm(digest: str) -> str:
    return digest.partition(":")[0]


def digest_hex(digest: str) -> str:
    return digest.partition(":")[2]
