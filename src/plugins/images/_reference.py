"""Image references (``docker.io/library/busybox:latest``) with Docker's normalisation.

The grammar is the distribution project's: ``[domain[:port]/]path[:tag][@digest]``. Normalising
puts a bare name on ``docker.io`` and an official image under ``library/``; a name without tag
or digest gets ``:latest``, and a name with both keeps only the digest, as containerd stores it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from corral.kernel import CorralError, InvalidArgument
from corral.plugins.images._digest import parse_digest

DEFAULT_DOMAIN = "docker.io"
LEGACY_DEFAULT_DOMAIN = "index.docker.io"
OFFICIAL_PREFIX = "library/"
DEFAULT_TAG = "latest"
MAX_PATH_LENGTH = 255

_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]+)"
_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_HOST = rf"(?:{_COMPONENT}(?:\.{_COMPONENT})*|\[(?:[a-fA-F0-9:]+)\])"
_DOMAIN = rf"{_HOST}(?::[0-9]+)?"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*[:][0-9a-fA-F]{32,}"
_PATH_COMPONENT = rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
_REMOTE = rf"{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"
_NAME = rf"(?:{_DOMAIN}/)?{_REMOTE}"

_REFERENCE = re.compile(rf"({_NAME})(?::({_TAG}))?(?:@({_DIGEST}))?\Z", re.ASCII)
_ANCHORED_NAME = re.compile(rf"(?:({_DOMAIN})/)?({_REMOTE})\Z", re.ASCII)
_ANCHORED_TAG = re.compile(rf"{_TAG}\Z", re.ASCII)
_IDENTIFIER = re.compile(r"[a-f0-9]{64}\Z")


@dataclass(frozen=True)
class Reference:
    """A parsed reference; ``str()`` gives it back in full."""

    domain: str
    path: str
    tag: str = ""
    digest: str = ""

    @property
    def name(self) -> str:
        return f"{self.domain}/{self.path}" if self.domain else self.path

    def __str__(self) -> str:
        return self.name + (":" + self.tag if self.tag else "") + ("@" + self.digest if self.digest else "")

    def familiar(self) -> str:
        """The short form people type: ``busybox:latest``, ``me/app``, ``ghcr.io/x/y@sha256:…``."""
        domain, path = self.domain, self.path
        if domain == DEFAULT_DOMAIN:
            domain = ""
            rest = path.removeprefix(OFFICIAL_PREFIX)
            if path.startswith(OFFICIAL_PREFIX) and "/" not in rest:
                path = rest
        return str(Reference(domain, path, self.tag, self.digest))

    def with_default_tag(self) -> Reference:
        """``:latest`` added when there is neither a tag nor a digest."""
        if self.tag or self.digest:
            return self
        return Reference(self.domain, self.path, DEFAULT_TAG)


def parse_reference(value: str) -> Reference:
    """The reference exactly as written, not normalised; InvalidArgument when it is not one."""
    if not isinstance(value, str) or not value:
        raise InvalidArgument("invalid reference: repository name must have at least one component")
    found = _REFERENCE.match(value)
    if found is None:
        lowered = value.lower()
        if lowered != value and _REFERENCE.match(lowered):
            raise InvalidArgument(f"invalid reference {value!r}: repository name must be lowercase")
        raise InvalidArgument(f"invalid reference format: {value!r}")
    name, tag, digest = found.group(1), found.group(2) or "", found.group(3) or ""
    parts = _ANCHORED_NAME.match(name)
    domain, path = (parts.group(1) or "", parts.group(2)) if parts else ("", name)
    if len(path) > MAX_PATH_LENGTH:
        raise InvalidArgument(
            f"invalid reference {value!r}: repository name must not be more than 255 characters"
        )
    if digest:
        try:
            parse_digest(digest)
        except CorralError as err:
            raise InvalidArgument(f"invalid reference {value!r}: {err}") from err
    return Reference(domain, path, tag, digest)


def _split_docker_domain(name: str) -> tuple[str, str]:
    first, slash, rest = name.partition("/")
    if not slash:
        return DEFAULT_DOMAIN, OFFICIAL_PREFIX + name
    if first == LEGACY_DEFAULT_DOMAIN:
        domain, remote = DEFAULT_DOMAIN, rest
    elif first == "localhost" or any(c in first for c in ".:") or first.lower() != first:
        domain, remote = first, rest
    else:
        domain, remote = DEFAULT_DOMAIN, name
    if domain == DEFAULT_DOMAIN and "/" not in remote:
        remote = OFFICIAL_PREFIX + remote
    return domain, remote


def parse_normalized(value: str) -> Reference:
    """``busybox`` is ``docker.io/library/busybox``, ``me/app`` is ``docker.io/me/app``; no tag added."""
    if not isinstance(value, str):
        raise InvalidArgument(f"invalid reference {value!r}")
    if _IDENTIFIER.match(value):
        raise InvalidArgument(
            f"invalid repository name ({value}), cannot specify 64-byte hexadecimal strings"
        )
    domain, remainder = _split_docker_domain(value)
    remote = remainder.partition(":")[0]
    if remote.lower() != remote:
        raise InvalidArgument(f"invalid reference format: repository name ({remote}) must be lowercase")
    return parse_reference(domain + "/" + remainder)


def parse_docker_ref(value: str) -> Reference:
    """What containerd names an image given ``value``: normalised, ``:latest`` when untagged, and
    only the digest when both a tag and a digest are given."""
    ref = parse_normalized(value)
    if ref.tag and ref.digest:
        return Reference(ref.domain, ref.path, "", ref.digest)
    return ref.with_default_tag()


def normalize_reference(value: str) -> str:
    """``busybox`` -> ``docker.io/library/busybox:latest``; InvalidArgument for a bad reference."""
    return str(parse_docker_ref(value))


def familiar_reference(value: str) -> str:
    """``docker.io/library/busybox`` -> ``busybox:latest``: the names docker's ``manifest.json`` uses."""
    return parse_normalized(value).with_default_tag().familiar()


def oci_ref_name(name: str) -> str:
    """The ``org.opencontainers.image.ref.name`` containerd gives an image named ``name``: its tag
    (``latest``) when it has one, else the whole name."""
    found = _split_locator(name)
    if found is None:
        return name
    obj = found[1]
    return obj if obj and not obj.startswith("@") else name


def _split_locator(value: str) -> tuple[str, str] | None:
    """containerd's own ``host/path`` + ``:object`` split (its reference.Spec), None when it fails."""
    if "://" in value:
        return None
    host, _, path = value.partition("/")
    if not host or not _valid_url_host(host):
        return None
    path = "/" + path if path else ""
    cut = re.search(r"[:@]", path)
    if cut is None:
        return host + path, ""
    obj = path[cut.start() :]
    return host + path[: cut.start()], obj[1:] if obj.startswith(":") else obj


def _valid_url_host(host: str) -> bool:
    if host.startswith("["):
        close = host.find("]")
        if close < 0:
            return False
        port = host[close + 1 :]
        return port in ("", ":") or (port.startswith(":") and port[1:].isdigit())
    _, colon, port = host.rpartition(":")
    return not colon or port == "" or port.isdigit()
