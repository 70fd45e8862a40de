"""The in-memory fake passes the same conformance suite as the real content store."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from corral.plugins.content import ContentStore
from corral.plugins.content import conformance as cf
from corral.plugins.content.memory import MemoryContentStore

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@asynccontextmanager
async def make_store() -> AsyncIterator[ContentStore]:
    yield MemoryContentStore()


@pytest.mark.parametrize("check", cf.CHECKS, ids=lambda check: check.__name__.removeprefix("check_"))
async def test_memory_store_conforms(check: cf.Check) -> None:
    await check(make_store)
