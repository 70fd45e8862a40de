"""RegistryClient against a real distribution registry, and interop with skopeo in both directions."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import json
import os
import re
import subprocess
import tarfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest
from registry_fixture import Registry, StartRegistry, TokenIssuer, free_port, make_client_certificate
from tooling import require_tool

from corral.kernel import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
)
from corral.plugins.remotes import (
    MEDIA_TYPE_OCI_MANIFEST,
    Descriptor,
    PushOutcome,
    RegistryClient,
)

pytestmark = pytest.mark.anyio

LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
CONFIG = "application/vnd.oci.image.config.v1+json"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def describe(data: bytes, media_type: str = "application/octet-stream") -> Descriptor:
    return Descriptor(media_type, "sha256:" + hashlib.sha256(data).hexdigest(), len(data))


@dataclass(frozen=True)
class Image:
    layer: bytes
    config: bytes
    manifest: bytes

    @property
    def layer_desc(self) -> Descriptor:
        return describe(self.layer, LAYER_GZIP)

    @property
    def config_desc(self) -> Descriptor:
        return describe(self.config, CONFIG)

    @property
    def manifest_desc(self) -> Descriptor:
        return describe(self.manifest, MEDIA_TYPE_OCI_MANIFEST)

    def blobs(self) -> dict[str, bytes]:
        return {d.digest: b for d, b in ((self.layer_desc, self.layer), (self.config_desc, self.config))}


def make_image(text: str = "hello from corral\n", *, padding: int = 0) -> Image:
    """One small gzip layer holding one file (plus ``padding`` random bytes), its config and manifest."""
    tar_bytes = io.BytesIO()
    with tarfile.open(fileobj=tar_bytes, mode="w") as tar:
        for name, content in (("hello.txt", text.encode()), ("padding.bin", os.urandom(padding))):
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(content), 1_700_000_000, 0o644
            tar.addfile(info, io.BytesIO(content))
    uncompressed = tar_bytes.getvalue()
    layer = gzip.compress(uncompressed, mtime=0)
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Cmd": ["/bin/cat", "/hello.txt"]},
            "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(uncompressed).hexdigest()]},
        },
        sort_keys=True,
    ).encode()
    layer_desc, config_desc = describe(layer, LAYER_GZIP), describe(config, CONFIG)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MEDIA_TYPE_OCI_MANIFEST,
            "config": {"mediaType": CONFIG, "digest": config_desc.digest, "size": config_desc.size},
            "layers": [{"mediaType": LAYER_GZIP, "digest": layer_desc.digest, "size": layer_desc.size}],
        },
        indent=2,
    ).encode()
    return Image(layer, config, manifest)


async def push_image(client: RegistryClient, ref: str, image: Image) -> None:
    assert (await client.push_blob(ref, image.layer_desc, image.layer)).outcome is PushOutcome.UPLOADED
    assert (await client.push_blob(ref, image.config_desc, image.config)).outcome is PushOutcome.UPLOADED
    assert (
        await client.push_manifest(ref, image.manifest_desc, image.manifest)
    ).outcome is PushOutcome.UPLOADED


def write_hosts(config_path: Path, registry: str, text: str) -> Path:
    directory = config_path / registry
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "hosts.toml").write_text(text)
    return config_path


def counting(accesses: list[object], method: str, fragment: str) -> int:
    return sum(1 for a in accesses if a.method == method and fragment in a.path)  # type: ignore[attr-defined]


# --- push, resolve, fetch ------------------------------------------------------------------------


async def test_a_pushed_image_resolves_and_every_blob_fetches_back_verified(registry: Registry) -> None:
    image = make_image(padding=300_000)
    ref = f"{registry.host}/corral/hello:1"
    async with RegistryClient(plain_http=True, chunk_size=64 * 1024) as client:
        await push_image(client, ref, image)
        name, desc = await client.resolve(ref)
        assert name == ref
        assert desc == image.manifest_desc
        assert await client.fetch_bytes(ref, desc) == image.manifest
        for blob_desc, data in ((image.layer_desc, image.layer), (image.config_desc, image.config)):
            chunks = []
            async with client.fetch(ref, blob_desc) as stream:
                async for chunk in stream:
                    chunks.append(chunk)
            assert b"".join(chunks) == data
            assert stream.position == blob_desc.size


async def test_big_blobs_go_up_in_patch_chunks_and_small_ones_in_one_put(registry: Registry) -> None:
    big, small = os.urandom(300_000), b"small blob"
    ref = f"{registry.host}/corral/chunks:1"
    async with RegistryClient(plain_http=True, chunk_size=100_000) as client:
        registry.mark()
        await client.push_blob(ref, describe(big), big)
        big_log = registry.accesses()
        registry.mark()
        await client.push_blob(ref, describe(small), small)
        small_log = registry.accesses()
        assert await client.fetch_bytes(ref, describe(big)) == big
    assert counting(big_log, "PATCH", "/blobs/uploads/") == 3
    assert [a.status for a in big_log if a.method == "PATCH"] == [202, 202, 202]
    assert counting(big_log, "PUT", "/blobs/uploads/") == 1
    assert counting(small_log, "PATCH", "/blobs/uploads/") == 0
    assert [a.status for a in small_log if a.method == "PUT"] == [201]


async def test_a_blob_streamed_from_an_async_iterator_is_uploaded_whole(registry: Registry) -> None:
    data = os.urandom(250_000)

    async def pieces() -> AsyncIterator[bytes]:
        for start in range(0, len(data), 7_000):
            yield data[start : start + 7_000]

    ref = f"{registry.host}/corral/streamed:1"
    async with RegistryClient(plain_http=True, chunk_size=0) as client:
        result = await client.push_blob(ref, describe(data), pieces())
        assert (result.outcome, result.status) == (PushOutcome.UPLOADED, 201)
        assert await client.fetch_bytes(ref, describe(data)) == data


async def test_pushing_bytes_that_do_not_match_the_descriptor_fails_before_upload(registry: Registry) -> None:
    ref = f"{registry.host}/corral/wrong:1"
    async with RegistryClient(plain_http=True) as client:
        registry.mark()
        with pytest.raises(FailedPrecondition, match="unexpected digest"):
            await client.push_blob(ref, describe(b"promised"), b"PROMISED")
        with pytest.raises(FailedPrecondition, match="longer than 8 bytes"):
            await client.push_blob(ref, describe(b"promised"), b"promised+")
        with pytest.raises(FailedPrecondition, match="unexpected digest"):
            await client.push_manifest(ref, describe(b"{}", MEDIA_TYPE_OCI_MANIFEST), b"[]")
        assert not await client.exists(ref, describe(b"promised"))
    assert [a.method for a in registry.accesses()] == ["HEAD"]


@pytest.mark.parametrize("chunk_size", [0, 2_000])
async def test_streamed_bytes_that_do_not_match_are_refused_and_nothing_is_committed(
    registry: Registry, chunk_size: int
) -> None:
    promised = os.urandom(5_000)
    delivered = bytes(b ^ 1 for b in promised)

    async def pieces() -> AsyncIterator[bytes]:
        for start in range(0, len(delivered), 1_000):
            yield delivered[start : start + 1_000]

    ref = f"{registry.host}/corral/streamed-wrong:1"
    async with RegistryClient(plain_http=True, chunk_size=chunk_size) as client:
        with pytest.raises(FailedPrecondition, match="unexpected digest"):
            await client.push_blob(ref, describe(promised), pieces())
        assert not await client.exists(ref, describe(promised))
        assert not await client.exists(ref, describe(delivered))


async def test_exists_asks_with_head_and_tells_present_from_absent(registry: Registry) -> None:
    image = make_image()
    ref = f"{registry.host}/corral/exists:1"
    async with RegistryClient(plain_http=True) as client:
        await push_image(client, ref, image)
        registry.mark()
        assert await client.exists(ref, image.layer_desc)
        assert await client.exists(ref, image.manifest_desc)
        assert not await client.exists(ref, describe(b"never pushed"))
        accesses = registry.accesses()
    assert [a.method for a in accesses] == ["HEAD", "HEAD", "HEAD"]
    assert [a.status for a in accesses] == [200, 200, 404]


async def test_pushing_what_is_already_there_uploads_nothing(registry: Registry) -> None:
    image = make_image()
    ref = f"{registry.host}/corral/again:1"
    async with RegistryClient(plain_http=True) as client:
        await push_image(client, ref, image)
        registry.mark()
        assert (await client.push_blob(ref, image.layer_desc, image.layer)).outcome is PushOutcome.EXISTS
        assert (
            await client.push_manifest(ref, image.manifest_desc, image.manifest)
        ).outcome is PushOutcome.EXISTS
    assert {a.method for a in registry.accesses()} == {"HEAD"}


async def test_a_blob_is_mounted_from_another_repository_without_upload(registry: Registry) -> None:
    data = os.urandom(50_000)
    async with RegistryClient(plain_http=True) as client:
        await client.push_blob(f"{registry.host}/corral/a:1", describe(data), data)
        registry.mark()
        result = await client.push_blob(
            f"{registry.host}/corral/b:1", describe(data), data, mount_from="corral/a"
        )
        accesses = registry.accesses()
        assert await client.fetch_bytes(f"{registry.host}/corral/b:1", describe(data)) == data
    assert (result.outcome, result.status) == (PushOutcome.MOUNTED, 201)
    posts = [a for a in accesses if a.method == "POST"]
    assert len(posts) == 1 and posts[0].status == 201
    assert "mount=" in posts[0].query and "from=corral/a" in posts[0].query
    assert not [a for a in accesses if a.method in ("PUT", "PATCH")]


async def test_a_fetch_resumes_from_an_offset_and_still_verifies_the_whole_blob(registry: Registry) -> None:
    data = os.urandom(200_000)
    ref, desc = f"{registry.host}/corral/resume:1", describe(data)
    async with RegistryClient(plain_http=True) as client:
        await client.push_blob(ref, desc, data)
        prefix = hashlib.sha256(data[:123_456])
        registry.mark()
        async with client.fetch(ref, desc, offset=123_456, hasher=prefix) as stream:
            rest = await stream.read()
        assert rest == data[123_456:]
        assert [a.status for a in registry.accesses() if a.method == "GET"] == [206]
        wrong_prefix = hashlib.sha256(b"not the prefix")
        async with client.fetch(ref, desc, offset=123_456, hasher=wrong_prefix) as stream:
            with pytest.raises(FailedPrecondition, match="unexpected digest"):
                await stream.read()


async def test_content_corrupted_in_the_registry_fails_the_digest_check(registry: Registry) -> None:
    data = os.urandom(10_000)
    ref, desc = f"{registry.host}/corral/corrupt:1", describe(data)
    async with RegistryClient(plain_http=True) as client:
        await client.push_blob(ref, desc, data)
        hexdigest = desc.digest.split(":")[1]
        stored = (
            registry.root / "storage/docker/registry/v2/blobs/sha256" / hexdigest[:2] / hexdigest / "data"
        )
        stored.write_bytes(bytes(b ^ 0xFF for b in data))
        async with client.fetch(ref, desc) as stream:
            with pytest.raises(FailedPrecondition, match=f"unexpected digest .* for blob {desc.digest}"):
                await stream.read()


async def test_unknown_tags_and_blobs_are_not_found_naming_registry_and_status(registry: Registry) -> None:
    async with RegistryClient(plain_http=True) as client:
        with pytest.raises(NotFound) as missing_tag:
            await client.resolve(f"{registry.host}/corral/none:nope")
        with pytest.raises(NotFound) as missing_blob:
            await client.fetch_bytes(f"{registry.host}/corral/none:nope", describe(b"absent"))
    for error in (missing_tag.value, missing_blob.value):
        assert registry.host in str(error) and "404" in str(error)
        assert "\n" not in str(error)


async def test_a_tag_is_pointed_at_a_manifest_the_repository_holds(registry: Registry) -> None:
    image = make_image()
    async with RegistryClient(plain_http=True) as client:
        await push_image(client, f"{registry.host}/corral/tags:1", image)
        result = await client.tag(f"{registry.host}/corral/tags:stable", image.manifest_desc)
        assert result.outcome is PushOutcome.UPLOADED
        _, desc = await client.resolve(f"{registry.host}/corral/tags:stable")
        _, by_digest = await client.resolve(f"{registry.host}/corral/tags@{image.manifest_desc.digest}")
    assert desc.digest == by_digest.digest == image.manifest_desc.digest


async def test_many_concurrent_fetches_on_one_client_are_each_verified(registry: Registry) -> None:
    blobs = [os.urandom(40_000 + i) for i in range(12)]
    ref = f"{registry.host}/corral/many:1"
    async with RegistryClient(plain_http=True) as client:
        async with anyio.create_task_group() as tg:
            for blob in blobs:
                tg.start_soon(client.push_blob, ref, describe(blob), blob)
        fetched: dict[int, bytes] = {}

        async def fetch(index: int) -> None:
            fetched[index] = await client.fetch_bytes(ref, describe(blobs[index]))

        async with anyio.create_task_group() as tg:
            for index in range(len(blobs)):
                tg.start_soon(fetch, index)
    assert [fetched[i] for i in range(len(blobs))] == blobs


# --- authentication ------------------------------------------------------------------------------


async def test_basic_credentials_push_and_pull(auth_registry: Registry) -> None:
    image = make_image()
    ref = f"{auth_registry.host}/corral/private:1"
    credentials = {auth_registry.host: (auth_registry.username, auth_registry.password)}
    async with RegistryClient(plain_http=True, credentials=credentials.get) as client:
        await push_image(client, ref, image)
        _, desc = await client.resolve(ref)
        assert await client.fetch_bytes(ref, image.layer_desc) == image.layer
    assert desc == image.manifest_desc


async def test_wrong_credentials_give_a_one_line_error_naming_the_registry_and_status(
    auth_registry: Registry,
) -> None:
    ref = f"{auth_registry.host}/corral/private:1"
    async with RegistryClient(plain_http=True, credentials=lambda host: ("corral", "wrong")) as client:
        with pytest.raises(PermissionDenied) as denied:
            await client.resolve(ref)
    message = str(denied.value)
    assert "\n" not in message
    assert f"registry {auth_registry.host}" in message
    assert "401 Unauthorized" in message


async def test_anonymous_requests_to_a_protected_registry_are_denied(auth_registry: Registry) -> None:
    async with RegistryClient(plain_http=True) as client:
        with pytest.raises(PermissionDenied, match="401"):
            await client.push_blob(f"{auth_registry.host}/corral/p:1", describe(b"x"), b"x")


async def test_bearer_tokens_from_the_realm_push_and_pull(
    token_registry: tuple[Registry, TokenIssuer],
) -> None:
    registry, issuer = token_registry
    image = make_image()
    ref = f"{registry.host}/corral/tokens:1"
    async with RegistryClient(
        plain_http=True, credentials=lambda host: (issuer.username, issuer.password)
    ) as client:
        await push_image(client, ref, image)
        _, desc = await client.resolve(ref)
        assert await client.fetch_bytes(ref, image.layer_desc) == image.layer
    assert desc == image.manifest_desc
    posts = [form for method, form in issuer.requests if method == "POST"]
    assert posts and all(form["grant_type"] == ["password"] for form in posts)
    assert any("repository:corral/tokens:pull,push" in form["scope"][0].split() for form in posts)
    # One token per scope set: the many requests of a push and a pull fetched only a few.
    assert len(issuer.requests) <= 3


async def test_anonymous_bearer_tokens_pull_but_cannot_push(
    token_registry: tuple[Registry, TokenIssuer],
) -> None:
    registry, issuer = token_registry
    image = make_image()
    ref = f"{registry.host}/corral/public:1"
    async with RegistryClient(
        plain_http=True, credentials=lambda host: (issuer.username, issuer.password)
    ) as owner:
        await push_image(owner, ref, image)
    async with RegistryClient(plain_http=True) as anonymous:
        _, desc = await anonymous.resolve(ref)
        assert await anonymous.fetch_bytes(ref, image.config_desc) == image.config
        with pytest.raises(PermissionDenied) as denied:
            await anonymous.push_blob(ref, describe(b"not allowed"), b"not allowed")
    assert desc == image.manifest_desc
    assert all(method == "GET" for method, _ in issuer.requests[-2:])
    assert f"registry {registry.host}" in str(denied.value) and "401" in str(denied.value)


async def test_wrong_credentials_at_the_token_realm_are_permission_denied(
    token_registry: tuple[Registry, TokenIssuer],
) -> None:
    registry, _ = token_registry
    async with RegistryClient(plain_http=True, credentials=lambda host: ("corral", "wrong")) as client:
        with pytest.raises(PermissionDenied) as denied:
            await client.resolve(f"{registry.host}/corral/tokens:1")
    assert "token endpoint" in str(denied.value) and "401" in str(denied.value)
    assert "\n" not in str(denied.value)


# --- hosts: mirrors and TLS ----------------------------------------------------------------------


async def test_a_mirror_on_a_dead_port_falls_through_to_the_server(
    registry: Registry, tmp_path: Path
) -> None:
    image = make_image()
    ref = f"{registry.host}/corral/mirrored:1"
    dead = free_port()
    config_path = write_hosts(
        tmp_path / "certs.d",
        registry.host,
        f'server = "http://{registry.host}"\n\n'
        f'[host."http://127.0.0.1:{dead}"]\n  capabilities = ["pull", "resolve"]\n',
    )
    async with RegistryClient(plain_http=True) as pusher:
        await push_image(pusher, ref, image)
    async with RegistryClient(config_path=config_path) as client:
        assert [h.host for h in client.hosts(registry.host)] == [f"127.0.0.1:{dead}", registry.host]
        _, desc = await client.resolve(ref)
        assert await client.fetch_bytes(ref, image.layer_desc) == image.layer
    assert desc == image.manifest_desc


async def test_a_live_mirror_is_used_before_the_server(
    start_registries: StartRegistry, tmp_path: Path
) -> None:
    upstream, mirror = start_registries(), start_registries()
    image = make_image()
    async with RegistryClient(plain_http=True) as pusher:
        await push_image(pusher, f"{mirror.host}/corral/app:1", image)
        await push_image(pusher, f"{upstream.host}/corral/app:1", image)
    config_path = write_hosts(
        tmp_path / "certs.d",
        upstream.host,
        f'server = "http://{upstream.host}"\n[host."http://{mirror.host}"]\ncapabilities = ["pull", "resolve"]\n',
    )
    upstream.mark()
    mirror.mark()
    ref = f"{upstream.host}/corral/app:1"
    async with RegistryClient(config_path=config_path) as client:
        _, desc = await client.resolve(ref)
        assert await client.fetch_bytes(ref, image.layer_desc) == image.layer
    assert desc == image.manifest_desc
    assert counting(mirror.accesses(), "HEAD", "/manifests/1") == 1
    assert counting(mirror.accesses(), "GET", f"/blobs/{image.layer_desc.digest}") == 1
    assert all(f"ns={upstream.host}" in a.query for a in mirror.accesses())
    assert upstream.accesses() == []


async def test_a_mirror_without_the_content_falls_through_on_404(
    start_registries: StartRegistry, tmp_path: Path
) -> None:
    upstream, mirror = start_registries(), start_registries()
    image = make_image()
    ref = f"{upstream.host}/corral/only-upstream:1"
    async with RegistryClient(plain_http=True) as pusher:
        await push_image(pusher, ref, image)
    config_path = write_hosts(
        tmp_path / "certs.d",
        upstream.host,
        f'server = "http://{upstream.host}"\n[host."http://{mirror.host}"]\ncapabilities = ["pull", "resolve"]\n',
    )
    mirror.mark()
    async with RegistryClient(config_path=config_path) as client:
        _, desc = await client.resolve(ref)
        assert await client.fetch_bytes(ref, image.config_desc) == image.config
    assert desc == image.manifest_desc
    assert {a.status for a in mirror.accesses()} == {404}


async def test_a_pull_only_mirror_serves_blobs_but_is_not_asked_to_resolve_tags(
    start_registries: StartRegistry, tmp_path: Path
) -> None:
    upstream, mirror = start_registries(), start_registries()
    image = make_image()
    async with RegistryClient(plain_http=True) as pusher:
        await push_image(pusher, f"{upstream.host}/corral/app:1", image)
        await push_image(pusher, f"{mirror.host}/corral/app:1", image)
    config_path = write_hosts(
        tmp_path / "certs.d",
        upstream.host,
        f'server = "http://{upstream.host}"\n[host."http://{mirror.host}"]\ncapabilities = ["pull"]\n',
    )
    upstream.mark()
    mirror.mark()
    ref = f"{upstream.host}/corral/app:1"
    async with RegistryClient(config_path=config_path) as client:
        await client.resolve(ref)
        await client.fetch_bytes(ref, image.layer_desc)
    assert counting(upstream.accesses(), "HEAD", "/manifests/1") == 1
    assert counting(mirror.accesses(), "HEAD", "/manifests/") == 0
    assert counting(mirror.accesses(), "GET", "/blobs/") == 1
    assert counting(upstream.accesses(), "GET", "/blobs/") == 0


async def test_pushes_go_to_the_first_push_host(start_registries: StartRegistry, tmp_path: Path) -> None:
    upstream, mirror = start_registries(), start_registries()
    config_path = write_hosts(
        tmp_path / "certs.d",
        upstream.host,
        f'server = "http://{upstream.host}"\n[host."http://{mirror.host}"]\ncapabilities = ["pull", "resolve"]\n',
    )
    mirror.mark()
    async with RegistryClient(config_path=config_path) as client:
        await client.push_blob(f"{upstream.host}/corral/p:1", describe(b"pushed"), b"pushed")
    assert counting(upstream.accesses(), "PUT", "/blobs/uploads/") == 1
    assert mirror.accesses() == []


async def test_tls_with_the_test_ca_from_hosts_toml_works(tls_registry: Registry, tmp_path: Path) -> None:
    assert tls_registry.authority is not None
    config_path = write_hosts(
        tmp_path / "certs.d",
        tls_registry.host,
        f'server = "https://{tls_registry.host}"\nca = "{tls_registry.authority.ca}"\n',
    )
    image = make_image()
    ref = f"{tls_registry.host}/corral/tls:1"
    async with RegistryClient(config_path=config_path) as client:
        await push_image(client, ref, image)
        _, desc = await client.resolve(ref)
    assert desc == image.manifest_desc


async def test_tls_with_a_legacy_certs_d_ca_file_works(tls_registry: Registry, tmp_path: Path) -> None:
    assert tls_registry.authority is not None
    directory = tmp_path / "certs.d" / tls_registry.host
    directory.mkdir(parents=True)
    (directory / "ca.crt").write_bytes(tls_registry.authority.ca.read_bytes())
    async with RegistryClient(config_path=tmp_path / "certs.d") as client:
        await client.push_blob(f"{tls_registry.host}/corral/legacy:1", describe(b"legacy"), b"legacy")
        assert await client.exists(f"{tls_registry.host}/corral/legacy:1", describe(b"legacy"))


async def test_tls_without_the_ca_is_refused_naming_the_certificate_problem(tls_registry: Registry) -> None:
    async with RegistryClient() as client:
        with pytest.raises(Unavailable) as refused:
            await client.resolve(f"{tls_registry.host}/corral/tls:1")
    assert f"registry {tls_registry.host}" in str(refused.value)
    assert "certificate" in str(refused.value)
    assert "\n" not in str(refused.value)


async def test_skip_verify_reaches_a_tls_registry_without_its_ca(
    tls_registry: Registry, tmp_path: Path
) -> None:
    config_path = write_hosts(
        tmp_path / "certs.d",
        tls_registry.host,
        f'server = "https://{tls_registry.host}"\nskip_verify = true\n',
    )
    async with RegistryClient(config_path=config_path) as client:
        await client.push_blob(f"{tls_registry.host}/corral/skip:1", describe(b"skip"), b"skip")
        assert await client.fetch_bytes(f"{tls_registry.host}/corral/skip:1", describe(b"skip")) == b"skip"


async def test_client_certificates_from_hosts_toml_are_presented(
    start_registries: StartRegistry, tmp_path: Path
) -> None:
    registry = start_registries(tls=True, require_client_certificates=True)
    assert registry.authority is not None
    cert, key = make_client_certificate(registry.authority, tmp_path / "client")
    with_client = write_hosts(
        tmp_path / "with-client",
        registry.host,
        f'server = "https://{registry.host}"\nca = "{registry.authority.ca}"\nclient = [["{cert}", "{key}"]]\n',
    )
    without_client = write_hosts(
        tmp_path / "without-client",
        registry.host,
        f'server = "https://{registry.host}"\nca = "{registry.authority.ca}"\n',
    )
    ref = f"{registry.host}/corral/mtls:1"
    async with RegistryClient(config_path=with_client) as client:
        await client.push_blob(ref, describe(b"mutual"), b"mutual")
        assert await client.fetch_bytes(ref, describe(b"mutual")) == b"mutual"
    async with RegistryClient(config_path=without_client) as client:
        with pytest.raises(Unavailable, match=f"registry {registry.host}") as refused:
            await client.exists(ref, describe(b"mutual"))
    assert "TLS" in str(refused.value) and "\n" not in str(refused.value)


async def test_an_unreadable_ca_file_is_an_invalid_argument_naming_it(
    registry: Registry, tmp_path: Path
) -> None:
    config_path = write_hosts(
        tmp_path / "certs.d", registry.host, f'server = "https://{registry.host}"\nca = "missing-ca.pem"\n'
    )
    async with RegistryClient(config_path=config_path) as client:
        with pytest.raises(InvalidArgument, match=r"missing-ca\.pem"):
            await client.exists(f"{registry.host}/corral/x:1", describe(b"x"))


async def test_headers_from_hosts_toml_are_sent(registry: Registry, tmp_path: Path) -> None:
    config_path = write_hosts(
        tmp_path / "certs.d",
        registry.host,
        f'server = "http://{registry.host}"\n[header]\nUser-Agent = "corral-hosts-test"\n',
    )
    async with RegistryClient(config_path=config_path) as client:
        assert not await client.exists(f"{registry.host}/corral/h:1", describe(b"h"))
    assert "corral-hosts-test" in registry.stdout.read_text()


# --- a scripted front server: redirects, throttling and failures -------------------------------


class Front:
    """A loopback HTTP server whose ``answer(method, path, count)`` scripts each reply:
    an int status, or ("redirect", url). ``seen`` records (method, path) of every request."""

    def __init__(self, answer: Callable[[str, str, int], int | tuple[str, str]]) -> None:
        front = self
        self.seen: list[tuple[str, str]] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def _reply(self) -> None:
                path = self.path.split("?")[0]
                front.seen.append((self.command, path))
                reply = answer(self.command, path, sum(1 for s in front.seen if s == (self.command, path)))
                if isinstance(reply, tuple):
                    self.send_response(307)
                    self.send_header("Location", reply[1])
                else:
                    self.send_response(reply)
                    if reply == 429:
                        self.send_header("Retry-After", "0")
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_HEAD = _reply

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def fronts() -> Iterator[Callable[[Callable[[str, str, int], int | tuple[str, str]]], Front]]:
    started: list[Front] = []

    def start(answer: Callable[[str, str, int], int | tuple[str, str]]) -> Front:
        started.append(Front(answer))
        return started[-1]

    yield start
    for front in started:
        front.stop()


async def test_blob_redirects_to_storage_are_followed(
    registry: Registry, tmp_path: Path, fronts: Callable[..., Front]
) -> None:
    data = os.urandom(30_000)
    ref = f"{registry.host}/corral/redirected:1"
    async with RegistryClient(plain_http=True) as pusher:
        await pusher.push_blob(ref, describe(data), data)
    front = fronts(lambda method, path, count: ("redirect", f"http://{registry.host}{path}"))
    config_path = write_hosts(
        tmp_path / "certs.d", registry.host, f'[host."http://{front.host}"]\ncapabilities = ["pull"]\n'
    )
    registry.mark()
    async with RegistryClient(config_path=config_path, plain_http=True) as client:
        assert await client.fetch_bytes(ref, describe(data)) == data
    assert front.seen == [("GET", f"/v2/corral/redirected/blobs/{describe(data).digest}")]
    assert counting(registry.accesses(), "GET", "/blobs/") == 1


async def test_a_throttled_request_is_retried(
    registry: Registry, tmp_path: Path, fronts: Callable[..., Front]
) -> None:
    data = b"throttled"
    ref = f"{registry.host}/corral/throttled:1"
    async with RegistryClient(plain_http=True) as pusher:
        await pusher.push_blob(ref, describe(data), data)
    front = fronts(
        lambda method, path, count: 429 if count < 3 else ("redirect", f"http://{registry.host}{path}")
    )
    config_path = write_hosts(tmp_path / "certs.d", registry.host, f'server = "http://{front.host}"\n')
    async with RegistryClient(config_path=config_path) as client:
        assert await client.fetch_bytes(ref, describe(data)) == data
    assert [method for method, _ in front.seen] == ["GET", "GET", "GET"]


async def test_a_mirror_answering_5xx_falls_through_and_a_failing_server_is_unavailable(
    registry: Registry, tmp_path: Path, fronts: Callable[..., Front]
) -> None:
    image = make_image()
    ref = f"{registry.host}/corral/failing:1"
    async with RegistryClient(plain_http=True) as pusher:
        await push_image(pusher, ref, image)
    broken = fronts(lambda method, path, count: 500)
    config_path = write_hosts(
        tmp_path / "certs.d",
        registry.host,
        f'server = "http://{registry.host}"\n[host."http://{broken.host}"]\ncapabilities = ["pull", "resolve"]\n',
    )
    async with RegistryClient(config_path=config_path) as client:
        _, desc = await client.resolve(ref)
    assert desc == image.manifest_desc
    assert broken.seen == [("HEAD", "/v2/corral/failing/manifests/1")]  # a mirror's 5xx is not retried
    only_broken = write_hosts(tmp_path / "only", registry.host, f'server = "http://{broken.host}"\n')
    async with RegistryClient(config_path=only_broken) as client:
        with pytest.raises(Unavailable) as failure:
            await client.resolve(ref)
    assert f"registry {broken.host}" in str(failure.value) and "500" in str(failure.value)
    assert (
        broken.seen.count(("HEAD", "/v2/corral/failing/manifests/1")) == 3
    )  # the last host retries a 5xx once


async def test_a_registry_that_does_not_answer_in_time_is_a_deadline_exceeded(
    tmp_path: Path, fronts: Callable[..., Front]
) -> None:
    def slow(method: str, path: str, count: int) -> int:
        time.sleep(2)
        return 404

    front = fronts(slow)
    async with RegistryClient(plain_http=True, timeout=0.5) as client:
        with pytest.raises(DeadlineExceeded) as failure:
            await client.resolve(f"{front.host}/corral/slow:1")
    assert f"registry {front.host}" in str(failure.value) and "timed out" in str(failure.value)


async def test_connections_are_reused_across_requests(registry: Registry) -> None:
    ref = f"{registry.host}/corral/reuse:1"
    async with RegistryClient(plain_http=True) as client:
        for index in range(8):
            assert not await client.exists(ref, describe(b"%d" % index))
    log = registry.stderr.read_text()
    ports = set(
        re.findall(
            r'http\.request\.remoteaddr="127\.0\.0\.1:(\d+)".*http\.request\.uri="?/v2/corral/reuse', log
        )
    )
    assert len(ports) == 1  # eight requests, one connection
    assert log.count("/v2/corral/reuse/blobs/") == 8


# --- interop with skopeo -------------------------------------------------------------------------


def skopeo(*args: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    binary = require_tool("skopeo")
    policy = tmp_path / "policy.json"
    if not policy.exists():
        policy.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
    return subprocess.run(
        [binary, "--policy", str(policy), *args], check=True, capture_output=True, text=True, timeout=120
    )


def write_oci_layout(directory: Path, image: Image, tag: str) -> None:
    blobs = directory / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    for desc, data in (
        (image.layer_desc, image.layer),
        (image.config_desc, image.config),
        (image.manifest_desc, image.manifest),
    ):
        (blobs / desc.digest.split(":")[1]).write_bytes(data)
    (directory / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    manifest = image.manifest_desc
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": manifest.media_type,
                "digest": manifest.digest,
                "size": manifest.size,
                "annotations": {"org.opencontainers.image.ref.name": tag},
            }
        ],
    }
    (directory / "index.json").write_text(json.dumps(index))


def blob_digests(directory: Path) -> dict[str, bytes]:
    return {f"sha256:{p.name}": p.read_bytes() for p in (directory / "blobs" / "sha256").iterdir()}


async def test_an_image_pushed_by_skopeo_is_pulled_and_verified(registry: Registry, tmp_path: Path) -> None:
    image = make_image("pushed by skopeo\n")
    layout = tmp_path / "layout"
    write_oci_layout(layout, image, "1")
    await anyio.to_thread.run_sync(
        lambda: skopeo(
            "copy",
            "--dest-tls-verify=false",
            f"oci:{layout}:1",
            f"docker://{registry.host}/x:1",
            tmp_path=tmp_path,
        )
    )
    ref = f"{registry.host}/x:1"
    async with RegistryClient(plain_http=True) as client:
        _, desc = await client.resolve(ref)
        manifest = json.loads(await client.fetch_bytes(ref, desc))
        pulled: dict[str, bytes] = {}
        for entry in [manifest["config"], *manifest["layers"]]:
            blob = await client.fetch_bytes(
                ref, Descriptor(entry["mediaType"], entry["digest"], entry["size"])
            )
            assert "sha256:" + hashlib.sha256(blob).hexdigest() == entry["digest"]
            pulled[entry["digest"]] = blob
    assert desc.digest == image.manifest_desc.digest
    assert pulled == image.blobs()


async def test_an_image_pushed_by_corral_is_read_and_copied_back_by_skopeo(
    registry: Registry, tmp_path: Path
) -> None:
    image = make_image("pushed by corral\n", padding=150_000)
    ref = f"{registry.host}/y:1"
    async with RegistryClient(plain_http=True, chunk_size=64 * 1024) as client:
        await push_image(client, ref, image)

    def inspect_and_copy() -> tuple[dict[str, object], str]:
        inspected = skopeo("inspect", "--tls-verify=false", f"docker://{ref}", tmp_path=tmp_path)
        raw = skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{ref}", tmp_path=tmp_path)
        skopeo(
            "copy",
            "--src-tls-verify=false",
            f"docker://{ref}",
            f"oci:{tmp_path / 'out'}:1",
            tmp_path=tmp_path,
        )
        return json.loads(inspected.stdout), raw.stdout

    inspected, raw = await anyio.to_thread.run_sync(inspect_and_copy)
    assert inspected["Digest"] == image.manifest_desc.digest
    assert inspected["Layers"] == [image.layer_desc.digest]
    assert raw.encode() == image.manifest
    copied = blob_digests(tmp_path / "out")
    for digest, data in copied.items():
        assert "sha256:" + hashlib.sha256(data).hexdigest() == digest
    assert copied == {**image.blobs(), image.manifest_desc.digest: image.manifest}
    index = json.loads((tmp_path / "out" / "index.json").read_text())
    assert [m["digest"] for m in index["manifests"]] == [image.manifest_desc.digest]
