"""Burrow over Redis when Redis goes away, and comes back.

Each test starts its own ``redis-server`` (:mod:`burrow.testing.redis_server`) on a free
port, with AOF ``appendfsync always`` in a scratch directory, and real ``burrow serve
--backend redis://...`` processes over it. Producers PUT and takers take (get and hide, long
polls) and delete over :class:`burrow.client.Connection`, recording a history
(:mod:`burrow.testing.history`). The faults:

* Redis killed (SIGKILL) and started again on the same port;
* Burrow's Redis connections killed by Redis (``CLIENT KILL``), Redis itself staying up;
* a fault proxy (:mod:`burrow.testing.faultproxy`) between Burrow and Redis that resets
  every connection, or turns into a black hole (packets silently dropped).

What must hold, with Redis down and after:

* every request is answered, within :data:`BOUND` seconds (plus its own ``wait``): 503 with
  a JSON error while Redis is unreachable, never a 500, never a hang;
* the server reconnects by itself once Redis is back (same port): creates and takes
  succeed again within :data:`RECOVERY` seconds;
* no acknowledged message is lost and no hide overlaps (AOF ``always``: what Redis
  acknowledged survives its crash);
* a long poll parked before the outage answers 404 when its wait ends, or is woken by a
  PUT (on its own or another process) made after Redis returned; never stuck past its wait;
* a server started while Redis is down answers 503 (``/health/ready`` too) and serves once
  Redis is up;
* at ``maxmemory`` (``noeviction``) creates get a 503 that says why, nothing is evicted or
  lost, and service resumes once Redis has room.

``BURROW_SOAK=1`` repeats each outage more times.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import orjson
import pytest

from burrow.client import Connection, Reply
from burrow.testing.faultproxy import FaultProxy
from burrow.testing.history import History, Op
from burrow.testing.process import ServeProcess
from burrow.testing.redis_cluster import require_tools
from burrow.testing.redis_server import RedisProcess

SOAK = os.environ.get("BURROW_SOAK", "") not in ("", "0")
#: Outages per test.
ROUNDS = 5 if SOAK else 1

#: The backend's deadline for one round trip to Redis (the URL's ``timeout``; default 3 s,
#: shorter here so that a black hole is noticed quickly), and for a connect within it.
TIMEOUT = 1.0
CONNECT_TIMEOUT = 0.5
#: Seconds any request may take while Redis is unreachable, beyond its own ``wait``: a call
#: fails once its round trip passes TIMEOUT (the connect included), and a request makes at
#: most two calls in a row (a PUT or take one; a long poll's last attempt one), plus slack
#: for a loaded machine.
BOUND = 2 * TIMEOUT + 2.0
#: Seconds from Redis being reachable again to the first acknowledged create: a batch that
#: was waiting on a dead connection ends within TIMEOUT, and the next one reconnects.
RECOVERY = TIMEOUT + 3.0
#: Seconds Redis stays unreachable; a black hole must outlast TIMEOUT, or no request would
#: notice it.
OUTAGE = 1.5
BLACK_HOLE = TIMEOUT + 1.5

QUEUE = "/v1.0/outage/jobs"
#: ``wait`` of the takers' long polls.
TAKE_WAIT = 1
TAKE_HIDE = 2
#: Chance that a taker never deletes what it took: its hide runs out and it comes back.
ABANDON = 0.1
#: Statuses a request may get in these tests (404: a take that found nothing; 503: Redis down).
EXPECTED = {200, 201, 204, 404, 503}


def aof_always(tmp: Path) -> RedisProcess:
    return RedisProcess(tmp / "redis", {"appendonly": "yes", "appendfsync": "always"})


@pytest.fixture
async def redis(tmp_path: Path) -> AsyncIterator[RedisProcess]:
    require_tools()
    async with aof_always(tmp_path) as server:
        yield server


@asynccontextmanager
async def serving(url: str, count: int = 1) -> AsyncIterator[list[tuple[ServeProcess, str]]]:
    """``count`` ``burrow serve`` processes over the store at ``url``; stopped cleanly (SIGTERM,
    exit 0) at the end, which also proves they shut down after an outage."""
    processes: list[tuple[ServeProcess, str]] = []
    try:
        for _ in range(count):
            serve = ServeProcess("--port", "0", "--backend", url, "--clean-interval", "0.2")
            processes.append((serve, await serve.start()))
        yield processes
    finally:
        failures = []
        for serve, _ in processes:
            if serve.proc is not None and serve.proc.returncode is None:
                try:
                    await serve.stop()
                except (TimeoutError, AssertionError) as error:
                    if serve.proc.returncode is None:
                        await serve.kill()
                    records = [line for line in serve.log if line[:4].isdigit()]  # not traceback lines
                    failures.append(f"{error!r}; its last log records:\n{''.join(records[-8:])}")
        assert not failures, "burrow serve did not stop cleanly on SIGTERM: " + "\n".join(failures)


def store_url(port: int) -> str:
    options = f"prefix=outage-{uuid.uuid4().hex[:8]}&timeout={TIMEOUT:g}&connect_timeout={CONNECT_TIMEOUT:g}"
    return f"redis://127.0.0.1:{port}/0?{options}"


async def test_the_private_redis_keeps_what_it_acknowledged_across_sigkill(redis: RedisProcess) -> None:
    """The premise of the no-loss checks: with AOF ``always``, a write Redis answered survives
    a SIGKILL, and the restarted server listens on the same port."""
    port = redis.port
    for n in range(50):
        assert await redis.command("SET", f"k{n}", n) in (True, b"OK")
    await redis.kill()
    assert not await redis.pings()
    await redis.start()
    assert redis.port == port
    assert await redis.command("GET", "k49") == b"49"
    assert await redis.command("DBSIZE") == 50


# -- the load --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """One request as the client saw it: when it started (monotonic), how long it took."""

    started: float
    seconds: float
    method: str
    target: str
    status: int
    body: bytes

    @property
    def excess(self) -> float:
        """Seconds beyond the request's own ``wait``."""
        return self.seconds - (TAKE_WAIT if "wait=" in self.target else 0)


