"""A minimal image reference parser: registry host, repository, tag and digest.

Just enough for the distribution client: ``[host/]repository[:tag][@digest]`` with Docker Hub
normalisation (no host means ``docker.io``, a one-component repository there gets ``library/``).
No default tag is added: what to fetch is the caller's choice, as in containerd's resolver.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from corral.kernel import InvalidArgument

__all__ = ["DOCKER_HUB", "DOCKER_HUB_REGISTRY", "Reference", "parse_reference", "validate_digest"]

DOCKER_HUB = "docker.io"
DOCKER_HUB_REGISTRY = "registry-1.docker.io"
"""The host that actually serves ``docker.io``'s distribution API."""

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPOSITORY = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_TAG = re.compile(r"[\w][\w.-]{0,127}")
_HOST = re.compile(
    r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*)"
    r"(?::[0-9]+)?"
)
_DIGEST_HEX = {"sha256": 64, "sha384": 96, "sha512": 128}
_MAX_NAME = 255


def validate_digest(digest: str) -> str:
    """Return ``digest`` when it is ``algorithm:hex`` of a known algorithm; InvalidArgument otherwise."""
    algorithm, _, encoded = digest.partition(":")
    length = _DIGEST_HEX.get(algorithm)
    if length is None or len(encoded) != length or not re.fullmatch(r"[0-9a-f]+", encoded):
        raise InvalidArgument(f"invalid digest {digest!r}")
    return digest


@dataclass(frozen=True)
class Reference:
    """A parsed reference; ``host`` is the name as written (``docker.io``), not the serving host."""

    host: str
    repository: str
    tag: str = ""
    digest: str = ""

    @property
    def name(self) -> str:
        """``host/repository``: the locator without tag or digest."""
        return f"{self.host}/{self.repository}"

    @property
    def object(self) -> str:
        """What the manifests endpoint is asked for: the digest when there is one, else the tag."""
        return self.digest or self.tag

    def with_object(self, *, tag: str = "", digest: str = "") -> Reference:
        return Reference(self.host, self.repository, tag, digest)

    def __str__(self) -> str:
        text = self.name
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def parse_reference(text: str) -> Reference:
    """Parse ``[host/]repository[:tag][@digest]``; InvalidArgument naming the reference when malformed."""
    rest, _, digest = text.partition("@")
    if digest:
        try:
            validate_digest(digest)
        except InvalidArgument:
            raise InvalidArgument(f"reference {text!r}: invalid digest {digest!r}") from None
    host, slash, path = rest.partition("/")
    if not slash or not ("." in host or ":" in host or host == "localhost" or host != host.lower()):
        host, path = DOCKER_HUB, rest
    elif not _HOST.fullmatch(host):
        raise InvalidArgument(f"reference {text!r}: invalid registry host {host!r}")
    repository, tag = path, ""
    last_colon = path.rfind(":")
    if last_colon > path.rfind("/"):
        repository, tag = path[:last_colon], path[last_colon + 1 :]
        if not _TAG.fullmatch(tag):
            raise InvalidArgument(f"reference {text!r}: invalid tag {tag!r}")
    if host == DOCKER_HUB and "/" not in repository:
        repository = f"library/{repository}"
    if not _REPOSITORY.fullmatch(repository) or len(host) + 1 + len(repository) > _MAX_NAME:
        raise InvalidArgument(f"reference {text!r}: invalid repository {repository!r}")
    return Reference(host, repository, tag, digest)
