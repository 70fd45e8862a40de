"""A CRI pull: one image for this host's platform from a registry into the k8s.io namespace.

As containerd's ``client.Pull`` with ``WithPullUnpack``: the target, the best manifest for the
platform, its config and its layers are fetched (layers a few at a time) into the content store
with containerd's GC labels, unpacked into the chosen snapshotter, and only then named. Everything
is held by a lease of the pull's own until the names hold it; a failed pull drops the lease and
collects, and a daemon killed meanwhile leaves a lease the next start removes, so no half-made
image is ever listed.
"""

from __future__ import annotations

import base64
import builtins
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

import anyio
import structlog

from corral.kernel import AlreadyExists, CorralError, InvalidArgument, NotFound
from corral.plugins.core import GC_EXPIRE, Descriptor
from corral.plugins.images import oci
from corral.plugins.metadata import Lease, NamespacedContent, Resource
from corral.plugins.remotes import Credentials, RegistryClient, RegistryHost, load_hosts
from corral.plugins.remotes import Descriptor as RemoteDescriptor
from corral.plugins.unpack import ChainLocks, UnpackTarget, unpack_image

log = structlog.get_logger("corral.cri")

PULL_LEASE_LABEL = "io.corral.cri.pull"
"""Marks the lease of a CRI pull in progress (its value is the reference)."""
INGEST_PREFIX = "cri-pull-"
LEASE_EXPIRY = timedelta(hours=24)
DISTRIBUTION_SOURCE = "containerd.io/distribution.source."
DEFAULT_CONFIG_PATH = "/etc/containerd/certs.d:/etc/docker/certs.d"
_LOCALHOSTS = ("localhost", "127.0.0.1", "::1", "[::1]")


class PullLeases(Protocol):
    async def create(self, lease_id: str = "", labels: Mapping[str, str] | None = None) -> Lease: ...

    async def delete(self, lease_id: str, *, sync: bool = False) -> None: ...

    async def list(self, filters: Sequence[str] = ()) -> builtins.list[Lease]: ...

    async def add_resource(self, lease_id: str, resource: Resource) -> None: ...


@dataclass(frozen=True)
class AuthConfig:
    """The CRI request's ``AuthConfig``, as the kubelet sends it."""

    username: str = ""
    password: str = ""
    auth: str = ""
    server_address: str = ""
    identity_token: str = ""
    registry_token: str = ""


def parse_auth(auth: AuthConfig | None, host: str) -> tuple[str, str] | None:
    """containerd's ``ParseAuth``: the credentials for ``host`` (None is anonymous)."""
    if auth is None:
        return None
    if auth.server_address:
        address = auth.server_address if "//" in auth.server_address else "//" + auth.server_address
        if urllib.parse.urlsplit(address).netloc != host:
            return None
    if auth.username:
        return auth.username, auth.password
    if auth.identity_token:
        return "", auth.identity_token
    if auth.auth:
        try:
            decoded = base64.b64decode(auth.auth, validate=True).decode()
        except (ValueError, UnicodeDecodeError):
            raise InvalidArgument("illegal base64 data in auth") from None
        user, colon, secret = decoded.partition(":")
        if not colon:
            raise InvalidArgument(f"invalid decoded auth: {decoded!r}")
        return user, secret.strip("\x00")
    return None


def credentials_for(auth: AuthConfig | None) -> Credentials:
    def lookup(host: str) -> tuple[str, str] | None:
        return parse_auth(auth, host)

    return lookup


def hosts_lookup(config_path: str) -> Callable[[str], Sequence[RegistryHost]]:
    """Registry name to hosts: ``config_path``'s hosts.toml directories, else the registry itself,
    over plain HTTP for a loopback registry (containerd's CRI treats localhost so)."""
    roots = [p for p in (config_path or DEFAULT_CONFIG_PATH).split(":") if p]

    def lookup(name: str) -> Sequence[RegistryHost]:
        host = name.rsplit(":", 1)[0] if not name.endswith("]") else name
        return load_hosts(name, roots, plain_http=host in _LOCALHOSTS)

    return lookup


