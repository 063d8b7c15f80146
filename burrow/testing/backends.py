"""Backend factories the contract suite runs against; add a backend here and it is tested.

Each factory takes a scratch directory and returns an unopened backend. External
services (Redis, PostgreSQL) are probed by their factories, which skip with a reason
when the service is absent, unless ``BURROW_REQUIRE_SERVICES=1`` (set by CI) turns
that into a failure.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from burrow.backends import open_backend
from burrow.backends.base import Backend
from burrow.config import Settings

BackendFactory = Callable[[Path], Backend]


def _memory(tmp: Path) -> Backend:
    return open_backend("memory://", Settings())


def _sqlite_memory(tmp: Path) -> Backend:
    return open_backend("sqlite://:memory:", Settings())


def _sqlite_file(tmp: Path) -> Backend:
    return open_backend(f"sqlite:///{tmp / 'sqlite' / 'burrow.db'}", Settings())


#: name -> factory; the name is the pytest parameter id.
BACKENDS: dict[str, BackendFactory] = {
    "memory": _memory,
    "sqlite-memory": _sqlite_memory,
    "sqlite-file": _sqlite_file,
}

#: Storage URLs the HTTP-level suites start real servers with (name -> url template;
#: ``{tmp}`` is replaced by a scratch directory).
SERVER_BACKENDS: dict[str, str] = {
    "memory": "memory://",
    "sqlite-memory": "sqlite://:memory:",
    "sqlite-file": "sqlite:///{tmp}/burrow.db",
}
