"""Image references as the distribution client needs them: registry host, repository, tag, digest.

``[host/]repository[:tag][@digest]`` with Docker Hub normalisation (no host means ``docker.io``,
a one-component repository there gets ``library/``).
No default tag is added: what to fetch is the caller's choice, as in containerd's resolver.
"""

from __future__ import annotations

from dataclasses import dataclass

from corral.kernel import InvalidArgument
from corral.plugins.core.digests import validate_digest
from corral.plugins.images.oci import parse_normalized

__all__ = ["DOCKER_HUB", "DOCKER_HUB_REGISTRY", "Reference", "parse_reference", "validate_digest"]

DOCKER_HUB = "docker.io"
DOCKER_HUB_REGISTRY = "registry-1.docker.io"
"""The host that actually serves ``docker.io``'s distribution API."""


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
    """Parse ``[host/]repository[:tag][@digest]`` by containerd's reference grammar (the image
    vocabulary's parser, ``corral.plugins.images.oci``); InvalidArgument naming it when malformed."""
    try:
        ref = parse_normalized(text)
    except InvalidArgument as exc:
        raise InvalidArgument(f"reference {text!r}: {exc.detail}") from None
    return Reference(ref.domain, ref.path, ref.tag, ref.digest)
