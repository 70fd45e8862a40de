"""The in-memory fake passes the same conformance suite as the real content store."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.plugins.content import ContentStore
from corral.plugins.content import conformance as cf
from corral.plugins.content.memory import MemoryContentStore


def open_memory_store(root: Path) -> ContentStore:
    return MemoryContentStore()


@pytest.mark.parametrize("check", cf.CHECKS, ids=cf.check_name)
def test_memory_store_conforms(check: cf.Check, tmp_path: Path) -> None:
    if check is cf.BY_NAME["an_ingest_survives_its_writer_being_killed"]:
        with pytest.raises(cf.CheckSkipped, match="keeps nothing across a restart"):
            cf.run(check, open_memory_store, tmp_path, durable=False)
        return
    cf.run(check, open_memory_store, tmp_path, durable=False)
