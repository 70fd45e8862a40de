"""A real distribution registry (Debian's docker-registry) on loopback, for tests that push and pull.

``start_registry`` runs ``docker-registry serve`` on 127.0.0.1 with a free port and a generated
config with filesystem storage under a temporary directory, in one of three modes: plain HTTP,
TLS with a CA made here with ``openssl``, or Basic auth from an ``htpasswd -Bbn`` file. The access
log (Combined Log Format, on the registry's stdout) tells tests which requests reached it.
"""

from __future__ import annotations

import base64
import http.server
import json
import re
import socket
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from tooling import require_tool

_ACCESS = re.compile(r'^\S+ \S+ \S+ \[[^\]]*\] "(?P<method>[A-Z]+) (?P<target>\S+) [^"]*" (?P<status>\d{3}) ')


@dataclass(frozen=True)
class Access:
    method: str
    path: str
    query: str
    status: int


@dataclass(frozen=True)
class Authority:
    """A CA made for one test and a server certificate it signed for 127.0.0.1 (subjectAltName IP)."""

    ca: Path
    ca_key: Path
    certificate: Path
    key: Path


@dataclass
class Registry:
    """One running registry; ``host`` is ``127.0.0.1:PORT``, as it goes in references."""

    host: str
    scheme: str
    root: Path
    process: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path
    authority: Authority | None = None
    username: str = ""
    password: str = ""
    _log_offset: int = field(default=0, repr=False)

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}"

    @property
    def port(self) -> int:
        return int(self.host.rsplit(":", 1)[1])

    def accesses(self) -> list[Access]:
        """Requests the registry answered since the last ``mark`` (all of them before any)."""
        found = []
        text = self.stdout.read_bytes()[self._log_offset :].decode(errors="replace")
        for line in text.splitlines():
            match = _ACCESS.match(line)
            if match:
                path, _, query = match["target"].partition("?")
                found.append(Access(match["method"], path, query, int(match["status"])))
        return found

    def mark(self) -> None:
        """Forget the requests logged so far, so ``accesses`` shows only what follows."""
        time.sleep(0.2)  # the access log is written after the response is sent
        self._log_offset = self.stdout.stat().st_size

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_authority(directory: Path, *, name: str = "corral test CA") -> Authority:
    """A CA and a server certificate for 127.0.0.1, with the extensions strict verifiers require."""
    require_tool("openssl")
    directory.mkdir(parents=True, exist_ok=True)
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
        "-keyout", "ca.key", "-out", "ca.crt",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=directory,
    )  # fmt: skip
    (directory / "server.ext").write_text(
        "subjectAltName=IP:127.0.0.1\n"
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid,issuer\n"
    )
    _openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
        "-keyout", "server.key", "-out", "server.csr",
        cwd=directory,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-days", "2", "-extfile", "server.ext", "-out", "server.crt",
        cwd=directory,
    )  # fmt: skip
    return Authority(
        directory / "ca.crt", directory / "ca.key", directory / "server.crt", directory / "server.key"
    )


def make_client_certificate(
    authority: Authority, directory: Path, *, name: str = "corral client"
) -> tuple[Path, Path]:
    """A client certificate and key signed by ``authority``, for registries that require one."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "client.ext").write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=clientAuth\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid,issuer\n"
    )
    _openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
        "-keyout", "client.key", "-out", "client.csr",
        cwd=directory,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", "client.csr", "-CA", str(authority.ca), "-CAkey", str(authority.ca_key),
        "-CAcreateserial", "-days", "2", "-extfile", "client.ext", "-out", "client.cert",
        cwd=directory,
    )  # fmt: skip
    return directory / "client.cert", directory / "client.key"


def make_htpasswd(path: Path, username: str, password: str) -> None:
    """A bcrypt htpasswd file, the only hash distribution's htpasswd auth accepts."""
    htpasswd = require_tool("htpasswd")
    line = subprocess.run([htpasswd, "-Bbn", username, password], check=True, capture_output=True, text=True)
    path.write_text(line.stdout.strip() + "\n")


