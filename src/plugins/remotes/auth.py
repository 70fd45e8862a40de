"""Registry authentication: answering ``WWW-Authenticate`` challenges with Basic or Bearer tokens.

A 401 teaches the ``Authorizer`` how a host wants to be spoken to. Basic sends the credentials on
every request. Bearer asks the challenge's realm for a token for the request's scopes — with a
GET (Basic credentials or anonymous) or, when a secret is known, first with the OAuth2 form POST
(``grant_type=password``, or ``refresh_token`` when the username is empty) and a GET fallback —
and caches it per host and scope set until it expires. Concurrent requests share one token fetch.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
import structlog

from corral.kernel import CorralError, InvalidArgument, PermissionDenied, Unavailable
from corral.plugins.remotes import _errors

if TYPE_CHECKING:
    import httpx  # imported by the session when a registry is first used

__all__ = [
    "DEFAULT_TOKEN_LIFETIME",
    "Authorizer",
    "Challenge",
    "Credentials",
    "parse_challenges",
    "repository_scope",
]

log = structlog.get_logger("corral.remotes")

Credentials = Callable[[str], "tuple[str, str] | None"]
"""Called with a host (``host[:port]``); returns ``(username, secret)`` or None for anonymous.

An empty username with a secret means the secret is an identity (refresh) token.
"""

DEFAULT_TOKEN_LIFETIME = 60.0
"""Seconds a token without ``expires_in`` is kept, as the token specification prescribes."""

_SCHEME_ORDER = {"bearer": 0, "digest": 1, "basic": 2}


@dataclass(frozen=True)
class Challenge:
    """One ``WWW-Authenticate`` challenge: a lower-case scheme and its lower-cased parameter names."""

    scheme: str
    parameters: Mapping[str, str] = field(default_factory=dict)


def repository_scope(repository: str, *, push: bool = False) -> str:
    """The token scope for pulling (and pushing) one repository."""
    return f"repository:{repository}:pull" + (",push" if push else "")


def parse_challenges(values: Iterable[str]) -> list[Challenge]:
    """Parse ``WWW-Authenticate`` header values; known schemes only, strongest (Bearer) first."""
    found: list[Challenge] = []
    for value in values:
        found.extend(_parse_header(value))
    return sorted(found, key=lambda c: _SCHEME_ORDER[c.scheme])


def _parse_header(value: str) -> list[Challenge]:
    """One header may hold several challenges: ``Bearer realm="x",scope="y", Basic realm="z"``."""
    challenges: list[Challenge] = []
    scheme = ""
    params: dict[str, str] = {}
    pos, end = 0, len(value)

    def flush() -> None:
        if scheme in _SCHEME_ORDER:
            challenges.append(Challenge(scheme, dict(params)))

    while pos < end:
        while pos < end and value[pos] in " \t,":
            pos += 1
        start = pos
        while pos < end and value[pos] not in ' \t,="':
            pos += 1
        token = value[start:pos]
        if not token:
            break
        probe = pos
        while probe < end and value[probe] in " \t":
            probe += 1
        if probe < end and value[probe] == "=" and scheme:
            pos = probe + 1
            while pos < end and value[pos] in " \t":
                pos += 1
            text, pos = _parameter_value(value, pos)
            params[token.lower()] = text
        else:
            flush()
            scheme, params = token.lower(), {}
    flush()
    return challenges


def _parameter_value(value: str, pos: int) -> tuple[str, int]:
    if pos < len(value) and value[pos] == '"':
        out: list[str] = []
        pos += 1
        while pos < len(value):
            char = value[pos]
            if char == "\\" and pos + 1 < len(value):
                out.append(value[pos + 1])
                pos += 2
                continue
            if char == '"':
                return "".join(out), pos + 1
            out.append(char)
            pos += 1
        return "".join(out), pos
    start = pos
    while pos < len(value) and value[pos] not in " \t,":
        pos += 1
    return value[start:pos], pos


@dataclass(frozen=True)
class _Basic:
    username: str
    secret: str


@dataclass(frozen=True)
class _Bearer:
    realm: str
    service: str
    scopes: tuple[str, ...]
    credentials: tuple[str, str] | None


@dataclass
class _Token:
    value: str
    expires_at: float


class Authorizer:
    """Per-host authentication state shared by every request of one client; safe under concurrency."""

    def __init__(
        self,
        credentials: Credentials | None = None,
        *,
        client_id: str = "corral",
        header: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self._credentials = credentials
        self._client_id = client_id
        self._header = dict(header or {})
        self._handlers: dict[str, _Basic | _Bearer] = {}
        self._tokens: dict[tuple[str, str], _Token] = {}
        self._fetching: dict[tuple[str, str], anyio.Lock] = {}

    def has_handler(self, host: str) -> bool:
        return host in self._handlers

    def forget(self, host: str) -> None:
        """Drop what was learnt about ``host`` (its challenge and tokens), e.g. after a rejected token."""
        self._handlers.pop(host, None)
        for key in [k for k in self._tokens if k[0] == host]:
            del self._tokens[key]

    def challenged(self, host: str, response: httpx.Response, *, repeated: bool) -> bool:
        """Learn from a 401 for ``host``; True when the request is worth sending again.

        ``repeated`` says this request was already retried after a challenge: a Bearer challenge
        carrying ``error`` then means the token itself was refused.
        """
        for challenge in parse_challenges(response.headers.get_list("www-authenticate")):
            if challenge.scheme == "bearer":
                if "error" in challenge.parameters:
                    if repeated:
                        return False
                    self.forget(host)
                elif host in self._handlers and repeated:
                    return False
                realm = challenge.parameters.get("realm", "")
                if not realm:
                    raise InvalidArgument(f"registry {host}: bearer challenge without a realm")
                if not realm.startswith(("http://", "https://")):
                    raise InvalidArgument(f"registry {host}: bearer realm {realm!r} is not an http(s) URL")
                scope = challenge.parameters.get("scope", "")
                self._handlers[host] = _Bearer(
                    realm=realm,
                    service=challenge.parameters.get("service", ""),
                    scopes=tuple(scope.split()) if scope else (),
                    credentials=self._lookup(host),
                )
                return True
            if challenge.scheme == "basic":
                found = self._lookup(host)
                if found is None or not found[0] or not found[1]:
                    return False
                if repeated and isinstance(self._handlers.get(host), _Basic):
                    return False
                self._handlers[host] = _Basic(*found)
                return True
        return False

    def _lookup(self, host: str) -> tuple[str, str] | None:
        return self._credentials(host) if self._credentials is not None else None

    async def authorization(self, host: str, scopes: Sequence[str], client: httpx.AsyncClient) -> str | None:
        """The ``Authorization`` value for a request to ``host`` needing ``scopes``; None before any challenge."""
        handler = self._handlers.get(host)
        if handler is None:
            return None
        if isinstance(handler, _Basic):
            return _basic(handler.username, handler.secret)
        wanted = " ".join(sorted({*handler.scopes, *scopes}))
        key = (host, wanted)
        token = self._tokens.get(key)
        if token is not None and token.expires_at > self._clock():
            return f"Bearer {token.value}"
        lock = self._fetching.setdefault(key, anyio.Lock())
        async with lock:
            token = self._tokens.get(key)
            if token is None or token.expires_at <= self._clock():
                token = await self._fetch_token(host, handler, wanted.split(), client)
                self._tokens[key] = token
        return f"Bearer {token.value}"

    async def _fetch_token(
        self, host: str, handler: _Bearer, scopes: list[str], client: httpx.AsyncClient
    ) -> _Token:
        log.debug("registry_token_fetch", host=host, realm=handler.realm, scopes=scopes)
        if handler.credentials is not None and handler.credentials[1]:
            username, secret = handler.credentials
            form = {"service": handler.service, "client_id": self._client_id}
            if scopes:
                form["scope"] = " ".join(scopes)
            if username:
                form.update(grant_type="password", username=username, password=secret)
            else:
                form.update(grant_type="refresh_token", refresh_token=secret)
            response = await self._send(host, client, "POST", handler.realm, data=form)
            fallback = response.status_code in (400, 401, 404) or (response.status_code == 405 and username)
            if response.is_success:
                return self._token(host, response, ("access_token",))
            if not fallback:
                raise self._token_error(host, response)
            return await self._fetch_with_get(host, handler, scopes, client, (username, secret))
        return await self._fetch_with_get(host, handler, scopes, client, None)

    async def _fetch_with_get(
        self,
        host: str,
        handler: _Bearer,
        scopes: list[str],
        client: httpx.AsyncClient,
        credentials: tuple[str, str] | None,
    ) -> _Token:
        params: list[tuple[str, str]] = []
        if handler.service:
            params.append(("service", handler.service))
        params.extend(("scope", s) for s in scopes)
        headers = {"Authorization": _basic(*credentials)} if credentials else {}
        response = await self._send(host, client, "GET", handler.realm, params=params, headers=headers)
        if not response.is_success:
            raise self._token_error(host, response)
        return self._token(host, response, ("access_token", "token"))

    async def _send(
        self, host: str, client: httpx.AsyncClient, method: str, url: str, **kwargs: Any
    ) -> httpx.Response:
        headers = {**self._header, **kwargs.pop("headers", {})}
        request = client.build_request(method, url, headers=headers, **kwargs)
        try:
            response = await client.send(request)
            await response.aread()
        except _errors.transport_errors() as exc:
            raise _errors.transport_error(f"{host} token endpoint", request, exc) from exc
        return response

    def _token_error(self, host: str, response: httpx.Response) -> CorralError:
        error = _errors.status_error(f"{host} token endpoint", response, response.content)
        if response.status_code in (401, 403):
            return PermissionDenied(error.detail)
        if response.status_code >= 500 or response.status_code == 429:
            return Unavailable(error.detail)
        return error

    def _token(self, host: str, response: httpx.Response, fields: Sequence[str]) -> _Token:
        try:
            document = response.json()
        except ValueError:
            raise Unavailable(f"registry {host} token endpoint: answer is not JSON") from None
        value = next((document[f] for f in fields if isinstance(document, dict) and document.get(f)), None)
        if not isinstance(value, str):
            raise Unavailable(f"registry {host} token endpoint: answer holds no token")
        lifetime = document.get("expires_in")
        seconds = (
            float(lifetime) if isinstance(lifetime, int | float) and lifetime > 0 else DEFAULT_TOKEN_LIFETIME
        )
        return _Token(value, self._clock() + seconds)


def _basic(username: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{secret}".encode()).decode()
