"""Storage backends behind one contract (:class:`burrow.backends.base.Backend`).

:func:`open_backend` is the one place a storage URL becomes a backend.
"""

from __future__ import annotations

import logging

from burrow.backends.base import Backend
from burrow.config import Settings

log = logging.getLogger("burrow.backends")


def open_backend(url: str, settings: Settings) -> Backend:
    """Build the backend a storage URL names (not yet opened)."""
    scheme, sep, _ = url.partition("://")
    if not sep:
        raise ValueError(
            f"backend must be a URL like memory://, sqlite:///path.db or redis://host:6379/0, got {url!r}"
        )
    if scheme == "memory":
        from burrow.backends.memory import MemoryBackend, default_max_memory

        budget = settings.max_memory
        if budget:
            log.info("memory store: --max-memory %d bytes (%.1f MiB)", budget, budget / 2**20)
        else:
            budget = default_max_memory(settings.workers)
            log.info(
                "memory store: --max-memory %d bytes (%.1f MiB), a quarter of physical memory%s;"
                " creates past it get 507",
                budget,
                budget / 2**20,
                f" shared by {settings.workers} workers" if settings.workers > 1 else "",
            )
        return MemoryBackend(budget)
    if scheme == "sqlite":
        try:
            from burrow.backends.sqlite import SQLiteBackend
        except ImportError:
            raise ValueError("the sqlite backend is not available in this build") from None
        backend: Backend = SQLiteBackend.from_url(url, settings)
        return backend
    if scheme in ("redis", "rediss", "redis+cluster", "rediss+cluster"):
        from burrow.backends.redis import RedisBackend

        return RedisBackend.from_url(url, settings)
    raise ValueError(f"unknown backend scheme {scheme!r}; known: memory, sqlite, redis, redis+cluster")