@dataclass
class Load:
    """Producers and takers of one queue on one Burrow server, recording a history.

    Burrow itself stays up throughout, so a broken connection to it, or a response slower
    than :data:`BOUND`, is a finding (``broken``), not a fault to ride out.
    """

    history: History
    url: str
    producers: int = 2
    takers: int = 2
    answers: list[Answer] = field(default_factory=list)
    broken: list[str] = field(default_factory=list)
    stopping: bool = False
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    rng: random.Random = field(default_factory=lambda: random.Random(7))

    def start(self) -> None:
        spawn = asyncio.get_running_loop().create_task
        self.tasks += [spawn(self.producer(f"p{i}")) for i in range(self.producers)]
        self.tasks += [spawn(self.taker(f"t{i}")) for i in range(self.takers)]

    async def stop(self) -> None:
        self.stopping = True
        done, pending = await asyncio.wait(self.tasks, timeout=BOUND + TAKE_WAIT + 5)
        for task in pending:
            task.cancel()
        for task in done:
            task.result()
        assert not pending, f"{len(pending)} clients did not stop"

    async def send(
        self, conn: Connection, op: Op, method: str, target: str, body: bytes = b""
    ) -> Reply | None:
        """One request; a 5xx or a broken connection leaves ``op`` unknown (None returned)."""
        started = time.monotonic()
        try:
            reply = await conn.request(method, target, body)
        except (OSError, EOFError, TimeoutError) as error:
            self.history.unknown(op)
            self.broken.append(f"{method} {target}: {error!r} after {time.monotonic() - started:.1f}s")
            await conn.close()
            return None
        self.answers.append(
            Answer(started, time.monotonic() - started, method, target, reply.status, reply.body)
        )
        if reply.status >= 500:
            self.history.unknown(op)  # a 503 promises nothing: the write may have reached Redis
            return None
        return reply

    async def producer(self, name: str) -> None:
        async with Connection(self.url, timeout=BOUND + 30) as conn:
            for n in range(10**9):
                if self.stopping:
                    return
                value = f"{name}-{n}"
                op = self.history.invoke("create", name, (value,), ttl=600)
                reply = await self.send(conn, op, "PUT", f"{QUEUE}/{value}?ttl=600", value.encode())
                if reply is not None:
                    (self.history.ok if reply.status == 201 else self.history.failed)(op)
                await asyncio.sleep(0.01)

    async def taker(self, name: str) -> None:
        async with Connection(self.url, timeout=BOUND + 30) as conn:
            while not self.stopping:
                op = self.history.invoke("take", name, hide=TAKE_HIDE)
                target = (
                    f"{QUEUE}?limit={self.rng.choice((1, 3))}&hide={TAKE_HIDE}&wait={TAKE_WAIT}&detail=all"
                )
                reply = await self.send(conn, op, "POST", target)
                if reply is None:
                    await asyncio.sleep(0.05)
                    continue
                if reply.status == 404:
                    self.history.ok(op, [])
                    continue
                if reply.status != 200:
                    self.history.failed(op)
                    continue
                values = [str(m["id"]) for m in orjson.loads(reply.body)]
                self.history.ok(op, values)
                if self.rng.random() < ABANDON:
                    continue
                for value in values:
                    delete = self.history.invoke("delete", name, (value,))
                    reply = await self.send(conn, delete, "DELETE", f"{QUEUE}/{value}")
                    if reply is not None:
                        (self.history.ok if reply.status == 204 else self.history.failed)(delete)


