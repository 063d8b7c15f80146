"""No herds (burrow/notify.py): a message made visible wakes one parked taker, not all of them.

A real server (in this process, so the notifier can be counted) on each in-process storage
backend, 100 long-poll takers (``POST ?hide=..&wait=..``) parked on one queue over real
sockets. The engine's notifier is the real local one, counting the waiters each event
resolved (a shared store's cross-process notifier is its own suite's). One PUT must wake
exactly one taker and answer exactly one; the others stay parked, without having retried.
Readers (``GET ?wait=``) are all woken, as each only looks. Structural, not timed:
``benchmarks/herd_bench.py`` measures what this costs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from burrow.api.routes import App
from burrow.backends import open_backend
from burrow.client import Connection, Reply
from burrow.config import Settings
from burrow.engine import Engine
from burrow.http.server import start_server
from burrow.notify import LocalNotifier, QueueKey
from burrow.testing.backends import SERVER_BACKENDS

TAKERS = 100
READERS = 10
QUEUE = "/v1.0/herd/q"
READ_QUEUE = "/v1.0/herd/r"


class CountingNotifier(LocalNotifier):
    """The local notifier, counting the waiters each event woke (takers and readers apart)."""

    def __init__(self) -> None:
        super().__init__()
        self.parked: dict[QueueKey, dict[asyncio.Future[None], bool]] = {}
        self.woken = {True: 0, False: 0}

    def subscribe(self, key: QueueKey, waiter: asyncio.Future[None], taker: bool) -> None:
        super().subscribe(key, waiter, taker)
        self.parked.setdefault(key, {})[waiter] = taker

    def unsubscribe(self, key: QueueKey, waiter: asyncio.Future[None]) -> None:
        super().unsubscribe(key, waiter)
        self.parked.get(key, {}).pop(waiter, None)

    def publish(self, key: QueueKey, visible: int | None = None) -> None:
        pending = [(w, taker) for w, taker in self.parked.get(key, {}).items() if not w.done()]
        super().publish(key, visible)
        for waiter, taker in pending:
            self.woken[taker] += waiter.done()


@asynccontextmanager
async def server(url: str) -> AsyncIterator[tuple[str, Engine, CountingNotifier]]:
    settings = Settings(backend=url, host="127.0.0.1", port=0)
    notifier = CountingNotifier()
    engine = Engine(open_backend(url, settings), settings, notifier=notifier)
    await engine.start()
    http = await start_server(App(engine), settings)
    try:
        yield f"http://127.0.0.1:{http.port}", engine, notifier
    finally:
        engine.drain()
        await http.close()
        await engine.stop()


async def wait_for(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def park(url: str, target: str, count: int) -> tuple[list[Connection], list[asyncio.Task[Reply]]]:
    conns = [Connection(url) for _ in range(count)]
    for conn in conns:
        await conn.connect()
    return conns, [
        asyncio.ensure_future(conn.request("POST" if "hide" in target else "GET", target)) for conn in conns
    ]


@pytest.mark.parametrize("backend", ["memory", "sqlite-memory", "sqlite-file"])
async def test_one_put_answers_one_parked_taker(tmp_path: Path, backend: str) -> None:
    url_template = SERVER_BACKENDS[backend]
    async with server(url_template.format(tmp=tmp_path)) as (url, engine, notifier):
        take_conns, takers = await park(url, f"{QUEUE}?limit=1&hide=30&wait=20&detail=all", TAKERS)
        read_conns, readers = await park(url, f"{READ_QUEUE}?wait=20&detail=id", READERS)
        await wait_for(lambda: engine.waiting == TAKERS + READERS)
        try:
            async with Connection(url) as producer:
                # readers only look: one message wakes and answers all of them
                assert (await producer.request("PUT", f"{READ_QUEUE}/r1", b"read")).status == 201
                seen = await asyncio.wait_for(asyncio.gather(*readers), 10)
                assert [(r.status, r.json()) for r in seen] == [(200, ["r1"])] * READERS
                assert notifier.woken == {True: 0, False: READERS}, notifier.woken
                assert engine.waiting == TAKERS

                # takers: one message wakes one, which takes it; the rest stay parked
                assert (await producer.request("PUT", f"{QUEUE}/m1", b"one")).status == 201
                await wait_for(lambda: sum(t.done() for t in takers) == 1)
                await asyncio.sleep(0.3)  # time for any wrongly woken taker to answer
                assert sum(t.done() for t in takers) == 1, "one message answered more than one taker"
                assert notifier.woken == {True: 1, False: READERS}, notifier.woken
                [winner] = [t.result() for t in takers if t.done()]
                expected = [{"id": "m1", "ttl": 600, "hide": 30, "body": "one"}]
                assert (winner.status, winner.json()) == (200, expected)
                assert engine.waiting == TAKERS - 1

                # five more messages: five more takers, each woken once
                for i in range(2, 7):
                    assert (await producer.request("PUT", f"{QUEUE}/m{i}", b"more")).status == 201
                await wait_for(lambda: sum(t.done() for t in takers) == 6)
                await asyncio.sleep(0.3)
                assert sum(t.done() for t in takers) == 6
                assert notifier.woken[True] == 6, notifier.woken
                taken = sorted(t.result().json()[0]["id"] for t in takers if t.done())
                assert taken == [f"m{i}" for i in range(1, 7)]
                assert engine.waiting == TAKERS - 6
            engine.drain()  # the rest are answered (404: nothing left) at once
            rest = await asyncio.wait_for(asyncio.gather(*takers), 10)
            assert sum(r.status == 404 for r in rest) == TAKERS - 6
        finally:
            for task in takers + readers:
                task.cancel()
            await asyncio.gather(*takers, *readers, return_exceptions=True)
            for conn in take_conns + read_conns:
                await conn.close()