@dataclass(frozen=True)
class PullRequest:
    ref: oci.Reference
    snapshotter: str
    labels: Mapping[str, str]
    auth: AuthConfig | None = None


@dataclass(frozen=True)
class Pulled:
    target: Descriptor
    config_digest: str
    fetched_bytes: int


class Puller:
    """Fetches images into the request's namespace, each under a lease of its own."""

    def __init__(
        self,
        *,
        content: NamespacedContent,
        leases: PullLeases,
        config_path: str,
        max_concurrent_downloads: int,
        locks: ChainLocks,
    ) -> None:
        self._content = content
        self._leases = leases
        self._config_path = config_path
        self._downloads = max_concurrent_downloads
        self._locks = locks

    async def open_lease(self, what: str) -> Lease:
        expires = (datetime.now(UTC) + LEASE_EXPIRY).strftime("%Y-%m-%dT%H:%M:%SZ")
        return await self._leases.create("", {GC_EXPIRE: expires, PULL_LEASE_LABEL: what})

    async def close_lease(self, lease: Lease, *, failed: bool) -> None:
        with anyio.CancelScope(shield=True):
            try:
                await self._leases.delete(lease.id, sync=failed)
            except NotFound:
                pass
            except Exception as exc:  # the pull's own outcome matters more; the lease expires anyway
                log.warning("cri_pull_lease_not_removed", lease=lease.id, error=str(exc))

    async def fetch_and_unpack(self, lease: Lease, request: PullRequest, unpack_into: UnpackTarget) -> Pulled:
        """Everything but the names, under ``lease`` (bound by the caller)."""
        ref = request.ref
        lookup = hosts_lookup(self._config_path)
        async with RegistryClient(hosts=lookup, credentials=credentials_for(request.auth)) as client:
            _, resolved = await client.resolve(str(ref))
            session = _Session(self, lease, client, str(ref), ref.domain, ref.path)
            target = oci.Descriptor(resolved.media_type, resolved.digest, resolved.size)
            manifest_desc, manifest = await session.manifest_for_host(target)
            await session.store(manifest.config, await session.fetch_small(manifest.config))
            async with anyio.create_task_group() as tg:
                limiter = anyio.Semaphore(self._downloads)
                for layer in manifest.layers:
                    tg.start_soon(session.fetch_layer, layer, limiter)
            session.label_later(
                manifest_desc.digest,
                {"containerd.io/gc.ref.content.config": manifest.config.digest}
                | {
                    f"containerd.io/gc.ref.content.l.{i}": layer.digest
                    for i, layer in enumerate(manifest.layers)
                },
            )
            await session.apply_labels()
        await unpack_image(self._content, target, unpack_into, locks=self._locks)
        return Pulled(
            Descriptor(target.media_type, target.digest, target.size), manifest.config.digest, session.fetched
        )

    async def remove_dead_leases(self) -> int:
        """Leases of pulls that died with a previous daemon, and their ingests: removed."""
        dead = await self._leases.list([f'labels."{PULL_LEASE_LABEL}"'])
        for status in await self._content.list_statuses():
            if status.ref.startswith(INGEST_PREFIX):
                with suppress(NotFound):
                    await self._content.abort(status.ref)
        for i, lease in enumerate(dead):
            with suppress(NotFound):
                await self._leases.delete(lease.id, sync=i == len(dead) - 1)
        return len(dead)


