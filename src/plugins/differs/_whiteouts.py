"""The whiteout rules of OCI layers and of overlayfs, as pure functions over names and stat data.

In a layer, ``DIR/.wh.NAME`` deletes ``NAME`` from the layers below and ``DIR/.wh..wh..opq``
hides everything below in ``DIR``. Overlayfs spells the same facts in its upper directory as a
character device 0:0 named ``NAME`` and an ``overlay.opaque=y`` xattr on ``DIR``.
"""

from __future__ import annotations

import enum
import stat

from corral.kernel import InvalidArgument

PREFIX = b".wh."
OPAQUE = b".wh..wh..opq"
META_PREFIX = b".wh..wh."
"""AUFS bookkeeping (``.wh..wh.plnk``, ``.wh..wh.aufs``); never part of the tree."""

OVERLAY_XATTR_PREFIX = "trusted.overlay."
USER_OVERLAY_XATTR_PREFIX = "user.overlay."


class Kind(enum.Enum):
    ENTRY = "entry"
    WHITEOUT = "whiteout"
    OPAQUE = "opaque"
    META = "meta"


def classify(base: bytes) -> tuple[Kind, bytes]:
    """What a layer member named ``base`` means, and the name a whiteout deletes.

    A whiteout must name exactly one entry of its directory: ``.wh.``, ``.wh..`` and ``.wh...``
    would delete the directory itself or its parent, and are refused.
    """
    if not base.startswith(PREFIX):
        return Kind.ENTRY, base
    if base == OPAQUE:
        return Kind.OPAQUE, b""
    if base.startswith(META_PREFIX):
        return Kind.META, b""
    target = base[len(PREFIX) :]
    if target in (b"", b".", b"..") or b"/" in target or b"\0" in target:
        raise InvalidArgument(f"whiteout {base!r} does not name an entry of its directory")
    return Kind.WHITEOUT, target


def whiteout_name(base: bytes) -> bytes:
    """The member that deletes ``base`` from the layers below."""
    return PREFIX + base


def is_overlay_whiteout(mode: int, rdev: int) -> bool:
    """Overlayfs marks a deleted entry with a character device numbered 0:0."""
    return stat.S_ISCHR(mode) and rdev == 0


def overlay_xattr_prefix(options: tuple[str, ...] | list[str]) -> str:
    """Overlay mounted with ``userxattr`` (rootless) keeps its xattrs in ``user.overlay.*``."""
    return USER_OVERLAY_XATTR_PREFIX if "userxattr" in options else OVERLAY_XATTR_PREFIX


def opaque_xattr(prefix: str) -> str:
    return prefix + "opaque"


def is_opaque_value(value: bytes | None) -> bool:
    return value == b"y"


def private_xattr(name: str, overlay_prefix: str = OVERLAY_XATTR_PREFIX) -> bool:
    """Xattrs that describe the host, not the layer: overlay's own and SELinux labels."""
    return (
        name.startswith(overlay_prefix)
        or name.startswith(OVERLAY_XATTR_PREFIX)
        or name.startswith(USER_OVERLAY_XATTR_PREFIX)
        or name == "security.selinux"
    )