async def drain(history: History, url: str) -> None:
    """The history's final drain: every message left, hidden or not."""
    op = history.invoke("drain", "drain")
    seen: list[str] = []
    async with Connection(url, timeout=30) as conn:
        marker = ""
        while True:
            reply = await conn.request("GET", f"{QUEUE}?match_hidden=true&detail=id&limit=1000{marker}")
            if reply.status == 404:
                break
            assert reply.status == 200, reply
            ids = [str(m) if isinstance(m, str) else str(m["id"]) for m in orjson.loads(reply.body)]
            seen += ids
            marker = f"&marker={ids[-1]}"
    history.ok(op, seen)


async def first_create(history: History, url: str, since: float) -> float:
    """PUT probes until one is acknowledged; seconds from ``since`` to that answer."""
    async with Connection(url, timeout=BOUND + 30) as conn:
        for n in range(10**9):
            value = f"probe-{n}-{uuid.uuid4().hex[:6]}"
            op = history.invoke("create", "probe", (value,), ttl=600)
            try:
                reply = await conn.request("PUT", f"{QUEUE}/{value}?ttl=600", value.encode())
            except (OSError, EOFError, TimeoutError):
                history.unknown(op)
                await conn.close()
                raise
            if reply.status == 201:
                history.ok(op)
                return time.monotonic() - since
            assert reply.status == 503, f"probe answered {reply.status}: {reply.body!r}"
            history.unknown(op)
            assert time.monotonic() - since < RECOVERY, (
                f"no create acknowledged {RECOVERY}s after Redis returned; the last answer: {reply.body!r}"
            )
            await asyncio.sleep(0.05)
    raise AssertionError("unreachable")


# -- the faults --------------------------------------------------------------------------------


@dataclass
class Rig:
    """What a fault acts on: the Redis server, and the proxy Burrow reaches it through."""

    redis: RedisProcess
    proxy: FaultProxy


@dataclass(frozen=True)
class Fault:
    """Make Redis unreachable (``down``), then reachable again (``up``), ``seconds`` apart.

    ``visible``: whether requests must notice (some 503s); a ``CLIENT KILL`` may be ridden
    out by a reconnect within the request, so it need not be.
    """

    down: Callable[[Rig], Awaitable[None]]
    up: Callable[[Rig], Awaitable[None]]
    seconds: float
    visible: bool = True
    #: whether Burrow reaches Redis through the fault proxy (else directly)
    proxied: bool = False


async def _nothing(rig: Rig) -> None:
    return None


async def _kill(rig: Rig) -> None:
    await rig.redis.kill()


async def _start(rig: Rig) -> None:
    await rig.redis.start()


