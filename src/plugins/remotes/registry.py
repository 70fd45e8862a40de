"""``RegistryClient``: resolve, fetch, check and push content on OCI distribution registries.

Each call works on a reference's repository over the hosts configured for its registry, in order:
resolve and fetch try every host with the needed capability (a host that is down, answers 5xx or
does not have the content falls through to the next), push uses the first push host. The client
is safe for many concurrent calls; it owns its connections until ``aclose``.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, NoReturn

import structlog

from corral import __version__
from corral.kernel import (
    CorralError,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OutOfRange,
    Unavailable,
    Unimplemented,
)
from corral.plugins.remotes import _errors, _upload
from corral.plugins.remotes._http import Body, Session
from corral.plugins.remotes._records import (
    MANIFEST_ACCEPT,
    MAX_MANIFEST_SIZE,
    MEDIA_TYPE_DOCKER_SCHEMA1,
    Descriptor,
    PushResult,
    is_manifest,
)
from corral.plugins.remotes._stream import BlobStream, Hasher, new_hasher
from corral.plugins.remotes.auth import Authorizer, Credentials, repository_scope
from corral.plugins.remotes.hosts import Capability, RegistryHost, load_hosts
from corral.plugins.remotes.reference import DOCKER_HUB, DOCKER_HUB_REGISTRY, Reference, parse_reference

if TYPE_CHECKING:
    import httpx  # imported by the session when a registry is first used

__all__ = ["DEFAULT_CHUNK_SIZE", "HostsLookup", "RegistryClient"]

log = structlog.get_logger("corral.remotes")

DEFAULT_CHUNK_SIZE = 64 << 20
"""Blobs larger than this are uploaded in PATCH chunks of this size."""

HostsLookup = Callable[[str], Sequence[RegistryHost]]
"""Registry name (``docker.io``, ``127.0.0.1:5000``) to the hosts to try, in order."""


class _Failures:
    """Keeps the most telling failure across hosts: no answer < not found < any other answer."""

    def __init__(self) -> None:
        self.error: CorralError | None = None
        self._rank = 0

    def add(self, error: CorralError, *, answered: bool) -> None:
        rank = (2 if isinstance(error, NotFound) else 3) if answered else 1
        if rank > self._rank:
            self.error, self._rank = error, rank

    def raise_for(self, what: str) -> NoReturn:
        raise self.error if self.error is not None else NotFound(what)


def _answered(error: CorralError) -> bool:
    """Whether a host gave an answer (a token error, say) rather than none (refused, reset, timed out)."""
    return not isinstance(error, Unavailable | DeadlineExceeded)


class RegistryClient:
    """An OCI distribution client over httpx; use it as an async context manager or call ``aclose``."""

    def __init__(
        self,
        *,
        hosts: HostsLookup | None = None,
        config_path: str | Path | Sequence[str | Path] | None = None,
        plain_http: bool = False,
        credentials: Credentials | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        timeout: float = 30.0,
        max_connections: int | None = None,
        user_agent: str = f"corral/{__version__}",
    ) -> None:
        """``hosts`` overrides the lookup, else hosts come from ``config_path`` (certs.d directories).

        ``chunk_size`` 0 uploads every blob in one PUT; ``timeout`` bounds each network operation.
        """
        self._lookup = hosts or (lambda name: load_hosts(name, config_path, plain_http=plain_http))
        self._hosts: dict[str, tuple[RegistryHost, ...]] = {}
        self._chunk_size = chunk_size
        self._session = Session(
            Authorizer(credentials), timeout=timeout, user_agent=user_agent, max_connections=max_connections
        )

    async def __aenter__(self) -> RegistryClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._session.aclose()

    def hosts(self, name: str) -> tuple[RegistryHost, ...]:
        """The hosts for registry ``name``, looked up once per client."""
        found = self._hosts.get(name)
        if found is None:
            found = self._hosts[name] = tuple(self._lookup(name))
        return found

    def _endpoints(self, ref: Reference, capability: Capability) -> list[_upload.Endpoint]:
        hosts = [h for h in self.hosts(ref.host) if h.can(capability)]
        if not hosts:
            wanted = "+".join(str(c.name).lower() for c in capability)
            raise NotFound(f"registry {ref.host}: no host with capability {wanted}")
        return [_upload.Endpoint(h, ref.repository, _namespace(ref.host, h)) for h in hosts]

    async def resolve(self, ref: str | Reference) -> tuple[str, Descriptor]:
        """The manifest (or index) a tag or digest names: ``(reference, descriptor)``.

        HEAD on ``/manifests/`` with containerd's Accept list, GET when the answer lacks a digest or
        size; a digest reference is also looked for under ``/blobs/``. Tags are resolved only on
        hosts that may resolve; by-digest lookups on any pull host.
        """
        parsed = _parse(ref)
        if not parsed.object:
            raise InvalidArgument(f"reference {parsed}: a tag or digest is required to resolve")
        capability = Capability.PULL if parsed.digest else Capability.PULL | Capability.RESOLVE
        endpoints = self._endpoints(parsed, capability)
        paths = [("manifests", parsed.object)] + ([("blobs", parsed.digest)] if parsed.digest else [])
        failures = _Failures()
        scopes = [repository_scope(parsed.repository)]
        for kind, obj in paths:
            for index, endpoint in enumerate(endpoints):
                try:
                    desc = await self._resolve_on(
                        endpoint, kind, obj, parsed, scopes, index == len(endpoints) - 1
                    )
                except _Fallthrough as fall:
                    log.info("registry_resolve_fallthrough", host=endpoint.host.host, error=str(fall.error))
                    failures.add(fall.error, answered=True)
                    continue
                except CorralError as error:
                    log.info("registry_resolve_fallthrough", host=endpoint.host.host, error=str(error))
                    failures.add(error, answered=_answered(error))
                    continue
                log.debug("registry_resolved", ref=str(parsed), host=endpoint.host.host, digest=desc.digest)
                return str(parsed), desc
        failures.raise_for(f"registry {parsed.host}: {parsed}")

    async def _resolve_on(
        self,
        endpoint: _upload.Endpoint,
        kind: str,
        obj: str,
        ref: Reference,
        scopes: list[str],
        last: bool,
    ) -> Descriptor:
        headers = {"Accept": MANIFEST_ACCEPT}
        url = endpoint.url(kind, obj)
        head = await self._session.request(
            endpoint.host, "HEAD", url, scopes=scopes, headers=headers, last_host=last
        )
        _expect_success(endpoint, head)
        digest = ref.digest or head.headers.get("docker-content-digest", "")
        size = _content_length(head)
        media_type = _media_type(head)
        if head.request.method == "GET":
            # The registry refused HEAD, so the retry was a GET and the manifest is already here.
            digest, size = await _digest_of(endpoint, ref, [head.content], digest)
        elif not digest or size is None:
            async with self._session.stream(endpoint.host, "GET", url, scopes=scopes, headers=headers) as got:
                if got.status_code >= 300:
                    await got.aread()
                _expect_success(endpoint, got)
                media_type = _media_type(got)
                try:
                    digest, size = await _digest_of(endpoint, ref, got.aiter_bytes(), digest)
                except _errors.transport_errors() as exc:
                    raise _errors.transport_error(endpoint.host.host, got.request, exc) from exc
        if media_type == MEDIA_TYPE_DOCKER_SCHEMA1:
            raise Unimplemented(f"registry {endpoint.host.host}: {ref}: schema 1 manifests are not supported")
        if size is None:
            raise AssertionError("a manifest's size is known once its body was read")
        if size > MAX_MANIFEST_SIZE:
            raise _Fallthrough(
                NotFound(f"registry {endpoint.host.host}: {ref}: rejecting a manifest of {size} bytes")
            )
        return Descriptor(media_type=media_type, digest=digest, size=size)

    @asynccontextmanager
    async def fetch(
        self,
        ref: str | Reference,
        desc: Descriptor,
        *,
        offset: int = 0,
        hasher: Hasher | None = None,
    ) -> AsyncIterator[BlobStream]:
        """Open the content ``desc`` of ``ref``'s repository as a verified byte stream from ``offset``.

        Manifests and indexes come from ``/manifests/``, everything else from ``/blobs/`` (redirects
        to blob storage followed). ``hasher`` is the hash state of the first ``offset`` bytes, so a
        resumed download is verified whole; without it only the size is checked past an offset.
        """
        parsed = _parse(ref)
        if offset < 0 or (desc.size >= 0 and offset > desc.size):
            raise OutOfRange(
                f"registry {parsed.host}: offset {offset} outside blob {desc.digest} of {desc.size} bytes"
            )
        endpoints = self._endpoints(parsed, Capability.PULL)
        kind = "manifests" if is_manifest(desc.media_type) else "blobs"
        headers = {"Accept": f"{desc.media_type}, */*" if desc.media_type else "*/*"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        scopes = [repository_scope(parsed.repository)]
        failures = _Failures()
        opened: tuple[_upload.Endpoint, httpx.Response, int] | None = None
        for index, endpoint in enumerate(endpoints):
            url = endpoint.url(kind, desc.digest)
            last = index == len(endpoints) - 1
            try:
                response = await self._session.open(
                    endpoint.host, "GET", url, scopes=scopes, headers=headers, last_host=last
                )
            except CorralError as error:
                log.info("registry_fetch_fallthrough", host=endpoint.host.host, error=str(error))
                failures.add(error, answered=_answered(error))
                continue
            try:
                if response.status_code >= 300:
                    await response.aread()
                _expect_success(endpoint, response)
                opened = (endpoint, response, _range_skip(endpoint, response, offset))
                break
            except _Fallthrough as fall:
                await response.aclose()
                log.info("registry_fetch_fallthrough", host=endpoint.host.host, error=str(fall.error))
                failures.add(fall.error, answered=True)
            except BaseException:
                await response.aclose()
                raise
        if opened is None:
            failures.raise_for(f"registry {parsed.host}: {parsed.repository}: {desc.digest}")
        endpoint, response, skip = opened
        try:
            yield BlobStream(endpoint.host.host, desc, response, offset=offset, skip=skip, hasher=hasher)
        finally:
            await response.aclose()

    async def fetch_bytes(self, ref: str | Reference, desc: Descriptor) -> bytes:
        """The whole content of ``desc``, verified; for manifests, configs and other small blobs."""
        async with self.fetch(ref, desc) as stream:
            return await stream.read()

    async def exists(self, ref: str | Reference, desc: Descriptor) -> bool:
        """Whether the first push host (the registry itself) has ``desc`` in ``ref``'s repository."""
        parsed = _parse(ref)
        endpoint = self._endpoints(parsed, Capability.PUSH)[0]
        if not is_manifest(desc.media_type):
            return await _upload.blob_exists(
                self._session, endpoint, desc, [repository_scope(parsed.repository)]
            )
        response = await self._session.request(
            endpoint.host,
            "HEAD",
            endpoint.url("manifests", desc.digest),
            scopes=[repository_scope(parsed.repository)],
            headers={"Accept": f"{desc.media_type}, */*"},
        )
        if response.status_code == 404:
            return False
        _expect_success(endpoint, response)
        return True

    async def push_blob(
        self,
        ref: str | Reference,
        desc: Descriptor,
        content: Body,
        *,
        mount_from: str | None = None,
    ) -> PushResult:
        """Upload a blob to ``ref``'s repository unless it is there; ``mount_from`` names a repository
        of the same registry to link it from instead (``POST ?mount=&from=``).

        The bytes are checked against ``desc`` as they go: FailedPrecondition when they differ.
        """
        parsed = _parse(ref)
        endpoint = self._endpoints(parsed, Capability.PUSH)[0]
        return await _upload.push_blob(
            self._session, endpoint, desc, content, mount_from=mount_from, chunk_size=self._chunk_size
        )

    async def push_manifest(self, ref: str | Reference, desc: Descriptor, content: bytes) -> PushResult:
        """PUT a manifest or index (``desc.media_type`` as its Content-Type) under ``ref``'s tag, else its digest."""
        parsed = _parse(ref)
        endpoint = self._endpoints(parsed, Capability.PUSH)[0]
        target = parsed.tag or desc.digest
        return await _upload.push_manifest(self._session, endpoint, desc, content, target)

    async def tag(self, ref: str | Reference, desc: Descriptor) -> PushResult:
        """Point ``ref``'s tag at the manifest ``desc`` that its repository already holds."""
        parsed = _parse(ref)
        if not parsed.tag:
            raise InvalidArgument(f"reference {parsed}: a tag is required")
        content = await self.fetch_bytes(parsed.with_object(digest=desc.digest), desc)
        return await self.push_manifest(parsed, desc, content)