def start_registry(
    directory: Path,
    *,
    tls: bool = False,
    username: str = "",
    password: str = "",
    authority: Authority | None = None,
    token_issuer: TokenIssuer | None = None,
    require_client_certificates: bool = False,
) -> Registry:
    binary = require_tool("docker-registry")
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = [
        "version: 0.1",
        "log:",
        "  level: info",
        "  accesslog:",
        "    disabled: false",
        "storage:",
        "  filesystem:",
        f"    rootdirectory: {directory / 'storage'}",
        "  delete:",
        "    enabled: true",
        "http:",
        f"  addr: 127.0.0.1:{port}",
        f"  secret: corral-test-{port}",
    ]
    if tls:
        authority = authority or make_authority(directory / "pki")
        config += ["  tls:", f"    certificate: {authority.certificate}", f"    key: {authority.key}"]
        if require_client_certificates:
            config += ["    clientcas:", f"      - {authority.ca}"]
    if username:
        make_htpasswd(directory / "htpasswd", username, password)
        config += ["auth:", "  htpasswd:", "    realm: corral-test", f"    path: {directory / 'htpasswd'}"]
    if token_issuer is not None:
        config += [
            "auth:",
            "  token:",
            f"    realm: {token_issuer.realm}",
            f"    service: {token_issuer.service}",
            f"    issuer: {token_issuer.issuer}",
            f"    rootcertbundle: {token_issuer.certificate}",
        ]
    (directory / "config.yml").write_text("\n".join(config) + "\n")
    stdout, stderr = directory / "access.log", directory / "registry.log"
    with stdout.open("wb") as out, stderr.open("wb") as err:
        process = subprocess.Popen(
            [binary, "serve", str(directory / "config.yml")], stdout=out, stderr=err, stdin=subprocess.DEVNULL
        )
    scheme = "https" if tls else "http"
    registry = Registry(
        f"127.0.0.1:{port}",
        scheme,
        directory,
        process,
        stdout,
        stderr,
        authority if tls else None,
        username,
        password,
    )
    _wait_ready(registry)
    return registry


