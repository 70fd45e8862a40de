"""Content digests (``algorithm:encoded``) as OCI and go-digest define them, and image chain IDs."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from corral.kernel import InvalidArgument
from corral.plugins.core.digests import HEX_LENGTHS, digest_error

CANONICAL = "sha256"

ALGORITHMS = HEX_LENGTHS
"""The algorithms a digest may use, and the number of lower-case hex digits each one's value has."""


@dataclass(frozen=True, order=True)
class Digest:
    """A validated digest; ``str()`` gives ``algorithm:encoded``."""

    algorithm: str
    encoded: str

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.encoded}"

    def hasher(self) -> hashlib._Hash:
        """A fresh hash object of this digest's algorithm."""
        return hashlib.new(self.algorithm)

    def matches(self, data: bytes) -> bool:
        return hashlib.new(self.algorithm, data).hexdigest() == self.encoded


def parse_digest(value: str, what: str = "digest") -> Digest:
    """``value`` split and checked (by go-digest's rules, ``corral.plugins.core.digests``);
    InvalidArgument naming ``what`` when it is not a digest we accept."""
    if not isinstance(value, str):
        raise InvalidArgument(f"{what} must be a string, not {type(value).__name__}")
    problem = digest_error(value)
    if problem is not None:
        raise InvalidArgument(f"{what} {value!r}: {problem}")
    algorithm, _, encoded = value.partition(":")
    return Digest(algorithm, encoded)


def validate_digest(value: str, what: str = "digest") -> str:
    """``value`` itself once it has been checked as ``parse_digest`` does."""
    parse_digest(value, what)
    return value


def digest_of(data: bytes, algorithm: str = CANONICAL) -> str:
    """The digest of ``data``: ``sha256:<hex>`` by default."""
    if algorithm not in ALGORITHMS:
        raise InvalidArgument(f"unsupported digest algorithm {algorithm!r}")
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


def verify_digest(data: bytes, expected: str, what: str = "content") -> None:
    """InvalidArgument unless ``data`` hashes to ``expected``."""
    digest = parse_digest(expected)
    actual = f"{digest.algorithm}:{hashlib.new(digest.algorithm, data).hexdigest()}"
    if actual != expected:
        raise InvalidArgument(f"{what} has digest {actual}, expected {expected}")


def chain_ids(diff_ids: Sequence[str]) -> list[str]:
    """The chain ID of every prefix of ``diff_ids``: the first is the first diffID, then
    ``chainID(n) = sha256(chainID(n-1) + " " + diffID(n))``; snapshots are keyed by them."""
    result: list[str] = []
    for diff_id in _validated(diff_ids):
        if not result:
            result.append(diff_id)
        else:
            result.append(digest_of(f"{result[-1]} {diff_id}".encode()))
    return result


def chain_id(diff_ids: Sequence[str]) -> str:
    """The chain ID of the whole stack; "" for no layers."""
    ids = chain_ids(diff_ids)
    return ids[-1] if ids else ""


def _validated(values: Iterable[str]) -> Iterable[str]:
    for value in values:
        yield validate_digest(value, "diffID")
