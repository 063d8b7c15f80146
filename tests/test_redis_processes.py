"""Several real ``burrow serve`` processes on one Redis: long polls cross processes.

* A long poll parked in one process (a reader's ``GET ?wait``, a taker's ``POST ?hide&wait``)
  is answered within 50 ms of a PUT's response from another process (the median of a few
  rounds; every round well under a second, where a missed event would wait out ``wait``),
  on a Redis server (three processes) and on Redis Cluster (two; sharded pub/sub).
* A history workload (producers and long-polling takers in two processes, one queue) is
  judged by :mod:`burrow.testing.history`: nothing acknowledged lost, no message given to
  two takers during its hide.

Needs Redis on 127.0.0.1:6379 (skips without it, fails under ``BURROW_REQUIRE_SERVICES=1``)
and the Redis backend (skips until ``redis://`` is a backend scheme). Run with ``-s`` to
see the figures.
"""

from __future__ import annotations

import asyncio
import os
import random
import statistics
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

import pytest
import pytest_asyncio
import redis
import redis.asyncio as aioredis

from burrow.backends import open_backend
from burrow.client import Connection, Reply
from burrow.config import Settings
from burrow.testing.history import History
from burrow.testing.process import ServeProcess
from burrow.testing.redis_cluster import shared_cluster
from tests.test_history_workloads import SECONDS, Mix, V1Load, drain, report_of

REDIS_PORT = 6379
#: A database of this suite's own on the shared server (the keys carry a unique prefix too).
DB = 11

#: The processes start once for the module (each takes seconds on a loaded machine).
pytestmark = pytest.mark.asyncio(loop_scope="module")


def require_redis_backend() -> None:
    try:
        redis.Redis(port=REDIS_PORT, socket_connect_timeout=1).ping()
    except redis.ConnectionError:
        reason = f"no Redis on 127.0.0.1:{REDIS_PORT}"
        if os.environ.get("BURROW_REQUIRE_SERVICES") == "1":
            pytest.fail(reason + " and BURROW_REQUIRE_SERVICES=1")
        pytest.skip(reason)
    try:
        open_backend(f"redis://127.0.0.1:{REDIS_PORT}/{DB}", Settings())
    except ValueError as exc:
        pytest.skip(f"the Redis backend is not available: {exc}")


@dataclass
class Servers:
    """``burrow serve`` processes sharing one Redis namespace."""

    urls: list[str]
    #: the key prefix, and the namespace of the notifiers' pub/sub channels
    prefix: str
    #: the Redis nodes' ports (Cluster: the primaries'), and the database
    ports: list[int]
    db: int
    cluster: bool

    async def channels(self) -> set[str]:
        """The namespace's pub/sub channels: those of queues with a long poll parked somewhere."""
        found: set[str] = set()
        for port in self.ports:
            async with aioredis.Redis(port=port, decode_responses=True) as node:
                pattern = f"*{self.prefix}*"
                listed = await (node.pubsub_shardchannels if self.cluster else node.pubsub_channels)(pattern)
                found.update(str(channel) for channel in listed)
        return found

    async def forget(self) -> None:
        """Delete the namespace's keys."""
        for port in self.ports:
            async with aioredis.Redis(port=port, db=self.db) as node:
                keys = [key async for key in node.scan_iter(match=f"*{self.prefix}*", count=1000)]
                for key in keys:  # one by one: on Cluster they are in many slots
                    await node.delete(key)


@asynccontextmanager
async def serving(count: int, url: str, servers: Servers) -> AsyncIterator[Servers]:
    """Start ``count`` processes on the storage ``url`` (in parallel); stop them after."""
    async with AsyncExitStack() as stack:
        stack.push_async_callback(servers.forget)
        processes = [
            ServeProcess("--backend", url, "--port", "0", "--clean-interval", "0.1") for _ in range(count)
        ]
        started = await asyncio.gather(*(p.start() for p in processes), return_exceptions=True)
        for process, result in zip(processes, started, strict=True):
            if isinstance(result, str):
                stack.push_async_callback(process.stop)
        for result in started:
            if isinstance(result, BaseException):
                raise result
        servers.urls = [str(u) for u in started]
        yield servers


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def servers() -> AsyncIterator[Servers]:
    """Three processes on the Redis server at 127.0.0.1:6379."""
    require_redis_backend()
    prefix = f"procs{uuid.uuid4().hex[:12]}"
    url = f"redis://127.0.0.1:{REDIS_PORT}/{DB}?prefix={prefix}"
    async with serving(3, url, Servers([], prefix, [REDIS_PORT], DB, cluster=False)) as running:
        yield running


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cluster_servers() -> AsyncIterator[Servers]:
    """Two processes on the shared test Redis Cluster (sharded pub/sub)."""
    require_redis_backend()
    cluster = shared_cluster()
    prefix = f"procs{uuid.uuid4().hex[:12]}"
    url = f"{cluster.url}?prefix={prefix}"
    async with serving(2, url, Servers([], prefix, cluster.ports[:3], 0, cluster=True)) as running:
        yield running


