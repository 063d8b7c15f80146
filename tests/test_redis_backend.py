"""What the Redis backend promises beyond the shared contract suites (which run it on a
server and on a Cluster: tests/test_contract.py, test_stateful.py, test_api.py, tests/sqs).

* storage URLs: every documented form, and a clear error for each malformed one;
* the key layout: on a Cluster, every key of an account (its queues' included) is in one
  slot, and each account's global entries where the docs say;
* a move across Cluster slots that meets a concurrent claim takes its copy back;
* replicas: ``redis_wait_replicas`` acknowledges writes only once a real replica has them,
  and answers StorageUnavailable (the write stays on the primary) when too few do;
* Redis unreachable: StorageUnavailable from the backend and 503 through a real server,
  and both recover by themselves once Redis listens again (a restart without persistence
  included: stale connections and the lost function library are replaced unnoticed).

Needs Redis on 127.0.0.1:6379 and ``redis-server`` for the private servers and the
Cluster; skips without them (fails under ``BURROW_REQUIRE_SERVICES=1``).
"""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from redis.crc import key_slot

from burrow.backends import open_backend
from burrow.backends.redis import RedisBackend, parse
from burrow.backends.redis.keys import tag
from burrow.backends.redis.notify import RedisNotifier
from burrow.client import Connection
from burrow.config import Settings
from burrow.core.errors import StorageUnavailable
from burrow.core.model import Filter, Message
from burrow.testing.backends import REDIS_DB, REDIS_PORT, ScratchRedisBackend, require_redis
from burrow.testing.redis_cluster import require_tools, shared_cluster
from burrow.testing.redis_server import RedisProcess
from burrow.testing.server import running_server

T = 1_000_000.0
ALL = Filter(match_hidden=True)


def scratch_url(base: str | None = None) -> str:
    if base is None:
        require_redis()
        base = f"redis://127.0.0.1:{REDIS_PORT}/{REDIS_DB}"
    return f"{base}?prefix=rbt-{uuid.uuid4().hex[:12]}"


async def opened(url: str, settings: Settings | None = None) -> ScratchRedisBackend:
    backend = ScratchRedisBackend(parse(url), settings or Settings())
    await backend.open()
    return backend


# -- storage URLs --------------------------------------------------------------------------


