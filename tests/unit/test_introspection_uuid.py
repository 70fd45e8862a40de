"""The server UUID ``ctr version`` shows: made once, kept in the introspection plugin's root, read
again only when that file changed (a removed file means a new UUID, as containerd does it)."""

from __future__ import annotations

import uuid
from pathlib import Path

from corral.plugins.services.introspection import Introspection


def test_the_uuid_is_stable_follows_its_file_and_is_remade_when_removed(tmp_path: Path) -> None:
    path = tmp_path / "uuid"
    local = Introspection(None, path)  # type: ignore[arg-type]  # plugins are not asked here
    first = local.server().uuid
    assert uuid.UUID(first) and path.read_text() == first
    assert local.server().uuid == first == local.server().uuid

    other = str(uuid.uuid4())
    replacement = tmp_path / "uuid.new"
    replacement.write_text(other + "\n")
    replacement.replace(path)  # another file under the name
    assert local.server().uuid == other

    path.unlink()
    remade = local.server().uuid
    assert remade not in (first, other) and path.read_text() == remade
    assert Introspection(None, path).server().uuid == remade  # type: ignore[arg-type]
