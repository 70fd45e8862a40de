"""The metadata contract: namespaced records over the backends, leases, and garbage collection.

An ``io.containerd.metadata.v1`` plugin's instance is a ``Metadata``: it hands out views by
contract (``metadata.view(NamespacedContent)``), collects garbage, and reports changes to the GC
scheduler. Every view reads the request's namespace (``corral.plugins.core.namespace_required``)
and publishes containerd's events for the changes it makes, so every writer — an RPC, an unpack,
CRI — emits the same ones. Other code imports these Protocols and records, never an
implementation's modules; ``corral.plugins.metadata.sqlite`` is the built-in implementation.
"""

from __future__ import annotations

import builtins
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol, TypeVar, runtime_checkable

from corral.plugins.content import Info, IngestStatus, Writer
from corral.plugins.core import Descriptor
from corral.plugins.snapshots import Snapshotter

V = TypeVar("V")

__all__ = [
    "AnyValue",
    "CollectionResult",
    "Container",
    "ContainerRuntime",
    "ContainerStore",
    "Image",
    "ImageStore",
    "Lease",
    "LeaseStore",
    "Metadata",
    "Namespace",
    "NamespaceStore",
    "NamespacedContent",
    "NamespacedSnapshots",
    "NamespacedSnapshotter",
    "NamespacedWriter",
    "Resource",
    "Sandbox",
    "SandboxRuntime",
    "SandboxStore",
]


@dataclass(frozen=True)
class Namespace:
    """containerd's namespace record: a name and its labels."""

    name: str
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Lease:
    """containerd's lease record: what it holds is kept from garbage collection while it lives."""

    id: str
    created_at: datetime
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Resource:
    """What a lease holds: ``type`` is "content", "ingests" or "snapshots/<snapshotter>"."""

    id: str
    type: str


@dataclass
class CollectionResult:
    """What one collection removed, by kind, and how long the metadata pause lasted."""

    removed: dict[str, list[str]] = field(default_factory=dict)
    """Records removed, by kind ("content", "lease", "snapshots/overlayfs", …), as ``namespace/id``."""
    swept: dict[str, int] = field(default_factory=dict)
    """Backend objects (blobs, snapshots) removed because no record held them any more."""
    failed: dict[str, list[str]] = field(default_factory=dict)
    """Backend objects that could not be removed this time, with the reason; tried again next time."""
    marked: int = 0
    seconds: float = 0.0


@runtime_checkable
class NamespaceStore(Protocol):
    """Namespaces: created explicitly or by the first write into them; removable only when empty."""

    async def create(self, name: str, labels: Mapping[str, str]) -> Namespace: ...

    async def get(self, name: str) -> Namespace: ...

    async def list(self) -> builtins.list[Namespace]: ...

    async def update(self, name: str, labels: Mapping[str, str], paths: Sequence[str]) -> Namespace:
        """Replace labels, or with ``paths`` (``labels``, ``labels.KEY``) only those named; a
        namespace that does not exist yet is created, as containerd does."""
        ...

    async def delete(self, name: str) -> None:
        """FailedPrecondition naming what the namespace still holds."""
        ...


@runtime_checkable
class NamespacedContent(Protocol):
    """The content store a client sees: ``ContentStore`` semantics plus labels, per namespace."""

    async def info(self, digest: str) -> Info: ...

    async def update(self, digest: str, labels: Mapping[str, str], paths: Sequence[str]) -> Info: ...

    async def list(self, filters: Sequence[str] = ()) -> builtins.list[Info]: ...

    async def delete(self, digest: str) -> None: ...

    async def read(self, digest: str, offset: int = 0, size: int = 0) -> AsyncIterator[bytes]:
        """Checks the record first (NotFound before any byte), then the backend's chunks."""
        ...

    async def writer(self, ref: str, total: int = 0, expected: str = "") -> NamespacedWriter: ...

    async def status(self, ref: str) -> IngestStatus: ...

    async def list_statuses(self, filters: Sequence[str] = ()) -> builtins.list[IngestStatus]: ...

    async def abort(self, ref: str) -> None: ...


@runtime_checkable
class NamespacedWriter(Writer, Protocol):
    """A content writer whose commit records the blob in the namespace, with ``labels``."""

    async def commit(self, size: int, expected: str, labels: Mapping[str, str] | None = None) -> Info: ...