def _wait_ready(registry: Registry) -> None:
    """Wait until the registry accepts connections (a TCP connect: some modes demand client certificates)."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if registry.process.poll() is not None:
            raise RuntimeError(f"docker-registry exited: {registry.stderr.read_text()[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", registry.port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    registry.stop()
    raise RuntimeError(f"docker-registry did not start: {registry.stderr.read_text()[-2000:]}")


class TokenIssuer:
    """A token server for distribution's ``auth: token`` mode: RS256 JWTs signed with ``openssl``.

    Anonymous requests get pull access; ``username``/``password`` (Basic on GET, or the OAuth2
    password grant on POST) get every action asked for; wrong credentials get 401. ``requests``
    records (method, query or form) of each request.
    """

    service = "corral-test-registry"
    issuer = "corral-test-issuer"

    def __init__(self, directory: Path, *, username: str, password: str) -> None:
        require_tool("openssl")
        directory.mkdir(parents=True, exist_ok=True)
        self.key, self.certificate = directory / "token.key", directory / "token.crt"
        _openssl(
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=corral token issuer",
            "-keyout", str(self.key), "-out", str(self.certificate),
            cwd=directory,
        )  # fmt: skip
        der = subprocess.run(
            ["openssl", "x509", "-in", str(self.certificate), "-outform", "DER"],
            check=True,
            capture_output=True,
        ).stdout
        self._x5c = base64.b64encode(der).decode()
        self.username, self.password = username, password
        self.requests: list[tuple[str, dict[str, list[str]]]] = []
        issuer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
                issuer.requests.append(("GET", query))
                user = password = ""
                header = self.headers.get("Authorization", "")
                if header.startswith("Basic "):
                    user, _, password = base64.b64decode(header[6:]).decode().partition(":")
                self._answer(user, password, query.get("scope", []), "token")

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                form = urllib.parse.parse_qs(self.rfile.read(length).decode())
                issuer.requests.append(("POST", form))
                scopes = " ".join(form.get("scope", [])).split()
                user, password = form.get("username", [""])[0], form.get("password", [""])[0]
                self._answer(user, password, scopes, "access_token")

            def _answer(self, user: str, password: str, scopes: list[str], field: str) -> None:
                if user and (user, password) != (issuer.username, issuer.password):
                    self.send_response(401)
                    self.end_headers()
                    return
                body = json.dumps({field: issuer.token(scopes, full=bool(user)), "expires_in": 300}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.realm = f"http://127.0.0.1:{self._server.server_address[1]}/token"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def token(self, scopes: list[str], *, full: bool) -> str:
        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            wanted = actions.split(",")
            access.append({"type": kind, "name": name, "actions": wanted if full else ["pull"]})
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "sub": self.username if full else "",
            "aud": self.service,
            "exp": now + 300,
            "nbf": now - 10,
            "iat": now,
            "jti": f"corral-{now}-{len(self.requests)}",
            "access": access,
        }
        header = {"typ": "JWT", "alg": "RS256", "x5c": [self._x5c]}
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        signature = subprocess.run(
            ["openssl", "dgst", "-sha256", "-sign", str(self.key)],
            input=signing_input.encode(),
            check=True,
            capture_output=True,
        ).stdout
        return f"{signing_input}.{_b64url(signature)}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


StartRegistry = Callable[..., Registry]


@pytest.fixture
def start_registries(tmp_path: Path) -> Iterator[StartRegistry]:
    """A factory: each call starts one more registry (keyword arguments as ``start_registry``)."""
    started: list[Registry] = []

    def start(**options: object) -> Registry:
        registry = start_registry(tmp_path / f"registry-{len(started)}", **options)  # type: ignore[arg-type]
        started.append(registry)
        return registry

    try:
        yield start
    finally:
        for registry in started:
            registry.stop()


@pytest.fixture
def registry(start_registries: StartRegistry) -> Registry:
    """A plain-HTTP registry."""
    return start_registries()


@pytest.fixture
def tls_registry(start_registries: StartRegistry) -> Registry:
    """A registry serving TLS with a certificate from a CA made for the test (``registry.authority``)."""
    return start_registries(tls=True)


@pytest.fixture
def token_registry(start_registries: StartRegistry, tmp_path: Path) -> Iterator[tuple[Registry, TokenIssuer]]:
    """A plain-HTTP registry in token mode, with its token issuer (user ``corral``, ``token-pass``)."""
    issuer = TokenIssuer(tmp_path / "token-issuer", username="corral", password="token-pass")
    try:
        yield start_registries(token_issuer=issuer), issuer
    finally:
        issuer.stop()


@pytest.fixture
def auth_registry(start_registries: StartRegistry) -> Registry:
    """A plain-HTTP registry requiring Basic auth as ``registry.username``/``registry.password``."""
    return start_registries(username="corral", password="s3cret-pass")


class ThrottledProxy:
    """A TCP proxy in front of a registry that sends its answers at ``rate`` bytes a second,
    logs each request line with its Range header, and can be stopped (every connection cut)."""

    def __init__(self, upstream: int, rate: int, port: int = 0) -> None:
        self.upstream, self.rate = upstream, rate
        self.requests: list[tuple[str, str]] = []
        self.listener = socket.create_server(("127.0.0.1", port), reuse_port=False)
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = [self.listener]
        self.stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self.stopped:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.upstream))
            self.sockets += [client, server]
            threading.Thread(target=self._up, args=(client, server), daemon=True).start()
            threading.Thread(target=self._down, args=(server, client), daemon=True).start()

    def _up(self, client: socket.socket, server: socket.socket) -> None:
        try:
            while data := client.recv(65536):
                for head in data.split(b"\r\n\r\n"):
                    lines = head.decode(errors="replace").split("\r\n")
                    if lines and lines[0].split(" ")[0] in ("GET", "HEAD", "PUT", "POST", "PATCH"):
                        ranges = [
                            line.split(":", 1)[1].strip()
                            for line in lines
                            if line.lower().startswith("range:")
                        ]
                        self.requests.append((lines[0], ranges[0] if ranges else ""))
                server.sendall(data)
        except OSError:
            pass

    def _down(self, server: socket.socket, client: socket.socket) -> None:
        try:
            while data := server.recv(16384):
                client.sendall(data)
                time.sleep(len(data) / self.rate)
        except OSError:
            pass
        finally:
            for s in (client, server):
                with suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        self.stopped = True
        for s in self.sockets:
            with suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            with suppress(OSError):
                s.close()


# -- images in the registry, through skopeo ------------------------------------------------------------


def skopeo(*args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([require_tool("skopeo"), *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"skopeo {' '.join(args)}: {result.stderr}"
    return result


def push_layout(layout: Path, registry: Registry, repo: str, *, all_images: bool = False) -> None:
    flags = ["--all"] if all_images else []
    skopeo(
        "copy", *flags, "--dest-tls-verify=false", f"oci:{layout}:latest", f"docker://{registry.host}/{repo}"
    )


@pytest.fixture
def busybox_layout(tmp_path: Path) -> Path:
    from corral.plugins.images.build import build_busybox_image

    return build_busybox_image().image.write_oci_layout(tmp_path / "busybox-layout", ["latest"])


@dataclass(frozen=True)
class TwoArch:
    """An index of a linux/amd64 and a linux/arm64 image in the registry, as the host sees it."""

    ref: str
    host_layer: str
    other_layer: str
    other_config: str


def push_two_arch_index(registry: Registry, workdir: Path, repo: str) -> TwoArch:
    from corral.plugins.images.build import build_image, build_index, layer_from_directory
    from corral.plugins.images.oci import Platform

    images = {}
    for arch in ("amd64", "arm64"):
        tree = workdir / f"tree-{arch}"
        tree.mkdir()
        (tree / "arch").write_text(arch + "\n")
        images[arch] = build_image(
            [layer_from_directory(tree)], platform=Platform("linux", arch), cmd=["/bin/true"]
        )
    layout = build_index(list(images.values())).write_oci_layout(workdir / "multi", ["latest"])
    push_layout(layout, registry, repo, all_images=True)
    host = Platform.host().architecture
    other = images["arm64" if host == "amd64" else "amd64"]
    return TwoArch(
        f"{registry.host}/{repo}",
        images[host].manifest.layers[0].digest,
        other.manifest.layers[0].digest,
        other.manifest.config.digest,
    )


def assert_round_trip(source: str, target: str, original_layout: Path, workdir: Path) -> None:
    """``target`` (pushed from ``source``) has ``source``'s manifest bytes, and skopeo copies it back
    as the image of ``original_layout``, blob for blob."""
    raw_source = skopeo("inspect", "--tls-verify=false", "--raw", f"docker://{source}").stdout
    raw_target = skopeo("inspect", "--tls-verify=false", "--raw", f"docker://{target}").stdout
    assert raw_target == raw_source
    back = workdir / "back"
    skopeo("copy", "--src-tls-verify=false", f"docker://{target}", f"oci:{back}:copy")
    index = json.loads((back / "index.json").read_text())
    original = json.loads((original_layout / "index.json").read_text())
    assert index["manifests"][0]["digest"] == original["manifests"][0]["digest"]
    manifest = json.loads(raw_target)
    for blob in [manifest["config"], *manifest["layers"]]:
        name = Path("blobs", *blob["digest"].split(":", 1))
        assert (back / name).read_bytes() == (original_layout / name).read_bytes(), blob["digest"]
