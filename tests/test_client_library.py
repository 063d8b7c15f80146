"""The client library (``burrow.Client``, ``burrow.AsyncClient``) against real servers: every
operation and its errors, typed results, truncated lists, connection pooling and reconnects,
the retry rule, timeouts, the worker loop, watch, and client-side hashing over three servers.

The blocking client talks to a server running on its own event loop in a thread; the async
client to one in the test's loop. Misbehaving peers (one that closes a keep-alive connection
as a request arrives, one that never answers) are real sockets speaking just enough HTTP.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AsyncExitStack, contextmanager

import pytest

import burrow
from burrow import AsyncClient, Client, Message, MessageAttributes
from burrow.config import Settings
from burrow.core.errors import BadRequest, NotFound
from burrow.hashing import Placement
from burrow.testing.server import RunningServer, running_server


class _Box:
    server: RunningServer
    loop: asyncio.AbstractEventLoop
    stop: asyncio.Event
    error: BaseException | None = None


@contextmanager
def threaded_server(settings: Settings | None = None) -> Iterator[RunningServer]:
    """``running_server`` on its own event loop in a daemon thread (for blocking clients)."""
    ready, box = threading.Event(), _Box()

    async def serve() -> None:
        box.loop, box.stop = asyncio.get_running_loop(), asyncio.Event()
        async with running_server(settings) as server:
            box.server = server
            ready.set()
            await box.stop.wait()

    def main() -> None:
        try:
            asyncio.run(serve())
        except BaseException as error:
            box.error = error
            ready.set()

    thread = threading.Thread(target=main, daemon=True)
    thread.start()
    if not ready.wait(30) or box.error is not None:
        raise RuntimeError("server did not start") from box.error
    try:
        yield box.server
    finally:
        box.loop.call_soon_threadsafe(box.stop.set)
        thread.join(30)


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    with threaded_server() as running:
        yield running


@pytest.fixture
def client(server: RunningServer) -> Iterator[Client]:
    with Client(server.url) as c:
        yield c
        for account in c.accounts(limit=1000):
            c.account(account).delete()


# -- every operation, blocking -----------------------------------------------------------


def test_every_operation_sync(client: Client) -> None:
    q = client.queue("acme", "jobs")
    assert q.put("a", "hello") is True
    assert q.put("a", b"hello again", ttl=100) is False  # replaced, keeps its place
    assert q.put("bin", b"\xff\x00\x01", hide=0) is True
    assert q.put("slash/and space", "x") is True
    message = q.get("a")
    assert message == Message("a", b"hello again", 100, 0) and message.text == "hello again"
    assert q.get("bin").body == b"\xff\x00\x01"
    assert q.get("slash/and space").body == b"x"
    assert [m.id for m in q.list()] == ["a", "bin", "slash/and space"]
    assert [m.id for m in q.list(limit=1, marker="a")] == ["bin"]

    taken = q.take(hide=60)
    assert [(m.id, m.hide) for m in taken] == [("a", 60)]
    assert [m.id for m in q.list()] == ["bin", "slash/and space"]
    assert [m.id for m in q.list(match_hidden=True)] == ["a", "bin", "slash/and space"]
    assert q.update("a", hide=0) == MessageAttributes("a", 100, 0)
    assert q.update(ttl=50, limit=2) == 2
    assert [m.ttl for m in q.list()] == [50, 50, 600]

    assert q.take_and_delete() == [Message("a", b"hello again", 50, 0)]
    with pytest.raises(NotFound):
        q.get("a")
    q.delete("bin")
    with pytest.raises(NotFound, match="message 'bin' not found"):
        q.delete("bin")
    with pytest.raises(NotFound):
        q.update("bin", ttl=5)

    client.queue("acme", "other").put("m", "x")
    client.queue("zeta", "q").put("m", "x", hide=100)
    assert client.account("acme").queues() == ["jobs", "other"]
    assert client.account("acme").queues(marker="jobs") == ["other"]
    assert client.accounts() == ["acme", "zeta"]
    assert q.delete() == 1  # the visible one
    assert client.queue("zeta", "q").delete() == 0  # hidden: the API's trap, kept
    assert client.queue("zeta", "q").delete(match_hidden=True) == 1
    assert client.account("acme").delete() == 1
    assert client.accounts() == [] and client.account("nobody").queues() == []


def test_errors_and_refusals_sync(client: Client) -> None:
    q = client.queue("acme", "errors")
    with pytest.raises(BadRequest, match="ttl must be an integer"):
        q.put("m", "x", ttl=-1)
    with pytest.raises(BadRequest, match="limit"):
        q.list(limit=0)
    with pytest.raises(NotFound):
        q.get("missing")
    assert q.list() == [] and q.take() == [] and q.take_and_delete() == []
    assert q.update(hide=1) == 0 and q.delete() == 0
    with pytest.raises(ValueError, match="queue must be a non-empty string"):
        client.queue("acme", "")
    with pytest.raises(ValueError, match="message id"):
        q.get("")
    with pytest.raises(ValueError, match="ttl or hide"):
        q.update("m")
    with pytest.raises(ValueError, match="limit apply to matched messages"):
        q.delete("m", limit=3)  # type: ignore[call-overload]
    with pytest.raises(ValueError, match="limit must be at least 1"):
        q.take(limit=0)
    for bad in ("https://h", "127.0.0.1:8080", "http://h:99999", "http://h/?q=1"):
        with pytest.raises(ValueError):
            Client(bad)
    with pytest.raises(ValueError, match="listed twice"):
        Client(["http://h:1", "http://H:1/"])


def test_unreachable_server_is_a_connection_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nobody listens once it is closed
    with Client(f"http://127.0.0.1:{port}") as c, pytest.raises(ConnectionError):
        c.queue("a", "q").get("m")


# -- lists the server cut short -------------------------------------------------------------


def test_truncated_lists_are_continued() -> None:
    # 3 items per GET; bodies of at most 1 KiB and a 2 KiB budget: 2 messages with bodies per
    # POST/DELETE at detail=all, and 2 ids per POST/DELETE at detail=id.
    settings = Settings(backend="memory://", max_limit=3, max_body_bytes=1024, max_response_bytes=2048)
    with threaded_server(settings) as running, Client(running.url) as c:
        q = c.queue("acme", "big")
        for n in range(9):
            q.put(f"m{n}", "x")
        assert len(q.list()) == 3  # one page without a limit
        assert [m.id for m in q.list(limit=7)] == [f"m{n}" for n in range(7)]
        assert [m.id for m in q.take(limit=5, hide=60)] == [f"m{n}" for n in range(5)]
        assert q.update(hide=0, match_hidden=True) == 9
        assert [m.id for m in q.take_and_delete(limit=3)] == ["m0", "m1", "m2"]
        assert q.delete(limit=5) == 5
        assert q.delete() == 1
        for n in range(7):
            c.queue("acme", f"q{n}").put("m", "x")
        assert c.account("acme").queues() == ["q0", "q1", "q2"]
        assert c.account("acme").queues(limit=6, marker="q0") == [f"q{n}" for n in range(1, 7)]
        assert c.account("acme").delete() == 7


# -- pooling, reconnects, retries, timeouts --------------------------------------------------


def test_connections_are_pooled_and_bounded(server: RunningServer, client: Client) -> None:
    pool = client.pools[client.servers.all[0]]
    q = client.queue("acme", "pool")
    for n in range(50):
        q.put(f"m{n}", "x")
        q.get(f"m{n}")
    assert pool.opened == 1 and pool.idle() == 1

    with Client(server.url, max_connections=2) as shared:
        shared_pool = shared.pools[shared.servers.all[0]]
        errors: list[BaseException] = []

        def hammer() -> None:
            try:
                for n in range(30):
                    shared.queue("acme", "pool").get(f"m{n}")
            except BaseException as error:
                errors.append(error)

        threads = [threading.Thread(target=hammer) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == [] and 1 <= shared_pool.opened <= 2

    with Client(server.url, max_connections=1, connect_timeout=0.3) as single:
        single_pool = single.pools[single.servers.all[0]]
        holder = threading.Thread(target=lambda: single.queue("acme", "empty").list(wait=1))
        holder.start()
        wait_until(lambda: single_pool.in_use() == 1)  # the long poll holds the one connection
        with pytest.raises(TimeoutError, match="busy"):
            single.queue("acme", "pool").get("m0")
        holder.join()


def test_reconnect_after_the_server_closes_an_idle_connection_sync() -> None:
    with (
        threaded_server(Settings(backend="memory://", idle_timeout=0.2)) as running,
        Client(running.url) as c,
    ):
        pool = c.pools[c.servers.all[0]]
        q = c.queue("acme", "idle")
        q.put("m", "x")
        wait_until(lambda: running.http.connections == 0)  # closed by the server, idle in our pool
        assert q.get("m").body == b"x"  # retryable: sent, found dead, sent again
        assert pool.opened == 2
        wait_until(lambda: running.http.connections == 0)
        assert [m.id for m in q.take(hide=5)] == ["m"]  # a take: the dead one is noticed first
        assert pool.opened == 3
        q.delete("m")


async def test_reconnect_after_the_server_closes_an_idle_connection_async() -> None:
    settings = Settings(backend="memory://", idle_timeout=0.2)
    async with running_server(settings) as running, AsyncClient(running.url) as c:
        pool = c.pools[c.servers.all[0]]
        q = c.queue("acme", "idle")
        await q.put("m", "x")
        await _all_closed(running)
        assert (await q.get("m")).body == b"x"
        await _all_closed(running)
        assert [m.id for m in await q.take(hide=5)] == ["m"]
        assert pool.opened == 3


async def _all_closed(running: RunningServer) -> None:
    """Until the server has closed every connection (idle ones, after ``idle_timeout``)."""
    while running.http.connections:
        await asyncio.sleep(0.01)


_BODY = b'{"id":"m","ttl":0,"hide":0,"body":"abc"}'
MESSAGE_REPLY = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(_BODY), _BODY)


class ScriptedPeer:
    """A real listening socket that answers the first request of each connection with
    :data:`MESSAGE_REPLY` and then closes the connection when the next request arrives
    (``silent``: never answers at all). It records every request line it read."""

    def __init__(self, silent: bool = False) -> None:
        self.silent = silent
        self.requests: list[bytes] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self._conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self._conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buf, answered = b"", False
        with conn:
            while True:
                while b"\r\n\r\n" not in buf:
                    try:
                        data = conn.recv(65536)
                    except OSError:
                        return
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                self.requests.append(head.split(b"\r\n")[0])
                if self.silent:
                    continue
                if answered:
                    return  # the close a client sees on a keep-alive connection gone stale
                conn.sendall(MESSAGE_REPLY)
                answered = True

    def close(self) -> None:
        self.listener.close()
        for conn in self._conns:
            conn.close()


@pytest.fixture
def peer() -> Iterator[ScriptedPeer]:
    scripted = ScriptedPeer()
    yield scripted
    scripted.close()


def test_only_safe_requests_are_sent_again_sync(peer: ScriptedPeer) -> None:
    with Client(peer.url + "/prefix") as c:
        q = c.queue("a", "q")
        assert q.get("m").body == b"abc"
        assert q.get("m").body == b"abc"  # the reused connection dies; sent again on a new one
        assert len(peer.requests) == 3
        assert peer.requests[0] == b"GET /prefix/v1.0/a/q/m HTTP/1.1"
        with pytest.raises(ConnectionError, match="closed before the response"):
            q.take(hide=5)  # a take is never sent twice
        assert [r.split()[0] for r in peer.requests] == [b"GET", b"GET", b"GET", b"POST"]


async def test_only_safe_requests_are_sent_again_async(peer: ScriptedPeer) -> None:
    async with AsyncClient(peer.url) as c:
        q = c.queue("a", "q")
        assert (await q.get("m")).body == b"abc"
        assert (await q.get("m")).body == b"abc"
        with pytest.raises(ConnectionError):
            await q.take(hide=5)
        assert [r.split()[0] for r in peer.requests] == [b"GET", b"GET", b"GET", b"POST"]


def test_read_timeout_is_extended_by_wait_and_enforced(server: RunningServer) -> None:
    with Client(server.url, timeout=0.5) as c:
        started = time.monotonic()
        assert c.queue("acme", "empty").list(wait=1) == []  # a 1 s long poll outlives a 0.5 s timeout
        assert time.monotonic() - started >= 0.9
    silent = ScriptedPeer(silent=True)
    try:
        with Client(silent.url, timeout=0.3) as c, pytest.raises(TimeoutError):
            c.queue("a", "q").get("m")
    finally:
        silent.close()


# -- long polls: watch and the worker loop ---------------------------------------------------


def test_watch_follows_the_queue_sync(client: Client) -> None:
    q = client.queue("acme", "watched")
    q.put("a", "1")
    q.put("b", "2")
    stop, seen = threading.Event(), []

    def reader() -> None:
        for message in q.watch(wait=1, stop=stop):
            seen.append(message.id)
            if message.id == "b":
                q.delete("b")  # the marker disappears: the next poll restarts from the start
            if message.id == "c":
                stop.set()

    thread = threading.Thread(target=reader)
    thread.start()
    wait_until(lambda: seen == ["a", "b"])
    q.put("c", "3")
    thread.join(10)
    assert not thread.is_alive() and seen == ["a", "b", "c"]  # "a" was not yielded twice


async def test_watch_follows_the_queue_async() -> None:
    async with running_server() as running, AsyncClient(running.url) as c:
        q = c.queue("acme", "watched")
        await q.put("a", "1")
        stop, seen = asyncio.Event(), []

        async def reader() -> None:
            async for message in q.watch(wait=20, stop=stop):
                seen.append(message.id)

        task = asyncio.create_task(reader())
        while seen != ["a"]:
            await asyncio.sleep(0.01)
        await q.put("b", "2")  # wakes the parked long poll
        while seen != ["a", "b"]:
            await asyncio.sleep(0.01)
        stop.set()  # ends the 20 s long poll in progress at once
        await asyncio.wait_for(task, 5)


def test_worker_deletes_on_success_and_lets_failures_reappear(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    q = client.queue("acme", "work")
    for id in ("ok1", "bad", "ok2"):
        q.put(id, id)
    calls: list[str] = []
    stop = threading.Event()

    def handle(message: Message) -> None:
        calls.append(message.id)
        if message.id == "bad":
            if calls.count("bad") == 2:
                stop.set()  # stop after the second try; this message is finished first
            raise RuntimeError("boom")

    with caplog.at_level(logging.ERROR, logger="burrow.client"):
        thread = threading.Thread(target=lambda: q.work(handle, hide=1, wait=1, stop=stop))
        thread.start()
        thread.join(20)
    assert not thread.is_alive()
    assert calls == ["ok1", "bad", "ok2", "bad"]  # "bad" came back once its 1 s hide ran out
    assert "message 'bad' failed" in caplog.text and "RuntimeError: boom" in caplog.text
    assert [m.id for m in q.list(match_hidden=True)] == ["bad"]  # never deleted
    q.delete("bad")


def test_worker_stops_gracefully(client: Client) -> None:
    q = client.queue("acme", "graceful")
    for n in range(4):
        q.put(f"m{n}", "x")
    stop, done = threading.Event(), []

    def handle(message: Message) -> None:
        stop.set()  # asked to stop while working: this message is finished, no more taken
        time.sleep(0.1)
        done.append(message.id)

    assert q.work(handle, limit=2, hide=60, wait=1, stop=stop) == 1
    assert done == ["m0"]
    remaining = q.list()
    assert [(m.id, m.hide) for m in remaining] == [("m1", 0), ("m2", 0), ("m3", 0)]  # m1 released


async def test_async_worker_and_its_stop() -> None:
    async with running_server() as running, AsyncClient(running.url) as c:
        q = c.queue("acme", "work")
        for id in ("a", "b"):
            await q.put(id, id)
        stop, done = asyncio.Event(), []

        async def handle(message: Message) -> None:
            done.append(message.id)

        task = asyncio.create_task(q.work(handle, hide=30, wait=20, stop=stop))
        while len(done) < 2:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)  # now parked in a 20 s long poll on the empty queue
        started = time.monotonic()
        stop.set()
        assert await asyncio.wait_for(task, 5) == 2
        assert time.monotonic() - started < 2  # the long poll was cut, not waited out
        assert await q.list(match_hidden=True) == []


# -- the async client: every operation -------------------------------------------------------


async def test_every_operation_async() -> None:
    async with running_server() as running, AsyncClient(running.url) as c:
        q = c.queue("acme", "jobs")
        assert await q.put("a", "hello") is True
        assert await q.put("b", b"\x80", ttl=100) is True
        assert await q.get("b") == Message("b", b"\x80", 100, 0)
        assert [m.id for m in await q.list(limit=1, marker="a")] == ["b"]
        assert [m.id for m in await q.take(hide=60)] == ["a"]
        assert await q.update("a", ttl=10) == MessageAttributes("a", 10, 60)
        assert await q.update(hide=0, match_hidden=True) == 2
        assert [m.id for m in await q.take_and_delete(limit=5)] == ["a", "b"]
        assert await q.list() == [] and await q.take(wait=0) == []
        with pytest.raises(NotFound):
            await q.delete("a")
        with pytest.raises(BadRequest):
            await q.list(wait=-1)
        await q.put("c", "x")
        assert await c.account("acme").queues() == ["jobs"]
        assert await c.accounts() == ["acme"]
        assert await q.delete(limit=1) == 1
        assert await c.accounts() == []


# -- client-side hashing over several real servers --------------------------------------------


async def test_client_side_hashing_over_three_servers() -> None:
    async with AsyncExitStack() as stack:
        servers = [await stack.enter_async_context(running_server()) for _ in range(3)]
        urls = [s.url for s in servers]
        c = await stack.enter_async_context(AsyncClient(urls, subset_size=2))
        singles = [await stack.enter_async_context(AsyncClient(u)) for u in urls]
        placement = Placement(urls, 2)
        acme = spread_account(placement)
        names = [f"q{n}" for n in range(30)]
        for name in names:
            await c.queue(acme, name).put("m", name)
        others = ["a1", "a2", "a3", "a4", "a5"]
        for account in others:
            await c.queue(account, "q").put("m", "x")

        holders = set()
        for name in names:  # each queue is on the one server placement names, and only there
            expected = urls.index(placement.server_for(acme, name))
            found = [i for i, s in enumerate(singles) if await s.queue(acme, name).list()]
            assert found == [expected]
            holders.add(expected)
            assert (await c.queue(acme, name).get("m")).body == name.encode()
        assert holders == {urls.index(u) for u in placement.account_servers(acme)}  # spread over its subset

        listed = await c.account(acme).queues()
        assert sorted(listed) == sorted(names)  # merged from the account's servers, once each
        assert listed == await c.account(acme).queues()  # in a stable order
        paged: list[str] = []
        while page := await c.account(acme).queues(limit=7, marker=paged[-1] if paged else None):
            paged.extend(page)
        assert paged == listed

        accounts = await c.accounts()
        assert sorted(accounts) == sorted([*others, acme])  # acme, on two servers, is listed once
        paged = []
        while page := await c.accounts(limit=2, marker=paged[-1] if paged else None):
            paged.extend(page)
        assert paged == accounts
        assert await c.accounts(marker="unknown") == accounts  # as a server does: from the start

        assert await c.account(acme).delete() == 30
        for account in others:
            assert await c.account(account).delete() == 1
        assert await c.accounts() == []


def spread_account(placement: Placement) -> str:
    """An account whose slots land on two servers or more (two slots may share one)."""
    return next(name for n in range(100) if len(placement.account_servers(name := f"acme{n}")) >= 2)


def test_client_side_hashing_sync() -> None:
    with threaded_server() as one, threaded_server() as two, Client([one.url, two.url], subset_size=2) as c:
        acme = spread_account(Placement([one.url, two.url], 2))
        for n in range(10):
            c.queue(acme, f"q{n}").put("m", "x")
        with Client(one.url) as first, Client(two.url) as second:
            held = {one.url: first.account(acme).queues(), two.url: second.account(acme).queues()}
        assert all(held.values()) and sorted(held[one.url] + held[two.url]) == [f"q{n}" for n in range(10)]
        order = c.servers.for_account(acme)  # merged: the account's servers in slot order
        assert c.account(acme).queues() == held[order[0]] + held[order[1]]
        assert c.accounts() == [acme]
        assert c.account(acme).delete() == 10


# -- the package --------------------------------------------------------------------------------


def test_import_burrow_stays_cheap_and_exports_the_client() -> None:
    code = "import sys, burrow; assert 'burrow.client' not in sys.modules; print(burrow.Client.__module__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "burrow.client.sync_client"
    assert burrow.AsyncClient is AsyncClient and burrow.MessageAttributes is MessageAttributes
    with pytest.raises(AttributeError):
        burrow.nothing_here  # noqa: B018
