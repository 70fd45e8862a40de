"""The request loop under the distribution client: TLS per host, authentication, retries.

One ``httpx.AsyncClient`` per distinct TLS/timeout configuration, kept for the session's life so
connections are reused across requests and across hosts that share a configuration. A request
answered 401 is sent again once the authorizer has learnt the challenge; 408/429 (and 5xx on the
last host to try) are retried a few times with a short backoff, as containerd does.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterable, AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import certifi
import structlog

from corral.kernel import InvalidArgument
from corral.plugins.core.tracing import span
from corral.plugins.remotes import _errors
from corral.plugins.remotes.auth import Authorizer
from corral.plugins.remotes.hosts import RegistryHost

if TYPE_CHECKING:
    import httpx

log = structlog.get_logger("corral.remotes")

MAX_ATTEMPTS = 5
RETRY_DELAY = 0.05
MAX_RETRY_AFTER = 5.0
_RETRY_ALWAYS = {408, 429}
_RETRY_LAST_HOST = {500, 503, 504}

Body = bytes | AsyncIterable[bytes]


def ssl_context(host: RegistryHost) -> ssl.SSLContext:
    """The system's trust store (certifi's when the system has none) plus the host's CAs and client pairs."""
    context = ssl.create_default_context()
    if not context.cert_store_stats().get("x509_ca"):
        context.load_verify_locations(cafile=certifi.where())
    for ca in host.ca:
        try:
            context.load_verify_locations(cafile=str(ca))
        except (OSError, ssl.SSLError) as exc:
            raise InvalidArgument(
                f"registry {host.host}: cannot load CA certificate {ca}: {_reason(exc)}"
            ) from exc
    for cert, key in host.client_certs:
        try:
            context.load_cert_chain(str(cert), str(key) if key else None)
        except (OSError, ssl.SSLError) as exc:
            raise InvalidArgument(
                f"registry {host.host}: cannot load client certificate {cert}"
                + (f" with key {key}" if key else "")
                + f": {_reason(exc)}"
            ) from exc
    if host.skip_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _reason(exc: Exception) -> str:
    if isinstance(exc, ssl.SSLError):
        return str(exc.reason or exc)
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc)


_ClientKey = tuple[str, tuple[Path, ...], tuple[tuple[Path, Path | None], ...], bool | None, float | None]