async def parked(
    poll: asyncio.Future[Reply], servers: Servers, before: set[str], timeout: float = 10.0
) -> None:
    """Wait until ``poll`` subscribed: a channel of the namespace appears that was not in ``before``."""
    deadline = time.monotonic() + timeout
    while not await servers.channels() - before:
        assert not poll.done(), f"the long poll ended before it parked: {poll.result()}"
        assert time.monotonic() < deadline, "the long poll never subscribed"
        await asyncio.sleep(0.005)


async def wake_delays(servers: Servers, rounds: int) -> list[float]:
    """Seconds from a PUT's response (the second process) to the response of a long poll
    parked on its queue in another: readers and takers in turn, a new queue each round."""
    urls = servers.urls
    pollers = [url for i, url in enumerate(urls) if i != 1]
    delays: list[float] = []
    async with Connection(urls[1], timeout=30) as producer:
        for n in range(rounds):
            queue = f"/v1.0/acct/wake{n}"  # a new queue: its channel shows when the poll has parked
            take = n % 2 == 1
            target = f"{queue}?hide=30&wait=10&detail=all" if take else f"{queue}?wait=10"
            before = await servers.channels()
            async with Connection(pollers[n % len(pollers)], timeout=30) as waiter:
                poll = asyncio.ensure_future(waiter.request("POST" if take else "GET", target))
                await parked(poll, servers, before)
                # The subscription's confirmation wakes the poll once (to catch what came
                # before it); let that retry end so the PUT's event is what answers it.
                await asyncio.sleep(0.1)
                assert not poll.done()
                put = await producer.request("PUT", f"{queue}/m", b"hello")
                assert put.status == 201, put
                sent = time.perf_counter()
                reply = await asyncio.wait_for(poll, 15)
                delays.append(time.perf_counter() - sent)
            assert reply.status == 200 and b"hello" in reply.body, reply
    return delays


def judge(name: str, delays: list[float]) -> None:
    ms = sorted(round(d * 1000, 1) for d in delays)
    print(f"\n[wake across processes, {name}] PUT response -> long poll response, ms: {ms}", flush=True)
    assert statistics.median(delays) < 0.05, ms
    assert max(delays) < 0.5, ms  # a missed event would have waited out wait=10


async def test_a_long_poll_is_woken_by_a_put_in_another_process(servers: Servers) -> None:
    judge("Redis server, 3 processes", await wake_delays(servers, 8))


async def test_a_long_poll_is_woken_by_a_put_in_another_process_on_cluster(cluster_servers: Servers) -> None:
    judge("Redis Cluster, 2 processes", await wake_delays(cluster_servers, 4))


async def test_takers_in_two_processes_share_a_queue_without_overlap(servers: Servers) -> None:
    history = History()
    queue = "/v1.0/history/jobs"
    urls = servers.urls
    rng = random.Random(9)
    loads = [
        V1Load(history, urls[0], queue, "a", Mix(producers=2, takers=1, crashers=1), rng),
        V1Load(history, urls[1], queue, "b", Mix(producers=1, takers=2, crashers=0), rng),
    ]
    for load in loads:
        load.start()
    await asyncio.sleep(SECONDS)
    for load in loads:
        await load.stop()
    await drain(history, urls[0], queue)
    report = report_of(f"v1.0 over two processes on Redis, {SECONDS:g}s", history)
    assert report.figures["deliveries"] > 100, "the load was too light"
    taken_by = {op.client[0] for op in history.ops if op.kind == "take" and op.values}
    assert taken_by == {"a", "b"}, "both processes' takers should have taken messages"
