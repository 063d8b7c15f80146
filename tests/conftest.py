"""Shared fixtures: every backend in :data:`burrow.testing.backends.BACKENDS`, checked empty after use."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from burrow.backends.base import Backend
from burrow.core.model import Filter
from burrow.testing.backends import BACKENDS

FAR_PAST = 0.0


@pytest.fixture(params=sorted(BACKENDS))
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    """An opened backend; the test must leave it empty (the "leave nothing behind" rule)."""
    store = BACKENDS[request.param](tmp_path)
    await store.open()
    try:
        assert await store.list_accounts(Filter(), FAR_PAST) == []
        yield store
        leftovers = await store.list_accounts(Filter(), FAR_PAST)
        assert leftovers == [], f"test left accounts behind: {leftovers}"
        assert await store.count_messages() == 0
    finally:
        await store.close()