class _Fallthrough(Exception):
    """A host's answer that sends the request on to the next host."""

    def __init__(self, error: CorralError) -> None:
        super().__init__(str(error))
        self.error = error


def _parse(ref: str | Reference) -> Reference:
    return ref if isinstance(ref, Reference) else parse_reference(ref)


def _namespace(name: str, host: RegistryHost) -> str:
    """The ``ns`` query parameter a mirror is given so it knows which upstream is meant."""
    if host.host == name or (name == DOCKER_HUB and host.host == DOCKER_HUB_REGISTRY):
        return ""
    return name


async def _digest_of(
    endpoint: _upload.Endpoint, ref: Reference, chunks: AsyncIterable[bytes] | Iterable[bytes], digest: str
) -> tuple[str, int]:
    """Hash a manifest body up to the size limit; FailedPrecondition when a by-digest one does not match."""
    hasher = new_hasher(digest or "sha256:")
    size = 0
    if isinstance(chunks, AsyncIterable):
        chunks = [chunk async for chunk in _limited(chunks)]
    for chunk in chunks:
        size += len(chunk)
        if size > MAX_MANIFEST_SIZE:
            return digest, size
        hasher.update(chunk)
    actual = f"{(digest or 'sha256:').partition(':')[0]}:{hasher.hexdigest()}"
    if ref.digest and actual != ref.digest:
        raise FailedPrecondition(f"registry {endpoint.host.host}: {ref}: manifest has digest {actual}")
    return digest or actual, size


async def _limited(chunks: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
    total = 0
    async for chunk in chunks:
        total += len(chunk)
        yield chunk
        if total > MAX_MANIFEST_SIZE:
            return


def _expect_success(endpoint: _upload.Endpoint, response: httpx.Response) -> None:
    if response.status_code >= 300:
        raise _Fallthrough(_errors.status_error(endpoint.host.host, response, response.content))


def _content_length(response: httpx.Response) -> int | None:
    value = response.headers.get("content-length")
    return int(value) if value is not None and value.isdigit() else None


def _media_type(response: httpx.Response) -> str:
    media_type = response.headers.get("content-type", "").split(";")[0].strip()
    return MEDIA_TYPE_DOCKER_SCHEMA1 if media_type == "text/plain" else media_type


def _range_skip(endpoint: _upload.Endpoint, response: httpx.Response, offset: int) -> int:
    """Bytes to drop before ``offset``: none when the range was honoured, ``offset`` when it was ignored."""
    if not offset or response.status_code == 206:
        content_range = response.headers.get("content-range", "")
        if offset and content_range and not content_range.startswith(f"bytes {offset}-"):
            raise Unavailable(f"registry {endpoint.host.host}: unexpected Content-Range {content_range!r}")
        return 0
    return offset
