"""RedisNotifier against real Redis: a private server (which the tests may kill and restart)
and the shared Cluster. Two notifiers on one Redis stand for two Burrow processes."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from burrow.backends.memory import MemoryBackend
from burrow.backends.redis.notify import AnyRedis, RedisNotifier
from burrow.config import Settings
from burrow.core.model import Filter, Message
from burrow.engine import Engine
from burrow.notify import QueueKey
from burrow.testing.redis_cluster import RedisServer, require_tools, shared_cluster

KEY: QueueKey = ("acct", "jobs")


@dataclass
class Target:
    """A Redis (server or cluster) as the tests see it."""

    name: str
    ports: list[int]  # every node's (the primaries' on Cluster)
    connect: Callable[[], AnyRedis]

    async def subscribers(self, channel: bytes) -> int:
        """Connections subscribed to ``channel`` (sharded ones on Cluster)."""
        total = 0
        for port in self.ports:
            async with aioredis.Redis(port=port) as node:
                if self.name == "cluster":
                    total += sum(count for _, count in await node.pubsub_shardnumsub(channel))
                else:
                    total += sum(count for _, count in await node.pubsub_numsub(channel))
        return total

    async def kill_pubsub(self) -> None:
        """``CLIENT KILL TYPE pubsub`` on every node."""
        for port in self.ports:
            async with aioredis.Redis(port=port) as node:
                await node.client_kill_filter(_type="pubsub")


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    require_tools()
    with RedisServer() as running:
        yield running


@pytest.fixture(params=["server", "cluster"])
def target(request: pytest.FixtureRequest) -> Target:
    if request.param == "server":
        running: RedisServer = request.getfixturevalue("server")
        running.start()  # a test before may have stopped it
        port = running.port
        return Target("server", [port], lambda: aioredis.Redis(port=port))
    cluster = shared_cluster()
    seed = cluster.ports[0]
    return Target("cluster", cluster.ports[:3], lambda: RedisCluster(host="127.0.0.1", port=seed))


@asynccontextmanager
async def notifiers(target: Target, count: int = 2, **options: Any) -> AsyncIterator[list[RedisNotifier]]:
    """``count`` started notifiers on one namespace, as ``count`` processes would have."""
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    started = [RedisNotifier(target.connect, prefix, **options) for _ in range(count)]
    try:
        for notifier in started:
            await notifier.start()
        yield started
    finally:
        for notifier in started:
            await notifier.close()


async def eventually(check: Callable[[], bool | Awaitable[bool]], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


def park(notifier: RedisNotifier, key: QueueKey = KEY, taker: bool = False) -> asyncio.Future[None]:
    waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    notifier.subscribe(key, waiter, taker)
    return waiter


async def settle(notifier: RedisNotifier, key: QueueKey = KEY) -> None:
    """Wait until the queue's channel is subscribed: its confirmation wakes the first waiter."""
    first = park(notifier, key)
    await asyncio.wait_for(first, 5)
    notifier.unsubscribe(key, first)


async def test_an_event_from_another_process_wakes_the_waiter(target: Target) -> None:
    async with notifiers(target) as (a, b):
        await settle(a)
        await settle(a, ("acct", "other"))
        waiter = park(a)
        bystander = park(a, ("acct", "other"))
        b.publish(KEY, 1)
        await asyncio.wait_for(waiter, 5)
        assert not bystander.done()
        await eventually(lambda: b.published == 1)
        assert a.received == 1


async def test_remote_events_wake_readers_and_at_most_visible_takers(target: Target) -> None:
    async with notifiers(target) as (a, b):
        await settle(a)
        takers = [park(a, taker=True) for _ in range(5)]
        readers = [park(a) for _ in range(2)]
        b.publish(KEY, 2)
        await eventually(lambda: all(r.done() for r in readers))
        # One message, handled in one step: exactly 2 takers, the oldest.
        assert [t.done() for t in takers] == [True, True, False, False, False]
        b.publish(KEY)  # visible unknown: everyone
        await eventually(lambda: all(t.done() for t in takers))


async def test_own_events_are_delivered_once_locally_and_skipped_when_they_return(target: Target) -> None:
    async with notifiers(target, 1) as (a,):
        await settle(a)
        takers = [park(a, taker=True) for _ in range(3)]
        a.publish(KEY, 1)
        assert [t.done() for t in takers] == [True, False, False]  # at once, no round trip
        await eventually(lambda: a.echoes == 1)
        assert [t.done() for t in takers] == [True, False, False]
        assert a.received == 0


