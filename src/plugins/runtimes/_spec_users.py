"""Users and groups as the image's own /etc/passwd and /etc/group name them.

The files are read inside the container's root filesystem with symlinks resolved within it, so an
image cannot point the lookup at the host's files. Parsing follows the Go user package containerd
uses: fields split on ``:``, unparsable numbers read as 0, blank lines (and, in /etc/group, ``#``
lines) skipped.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from corral.kernel import InvalidArgument, NotFound

_GO_INT = re.compile(r"[+-]?[0-9]+")
_MAX_SYMLINKS = 255


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int
    home: str = ""


@dataclass(frozen=True)
class Group:
    name: str
    gid: int
    members: tuple[str, ...] = ()


def go_atoi(text: str) -> int | None:
    """Go's ``strconv.Atoi``: an optional sign and ASCII digits, within int64; otherwise None."""
    if not _GO_INT.fullmatch(text):
        return None
    value = int(text)
    return value if -(2**63) <= value < 2**63 else None


def scoped_path(root: Path, path: str) -> Path:
    """``path`` inside ``root`` with every symlink resolved as if ``root`` were ``/``."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    resolved: list[str] = []
    links = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = root.joinpath(*resolved, part)
        try:
            mode = candidate.lstat().st_mode
        except FileNotFoundError:
            resolved.append(part)
            continue
        if not stat.S_ISLNK(mode):
            resolved.append(part)
            continue
        links += 1
        if links > _MAX_SYMLINKS:
            raise InvalidArgument(f"too many symlinks resolving {path} in {root}")
        target = os.readlink(candidate)
        if target.startswith("/"):
            resolved = []
        parts = [p for p in target.split("/") if p not in ("", ".")] + parts
    return root.joinpath(*resolved)


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8", errors="surrogateescape").split("\n")


def _field_int(fields: list[str], index: int) -> int:
    return (go_atoi(fields[index]) or 0) if index < len(fields) else 0


def _field(fields: list[str], index: int) -> str:
    return fields[index] if index < len(fields) else ""


def read_passwd(rootfs: Path) -> list[User]:
    """Every entry of the rootfs' /etc/passwd; FileNotFoundError when it has none."""
    users = []
    for raw in _lines(scoped_path(rootfs, "/etc/passwd")):
        line = raw.strip()
        if not line:
            continue
        fields = line.split(":")
        users.append(User(fields[0], _field_int(fields, 2), _field_int(fields, 3), _field(fields, 5)))
    return users


def read_group(rootfs: Path) -> list[Group]:
    """Every entry of the rootfs' /etc/group; FileNotFoundError when it has none."""
    groups = []
    for raw in _lines(scoped_path(rootfs, "/etc/group")):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split(":")
        members = _field(fields, 3)
        groups.append(Group(fields[0], _field_int(fields, 2), tuple(members.split(",")) if members else ()))
    return groups


def find_user(rootfs: Path, match: Callable[[User], bool]) -> User:
    """The first matching passwd entry; NotFound when the file or the entry is missing."""
    try:
        users = read_passwd(rootfs)
    except FileNotFoundError:
        raise NotFound(f"{rootfs}: no /etc/passwd") from None
    for user in users:
        if match(user):
            return user
    raise NotFound(f"{rootfs}: no users found")


def find_group_id(rootfs: Path, name: str) -> int:
    try:
        groups = read_group(rootfs)
    except FileNotFoundError:
        raise NotFound(f"{rootfs}: no /etc/group") from None
    for group in groups:
        if group.name == name:
            return group.gid
    raise NotFound(f"{rootfs}: no groups found named {name!r}")


def supplementary_gids(rootfs: Path, username: str) -> list[int] | None:
    """Groups listing ``username`` as a member, except one named after it; None without /etc/group."""
    try:
        groups = read_group(rootfs)
    except FileNotFoundError:
        return None
    return [g.gid for g in groups if g.name != username and username in g.members]