@runtime_checkable
class NamespacedSnapshots(Protocol):
    """Every snapshotter the store knows, by name, each with namespaces, labels, leases and GC."""

    @property
    def names(self) -> builtins.list[str]: ...

    def get(self, name: str) -> NamespacedSnapshotter:
        """InvalidArgument "snapshotter not loaded: NAME" for an unknown name."""
        ...


@runtime_checkable
class NamespacedSnapshotter(Snapshotter, Protocol):
    """One snapshotter as a namespace sees it (``Snapshotter`` semantics over namespaced keys)."""

    @property
    def name(self) -> str: ...


@runtime_checkable
class LeaseStore(Protocol):
    """Leases of the request's namespace and the resources they hold."""

    async def create(self, lease_id: str = "", labels: Mapping[str, str] | None = None) -> Lease: ...

    async def delete(self, lease_id: str) -> None: ...

    async def list(self, filters: Sequence[str] = ()) -> builtins.list[Lease]: ...

    async def add_resource(self, lease_id: str, resource: Resource) -> None: ...

    async def delete_resource(self, lease_id: str, resource: Resource) -> None: ...

    async def list_resources(self, lease_id: str) -> builtins.list[Resource]: ...


@dataclass(frozen=True)
class AnyValue:
    """A typed opaque value, as protobuf's Any: containerd keeps specs, runtime options and
    extensions this way (``type_url`` without the ``type.googleapis.com/`` prefix, as ctr sends it)."""

    type_url: str
    value: bytes = b""

    def marshal(self) -> bytes:
        """The value as a marshalled ``google.protobuf.Any`` (what containerd's ``Any.Marshal``
        gives, and stores in content for a checkpoint's spec)."""
        out = bytearray()
        for number, data in ((1, self.type_url.encode()), (2, self.value)):
            if data:
                out.append(number << 3 | 2)
                size = len(data)
                while size > 0x7F:
                    out.append(size & 0x7F | 0x80)
                    size >>= 7
                out.append(size)
                out += data
        return bytes(out)


@dataclass(frozen=True)
class Image:
    """A named image: its target (an index or a manifest) and labels.

    As containerd stores it, the target keeps only its media type, digest, size and annotations;
    labels and annotations never hold an empty value (setting one to "" removes it)."""

    name: str
    target: Descriptor
    labels: Mapping[str, str] = field(default_factory=dict)
    created_at: datetime | None = None
    updated_at: datetime | None = None


@runtime_checkable
class ImageStore(Protocol):
    """Images of the request's namespace; GC roots whose target and ``gc.ref`` labels stay alive
    (an image labelled ``containerd.io/gc.expire`` stops being a root once that time has passed,
    and is held meanwhile by the request's lease, as in containerd).

    Changes publish containerd's ``/images/create``, ``/images/update`` and ``/images/delete``.
    Errors are containerd's: NotFound ``image "NAME"``, AlreadyExists, InvalidArgument."""

    async def get(self, name: str) -> Image: ...

    async def list(self, filters: Sequence[str] = ()) -> builtins.list[Image]:
        """Sorted by name. Fields: name, target.digest, target.mediatype, labels.KEY,
        annotations.KEY; filters are OR'ed."""
        ...

    async def create(self, image: Image, *, epoch: datetime | None = None) -> Image:
        """One transaction. AlreadyExists for a name taken; InvalidArgument without a name or a
        valid target (digest, size > 0, media type). The image's own times are ignored: both are
        now, or ``epoch`` (a source date epoch) when given."""
        ...

    async def update(
        self, image: Image, paths: Sequence[str] = (), *, epoch: datetime | None = None
    ) -> Image:
        """Field-mask paths as containerd's (``labels``, ``labels.KEY``, ``annotations``,
        ``annotations.KEY``, ``target``); no paths replaces labels and target. NotFound when
        absent, InvalidArgument for another path. The update time is now, or ``epoch``."""
        ...

    async def delete(self, name: str, *, target: Descriptor | None = None) -> None:
        """NotFound when absent, or (as containerd) when ``target`` is given and its digest differs.
        The blobs go with the next collection (the images service's ``sync`` waits for it)."""
        ...


@dataclass(frozen=True)
class ContainerRuntime:
    """The runtime a container runs on (``io.containerd.runc.v2`` …) and its options."""

    name: str
    options: AnyValue | None = None