class Session:
    """HTTP clients, the authorizer and the retry policy shared by every call of one registry client."""

    def __init__(
        self, authorizer: Authorizer, *, timeout: float, user_agent: str, max_connections: int | None
    ) -> None:
        self.authorizer = authorizer
        self._timeout = timeout
        self._user_agent = user_agent
        import httpx  # here, not with the module: corrald starts without it, a pull's session brings it

        self._limits = httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=10, keepalive_expiry=30.0
        )
        self._clients: dict[_ClientKey, httpx.AsyncClient] = {}

    def client(self, host: RegistryHost) -> httpx.AsyncClient:
        key: _ClientKey = (host.scheme, host.ca, host.client_certs, host.skip_verify, host.dial_timeout)
        client = self._clients.get(key)
        if client is None:
            import httpx

            verify: ssl.SSLContext | bool = ssl_context(host) if host.scheme == "https" else True
            timeout = httpx.Timeout(self._timeout, connect=host.dial_timeout or self._timeout)
            client = httpx.AsyncClient(
                verify=verify, timeout=timeout, limits=self._limits, headers={"User-Agent": self._user_agent}
            )
            self._clients[key] = client
        return client

    async def aclose(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.aclose()

    async def open(
        self,
        host: RegistryHost,
        method: str,
        url: str,
        *,
        scopes: Sequence[str],
        headers: Mapping[str, str] | None = None,
        content: Body | None = None,
        last_host: bool = True,
    ) -> httpx.Response:
        """Send one request (with its retries); the final response's body is unread and the caller closes it."""
        return await self._send(host, method, url, scopes, headers or {}, content, last_host)

    @asynccontextmanager
    async def stream(
        self,
        host: RegistryHost,
        method: str,
        url: str,
        *,
        scopes: Sequence[str],
        headers: Mapping[str, str] | None = None,
        content: Body | None = None,
        last_host: bool = True,
    ) -> AsyncIterator[httpx.Response]:
        """``open`` as a context manager that closes the response."""
        response = await self._send(host, method, url, scopes, headers or {}, content, last_host)
        try:
            yield response
        finally:
            await response.aclose()

    async def request(
        self,
        host: RegistryHost,
        method: str,
        url: str,
        *,
        scopes: Sequence[str],
        headers: Mapping[str, str] | None = None,
        content: Body | None = None,
        last_host: bool = True,
    ) -> httpx.Response:
        """Send one request (with its retries) and read the body of the final response."""
        response = await self._send(host, method, url, scopes, headers or {}, content, last_host)
        try:
            await response.aread()
        except _errors.transport_errors() as exc:
            raise _errors.transport_error(host.host, response.request, exc) from exc
        finally:
            await response.aclose()
        return response

    async def _send(
        self,
        host: RegistryHost,
        method: str,
        url: str,
        scopes: Sequence[str],
        headers: Mapping[str, str],
        content: Body | None,
        last_host: bool,
    ) -> httpx.Response:
        client = self.client(host)
        replayable = content is None or isinstance(content, bytes)
        challenged = False
        previous_status = 0
        for attempt in range(1, MAX_ATTEMPTS + 1):
            request = client.build_request(method, url, headers=self._headers(host, headers), content=content)
            authorization = await self.authorizer.authorization(request.url.netloc.decode(), scopes, client)
            if authorization is not None:
                request.headers["Authorization"] = authorization
            final = attempt == MAX_ATTEMPTS
            try:
                # containerd's name for each round trip to a registry (its otelhttp transport).
                with span(HTTP_SPAN, _request_attributes(request, host, attempt)) as current:
                    response = await client.send(
                        request, stream=True, follow_redirects=method in ("GET", "HEAD")
                    )
                    current.set_attributes({"http.response.status_code": response.status_code})
            except _errors.transport_errors() as exc:
                if final or not last_host or not replayable or not _transient(exc):
                    raise _errors.transport_error(host.host, request, exc) from exc
                log.debug("registry_retry", host=host.host, method=method, url=_path(request), error=str(exc))
                await anyio.sleep(RETRY_DELAY)
                continue
            log.debug(
                "registry_response",
                host=host.host,
                method=method,
                url=_path(request),
                status=response.status_code,
            )
            status = response.status_code
            retry = False
            if status == 401 and replayable:
                netloc = response.request.url.netloc.decode()
                retry = self.authorizer.challenged(netloc, response, repeated=challenged)
                challenged = True
            elif status == 405 and method == "HEAD" and "/manifests/" in url:
                method, retry = "GET", True
            elif replayable and status in _RETRY_ALWAYS:
                retry = True
            elif replayable and last_host and status in _RETRY_LAST_HOST:
                retry = status != previous_status
            previous_status = status
            if not retry or final:
                return response
            delay = _retry_after(response) if status in _RETRY_ALWAYS else 0.0
            await response.aclose()
            if delay:
                await anyio.sleep(delay)
        raise AssertionError("unreachable: the last attempt always returns")

    def _headers(self, host: RegistryHost, extra: Mapping[str, str]) -> httpx.Headers:
        import httpx

        headers = httpx.Headers([(name, value) for name, values in host.header.items() for value in values])
        for name, value in extra.items():
            headers[name] = value
        return headers


HTTP_SPAN = "remotes.docker.resolver.HTTPRequest"


def _request_attributes(request: httpx.Request, host: RegistryHost, attempt: int) -> dict[str, object]:
    """OpenTelemetry's HTTP client attributes; the URL without its query (signed redirects carry
    credentials there)."""
    return {
        "http.request.method": request.method,
        "url.full": str(request.url.copy_with(query=None)),
        "server.address": host.host,
        "http.request.resend_count": attempt - 1,
    }


def _retry_after(response: httpx.Response) -> float:
    value = response.headers.get("retry-after", "")
    try:
        seconds = float(value)
    except ValueError:
        seconds = RETRY_DELAY
    return min(max(seconds, RETRY_DELAY), MAX_RETRY_AFTER)


def _transient(exc: Exception) -> bool:
    """Resets and timeouts may pass; a refused connection or a TLS rejection will not."""
    import httpx

    return isinstance(exc, httpx.ReadError | httpx.RemoteProtocolError | httpx.ReadTimeout | httpx.WriteError)


def _path(request: httpx.Request) -> str:
    return request.url.path
