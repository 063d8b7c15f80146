"""Backend factories the contract suite runs against; add a backend here and it is tested.

Each factory takes a scratch directory and returns an unopened backend. External
services (Redis, PostgreSQL) are probed by their factories, which skip with a reason
when the service is absent, unless ``BURROW_REQUIRE_SERVICES=1`` (set by CI) turns
that into a failure.

Redis: database :data:`REDIS_DB` of the server on 127.0.0.1:6379, and a Cluster this
process starts on first use (:func:`burrow.testing.redis_cluster.shared_cluster`). Every
backend gets a key prefix of its own (this process's token, then a counter or the test's
scratch path), so tests, and test runs sharing the server, never see each other's keys.
A factory's backend deletes its keys when closed; what the servers of the HTTP suites
leave is deleted when this process exits.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import os
from collections.abc import Callable
from pathlib import Path

import redis

from burrow.backends import open_backend
from burrow.backends.base import Backend
from burrow.backends.redis import RedisBackend
from burrow.config import Settings

BackendFactory = Callable[[Path], Backend]

REDIS_HOST = "127.0.0.1"
REDIS_PORT = 6379
#: The test suites' own database on the shared server.
REDIS_DB = 9
#: Starts every Redis key prefix of this process.
REDIS_TOKEN = f"bt{os.getpid()}"
_serial = itertools.count()
_redis_error: str | None = None
_redis_probed = False


def _memory(tmp: Path) -> Backend:
    return open_backend("memory://", Settings())


def _sqlite_memory(tmp: Path) -> Backend:
    return open_backend("sqlite://:memory:", Settings())


def _sqlite_file(tmp: Path) -> Backend:
    return open_backend(f"sqlite:///{tmp / 'sqlite' / 'burrow.db'}", Settings())


def require_redis() -> None:
    """Skip the calling test when Redis is not on 127.0.0.1:6379 (a failure under
    ``BURROW_REQUIRE_SERVICES=1``). Probed once per process."""
    global _redis_error, _redis_probed
    import pytest

    if not _redis_probed:
        _redis_probed = True
        try:
            with redis.Redis(
                host=REDIS_HOST, port=REDIS_PORT, socket_connect_timeout=1, socket_timeout=2
            ) as c:
                c.ping()
            atexit.register(_forget_redis_keys)
        except redis.RedisError as exc:
            _redis_error = f"no Redis on {REDIS_HOST}:{REDIS_PORT} ({exc})"
    if _redis_error is not None:
        if os.environ.get("BURROW_REQUIRE_SERVICES") == "1":
            pytest.fail(_redis_error + " and BURROW_REQUIRE_SERVICES=1")
        pytest.skip(_redis_error)


def _forget_redis_keys() -> None:
    """At exit: delete what this process's Redis prefixes left on the shared server."""
    with (
        contextlib.suppress(redis.RedisError),
        redis.Redis(
            host=REDIS_HOST, port=REDIS_PORT, db=REDIS_DB, socket_connect_timeout=1, socket_timeout=10
        ) as client,
    ):
        keys = list(client.scan_iter(match=f"{REDIS_TOKEN}-*", count=1000))
        for start in range(0, len(keys), 500):
            client.unlink(*keys[start : start + 500])


class ScratchRedisBackend(RedisBackend):
    """A Redis backend under a prefix of its own, which deletes its keys when closed."""

    async def close(self) -> None:
        if self._link is not None:
            with contextlib.suppress(redis.RedisError, OSError):
                await self.delete_everything()
        await super().close()


def _prefix() -> str:
    return f"{REDIS_TOKEN}-{next(_serial)}"


def _redis(tmp: Path) -> Backend:
    require_redis()
    return ScratchRedisBackend.from_url(
        f"redis://{REDIS_HOST}:{REDIS_PORT}/{REDIS_DB}?prefix={_prefix()}", Settings()
    )


def _redis_cluster(tmp: Path) -> Backend:
    from burrow.testing.redis_cluster import shared_cluster

    return ScratchRedisBackend.from_url(f"{shared_cluster().url}?prefix={_prefix()}", Settings())


#: name -> factory; the name is the pytest parameter id.
BACKENDS: dict[str, BackendFactory] = {
    "memory": _memory,
    "sqlite-memory": _sqlite_memory,
    "sqlite-file": _sqlite_file,
    "redis": _redis,
    "redis-cluster": _redis_cluster,
}


class _ServerUrls(dict[str, str]):
    """The URL templates; the Redis ones probe (and skip) or start the cluster when read."""

    def __getitem__(self, name: str) -> str:
        if name == "redis":
            require_redis()
        elif name == "redis-cluster":
            from burrow.testing.redis_cluster import shared_cluster

            return f"{shared_cluster().url}?prefix={REDIS_TOKEN}-{{tmp}}"
        return super().__getitem__(name)


#: Storage URLs the HTTP-level suites start real servers with (name -> url template;
#: ``{tmp}`` is replaced by a scratch directory, which also makes a Redis prefix unique).
SERVER_BACKENDS: dict[str, str] = _ServerUrls(
    {
        "memory": "memory://",
        "sqlite-memory": "sqlite://:memory:",
        "sqlite-file": "sqlite:///{tmp}/burrow.db",
        "redis": f"redis://{REDIS_HOST}:{REDIS_PORT}/{REDIS_DB}?prefix={REDIS_TOKEN}-{{tmp}}",
        "redis-cluster": "redis+cluster://(started on first use)",
    }
)
