"""Shared fixtures: every backend in :data:`burrow.testing.backends.BACKENDS`, checked empty after use.

And the ``interpreted`` marker: a test that patches methods of classes the compiled build
compiles (to count or forbid calls inside the store) sees its patches only when those classes
are interpreted. On a compiled build such a test runs in a pytest subprocess on pure Python
(``BURROW_PURE_PYTHON=1``: the same source), and passes or fails with it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import burrow
from burrow.backends.base import Backend
from burrow.core.model import Filter
from burrow.testing.backends import BACKENDS

FAR_PAST = 0.0
ROOT = Path(__file__).resolve().parent.parent


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    if burrow.BUILD != "compiled" or pyfuncitem.get_closest_marker("interpreted") is None:
        return None
    env = {**os.environ, "BURROW_PURE_PYTHON": "1"}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", pyfuncitem.nodeid]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0 or not re.search(r"\b1 passed\b", done.stdout):
        pytest.fail(f"on pure Python (BURROW_PURE_PYTHON=1):\n{done.stdout[-4000:]}{done.stderr[-2000:]}")
    return True  # ran there; not here, where its patches would miss the compiled calls


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