def test_url_forms() -> None:
    t = parse("redis://127.0.0.1:6380/3")
    assert (t.cluster, t.tls, t.nodes, t.db, t.password, t.prefix) == (
        False,
        False,
        (("127.0.0.1", 6380),),
        3,
        None,
        "burrow",
    )
    t = parse("rediss://:s%40cret@cache.example:6390/0?prefix=prod-eu&timeout=0.5&connect_timeout=1")
    assert (t.tls, t.username, t.password, t.prefix, t.timeout, t.connect_timeout) == (
        True,
        None,
        "s@cret",
        "prod-eu",
        0.5,
        1.0,
    )
    t = parse("redis://app:pw@host")
    assert (t.username, t.password, t.nodes, t.db) == ("app", "pw", (("host", 6379),), 0)
    t = parse("redis+cluster://10.0.0.1:7000,10.0.0.2:7001,[::1]:7002?prefix=x")
    assert t.cluster and t.nodes == (("10.0.0.1", 7000), ("10.0.0.2", 7001), ("::1", 7002))
    assert parse("rediss+cluster://h:1/0?ssl_cert_reqs=none").tls_options == (("ssl_cert_reqs", "none"),)
    # the password never shows in descriptions
    assert "pw" not in parse("redis://app:pw@host").describe()
    assert "pw" not in open_backend("redis://app:pw@host/2", Settings()).url


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis://", "needs a host"),
        ("redis://h:0", "bad port"),
        ("redis://h:port", "bad port"),
        ("redis://h/db", "database number"),
        ("redis://a:1,b:2", "several hosts"),
        ("redis+cluster://a:1/3", "only database 0"),
        ("redis://h?prefix=a{b}", "prefix"),
        ("redis://h?prefix=", "prefix"),
        ("redis://h?prefix=a%20b", "prefix"),
        ("redis://h?timeout=0", "timeout"),
        ("redis://h?timeout=soon", "timeout"),
        ("redis://h?pool=3", "unknown option"),
        ("redis://h?ssl_ca_certs=/ca.pem", "rediss"),
        ("redis://h#frag", "fragment"),
    ],
)
def test_bad_urls_are_refused_with_the_reason(url: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        open_backend(url, Settings())


# -- key layout ----------------------------------------------------------------------------


async def keys_of(client: Any, prefix: str) -> list[bytes]:
    return [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]


def account_of(key: bytes, prefix: bytes) -> bytes:
    """The hash tag of a key (account keys: the account's; global keys: the prefix)."""
    assert key.startswith(prefix + b"{"), key
    return key[len(prefix) + 1 : key.index(b"}")]


async def test_on_a_cluster_every_key_of_an_account_is_in_its_slot(tmp_path: Path) -> None:
    url = scratch_url(shared_cluster().url)
    backend = await opened(url)
    prefix = backend.target.prefix.encode()
    accounts = ["acme", "ünï", "with/slash", "x" * 200]
    try:
        for account in accounts:
            for queue in ("jobs", "fifo"):
                await backend.set_queue_meta(account, queue, b"meta")
                await backend.put_message(account, queue, "plain", b"x", T + 50, 0.0, T)
                await backend.send_message(account, queue, "s1", b"y", 0.0, T + 5, T, b"m", "g", "d", T + 60)
            await backend.claim(account, "fifo", 5, T + 30, T, fifo=True)
            await backend.claim(account, "jobs", 5, T + 30, T)
            await backend.send_message(account, "fifo", "s2", b"z", 0.0, 0.0, T, b"", "h", None, T)
            await backend.put_message(account, "jobs", "later", b"x", 0.0, 0.0, T)
        client = backend.client()
        try:
            keys = await keys_of(client, backend.target.prefix)
        finally:
            await client.aclose()
        tags: dict[bytes, set[int]] = {}
        for key in keys:
            tags.setdefault(account_of(key, prefix), set()).add(key_slot(key))
        # every account's tag, plus the global one; each in exactly one slot
        assert set(tags) == {tag(a).encode() for a in accounts} | {prefix}
        assert all(len(slots) == 1 for slots in tags.values()), tags
        # the queues' own keys are there: message data, order, hides, FIFO indexes, dedup
        kinds = {key[key.index(b"}") + 1 : key.index(b"}") + 2] for key in keys if b"}" in key}
        assert {b"d", b"r", b"n", b"h", b"c", b"x", b"s", b"g", b"k", b"b", b"z", b"f", b"e"} <= kinds
        assert {b"S", b"Q", b"D", b"W", b"M", b"O", b"A", b"I"} <= kinds
        assert sorted(await backend.list_accounts(Filter(), T)) == sorted(accounts)
    finally:
        await backend.close()


async def test_a_cross_slot_move_that_meets_a_claim_takes_its_copy_back() -> None:
    """Copy first, delete second: if the source changed between (a claim took the message),
    the copy is deleted again and the message stays where it was, claimed."""

    class Interleaved(ScratchRedisBackend):
        async def _run(
            self, name: str, account: str, queue: str, args: Iterable[bytes], write: bool = True
        ) -> Any:
            if name == "delete_if" and account == "src":
                [claimed] = await self.claim("src", "q", 1, T + 40, T + 1)
                assert claimed.receives == 1
            return await super()._run(name, account, queue, args, write)

    backend = Interleaved(parse(scratch_url(shared_cluster().url)), Settings())
    await backend.open()
    try:
        src, dst = backend.keys.account("src"), backend.keys.account("dst")
        assert src.slot != dst.slot  # else the move would be one script
        await backend.put_message("src", "q", "m", b"body", 0.0, 0.0, T)
        assert await backend.move_message("src", "q", "m", "dst", "dlq", 0.0, T + 1) is None
        assert await backend.list_accounts(Filter(), T + 1) == ["src"]
        [m] = await backend.get_messages("src", "q", ALL, T + 1)
        assert (m.id, m.receives, m.hidden_until) == ("m", 1, T + 40)
        # without the interference the move goes through, and leaves one copy
        plain = ScratchRedisBackend(backend.target, Settings())
        await plain.open()
        try:
            moved = await plain.move_message("src", "q", "m", "dst", "dlq", 0.0, T + 2, receives=1)
            assert moved == Message("m", b"body", 0.0, 0.0, receives=1, first_received=T + 1)
            assert await plain.list_accounts(Filter(), T + 2) == ["dst"]
            await plain.delete_accounts(Filter(), T + 2)
        finally:
            await plain.close()
    finally:
        await backend.close()


async def test_two_processes_sharing_a_store_never_claim_one_message_twice() -> None:
    url = scratch_url()
    one, two = await opened(url), await opened(url)
    try:
        for i in range(60):
            await one.put_message("a", "q", f"m{i:02d}", b"x", 0.0, 0.0, T)
        batches = await asyncio.gather(*(b.claim("a", "q", 4, T + 30, T) for b in (one, two) * 10))
        taken = [m.id for batch in batches for m in batch]
        assert sorted(taken) == [f"m{i:02d}" for i in range(60)][: len(taken)]
        assert len(taken) == len(set(taken)) == 60
        assert await two.count("a", "q", T) == await one.count("a", "q", T)
        await two.delete_accounts(Filter(), T)
        assert await one.list_accounts(Filter(), T) == []
    finally:
        await one.close()
        await two.close()


async def test_prefixes_keep_stores_apart_and_delete_everything_empties_one() -> None:
    one, two = await opened(scratch_url()), await opened(scratch_url())
    try:
        await one.put_message("a", "q", "m", b"one", 0.0, 0.0, T)
        await one.set_queue_meta("a", "q", b"meta")
        assert await two.list_accounts(Filter(), T) == []
        assert await two.get_queue_meta("a", "q") is None
        assert await one.delete_everything() > 0
        assert await one.list_accounts(Filter(), T) == []
        assert await one.get_queue_meta("a", "q") is None
        client = one.client()
        try:
            assert await keys_of(client, one.target.prefix + "{") == []
        finally:
            await client.aclose()
    finally:
        await one.close()
        await two.close()


def test_the_notifier_is_a_redis_notifier_on_the_same_namespace() -> None:
    backend = open_backend("redis://127.0.0.1:6379/4?prefix=ns1", Settings())
    notifier = backend.notifier()
    assert isinstance(notifier, RedisNotifier)
    assert notifier.channel(("acme", "jobs")).count(b"{" + tag("acme").encode() + b"}") == 1


# -- replicas ------------------------------------------------------------------------------


@pytest.fixture
async def replicated(tmp_path: Path) -> AsyncIterator[tuple[RedisProcess, RedisProcess]]:
    """A private primary with one replica in sync."""
    require_tools()
    async with RedisProcess(tmp_path / "primary", {"repl-diskless-sync-delay": "0"}) as primary:
        replica = RedisProcess(tmp_path / "replica", {"replicaof": f"127.0.0.1 {primary.port}"})
        async with replica:
            for _ in range(1000):
                info = await primary.command("INFO", "replication")
                if info.get("slave0", {}).get("state") == "online":
                    break
                await asyncio.sleep(0.01)
            else:
                raise AssertionError("the replica did not come online")
            yield primary, replica


async def test_writes_wait_for_a_replica(replicated: tuple[RedisProcess, RedisProcess]) -> None:
    primary, replica = replicated
    backend = RedisBackend(parse(primary.url), Settings(redis_wait_replicas=1, redis_wait_timeout=2.0))
    await backend.open()
    try:
        assert await backend.put_message("a", "q", "m", b"x", 0.0, 0.0, T)
        # acknowledged means on the replica already: read it there
        async with aioredis.Redis(port=replica.port) as client:
            assert await client.exists(f"burrow{{{tag('a')}}}Q:a") == 1
        [taken] = await backend.update_messages("a", "q", Filter(limit=1), _hide(T + 30), T)
        assert taken.hidden_until == T + 30
    finally:
        await backend.close()


async def test_too_few_replicas_is_unavailable_though_the_primary_has_the_write(
    replicated: tuple[RedisProcess, RedisProcess],
) -> None:
    primary, _ = replicated
    backend = RedisBackend(parse(primary.url), Settings(redis_wait_replicas=2, redis_wait_timeout=0.2))
    await backend.open()
    try:
        # "only 1 of 2", or 0 when the one replica does not answer within the 0.2 s
        with pytest.raises(StorageUnavailable, match=r"only [01] of 2 replicas"):
            await backend.put_message("a", "q", "m", b"x", 0.0, 0.0, T)
        # reads do not wait; the write is on the primary (as documented)
        assert [m.id for m in await backend.get_messages("a", "q", ALL, T)] == ["m"]
    finally:
        await backend.close()


def _hide(until: float) -> Any:
    from burrow.core.model import Update

    return Update(hidden_until=until)


# -- Redis unreachable ---------------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_an_unreachable_redis_is_storage_unavailable_then_recovers(tmp_path: Path) -> None:
    require_tools()
    server = RedisProcess(tmp_path / "redis")
    url = f"redis://127.0.0.1:{closed_port()}/0?timeout=1&connect_timeout=0.5"
    backend = RedisBackend(parse(url), Settings())
    await backend.open()  # does not fail: the store may come up later
    try:
        for attempt in (
            backend.put_message("a", "q", "m", b"x", 0.0, 0.0, T),
            backend.list_accounts(Filter(), T),
            backend.get_message("a", "q", "m", T),
            backend.clean(T, T - 1),
        ):
            with pytest.raises(StorageUnavailable, match=r"Redis at 127\.0\.0\.1"):
                await attempt
        server.port = backend.target.nodes[0][1]  # the same address, now served
        async with server:
            assert await backend.put_message("a", "q", "m", b"x", 0.0, 0.0, T)
            assert [m.id for m in await backend.get_messages("a", "q", ALL, T)] == ["m"]
    finally:
        await backend.close()


async def test_through_a_server_unreachable_redis_is_503_and_a_restart_is_unnoticed(tmp_path: Path) -> None:
    """503 with the JSON error while Redis is down; after Redis comes back (empty: no
    persistence, so the function library is gone too) requests succeed at once, with no
    503 from connections the old server had closed."""
    require_tools()
    async with RedisProcess(tmp_path / "redis") as server:
        settings = Settings(backend=f"{server.url}?timeout=1&connect_timeout=0.5")
        async with running_server(settings) as burrow, Connection(burrow.url) as client:
            assert (await client.request("PUT", "/v1.0/a/q/m1", b"x")).status == 201
            await server.kill()
            reply = await client.request("PUT", "/v1.0/a/q/m2", b"x")
            assert reply.status == 503
            error = orjson.loads(reply.body)
            assert error["error"] == "storage_unavailable" and "Redis at 127.0.0.1" in error["message"]
            assert (await client.request("GET", "/v1.0/a/q")).status == 503
            await server.start()
            for n in range(20):  # every pooled connection is stale now; none may fail a request
                assert (await client.request("PUT", f"/v1.0/a/q/n{n}", b"x")).status == 201
            reply = await client.request("GET", "/v1.0/a/q?limit=1")
            assert reply.status == 200 and orjson.loads(reply.body)[0]["id"] == "n0"


async def test_a_cleaner_pass_goes_past_one_calls_budget() -> None:
    """Expiry runs in calls of CLEAN_BUDGET messages (Redis serves others between them); one
    pass makes as many as it needs, up to CLEAN_ROUNDS."""
    from burrow.backends.redis.backend import CLEAN_BUDGET

    backend = await opened(scratch_url())
    try:
        count = CLEAN_BUDGET * 2 + 7
        for start in range(0, count, 500):
            await asyncio.gather(
                *(
                    backend.put_message("a", "q", f"m{i}", b"x", T + 5, 0.0, T)
                    for i in range(start, min(start + 500, count))
                )
            )
        await backend.put_message("a", "stays", "m", b"x", T + 50, 0.0, T)
        assert await backend.count_messages() == count + 1
        await backend.clean(T + 5, T)
        assert await backend.count_messages() == 1
        assert await backend.list_queues("a", Filter(), T + 5) == ["stays"]
        await backend.clean(T + 50, T + 5)
        assert await backend.list_accounts(Filter(), T + 50) == []
    finally:
        await backend.close()


async def test_over_maxmemory_creates_are_refused_and_consumers_drain(tmp_path: Path) -> None:
    """``noeviction`` at ``maxmemory``: a put is StorageUnavailable (saying why); takes,
    deletes and the cleaner still run, freeing the room for new puts."""
    require_tools()
    config = {"maxmemory": "3mb", "maxmemory-policy": "noeviction"}
    async with RedisProcess(tmp_path / "redis", config) as server:
        backend = RedisBackend(parse(server.url), Settings())
        await backend.open()
        try:
            body = b"x" * 10_000
            stored = 0
            with pytest.raises(StorageUnavailable, match="maxmemory"):
                for n in range(2_000):
                    await backend.put_message("a", "q", f"m{n}", body, T + 5, 0.0, T)
                    stored += 1
            assert stored > 10
            taken = await backend.update_messages("a", "q", Filter(limit=2), _hide(T + 30), T)
            assert [m.id for m in taken] == ["m0", "m1"]
            assert await backend.delete_message("a", "q", "m0", T) is not None
            await backend.clean(T + 5, T)  # everything expired: the cleaner frees it all
            assert await backend.count_messages() == 0
            assert await backend.put_message("a", "q", "again", body, 0.0, 0.0, T + 5)
        finally:
            await backend.close()