async def test_an_event_sent_before_the_subscription_is_confirmed_is_not_missed(target: Target) -> None:
    async with notifiers(target, 1) as (a,):
        channel = a.channel(KEY)
        port = target.ports[0]
        if target.name == "cluster":  # the node serving the channel's slot
            async with RedisCluster(host="127.0.0.1", port=port) as cluster:
                node = cluster.get_node_from_key(channel.decode())
                assert node is not None
                port = int(node.port)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            publish = b"SPUBLISH" if target.name == "cluster" else b"PUBLISH"
            event = b"stranger|1"
            waiter = park(a)  # a new channel: its SUBSCRIBE is not even written yet...
            writer.write(b"*3\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (
                len(publish), publish, len(channel), channel, len(event), event
            ))  # fmt: skip
            assert await reader.readline() == b":0\r\n"  # ...when this event is: nobody heard it
            await asyncio.wait_for(waiter, 5)  # woken by the confirmation, to retry
            assert a.received == 0
        finally:
            writer.close()


async def test_the_channel_is_left_linger_seconds_after_the_last_waiter(target: Target) -> None:
    async with notifiers(target, 1, linger=1.0) as (a,):
        channel = a.channel(KEY)
        await settle(a)
        assert await target.subscribers(channel) == 1
        waiter = park(a)
        a.unsubscribe(KEY, waiter)
        # Parked again within `linger` (a worker coming back): still subscribed, so no
        # new subscription and no confirmation wake-up.
        again = park(a)
        await asyncio.sleep(0.05)
        assert not again.done()
        a.unsubscribe(KEY, again)
        assert await target.subscribers(channel) == 1
        await eventually(lambda: _unsubscribed(target, channel))
        assert a._channels == {} and a._assigned == {}
        if target.name == "cluster":
            assert a._links == {}  # nothing to listen to: connections closed


async def _unsubscribed(target: Target, channel: bytes) -> bool:
    return await target.subscribers(channel) == 0


async def test_a_killed_pubsub_connection_is_renewed_and_its_waiters_woken(target: Target) -> None:
    async with notifiers(target) as (a, b):
        await settle(a)
        waiter = park(a, taker=True)
        await target.kill_pubsub()
        await asyncio.wait_for(waiter, 10)  # woken once the subscription is back
        assert a.reconnects >= 1
        a.unsubscribe(KEY, waiter)
        waiter = park(a, taker=True)
        b.publish(KEY, 1)
        await asyncio.wait_for(waiter, 5)
        assert await target.subscribers(a.channel(KEY)) >= 1


async def test_long_polls_survive_a_redis_restart(server: RedisServer) -> None:
    server.start()
    port = server.port
    target = Target("server", [port], lambda: aioredis.Redis(port=port))
    async with notifiers(target) as (a, b):
        await settle(a)
        waiter = park(a)
        server.stop()
        b.publish(KEY, 1)  # lost with Redis: must not raise, nor block
        await eventually(lambda: b.publish_errors >= 1)
        assert not waiter.done()
        server.start()
        await asyncio.wait_for(waiter, 10)  # the resubscription wakes it: it retries
        a.unsubscribe(KEY, waiter)
        waiter = park(a)
        b.publish(KEY, 1)
        await asyncio.wait_for(waiter, 5)


async def test_publish_is_bounded_and_never_raises_while_redis_is_down(server: RedisServer) -> None:
    server.start()
    port = server.port
    target = Target("server", [port], lambda: aioredis.Redis(port=port))
    try:
        async with notifiers(target, 1, max_pending=3) as (a,):
            local = park(a)
            server.stop()
            started = time.perf_counter()
            for i in range(10):
                a.publish(("acct", f"q{i}"), 1)
            a.publish(KEY, None)
            assert time.perf_counter() - started < 0.05
            assert local.done()  # delivered here at once, Redis or not
            assert a.dropped == 8  # 3 queues buffered, the rest counted
            await eventually(lambda: a.publish_errors >= 1)  # and retried after a backoff
            assert len(a._pending) <= 3
    finally:
        server.start()


async def test_pubsub_connections_authenticate_and_speak_tls() -> None:
    require_tools()
    with RedisServer(password="s3cret", tls=True) as secure:
        kwargs = secure.client_kwargs()
        target = Target("server", [secure.port], lambda: aioredis.Redis(**kwargs))
        async with notifiers(target) as (a, b):
            await settle(a)  # subscribed: AUTH and the TLS handshake passed
            waiter = park(a)
            b.publish(KEY, 1)
            await asyncio.wait_for(waiter, 5)
            assert a.received == 1


