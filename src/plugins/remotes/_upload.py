"""Pushing to one host: blobs (mount, monolithic or chunked upload) and manifests."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import structlog

from corral.kernel import FailedPrecondition, Unavailable
from corral.plugins.remotes import _errors
from corral.plugins.remotes._http import Body, Session
from corral.plugins.remotes._records import Descriptor, PushOutcome, PushResult
from corral.plugins.remotes._stream import new_hasher
from corral.plugins.remotes.auth import repository_scope
from corral.plugins.remotes.hosts import RegistryHost

if TYPE_CHECKING:
    import httpx  # imported by the session when a registry is first used

log = structlog.get_logger("corral.remotes")

OCTET_STREAM = "application/octet-stream"


class Endpoint:
    """One host serving one repository: builds its URLs and carries the ``ns`` a mirror is told."""

    def __init__(self, host: RegistryHost, repository: str, namespace: str) -> None:
        self.host = host
        self.repository = repository
        self.namespace = namespace

    def url(self, *parts: str, query: list[tuple[str, str]] | None = None) -> str:
        items = list(query or [])
        if self.namespace:
            items.append(("ns", self.namespace))
        path = "/".join([self.host.path.rstrip("/"), self.repository, *parts])
        url = f"{self.host.scheme}://{self.host.host}{path}"
        return f"{url}?{urlencode(items, safe=':/')}" if items else url

    def with_query(self, url: str, extra: list[tuple[str, str]]) -> str:
        """``url`` (an upload location) with ``extra`` and the namespace added to its query."""
        parts = urlsplit(url)
        items = parse_qsl(parts.query, keep_blank_values=True) + extra
        if self.namespace and not any(k == "ns" for k, _ in items):
            items.append(("ns", self.namespace))
        return urlunsplit(parts._replace(query=urlencode(items, safe=":/")))


def _check_status(endpoint: Endpoint, response: httpx.Response, *expected: int) -> None:
    if response.status_code not in expected:
        raise _errors.status_error(endpoint.host.host, response, response.content)


def _location(endpoint: Endpoint, response: httpx.Response) -> str:
    """The upload URL a registry answered with; relative ones are relative to the request."""
    location = response.headers.get("location", "")
    if not location:
        raise Unavailable(
            f"registry {endpoint.host.host}: {_errors.describe_request(response.request)}: "
            f"{response.status_code} without a Location header"
        )
    if location.startswith("/") or "://" in location:
        return str(response.request.url.join(location))
    # containerd reads a location with neither a leading slash nor a scheme as "host/path".
    return f"{response.request.url.scheme}://{location}"


def _check_digest_header(endpoint: Endpoint, response: httpx.Response, desc: Descriptor) -> None:
    answered = response.headers.get("docker-content-digest", "")
    if answered and answered != desc.digest:
        raise FailedPrecondition(
            f"registry {endpoint.host.host}: committed digest {answered}, expected {desc.digest}"
        )


async def blob_exists(session: Session, endpoint: Endpoint, desc: Descriptor, scopes: list[str]) -> bool:
    response = await session.request(
        endpoint.host, "HEAD", endpoint.url("blobs", desc.digest), scopes=scopes, headers={"Accept": "*/*"}
    )
    if response.status_code == 404:
        return False
    _check_status(endpoint, response, 200)
    return True


async def push_blob(
    session: Session,
    endpoint: Endpoint,
    desc: Descriptor,
    content: Body,
    *,
    mount_from: str | None,
    chunk_size: int,
) -> PushResult:
    if isinstance(content, bytes):
        _verify(endpoint, desc, content)
    scopes = [repository_scope(endpoint.repository, push=True)]
    if await blob_exists(session, endpoint, desc, scopes):
        return PushResult(PushOutcome.EXISTS, 200)
    start = endpoint.url("blobs", "uploads/")
    response: httpx.Response | None = None
    if mount_from and mount_from != endpoint.repository:
        mount_url = endpoint.url("blobs", "uploads/", query=[("mount", desc.digest), ("from", mount_from)])
        response = await session.request(
            endpoint.host, "POST", mount_url, scopes=[*scopes, repository_scope(mount_from)]
        )
        if response.status_code == 201:
            log.info("registry_blob_mounted", host=endpoint.host.host, digest=desc.digest, source=mount_from)
            return PushResult(PushOutcome.MOUNTED, 201)
        if response.status_code == 401:
            response = None
    if response is None:
        response = await session.request(endpoint.host, "POST", start, scopes=scopes)
    if response.status_code == 201:
        return PushResult(PushOutcome.EXISTS, 201)
    _check_status(endpoint, response, 202)
    location = _location(endpoint, response)
    if chunk_size > 0 and desc.size > chunk_size:
        return await _upload_chunked(session, endpoint, desc, content, location, scopes, chunk_size)
    return await _upload_monolithic(session, endpoint, desc, content, location, scopes)


async def _upload_monolithic(
    session: Session, endpoint: Endpoint, desc: Descriptor, content: Body, location: str, scopes: list[str]
) -> PushResult:
    body = content if isinstance(content, bytes) else _Checked(endpoint.host.host, desc).wrap(content)
    url = endpoint.with_query(location, [("digest", desc.digest)])
    headers = {"Content-Type": OCTET_STREAM, "Content-Length": str(desc.size)}
    response = await session.request(endpoint.host, "PUT", url, scopes=scopes, headers=headers, content=body)
    _check_status(endpoint, response, 200, 201, 204)
    _check_digest_header(endpoint, response, desc)
    log.info("registry_blob_pushed", host=endpoint.host.host, digest=desc.digest, size=desc.size, chunks=1)
    return PushResult(PushOutcome.UPLOADED, response.status_code)


async def _upload_chunked(
    session: Session,
    endpoint: Endpoint,
    desc: Descriptor,
    content: Body,
    location: str,
    scopes: list[str],
    chunk_size: int,
) -> PushResult:
    checked = _Checked(endpoint.host.host, desc)
    offset = chunks = 0
    try:
        async for chunk in _rechunk(content, chunk_size):
            checked.feed(chunk)
            headers = {
                "Content-Type": OCTET_STREAM,
                "Content-Length": str(len(chunk)),
                "Content-Range": f"{offset}-{offset + len(chunk) - 1}",
            }
            url = endpoint.with_query(location, [])
            response = await session.request(
                endpoint.host, "PATCH", url, scopes=scopes, headers=headers, content=chunk
            )
            _check_status(endpoint, response, 202, 204)
            location = _location(endpoint, response) if response.headers.get("location") else location
            offset += len(chunk)
            chunks += 1
        checked.finish()
    except BaseException:
        await _cancel_upload(session, endpoint, location, scopes)
        raise
    url = endpoint.with_query(location, [("digest", desc.digest)])
    response = await session.request(
        endpoint.host, "PUT", url, scopes=scopes, headers={"Content-Type": OCTET_STREAM}, content=b""
    )
    _check_status(endpoint, response, 200, 201, 204)
    _check_digest_header(endpoint, response, desc)
    log.info(
        "registry_blob_pushed", host=endpoint.host.host, digest=desc.digest, size=desc.size, chunks=chunks
    )
    return PushResult(PushOutcome.UPLOADED, response.status_code)


async def _cancel_upload(session: Session, endpoint: Endpoint, location: str, scopes: list[str]) -> None:
    """Best effort: a failed upload should not linger in the registry until its purge."""
    try:
        await session.request(endpoint.host, "DELETE", endpoint.with_query(location, []), scopes=scopes)
    except Exception as exc:  # the original failure is what the caller must see
        log.debug("registry_upload_cancel_failed", host=endpoint.host.host, error=str(exc))


async def _rechunk(content: Body, size: int) -> AsyncIterator[bytes]:
    if isinstance(content, bytes):
        for start in range(0, len(content), size):
            yield content[start : start + size]
        return
    buffer = bytearray()
    async for piece in content:
        buffer += piece
        while len(buffer) >= size:
            yield bytes(buffer[:size])
            del buffer[:size]
    if buffer:
        yield bytes(buffer)


def _verify(endpoint: Endpoint, desc: Descriptor, content: bytes) -> None:
    checked = _Checked(endpoint.host.host, desc)
    checked.feed(content)
    checked.finish()


class _Checked:
    """Counts and hashes what is pushed; FailedPrecondition when it is not what the descriptor promised."""

    def __init__(self, registry: str, desc: Descriptor) -> None:
        self._registry = registry
        self._desc = desc
        self._hasher = new_hasher(desc.digest)
        self._size = 0
        self.finished = False

    def feed(self, data: bytes) -> None:
        self._size += len(data)
        if self._size > self._desc.size:
            raise FailedPrecondition(
                f"registry {self._registry}: content for {self._desc.digest} is longer than {self._desc.size} bytes"
            )
        self._hasher.update(data)

    def finish(self) -> None:
        self.finished = True
        if self._size != self._desc.size:
            raise FailedPrecondition(
                f"registry {self._registry}: content for {self._desc.digest} "
                f"has {self._size} of {self._desc.size} bytes"
            )
        actual = f"{self._desc.digest.partition(':')[0]}:{self._hasher.hexdigest()}"
        if actual != self._desc.digest:
            raise FailedPrecondition(
                f"registry {self._registry}: unexpected digest {actual}, expected {self._desc.digest}"
            )

    async def wrap(self, content: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
        async for chunk in content:
            self.feed(chunk)
            yield chunk
        self.finish()


async def push_manifest(
    session: Session, endpoint: Endpoint, desc: Descriptor, content: bytes, reference: str
) -> PushResult:
    """PUT a manifest under ``reference`` (a tag or its digest), unless it is already there."""
    _verify(endpoint, desc, content)
    scopes = [repository_scope(endpoint.repository, push=True)]
    url = endpoint.url("manifests", reference)
    accept = {"Accept": f"{desc.media_type}, */*"}
    response = await session.request(endpoint.host, "HEAD", url, scopes=scopes, headers=accept)
    if response.status_code == 200 and (
        reference == desc.digest or response.headers.get("docker-content-digest") == desc.digest
    ):
        return PushResult(PushOutcome.EXISTS, 200)
    if response.status_code not in (200, 404):
        _check_status(endpoint, response, 200, 404)
    headers = {"Content-Type": desc.media_type}
    response = await session.request(
        endpoint.host, "PUT", url, scopes=scopes, headers=headers, content=content
    )
    _check_status(endpoint, response, 200, 201, 204)
    _check_digest_header(endpoint, response, desc)
    log.info("registry_manifest_pushed", host=endpoint.host.host, digest=desc.digest, reference=reference)
    return PushResult(PushOutcome.UPLOADED, response.status_code)