async def _client_kill(rig: Rig) -> None:
    """Close every client connection of Redis's but our own, pub/sub ones included, a few times."""
    for _ in range(5):
        await rig.redis.command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
        await rig.redis.command("CLIENT", "KILL", "TYPE", "pubsub", "SKIPME", "yes")
        await asyncio.sleep(0.2)


async def _reset(rig: Rig) -> None:
    await rig.proxy.reset()


async def _black_hole(rig: Rig) -> None:
    await rig.proxy.black_hole()


async def _heal(rig: Rig) -> None:
    await rig.proxy.pass_through()


FAULTS: dict[str, Fault] = {
    "sigkill": Fault(_kill, _start, OUTAGE),
    "client-kill": Fault(_client_kill, _nothing, 0.0, visible=False),
    "proxy-reset": Fault(_reset, _heal, OUTAGE, proxied=True),
    "proxy-black-hole": Fault(_black_hole, _heal, BLACK_HOLE, proxied=True),
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
async def test_outage_under_load(fault: str, redis: RedisProcess) -> None:
    how = FAULTS[fault]
    history = History()
    async with AsyncExitStack() as stack:
        proxy = await stack.enter_async_context(FaultProxy("127.0.0.1", redis.port))
        rig = Rig(redis, proxy)
        port = proxy.port if how.proxied else redis.port
        [(serve, url)] = await stack.enter_async_context(serving(store_url(port)))
        load = Load(history, url)
        load.start()
        windows: list[tuple[float, float]] = []  # (down, up) of each outage, monotonic
        recoveries: list[float] = []
        for _ in range(ROUNDS):
            await asyncio.sleep(1.0)
            down = time.monotonic()
            await how.down(rig)
            await asyncio.sleep(how.seconds)
            await how.up(rig)
            up = time.monotonic()
            windows.append((down, up))
            recoveries.append(await first_create(history, url, up))
        await asyncio.sleep(1.0)  # service must go on, not just answer one probe
        await load.stop()
        await drain(history, url)
        log = "".join(serve.log[-30:])
    report = history.check()
    statuses = Counter(a.status for a in load.answers)
    slowest = max(load.answers, key=lambda a: a.excess)
    print(
        f"\n[outage] {fault} x{ROUNDS}: statuses {dict(sorted(statuses.items()))};"
        f" slowest {slowest.method} {slowest.seconds:.2f}s ({slowest.status});"
        f" first create back after {', '.join(f'{r:.2f}s' for r in recoveries)}\n"
        f"[history] {report.summary()}",
        flush=True,
    )
    assert not load.broken, f"connections to Burrow broke: {load.broken[:5]}\n{log}"
    unexpected = [a for a in load.answers if a.status not in EXPECTED]
    assert not unexpected, f"unexpected statuses: {unexpected[:5]}\n{log}"
    for answer in load.answers:
        if answer.status == 503:
            error = orjson.loads(answer.body)
            assert set(error) >= {"error", "message"} and error["error"], answer
    assert slowest.excess <= BOUND, f"a request took {slowest.seconds:.1f}s: {slowest}"
    if how.visible:
        for down, up in windows:
            during = [a for a in load.answers if down <= a.started + a.seconds <= up + BOUND]
            assert any(a.status == 503 for a in during), f"no 503 while Redis was unreachable: {during[-5:]}"
    last_up = windows[-1][1]
    after = [a for a in load.answers if a.started > last_up + max(recoveries)]
    assert any(a.method == "PUT" and a.status == 201 for a in after), (
        "no create acknowledged after the outage"
    )
    assert any(a.method == "POST" and a.status == 200 for a in after), "no take delivered after the outage"
    assert report.ok, report.details()
    assert not report.lost and not report.hide_overlaps


# -- long polls across an outage -----------------------------------------------------------------


async def parked(poll: asyncio.Task[tuple[Reply, float]], redis: RedisProcess) -> bool:
    """Whether the poll ended, or its server subscribed its queue's channel on Redis (the
    notifier subscribes a queue's channel while a long poll waits on it: nothing else does)."""
    return poll.done() or bool(await redis.command("PUBSUB", "CHANNELS"))


async def until(predicate: Callable[[], Awaitable[bool]], what: str, timeout: float = RECOVERY) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, f"not within {timeout}s: {what}"
        await asyncio.sleep(0.02)


async def long_poll(url: str, target: str) -> tuple[Reply, float]:
    """Send a long poll; its reply and how long it took."""
    started = time.monotonic()
    async with Connection(url, timeout=60) as conn:
        reply = await conn.request("POST", target)
    return reply, time.monotonic() - started


@pytest.mark.parametrize("writer", ["same-process", "other-process"])
async def test_a_put_after_redis_returns_wakes_a_long_poll_parked_before(
    writer: str, redis: RedisProcess
) -> None:
    wait = 20
    queue = "/v1.0/outage/woken"
    async with serving(store_url(redis.port), count=2) as servers:
        poller = servers[0][1]
        putter = servers[0][1] if writer == "same-process" else servers[1][1]
        poll = asyncio.create_task(long_poll(poller, f"{queue}?limit=1&hide=30&wait={wait}&detail=all"))

        subscribed = partial(parked, poll, redis)
        await until(subscribed, "the long poll parked (its channel subscribed)")
        # The engine subscribes *before* its last attempt: let that attempt (a Redis round
        # trip) finish, or the kill below may catch it and end the poll with a 503.
        await asyncio.sleep(0.5)
        assert not poll.done(), poll.result()
        for _ in range(ROUNDS):
            await redis.kill()
            await asyncio.sleep(OUTAGE)
            await redis.start()
            await until(subscribed, "the notifier subscribed again after Redis returned")
        assert not poll.done(), f"the poll ended during the outage: {poll.result()}"
        async with Connection(putter, timeout=BOUND + 30) as conn:
            for _ in range(100):  # the putter's server may still be reconnecting
                reply = await conn.request("PUT", f"{queue}/m1?ttl=60", b"hello")
                if reply.status == 201:
                    break
                assert reply.status == 503, reply
                await asyncio.sleep(0.05)
            assert reply.status == 201, reply
        put_at = time.monotonic()
        reply, _ = await asyncio.wait_for(poll, BOUND)
        woken_after = time.monotonic() - put_at
        print(f"\n[outage] long poll woken {woken_after:.3f}s after the PUT ({writer})", flush=True)
        assert reply.status == 200, reply
        assert [m["id"] for m in orjson.loads(reply.body)] == ["m1"]
        assert woken_after < 2.0, "the PUT did not wake the poll: it was found by a late retry"


async def test_a_long_poll_parked_before_an_outage_answers_when_its_wait_ends(redis: RedisProcess) -> None:
    wait = 4
    queue = "/v1.0/outage/empty"
    async with serving(store_url(redis.port)) as [(_, url)]:
        poll = asyncio.create_task(long_poll(url, f"{queue}?limit=1&hide=30&wait={wait}"))
        await until(partial(parked, poll, redis), "the long poll parked (its channel subscribed)")
        assert not poll.done(), poll.result()
        await redis.kill()
        await asyncio.sleep(OUTAGE)
        await redis.start()
        reply, seconds = await asyncio.wait_for(poll, wait + BOUND)
        print(
            f"\n[outage] long poll (wait={wait}) parked across an outage answered after {seconds:.2f}s",
            flush=True,
        )
        assert reply.status == 404, reply
        assert wait - 0.5 <= seconds <= wait + BOUND


async def test_a_server_started_while_redis_is_down_serves_once_it_is_up(tmp_path: Path) -> None:
    """Start order does not matter: Burrow starts without Redis, answers 503 (readiness too),
    and serves as soon as Redis answers; readiness follows Redis down and up again."""
    require_tools()
    redis = aof_always(tmp_path)
    await redis.start()  # to learn its port
    await redis.kill()
    try:
        async with serving(store_url(redis.port)) as [(_, url)], Connection(url, timeout=BOUND + 30) as conn:
            for method, target in (("GET", "/health/ready"), ("PUT", f"{QUEUE}/early?ttl=60")):
                reply = await conn.request(method, target, b"early" if method == "PUT" else b"")
                assert reply.status == 503, reply
                assert orjson.loads(reply.body)["error"] == "storage_unavailable", reply
            assert (await conn.request("GET", "/health/live")).status == 200
            await redis.start()
            up = time.monotonic()

            async def ready() -> bool:
                return (await conn.request("GET", "/health/ready")).status == 200

            await until(ready, "ready after Redis started")
            print(f"\n[outage] ready {time.monotonic() - up:.2f}s after Redis started", flush=True)
            assert (await conn.request("PUT", f"{QUEUE}/late?ttl=60", b"late")).status == 201
            await redis.kill()
            started = time.monotonic()
            assert (await conn.request("GET", "/health/ready")).status == 503
            assert time.monotonic() - started <= BOUND
            await redis.start()
            await until(ready, "ready after Redis restarted")
            reply = await conn.request("GET", f"{QUEUE}?detail=id")
            assert reply.status == 200 and orjson.loads(reply.body) == ["late"], reply  # AOF kept it
    finally:
        await redis.kill()


# -- Redis full ------------------------------------------------------------------------------------

#: A Redis small enough to fill in a moment, that refuses rather than evicts.
FULL = {"maxmemory": "3mb", "maxmemory-policy": "noeviction"}
BODY = b"x" * 10_000


async def fill(conn: Connection, queue: str) -> tuple[list[str], Reply]:
    """PUT until Redis refuses; the ids acknowledged and the refusal."""
    stored: list[str] = []
    for n in range(10_000):
        reply = await conn.request("PUT", f"{queue}/m{n:05d}?ttl=600", BODY)
        if reply.status != 201:
            return stored, reply
        stored.append(f"m{n:05d}")
    raise AssertionError("Redis never refused a write: maxmemory not in force?")


async def test_at_maxmemory_writes_get_503_and_nothing_acknowledged_is_lost(tmp_path: Path) -> None:
    """``noeviction`` at ``maxmemory``: a create is refused with a 503 that says why (never
    a 500, never an eviction), and once Redis has room again (``maxmemory`` raised) service
    resumes with every acknowledged message there."""
    require_tools()
    queue = "/v1.0/full/jobs"
    async with (
        RedisProcess(tmp_path / "redis", FULL) as redis,
        serving(store_url(redis.port)) as [(_, url)],
        Connection(url, timeout=BOUND + 30) as conn,
    ):
        stored, refused = await fill(conn, queue)
        assert refused.status == 503, refused
        error = orjson.loads(refused.body)
        assert error["error"] == "storage_unavailable" and "maxmemory" in error["message"], error
        info = await redis.command("INFO", "stats")
        assert info["evicted_keys"] == 0
        await redis.command("CONFIG", "SET", "maxmemory", "0")
        assert (await conn.request("PUT", f"{queue}/after?ttl=600", BODY)).status == 201
        reply = await conn.request("GET", f"{queue}?detail=id&limit=1000")
        assert reply.status == 200
        assert set(stored) | {"after"} == set(orjson.loads(reply.body))
        print(f"\n[outage] maxmemory 3mb: {len(stored)} creates of 10 kB acknowledged, then 503", flush=True)


async def test_at_maxmemory_consumers_can_still_take_and_delete(tmp_path: Path) -> None:
    """Deleting frees memory, so a full Redis should let consumers drain the queue (as the
    SQLite backend does on a full disk); only writes that add messages should be refused."""
    require_tools()
    queue = "/v1.0/full/jobs"
    async with (
        RedisProcess(tmp_path / "redis", FULL) as redis,
        serving(store_url(redis.port)) as [(_, url)],
        Connection(url, timeout=BOUND + 30) as conn,
    ):
        _, refused = await fill(conn, queue)
        assert refused.status == 503, refused
        for _ in range(5):
            reply = await conn.request("POST", f"{queue}?limit=2&hide=30&detail=id")
            assert reply.status == 200, reply
            for mid in orjson.loads(reply.body):
                assert (await conn.request("DELETE", f"{queue}/{mid}")).status == 204
        assert (await conn.request("DELETE", f"{queue}?limit=100")).status == 204
        assert (await conn.request("PUT", f"{queue}/room-again?ttl=600", BODY)).status == 201
        assert int((await redis.command("INFO", "memory"))["maxmemory"]) > 0  # no one lifted the limit