async def test_malformed_events_are_ignored(target: Target) -> None:
    async with notifiers(target, 1) as (a,):
        await settle(a)
        takers = [park(a, taker=True) for _ in range(2)]
        channel = a.channel(KEY)
        publish = "SPUBLISH" if target.name == "cluster" else "PUBLISH"
        client = target.connect()
        try:
            await client.execute_command(publish, channel, b"stranger|lots")  # would wake all if read as None
            await client.execute_command(publish, channel, b"stranger|1")
        finally:
            await client.aclose()
        await eventually(lambda: a.received == 1)
        assert [t.done() for t in takers] == [True, False]


async def test_channel_names_are_safe_for_any_queue_name(target: Target) -> None:
    async with notifiers(target, 1) as (a,):
        names = [
            ("a", "q"),
            ("a", "Q"),
            ("a{", "}q"),
            ("a", "{q}"),
            ("a|b", "q"),
            ("ä", "队列"),
            ("a", "q" * 300),
        ]
        channels = [a.channel(key) for key in names]
        assert len(set(channels)) == len(names)
        for channel in channels:
            assert channel.count(b"{") == 1 and channel.count(b"}") == 1
            assert len(channel) < 80  # compact whatever the names
        braces = RedisNotifier(target.connect, "pre{fix}")
        await braces.start()
        try:
            channel = braces.channel(KEY)
            assert channel.count(b"{") == 1  # the prefix cannot become the hash tag
        finally:
            await braces.close()


async def test_a_tag_puts_the_events_on_the_queue_s_shard(target: Target) -> None:
    tagged = RedisNotifier(target.connect, "p", tag=lambda account, queue: f"acct:{account}")
    await tagged.start()
    try:
        channel = tagged.channel(("alice", "jobs"))
        assert key_slot(channel) == key_slot(b"{acct:alice}:queue-keys")
        assert channel != tagged.channel(("alice", "other"))
    finally:
        await tagged.close()


# -- engines sharing one store (as processes sharing Redis would) -------------------------------


@asynccontextmanager
async def two_engines(target: Target) -> AsyncIterator[tuple[Engine, Engine]]:
    """Two engines over ONE store, each with its own notifier: the store's writes by one
    reach the other's long polls only through Redis."""
    store = MemoryBackend()
    async with notifiers(target) as (na, nb):
        yield Engine(store, Settings(), notifier=na), Engine(store, Settings(), notifier=nb)


def take(engine: Engine, queue: str, wait: int = 5) -> asyncio.Future[list[Message]]:
    return asyncio.ensure_future(engine.update_messages("acct", queue, Filter(limit=1), None, 30, wait))


async def test_a_put_in_one_engine_answers_a_take_parked_in_the_other_at_once(target: Target) -> None:
    """No settling: the put may land before the subscription is confirmed, and the take must
    still be answered at once (the confirmation wakes it), not when its wait runs out."""
    async with two_engines(target) as (a, b):
        for n in range(10):
            queue = f"q{n}"  # a new channel each time: the subscription race every time
            taking = take(a, queue)
            await eventually(lambda: a.notifier.waiting == 1)
            await b.put_message("acct", queue, "m", b"x")
            started = time.monotonic()
            got = await asyncio.wait_for(taking, 10)
            assert [m.id for m in got] == ["m"]
            assert time.monotonic() - started < 2, "woken by its wait running out, not by the event"


async def test_one_put_elsewhere_gives_its_message_to_one_taker(target: Target) -> None:
    async with two_engines(target) as (a, b):
        takes = [take(a, "jobs", wait=30) for _ in range(3)]
        await eventually(lambda: a.notifier.waiting == 3)
        assert isinstance(a.notifier, RedisNotifier)
        channel = a.notifier.channel(KEY)
        await eventually(lambda: _subscribed(target, channel))
        await asyncio.sleep(0.1)  # the subscription's wake-up: let those retries re-park
        await b.put_message("acct", "jobs", "m", b"x")
        done, parked = await asyncio.wait(takes, timeout=5, return_when=asyncio.FIRST_COMPLETED)
        assert [[m.id for m in t.result()] for t in done] == [["m"]]
        await asyncio.sleep(0.1)  # time for a wrongly woken taker to come back empty-handed
        assert not any(t.done() for t in parked)
        assert a.notifier.waiting == 2
        for t in parked:
            t.cancel()
        await asyncio.gather(*parked, return_exceptions=True)


async def _subscribed(target: Target, channel: bytes) -> bool:
    return await target.subscribers(channel) == 1
