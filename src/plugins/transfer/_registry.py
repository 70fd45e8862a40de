"""What pulls and pushes share: the registry client an ``OCIRegistry`` names, containerd's ref
keys, and progress reports as containerd's transfer service sends them."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

import structlog

from corral.plugins.core import Descriptor
from corral.plugins.images import oci
from corral.plugins.remotes import RegistryClient, RegistryHost, load_hosts, parse_reference
from corral.plugins.transfer import OCIRegistry, Progress, ProgressFunc

log = structlog.get_logger("corral.transfer")

DISTRIBUTION_SOURCE = "containerd.io/distribution.source."
"""containerd's label on pulled content: the repository it came from, per registry."""

PROGRESS_INTERVAL = 0.3
"""Seconds between two byte-count reports of one blob (containerd polls every 300 ms)."""


def ref_key(desc: oci.Descriptor) -> str:
    """containerd's ``remotes.MakeRefKey``: the name a blob's progress is reported under."""
    key = desc.digest
    name = desc.annotations.get(oci.ANNOTATION_REF_NAME)
    if name:
        key = f"{name}@{desc.digest}"
    if oci.is_manifest(desc.media_type):
        return f"manifest-{key}"
    if oci.is_index(desc.media_type):
        return f"index-{key}"
    if oci.is_layer(desc.media_type):
        return f"layer-{key}"
    if oci.is_config(desc.media_type):
        return f"config-{key}"
    return f"unknown-{key}"


async def open_client(
    registry: OCIRegistry,
    config_path: str,
    *,
    max_connections: int | None = None,
    push: bool = False,
) -> RegistryClient:
    """A client for ``registry``'s reference: its hosts from the resolver's host directory (else
    ``config_path``), the resolver's headers on every request, and the credentials the caller
    gives for each host asked once, before the first request."""
    ref = parse_reference(registry.reference)
    roots: str | None = registry.host_dir or config_path or None
    plain = registry.default_scheme == "http"
    hosts: list[RegistryHost] = load_hosts(ref.host, roots, plain_http=plain)
    if registry.headers:
        extra = {k: (v,) for k, v in registry.headers.items()}
        hosts = [dataclasses.replace(h, header={**h.header, **extra}) for h in hosts]
    known: dict[str, tuple[str, str]] = {}
    if registry.credentials is not None:
        for host in hosts:
            if host.host in known:
                continue
            found = await registry.credentials(registry.reference, host.host)
            if found is not None and (found[0] or found[1]):
                known[host.host] = found
    found_hosts: Sequence[RegistryHost] = tuple(hosts)
    log.debug("registry_hosts", registry=ref.host, hosts=[h.url for h in found_hosts], push=push)
    return RegistryClient(
        hosts=lambda _name: found_hosts,
        credentials=known.get,
        max_connections=max_connections,
    )


class BlobProgress:
    """Byte counts of one blob, reported no more often than every ``PROGRESS_INTERVAL``."""

    def __init__(
        self, report: ProgressFunc, event: str, name: str, parents: tuple[str, ...], desc: oci.Descriptor
    ) -> None:
        self._report = report
        self._event = event
        self._name = name
        self._parents = parents
        self._desc = desc
        self._last = 0.0
        self._reported = 0

    def moved(self, offset: int, *, force: bool = False) -> None:
        now = time.monotonic()
        if offset > self._reported and (force or now - self._last >= PROGRESS_INTERVAL):
            self._last = now
            self._reported = offset
            self._report(
                Progress(
                    self._event,
                    name=self._name,
                    parents=self._parents,
                    progress=offset,
                    total=self._desc.size,
                    desc=core(self._desc),
                )
            )

    def state(self, event: str, *, progress: int | None = None) -> None:
        size = self._desc.size
        self._report(
            Progress(
                event,
                name=self._name,
                parents=self._parents,
                progress=size if progress is None else progress,
                total=size,
                desc=core(self._desc),
            )
        )


def core(desc: oci.Descriptor) -> Descriptor:
    return Descriptor(desc.media_type, desc.digest, desc.size, dict(desc.annotations))
