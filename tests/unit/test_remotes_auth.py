"""WWW-Authenticate challenges and the Basic/Bearer flows, against an in-memory token server."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from urllib.parse import parse_qs

import anyio
import httpx
import pytest

from corral.kernel import InvalidArgument, PermissionDenied
from corral.plugins.remotes.auth import Authorizer, Challenge, parse_challenges, repository_scope

pytestmark = pytest.mark.anyio

REALM = "https://auth.example.com/token"
HOST = "registry.example.com"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# --- challenge parsing ---------------------------------------------------------------------------


def test_a_bearer_challenge_yields_realm_service_and_scope() -> None:
    header = 'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull"'
    assert parse_challenges([header]) == [
        Challenge(
            "bearer",
            {
                "realm": "https://auth.docker.io/token",
                "service": "registry.docker.io",
                "scope": "repository:library/busybox:pull",
            },
        )
    ]


def test_schemes_and_parameter_names_are_case_insensitive_and_quotes_may_escape() -> None:
    [challenge] = parse_challenges(['BASIC Realm="a \\"quoted\\" realm"'])
    assert challenge == Challenge("basic", {"realm": 'a "quoted" realm'})


def test_several_challenges_are_found_and_bearer_comes_first() -> None:
    found = parse_challenges(['Basic realm="r", Bearer realm="https://t/x",scope="a b"', "Negotiate abc"])
    assert [c.scheme for c in found] == ["bearer", "basic"]
    assert found[0].parameters == {"realm": "https://t/x", "scope": "a b"}


def test_unquoted_parameters_and_unknown_schemes() -> None:
    assert parse_challenges(["Bearer realm=https://t/x, service=reg"]) == [
        Challenge("bearer", {"realm": "https://t/x", "service": "reg"})
    ]
    assert parse_challenges(["Negotiate", ""]) == []


def test_repository_scopes_name_pull_and_push() -> None:
    assert repository_scope("library/busybox") == "repository:library/busybox:pull"
    assert repository_scope("a/b", push=True) == "repository:a/b:pull,push"


# --- an in-memory token server ------------------------------------------------------------------


@dataclass
class TokenServer:
    """Answers GET with Basic or anonymous access, and the OAuth2 form POST; records what it saw."""

    users: dict[str, str] = field(default_factory=lambda: {"alice": "wonderland"})
    refresh_tokens: set[str] = field(default_factory=lambda: {"identity-token"})
    post_status: int = 0
    expires_in: int | None = 300
    requests: list[httpx.Request] = field(default_factory=list)
    issued: int = 0

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.method == "POST":
            if self.post_status:
                return httpx.Response(self.post_status)
            form = {k: v[0] for k, v in parse_qs(request.content.decode()).items()}
            grant = form.get("grant_type")
            ok = (
                grant == "password" and self.users.get(form.get("username", "")) == form.get("password")
            ) or (grant == "refresh_token" and form.get("refresh_token") in self.refresh_tokens)
            return self._issue("access_token") if ok else httpx.Response(401)
        authorization = request.headers.get("authorization", "")
        if authorization:
            user, _, password = base64.b64decode(authorization.split()[1]).decode().partition(":")
            if self.users.get(user) != password:
                return httpx.Response(401, json={"details": "incorrect username or password"})
        return self._issue("token")

    def _issue(self, field_name: str) -> httpx.Response:
        self.issued += 1
        body: dict[str, object] = {field_name: f"token-{self.issued}"}
        if self.expires_in is not None:
            body["expires_in"] = self.expires_in
        return httpx.Response(200, json=body)


def challenge_response(scope: str = "repository:app:pull", error: str = "") -> httpx.Response:
    value = f'Bearer realm="{REALM}",service="registry.example.com",scope="{scope}"'
    if error:
        value += f',error="{error}"'
    request = httpx.Request("GET", f"https://{HOST}/v2/app/manifests/1")
    return httpx.Response(401, headers={"WWW-Authenticate": value}, request=request)


def basic_challenge() -> httpx.Response:
    request = httpx.Request("GET", f"https://{HOST}/v2/")
    return httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="r"'}, request=request)


def client_for(server: TokenServer) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.MockTransport(server.handle))


async def test_no_authorization_is_sent_before_a_challenge() -> None:
    authorizer = Authorizer()
    async with client_for(TokenServer()) as client:
        assert await authorizer.authorization(HOST, ["repository:app:pull"], client) is None


async def test_an_anonymous_bearer_token_is_fetched_with_service_and_scopes() -> None:
    server = TokenServer()
    authorizer = Authorizer()
    assert authorizer.challenged(HOST, challenge_response(), repeated=False)
    async with client_for(server) as client:
        value = await authorizer.authorization(HOST, ["repository:app:pull,push"], client)
    assert value == "Bearer token-1"
    [request] = server.requests
    assert request.method == "GET" and "authorization" not in request.headers
    assert request.url.params.get("service") == "registry.example.com"
    assert request.url.params.get_list("scope") == ["repository:app:pull", "repository:app:pull,push"]


async def test_credentials_go_to_the_token_endpoint_as_an_oauth_password_grant() -> None:
    server = TokenServer()
    authorizer = Authorizer(lambda host: ("alice", "wonderland") if host == HOST else None)
    authorizer.challenged(HOST, challenge_response(), repeated=False)
    async with client_for(server) as client:
        assert await authorizer.authorization(HOST, [], client) == "Bearer token-1"
    [request] = server.requests
    form = parse_qs(request.content.decode())
    assert request.method == "POST"
    assert request.headers["content-type"].startswith("application/x-www-form-urlencoded")
    assert form["grant_type"] == ["password"] and form["username"] == ["alice"]
    assert form["scope"] == ["repository:app:pull"] and form["client_id"] == ["corral"]


async def test_an_empty_username_sends_the_secret_as_a_refresh_token() -> None:
    server = TokenServer()
    authorizer = Authorizer(lambda host: ("", "identity-token"))
    authorizer.challenged(HOST, challenge_response(), repeated=False)
    async with client_for(server) as client:
        assert await authorizer.authorization(HOST, [], client) == "Bearer token-1"
    form = parse_qs(server.requests[0].content.decode())
    assert form["grant_type"] == ["refresh_token"] and form["refresh_token"] == ["identity-token"]


@pytest.mark.parametrize("status", [404, 405, 400, 401])
async def test_a_token_endpoint_without_oauth_is_asked_with_get_and_basic(status: int) -> None:
    server = TokenServer(post_status=status)
    authorizer = Authorizer(lambda host: ("alice", "wonderland"))
    authorizer.challenged(HOST, challenge_response(), repeated=False)
    async with client_for(server) as client:
        assert await authorizer.authorization(HOST, [], client) == "Bearer token-1"
    post, get = server.requests
    assert (post.method, get.method) == ("POST", "GET")
    assert get.headers["authorization"] == "Basic " + base64.b64encode(b"alice:wonderland").decode()


async def test_wrong_credentials_at_the_token_endpoint_are_permission_denied() -> None:
    server = TokenServer(post_status=404)
    authorizer = Authorizer(lambda host: ("alice", "queen of hearts"))
    authorizer.challenged(HOST, challenge_response(), repeated=False)
    async with client_for(server) as client:
        with pytest.raises(PermissionDenied, match=r"token endpoint.*401"):
            await authorizer.authorization(HOST, [], client)


async def test_tokens_are_cached_per_scope_set_until_they_expire() -> None:
    now = [1000.0]
    server = TokenServer(expires_in=60)
    authorizer = Authorizer(clock=lambda: now[0])
    authorizer.challenged(HOST, challenge_response(), repeated=False)
    async with client_for(server) as client:
        first = await authorizer.authorization(HOST, ["repository:app:pull"], client)
        again = await authorizer.authorization(HOST, ["repository:app:pull"], client)
        other = await authorizer.authorization(HOST, ["repository:other:pull"], client)
        now[0] += 59
        still = await authorizer.authorization(HOST, ["repository:app:pull"], client)
        now[0] += 2
        renewed = await authorizer.authorization(HOST, ["repository:app:pull"], client)
    assert (first, again, still) == ("Bearer token-1", "Bearer token-1", "Bearer token-1")
    assert other == "Bearer token-2"
    assert renewed == "Bearer token-3"


async def test_a_token_without_expires_in_lives_sixty_seconds() -> None:
    now = [0.0]
    server = TokenServer(expires_in=None)
    authorizer = Authorizer(clock=lambda: now[0])
    authorizer.challenged(HOST, challenge_response(), repeated=False)
    async with client_for(server) as client:
        await authorizer.authorization(HOST, [], client)
        now[0] = 59.0
        assert await authorizer.authorization(HOST, [], client) == "Bearer token-1"
        now[0] = 61.0
        assert await authorizer.authorization(HOST, [], client) == "Bearer token-2"


async def test_concurrent_requests_share_one_token_fetch() -> None:
    server = TokenServer()
    authorizer = Authorizer()
    authorizer.challenged(HOST, challenge_response(), repeated=False)
    values: list[str | None] = []
    async with client_for(server) as client:

        async def ask() -> None:
            values.append(await authorizer.authorization(HOST, ["repository:app:pull"], client))

        async with anyio.create_task_group() as tg:
            for _ in range(10):
                tg.start_soon(ask)
    assert values == ["Bearer token-1"] * 10
    assert len(server.requests) == 1


async def test_a_rejected_token_is_dropped_once_then_the_refusal_stands() -> None:
    server = TokenServer()
    authorizer = Authorizer()
    authorizer.challenged(HOST, challenge_response(), repeated=False)
    async with client_for(server) as client:
        await authorizer.authorization(HOST, [], client)
        assert authorizer.challenged(HOST, challenge_response(error="invalid_token"), repeated=False)
        assert await authorizer.authorization(HOST, [], client) == "Bearer token-2"
    assert not authorizer.challenged(HOST, challenge_response(error="insufficient_scope"), repeated=True)


async def test_basic_challenges_are_answered_with_the_credentials_of_that_host() -> None:
    authorizer = Authorizer(lambda host: ("bob", "builder") if host == HOST else None)
    assert authorizer.challenged(HOST, basic_challenge(), repeated=False)
    async with client_for(TokenServer()) as client:
        value = await authorizer.authorization(HOST, [], client)
        assert await authorizer.authorization("elsewhere.example.com", [], client) is None
    assert value == "Basic " + base64.b64encode(b"bob:builder").decode()
    assert not authorizer.challenged(HOST, basic_challenge(), repeated=True)


def test_a_basic_challenge_without_credentials_is_not_retried() -> None:
    assert not Authorizer().challenged(HOST, basic_challenge(), repeated=False)
    assert not Authorizer(lambda host: None).challenged(HOST, basic_challenge(), repeated=False)


def test_a_bearer_challenge_without_a_realm_is_invalid() -> None:
    request = httpx.Request("GET", f"https://{HOST}/v2/")
    response = httpx.Response(401, headers={"WWW-Authenticate": 'Bearer service="x"'}, request=request)
    with pytest.raises(InvalidArgument, match="without a realm"):
        Authorizer().challenged(HOST, response, repeated=False)
