"""Labels: containerd's size limit, its field-mask rules, and the labels garbage collection reads."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from corral.kernel import InvalidArgument

MAX_LABEL_SIZE = 4096
"""containerd caps each label's key plus value at 4096 bytes."""

GC_ROOT = "containerd.io/gc.root"
"""An object with this label is a garbage-collection root, whatever its value."""
GC_EXPIRE = "containerd.io/gc.expire"
"""On a lease: an RFC 3339 time after which the lease no longer holds anything."""
GC_REF_CONTENT = "containerd.io/gc.ref.content"
"""Prefix: a label ``containerd.io/gc.ref.content<anything>`` holds the blob whose digest is its value."""
GC_REF_SNAPSHOT = "containerd.io/gc.ref.snapshot."
"""Prefix: ``containerd.io/gc.ref.snapshot.<snapshotter>[/…]`` holds the snapshot named by its value."""
UNCOMPRESSED = "containerd.io/uncompressed"
"""Content label and descriptor annotation: the digest of a compressed layer's uncompressed tar."""
DEFAULT_SNAPSHOTTER = "containerd.io/defaults/snapshotter"
"""Namespace label: the snapshotter clients use in that namespace when none is named."""


def validate_labels(labels: Mapping[str, str]) -> None:
    for key, value in labels.items():
        if not key:
            raise InvalidArgument("label key must not be empty")
        size = len(key.encode()) + len(value.encode())
        if size > MAX_LABEL_SIZE:
            raise InvalidArgument(
                f"label key and value length ({size} bytes) greater than maximum size ({MAX_LABEL_SIZE} bytes)"
            )


def update_labels(
    current: Mapping[str, str], labels: Mapping[str, str], paths: Sequence[str], *, what: str
) -> dict[str, str]:
    """containerd's field-mask rules for labels: ``labels`` (or no paths) replaces them all,
    ``labels.KEY`` sets one or, with an empty value, removes it; other paths are refused."""
    result = dict(current)
    if not paths:
        result = dict(labels)
    for path in paths:
        if path == "labels":
            result = dict(labels)
        elif path.startswith("labels."):
            key = path[len("labels.") :]
            if labels.get(key):
                result[key] = labels[key]
            else:
                result.pop(key, None)
        else:
            raise InvalidArgument(f'cannot update "{path}" field on {what}')
    validate_labels(result)
    return result