class _Session:
    """One pull's fetches: content written under the lease, labels set once children are in."""

    def __init__(
        self, puller: Puller, lease: Lease, client: RegistryClient, ref: str, host: str, repository: str
    ) -> None:
        self.p = puller
        self.lease = lease
        self.client = client
        self.ref = ref
        self.source = {f"{DISTRIBUTION_SOURCE}{host}": repository}
        self.fetched = 0
        self._labels: dict[str, dict[str, str]] = {}

    def label_later(self, digest: str, labels: Mapping[str, str]) -> None:
        self._labels.setdefault(digest, {}).update(labels)

    async def apply_labels(self) -> None:
        for digest, labels in self._labels.items():
            await self.p._content.update(digest, labels, [f"labels.{key}" for key in labels])

    async def _known(self, desc: oci.Descriptor) -> bool:
        try:
            await self.p._content.info(desc.digest)
        except NotFound:
            return False
        await self.p._leases.add_resource(self.lease.id, Resource(desc.digest, "content"))
        return True

    async def fetch_small(self, desc: oci.Descriptor) -> bytes:
        if desc.size > oci.JSON_LIMIT:
            raise InvalidArgument(
                f"{desc.media_type} {desc.digest} is {desc.size} bytes, too large a document"
            )
        if await self._known(desc):
            chunks = [c async for c in await self.p._content.read(desc.digest)]
            return b"".join(chunks)
        data = await self.client.fetch_bytes(self.ref, _remote(desc))
        self.fetched += len(data)
        return data

    async def store(self, desc: oci.Descriptor, data: bytes) -> None:
        if await self._known(desc):
            return
        ref = f"{INGEST_PREFIX}{self.lease.id}/{desc.digest}"
        try:
            writer = await self.p._content.writer(ref, total=len(data), expected=desc.digest)
        except AlreadyExists:
            await self.p._leases.add_resource(self.lease.id, Resource(desc.digest, "content"))
            return
        try:
            if writer.offset:
                await writer.truncate(0)
            await writer.write(data)
            await writer.commit(len(data), desc.digest, self.source)
        except AlreadyExists:
            await self.p._leases.add_resource(self.lease.id, Resource(desc.digest, "content"))
        except BaseException:
            await self._abandon(writer, ref)
            raise
        finally:
            await writer.close()

    async def fetch_layer(self, desc: oci.Descriptor, limiter: anyio.Semaphore) -> None:
        async with limiter:
            if await self._known(desc):
                return
            ref = f"{INGEST_PREFIX}{self.lease.id}/{desc.digest}"
            try:
                writer = await self.p._content.writer(ref, total=desc.size, expected=desc.digest)
            except AlreadyExists:
                await self.p._leases.add_resource(self.lease.id, Resource(desc.digest, "content"))
                return
            try:
                if desc.size and writer.offset == desc.size:
                    await writer.commit(desc.size, desc.digest, self.source)
                    return
                if writer.offset:
                    await writer.truncate(0)
                async with self.client.fetch(self.ref, _remote(desc)) as stream:
                    async for chunk in stream:
                        await writer.write(chunk)
                        self.fetched += len(chunk)
                await writer.commit(desc.size, desc.digest, self.source)
            except AlreadyExists:
                await self.p._leases.add_resource(self.lease.id, Resource(desc.digest, "content"))
            except BaseException:
                await self._abandon(writer, ref)
                raise
            finally:
                await writer.close()

    async def _abandon(self, writer: object, ref: str) -> None:
        with anyio.CancelScope(shield=True):
            close = getattr(writer, "close", None)
            if close is not None:
                with suppress(CorralError):
                    await close()
            with suppress(CorralError):
                await self.p._content.abort(ref)

    async def manifest_for_host(self, target: oci.Descriptor) -> tuple[oci.Descriptor, oci.Manifest]:
        """The manifest ``target`` names for this host (the best of an index, nested or not),
        each document stored as it is read."""
        data = await self.fetch_small(target)
        await self.store(target, data)
        if oci.is_manifest(target.media_type):
            return target, oci.parse_manifest(data, target.media_type)
        if not oci.is_index(target.media_type):
            raise InvalidArgument(f"{target.media_type} {target.digest}: not a manifest or an index")
        index = oci.parse_index(data, target.media_type)
        self.label_later(
            target.digest,
            {f"containerd.io/gc.ref.content.m.{i}": entry.digest for i, entry in enumerate(index.manifests)},
        )
        matcher = oci.default_matcher()
        candidates = [
            e for e in index.manifests if oci.is_manifest(e.media_type) or oci.is_index(e.media_type)
        ]
        for entry in oci.by_preference(candidates, matcher, lambda d: d.platform):
            return await self.manifest_for_host(entry)
        raise NotFound(f"no match for platform in manifest {target.digest}")


def _remote(desc: oci.Descriptor) -> RemoteDescriptor:
    return RemoteDescriptor(media_type=desc.media_type, digest=desc.digest, size=desc.size)