@dataclass(frozen=True)
class Container:
    """containerd's container record: what a task is made from."""

    id: str
    runtime: ContainerRuntime
    labels: Mapping[str, str] = field(default_factory=dict)
    image: str = ""
    spec: AnyValue | None = None
    snapshotter: str = ""
    snapshot_key: str = ""
    extensions: Mapping[str, AnyValue] = field(default_factory=dict)
    sandbox: str = ""
    created_at: datetime | None = None
    updated_at: datetime | None = None


@runtime_checkable
class ContainerStore(Protocol):
    """Containers of the request's namespace; each is a GC root holding its snapshot (as in
    containerd, not its image: an image removed under a container takes its blobs with it, while
    the container's snapshot and that snapshot's parents stay).

    Changes publish ``/containers/create``, ``/containers/update`` and ``/containers/delete``.
    Validation is containerd's: an identifier id, a runtime name, a spec, a snapshotter when there
    is a snapshot key; the runtime name and the snapshotter never change."""

    async def get(self, container_id: str) -> Container: ...

    async def list(self, filters: Sequence[str] = ()) -> builtins.list[Container]:
        """Sorted by id. Fields: id, runtime.name, image, labels.KEY."""
        ...

    async def create(self, container: Container) -> Container: ...

    async def update(self, container: Container, paths: Sequence[str] = ()) -> Container:
        """Paths: ``labels[.KEY]``, ``extensions[.KEY]``, ``spec``, ``image``, ``snapshotkey``; no
        paths replaces all of those (and refuses a changed snapshotter or runtime name)."""
        ...

    async def delete(self, container_id: str) -> None: ...


@dataclass(frozen=True)
class SandboxRuntime:
    """The runtime a sandbox runs on and its options."""

    name: str
    options: AnyValue | None = None


@dataclass(frozen=True)
class Sandbox:
    """containerd's sandbox record (``core/sandbox.Sandbox``): what a sandbox controller
    (``sandboxer``) runs a pod from; it carries no runtime state."""

    id: str
    runtime: SandboxRuntime = field(default_factory=lambda: SandboxRuntime(""))
    labels: Mapping[str, str] = field(default_factory=dict)
    spec: AnyValue | None = None
    sandboxer: str = ""
    extensions: Mapping[str, AnyValue] = field(default_factory=dict)
    created_at: datetime | None = None
    updated_at: datetime | None = None


@runtime_checkable
class SandboxStore(Protocol):
    """Sandboxes of the request's namespace (containerd's ``core/metadata/sandbox.go``).

    A sandbox is a garbage-collection root for what its ``gc.ref`` labels name; it is never
    collected itself. The store publishes no events (the controller service does). Errors are
    containerd's: InvalidArgument ``failed to validate sandbox: invalid sandbox ID: …``,
    AlreadyExists, NotFound (``no sandbox buckets`` in a namespace that never had one)."""

    async def create(self, sandbox: Sandbox) -> Sandbox:
        """Both times are now, whatever the record says."""
        ...

    async def update(self, sandbox: Sandbox, paths: Sequence[str] = ()) -> Sandbox:
        """Paths ``labels[.KEY]``, ``extensions[.KEY]``, ``spec``, ``runtime``; none means all four
        (and refuses a changed runtime name). As containerd's, the answer is the record as asked,
        while what is stored keeps every extension and a spec or runtime options the update
        left empty (bolt's bucket overwrite removes none of them)."""
        ...

    async def get(self, sandbox_id: str) -> Sandbox: ...

    async def list(self, filters: Sequence[str] = ()) -> builtins.list[Sandbox]:
        """Sorted by id. Fields: id, labels.KEY; filters are OR'ed."""
        ...

    async def delete(self, sandbox_id: str) -> None: ...


@runtime_checkable
class Metadata(Protocol):
    """An ``io.containerd.metadata.v1`` plugin's instance."""

    def view(self, contract: type[V]) -> V:
        """The view implementing ``contract`` (``NamespacedContent``, ``LeaseStore``, …);
        PluginUnavailable when this store offers none."""
        ...

    async def garbage_collect(self) -> CollectionResult:
        """Remove every record and backend object that no root reaches."""
        ...

    def on_mutation(self, listener: Callable[[bool], None]) -> None:
        """Call ``listener(deleted)`` after each committed change; the GC scheduler counts them."""
        ...
