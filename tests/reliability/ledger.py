"""What the workload believes the daemon holds: each object's state as the client last saw it.

An operation marks its object MAYBE before it is sent and PRESENT or ABSENT once the daemon
acknowledges it, so a call cut short by a kill leaves the object MAYBE: either outcome is
allowed, and the check after the restart adopts what it finds. Blob contents are not kept:
they are regenerated from the seed and the blob's number.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass, field

NAMESPACES = ("rel-a", "rel-b")
"""Where content, snapshots and leases live; namespace churn uses ``relns-<n>``."""
SNAPSHOTTERS = ("overlayfs", "native", "erofs")
ROOT = {"containerd.io/gc.root": "reliability"}
"""Objects that nothing else holds carry this, so a collection keeps them."""


class State(enum.Enum):
    PRESENT = "present"
    ABSENT = "absent"
    MAYBE = "maybe"


def blob_bytes(seed: int, number: int, size: int) -> bytes:
    """Blob ``number``'s contents: the same bytes every time they are asked for, and (from 8 bytes
    on) never another blob's."""
    if size < 8:
        return hashlib.shake_256(f"{seed}/{number}".encode()).digest(size)
    return number.to_bytes(8, "big") + hashlib.shake_256(f"{seed}/{number}".encode()).digest(size - 8)


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class Blob:
    namespace: str
    number: int
    size: int
    digest: str
    lease: str = ""
    """The lease that holds it, or "" when the gc.root label does."""
    owner: str = ""
    """The worker that made it (only it deletes it)."""
    state: State = State.MAYBE


@dataclass
class Ingest:
    """An ingest the workload left unfinished (on purpose, or cut short by a kill)."""

    namespace: str
    ref: str
    number: int
    size: int
    expected: str
    owner: str
    listed: bool
    """Whether it must be listed by ``content active``: a deliberate interruption after the
    daemon had opened the ingest. One cut short by a kill may or may not have been started."""


@dataclass
class Snapshot:
    snapshotter: str
    namespace: str
    key: str
    parent: str
    committed: bool
    markers: dict[str, bytes] = field(default_factory=dict)
    """Files written into the snapshot and its parents: name -> contents."""
    state: State = State.MAYBE
    commit_of: str = ""
    """For a commit not yet acknowledged: the active key it is made from."""


@dataclass
class Lease:
    namespace: str
    id: str
    owner: str = ""
    state: State = State.MAYBE
    resources: dict[tuple[str, str], State] = field(default_factory=dict)
    """(type, id) -> whether the daemon acknowledged adding it."""


@dataclass
class Namespace:
    name: str
    state: State = State.MAYBE
    labels: dict[str, tuple[str, State]] = field(default_factory=dict)


@dataclass
class Ledger:
    seed: int
    blobs: dict[tuple[str, str], Blob] = field(default_factory=dict)
    ingests: dict[tuple[str, str], Ingest] = field(default_factory=dict)
    snapshots: dict[tuple[str, str, str], Snapshot] = field(default_factory=dict)
    leases: dict[tuple[str, str], Lease] = field(default_factory=dict)
    namespaces: dict[str, Namespace] = field(default_factory=dict)
    counter: int = 0
    acknowledged: int = 0
    """Operations the daemon acknowledged, over the whole run."""
    interrupted: int = 0
    """Operations a kill cut short (their outcome was checked either way)."""

    events: list[str] = field(default_factory=list)
    """What happened to which object, for a failure's explanation."""

    def note(self, text: str) -> None:
        self.events.append(text)

    def history(self, word: str) -> list[str]:
        return [e for e in self.events if word in e]

    def next(self) -> int:
        self.counter += 1
        return self.counter

    def blob_bytes(self, number: int, size: int) -> bytes:
        return blob_bytes(self.seed, number, size)

    def live_blobs(self, namespace: str) -> list[Blob]:
        return [b for b in self.blobs.values() if b.namespace == namespace and b.state is State.PRESENT]

    def snapshots_of(self, snapshotter: str, namespace: str) -> list[Snapshot]:
        return [
            s for s in self.snapshots.values() if (s.snapshotter, s.namespace) == (snapshotter, namespace)
        ]
