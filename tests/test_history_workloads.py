"""Workloads over real servers, judged by the history checker (:mod:`burrow.testing.history`).

Producers create messages with unique values (a mix of ttls, and delays), takers take with a
hide (long polls with ``wait``) and delete, some takers "crash" and never delete so their hides
run out and the messages come back; a final drain lists what is left. Every run prints the
checker's figures and must show 0 lost, 0 unexpected, 0 hide overlaps, 0 delivered after a
delete or after the ttl (duplicates are counted: delivery is at-least-once). The runs:

* the burrow v1.0 API and the SQS API (boto3) on every backend of ``SERVER_BACKENDS``,
  server in-process;
* SIGKILL and restart loops of a ``python -m burrow serve`` process on the SQLite file
  (``--fsync batch``), ``BURROW_HISTORY_CYCLES`` cycles (50 here, 1,000 with ``BURROW_SOAK=1``),
  the history spanning every cycle;
* SIGSTOP / SIGCONT of a ``burrow serve`` process on every backend, paused longer than the
  short hides and shorter than the long ones;
* the engine's clock jumping forward past every short ttl and back again, in-process on
  every backend.

``BURROW_SOAK=1`` makes every run longer (and the cycles 1,000). Run with ``-s`` to see the figures.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import signal
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import orjson
import pytest
from botocore.exceptions import BotoCoreError, ClientError

from burrow.client import Connection, Reply
from burrow.clock import Clock
from burrow.config import Settings
from burrow.testing.backends import SERVER_BACKENDS
from burrow.testing.history import History, Op, Report, Stamp
from burrow.testing.process import ServeProcess
from burrow.testing.server import running_server
from tests.boto import sqs_client

SOAK = os.environ.get("BURROW_SOAK", "") not in ("", "0")
#: SIGKILL cycles of the durable backend.
CYCLES = int(os.environ.get("BURROW_HISTORY_CYCLES", "1000" if SOAK else "50"))
#: Seconds of load of the plain workloads.
SECONDS = 30.0 if SOAK else 2.5
#: SIGSTOP pauses per run, and clock jumps (forward then back) per run.
PAUSES = 12 if SOAK else 1
JUMPS = 40 if SOAK else 4
#: What a client that lost its connection, or gave up waiting, sees.
LOST_CONNECTION = (OSError, EOFError, asyncio.TimeoutError)


def report_of(name: str, history: History, extra: str = "") -> Report:
    """Judge ``history``, print the figures, and fail with the first anomalies if any."""
    report = history.check()
    print(f"\n[history] {name}: {report.summary()}{extra}", flush=True)
    assert report.ok, report.details()
    return report


# -- the burrow v1.0 workload --------------------------------------------------------------------


@dataclass(frozen=True)
class Mix:
    """The shape of a v1.0 load."""

    producers: int = 3
    takers: int = 3
    crashers: int = 1
    #: hide of a taker's take (takers delete within it) and of a crasher's (never deleted)
    take_hide: int = 3
    crash_hide: int = 1
    wait: int = 1
    #: seconds a producer / taker waits for a response before calling the outcome unknown
    create_timeout: float | None = None
    take_timeout: float | None = None
    #: chance that a taker "crashes" after a take: it never deletes what it got
    abandon: float = 0.05
    #: seconds between a producer's creates, and between a crasher's takes
    pace: float = 0.004
    crash_pace: float = 0.03


#: (ttl, hide) of a create, by weight: long-lived, short-lived, delayed, dead before visible.
CREATES = [((60, 0), 70), ((2, 0), 10), ((60, 1), 10), ((1, 2), 10)]


class V1Load:
    """Clients of one queue over the burrow v1.0 API, recording into one history.

    A client whose connection breaks records the operation in flight as unknown and carries
    on with a new connection (or ends, once :meth:`stop` was called). Any other error ends it
    and :meth:`stop` raises it.
    """

    def __init__(self, history: History, url: str, queue: str, prefix: str, mix: Mix, rng: random.Random):
        self.history, self.url, self.queue, self.prefix, self.mix = history, url, queue, prefix, mix
        self.rng = rng
        self.stopping = False
        self.tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        mix, spawn = self.mix, asyncio.get_running_loop().create_task
        self.tasks += [spawn(self.producer(f"{self.prefix}p{i}")) for i in range(mix.producers)]
        self.tasks += [spawn(self.taker(f"{self.prefix}t{i}", mix.take_hide)) for i in range(mix.takers)]
        self.tasks += [
            spawn(self.taker(f"{self.prefix}x{i}", mix.crash_hide, crash=True)) for i in range(mix.crashers)
        ]

    async def stop(self, grace: float = 10.0) -> None:
        """Let every client finish its operation in flight, then end."""
        self.stopping = True
        done, pending = await asyncio.wait(self.tasks, timeout=grace)
        for task in pending:
            task.cancel()
        for task in done:
            task.result()
        assert not pending, f"{len(pending)} clients did not stop within {grace}s"

    async def request(
        self, conn: Connection, op: Op, method: str, target: str, body: bytes = b""
    ) -> Reply | None:
        """Send; on a broken connection record ``op`` unknown, close, and return None."""
        try:
            return await conn.request(method, target, body)
        except ConnectionRefusedError:  # no server listening: nothing was sent
            self.history.failed(op)
            await conn.close()
            if not self.stopping:
                await asyncio.sleep(0.01)
            return None
        except LOST_CONNECTION:
            self.history.unknown(op)
            await conn.close()
            if not self.stopping:
                await asyncio.sleep(0.01)
            return None

    def settle(self, op: Op, reply: Reply, ok: int, values: list[str] | None = None) -> None:
        if reply.status == ok:
            self.history.ok(op, values)
        elif reply.status >= 500:  # a 503 promises nothing stored; unknown is the safe reading
            self.history.unknown(op)
        else:
            self.history.failed(op)

    async def producer(self, name: str) -> None:
        choices, weights = zip(*CREATES, strict=True)
        async with Connection(self.url, timeout=self.mix.create_timeout) as conn:
            for n in range(10**9):
                if self.stopping:
                    return
                value = f"{name}-{n}"
                ttl, hide = self.rng.choices(choices, weights)[0]
                op = self.history.invoke("create", name, (value,), ttl=ttl, hide=hide)
                target = f"{self.queue}/{value}?ttl={ttl}&hide={hide}"
                reply = await self.request(conn, op, "PUT", target, value.encode())
                if reply is not None:
                    self.settle(op, reply, 201)
                await asyncio.sleep(self.mix.pace)

    async def taker(self, name: str, hide: int, crash: bool = False) -> None:
        mix = self.mix
        async with Connection(self.url, timeout=mix.take_timeout) as conn:
            while not self.stopping:
                limit = 1 if crash else self.rng.choice((1, 1, 1, 3))
                op = self.history.invoke("take", name, hide=hide)
                target = f"{self.queue}?limit={limit}&hide={hide}&wait={mix.wait}&detail=all"
                reply = await self.request(conn, op, "POST", target)
                if reply is None:
                    continue
                if reply.status == 404:
                    self.history.ok(op, [])
                    continue
                values = values_of(reply) if reply.status == 200 else []
                self.settle(op, reply, 200, values)
                if crash:
                    await asyncio.sleep(mix.crash_pace)
                    continue
                if self.rng.random() < mix.abandon:
                    continue
                for value in values:
                    delete = self.history.invoke("delete", name, (value,))
                    reply = await self.request(conn, delete, "DELETE", f"{self.queue}/{value}")
                    if reply is None:
                        break
                    self.settle(delete, reply, 204)


def values_of(reply: Reply) -> list[str]:
    """The values of a message list: the id when the body matches it, else a value no create sent."""
    listed = orjson.loads(reply.body)
    assert isinstance(listed, list), listed
    out = []
    for message in listed:
        body = message.get("body")
        out.append(body if message["id"] == body else f"<id {message['id']!r} body {body!r}>")
    return out


async def drain(history: History, url: str, queue: str, ids_are_values: bool = True) -> int:
    """Record the final drain: every message left, hidden or not (no other client may be running)."""
    op = history.invoke("drain", "drain")
    seen: list[str] = []
    async with Connection(url, timeout=30) as conn:
        marker = ""
        while True:
            reply = await conn.request("GET", f"{queue}?match_hidden=true&detail=all&limit=1000{marker}")
            if reply.status == 404:
                break
            assert reply.status == 200, reply
            listed = orjson.loads(reply.body)
            if ids_are_values:
                seen += values_of(reply)
            else:
                seen += [str(m["body"]) for m in listed]
            marker = f"&marker={listed[-1]['id']}"
    history.ok(op, seen)
    return len(seen)


def settings_for(backend: str, tmp: Path, **changes: Any) -> Settings:
    url = SERVER_BACKENDS[backend].replace("{tmp}", str(tmp))
    return Settings(backend=url, clean_interval=0.1).replace(**changes)


@pytest.mark.parametrize("backend", sorted(SERVER_BACKENDS))
async def test_v1_workload(backend: str, tmp_path: Path) -> None:
    history = History()
    queue = "/v1.0/history/jobs"
    async with running_server(settings_for(backend, tmp_path)) as server:
        load = V1Load(history, server.url, queue, "", Mix(), random.Random(1))
        load.start()
        await asyncio.sleep(SECONDS)
        await load.stop()
        await drain(history, server.url, queue)
    report = report_of(f"v1.0 on {backend}, {SECONDS:g}s", history)
    assert report.figures["deliveries"] > 100 and report.duplicates, "the load was too light"


# -- the SQS workload ---------------------------------------------------------------------------


class SqsLoad:
    """Threads driving one SQS queue with boto3, recording into one history."""

    RETENTION = 60

    def __init__(self, history: History, url: str, account: str, queue: str, rng: random.Random) -> None:
        self.history, self.rng = history, rng
        self.stopping = threading.Event()
        make = sqs_client(url, account)
        self.queue_url = make.create_queue(
            QueueName=queue, Attributes={"MessageRetentionPeriod": str(self.RETENTION)}
        )["QueueUrl"]
        # made here, one at a time: creating boto3 clients is not thread-safe
        self.clients = [sqs_client(url, account) for _ in range(5)]

    def record(self, op: Op, call: Callable[[], Any]) -> Any:
        """Run one boto3 call, record its outcome, return its response (None unless ok)."""
        try:
            response = call()
        except ClientError as error:
            status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 500))
            (self.history.unknown if status >= 500 else self.history.failed)(op)
            return None
        except BotoCoreError:
            self.history.unknown(op)
            return None
        return response

    def producer(self, sqs: Any, name: str) -> None:
        for n in range(10**9):
            if self.stopping.is_set():
                return
            value = f"{name}-{n}"
            delay = 1 if self.rng.random() < 0.1 else 0
            op = self.history.invoke("create", name, (value,), ttl=self.RETENTION, hide=delay)
            send = partial(sqs.send_message, QueueUrl=self.queue_url, MessageBody=value, DelaySeconds=delay)
            if self.record(op, send) is not None:
                self.history.ok(op)

    def taker(self, sqs: Any, name: str, visibility: int, crash: bool) -> None:
        while not self.stopping.is_set():
            count = 1 if crash else self.rng.choice((1, 1, 3))
            op = self.history.invoke("take", name, hide=visibility)
            receive = partial(
                sqs.receive_message,
                QueueUrl=self.queue_url,
                MaxNumberOfMessages=count,
                VisibilityTimeout=visibility,
                WaitTimeSeconds=1,
            )
            response = self.record(op, receive)
            if response is None:
                continue
            messages = response.get("Messages", [])
            self.history.ok(op, [m["Body"] for m in messages])
            if crash:
                time.sleep(0.05)
                continue
            for m in messages:
                if self.rng.random() < 0.05:
                    continue  # this one is abandoned: its visibility timeout runs out
                delete = self.history.invoke("delete", name, (m["Body"],), receipt=op.id)
                remove = partial(
                    sqs.delete_message, QueueUrl=self.queue_url, ReceiptHandle=m["ReceiptHandle"]
                )
                if self.record(delete, remove) is not None:
                    self.history.ok(delete)

    async def run(self, seconds: float) -> None:
        a, b, c, d, e = self.clients
        jobs: list[Callable[[], None]] = [
            lambda: self.producer(a, "p0"),
            lambda: self.producer(b, "p1"),
            lambda: self.taker(c, "t0", 5, crash=False),
            lambda: self.taker(d, "t1", 5, crash=False),
            lambda: self.taker(e, "x0", 1, crash=True),
        ]
        loop = asyncio.get_running_loop()
        with ThreadPoolExecutor(len(jobs)) as pool:
            futures = [loop.run_in_executor(pool, job) for job in jobs]
            await asyncio.sleep(seconds)
            self.stopping.set()
            await asyncio.gather(*futures)


@pytest.mark.parametrize("backend", sorted(SERVER_BACKENDS))
async def test_sqs_workload(backend: str, tmp_path: Path) -> None:
    history = History()
    async with running_server(settings_for(backend, tmp_path)) as server:
        # boto3 blocks: the queue is made off the server's loop, like every other call
        load = await asyncio.to_thread(SqsLoad, history, server.url, "hist", "jobs", random.Random(2))
        await load.run(SECONDS)
        await drain(history, server.url, "/v1.0/hist/jobs", ids_are_values=False)
    report = report_of(f"SQS on {backend}, {SECONDS:g}s", history)
    assert report.figures["deliveries"] > 50 and report.duplicates, "the load was too light"


# -- burrow serve processes: SIGKILL, SIGSTOP ------------------------------------------------------


def server_process(backend: str, *args: str) -> ServeProcess:
    return ServeProcess("--backend", backend, "--port", "0", "--clean-interval", "0.1", *args)


def integrity(db: Path) -> str:
    conn = sqlite3.connect(db)
    try:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        conn.close()


async def test_sigkill_restart_cycles(tmp_path: Path) -> None:
    """SIGKILL at a random moment of the load, restart, again; one history across every cycle.

    Takers' hides (3 s) outlive several cycles, so hides must survive restarts; short ttls
    (1-2 s) run out across them.
    """
    db = tmp_path / "burrow.db"
    backend = f"sqlite:///{db}"
    history = History()
    queue = "/v1.0/history/crash"
    rng = random.Random(3)
    started = time.monotonic()
    for cycle in range(CYCLES):
        server = server_process(backend, "--fsync", "batch")
        url = await server.start()
        load = V1Load(history, url, queue, f"c{cycle}", Mix(pace=0.002), rng)
        load.start()
        await asyncio.sleep(rng.uniform(0.05, 0.5))
        await server.kill()
        await load.stop()
    server = server_process(backend)
    url = await server.start()
    await drain(history, url, queue)
    await server.stop()
    assert integrity(db) == "ok"
    report = report_of(f"SIGKILL x{CYCLES} on sqlite-file ({time.monotonic() - started:.1f}s)", history)
    assert report.figures["create ok"] > CYCLES and report.figures["delete ok"], "the load was too light"


@pytest.mark.parametrize("backend", sorted(SERVER_BACKENDS))
async def test_sigstop_longer_than_hides(backend: str, tmp_path: Path) -> None:
    """The server is stopped (SIGSTOP) for 1.5 s, longer than the crashers' 1 s hides and shorter
    than the takers' 3 s ones: after SIGCONT the short hides have run out, the long ones still
    run, and no take may overlap one. Producers give up after 0.5 s (unknown outcomes)."""
    tmp_path.mkdir(exist_ok=True)
    server = server_process(SERVER_BACKENDS[backend].replace("{tmp}", str(tmp_path)))
    url = await server.start()
    history = History()
    queue = "/v1.0/history/stopped"
    mix = Mix(create_timeout=0.5, take_hide=3, crash_hide=1, abandon=0.2)
    load = V1Load(history, url, queue, "", mix, random.Random(4))
    load.start()
    pauses: list[tuple[float, float]] = []  # (monotonic time of SIGSTOP, wall time of SIGCONT)
    try:
        for _ in range(PAUSES):
            await asyncio.sleep(0.7)
            stopped = time.monotonic()
            server.signal(signal.SIGSTOP)
            await asyncio.sleep(1.5)
            server.signal(signal.SIGCONT)
            pauses.append((stopped, time.time()))
        await asyncio.sleep(0.8)
        await load.stop()
        await drain(history, url, queue)
    finally:
        server.signal(signal.SIGCONT)
        await server.stop()
    # messages hidden by a take before a pause, not deleted before it: hides that still ran at
    # SIGCONT, and hides that ran out during the pause
    ops = history.ops
    deleted = {op.values[0]: op.completed for op in ops if op.kind == "delete" and op.acknowledged}
    held = [
        (op, stop, cont)
        for stop, cont in pauses
        for op in ops
        if op.kind == "take" and op.acknowledged and op.completed < stop
        for value in op.values
        if deleted.get(value, math.inf) > stop
    ]
    running = sum(1 for op, _, cont in held if op.server_lo + op.hide > cont)
    ran_out = sum(1 for op, stop, cont in held if stop < op.server_hi + op.hide < cont)
    extra = f"; hides running at SIGCONT {running}, run out during a pause {ran_out}"
    report = report_of(f"SIGSTOP 1.5s x{PAUSES} on {backend}", history, extra)
    assert report.figures["create unknown"], "no create was in flight during a pause"


# -- the engine's clock jumping ---------------------------------------------------------------


class JumpClock(Clock):
    """Wall time plus an offset that :meth:`jump` moves at once, forward or back.

    Long-poll timers are the base class's (``call_later`` of the remaining time as read when
    set). Read and jumped on the server's loop thread only.
    """

    def __init__(self) -> None:
        self.offsets = [0.0]
        #: the wall time (``time.time()``) each offset took effect
        self.since = [-math.inf]

    def __call__(self) -> float:
        return time.time() + self.offsets[-1]

    def jump(self, seconds: float) -> None:
        self.since.append(time.time())
        self.offsets.append(self.offsets[-1] + seconds)


class JumpTime:
    """The :class:`~burrow.testing.history.TimeSource` of a :class:`JumpClock`; its real time is
    the wall clock without the offset."""

    def __init__(self, clock: JumpClock) -> None:
        self.clock = clock

    def stamp(self) -> Stamp:
        epoch = len(self.clock.offsets) - 1
        wall = time.time()
        return Stamp(wall, wall + self.clock.offsets[epoch], epoch)

    def span(self, start: Stamp, end: Stamp) -> tuple[float, float]:
        """Bounds of the engine's time during [start, end]: its clock's readings, except that it
        never goes back, so after a backward jump it holds the highest reading made before."""
        offsets = self.clock.offsets[start.epoch : end.epoch + 1]
        held = self.highest(-math.inf, end.real)
        upper = end.real + max(offsets)
        return start.real + min(offsets), upper if held is None else max(upper, held)

    def highest(self, start: float, end: float) -> float | None:
        since, offsets = self.clock.since, self.clock.offsets
        best = -math.inf
        for k, offset in enumerate(offsets):
            until = since[k + 1] if k + 1 < len(since) else math.inf
            if since[k] <= end and until >= start:  # this offset held during [start, end]
                best = max(best, min(end, until) + offset)
        return best


@pytest.mark.parametrize("backend", sorted(SERVER_BACKENDS))
async def test_clock_jumps(backend: str, tmp_path: Path) -> None:
    """The server's clock jumps 30 s forward, past every short ttl (1-2 s) and hide, holds there
    0-0.3 s, and jumps back. No message may be delivered once the clock has passed its
    deadline, even after the clock came back.

    The engine's time never goes back, so a message that expired during the forward jump stays
    expired whether or not a cleaner pass removed it (:func:`test_backward_jump_before_a_cleaner_pass`).
    Long polls get a 2.5 s client timeout: one parked across a backward jump waits the jump's
    length more (its wait is measured on the clock, which went back)."""
    clock = JumpClock()
    history = History(JumpTime(clock))
    queue = "/v1.0/history/jumps"
    rng = random.Random(5)
    async with running_server(settings_for(backend, tmp_path), clock) as server:
        load = V1Load(history, server.url, queue, "", Mix(take_timeout=2.5), rng)
        load.start()
        for _ in range(JUMPS):
            await asyncio.sleep(rng.uniform(0.2, 0.5))
            clock.jump(30)
            await asyncio.sleep(rng.uniform(0.0, 0.3))
            clock.jump(-30)
        await asyncio.sleep(0.3)
        await load.stop()
        await drain(history, server.url, queue)
    report = report_of(f"clock jumps +-30s x{JUMPS} on {backend}", history)
    assert report.figures["expired unseen"], "no message expired across a jump"


@pytest.mark.parametrize("backend", sorted(SERVER_BACKENDS))
async def test_backward_jump_before_a_cleaner_pass(backend: str, tmp_path: Path) -> None:
    clock = JumpClock()
    history = History(JumpTime(clock))
    queue = "/v1.0/history/back"
    async with running_server(settings_for(backend, tmp_path, clean_interval=60), clock) as server:
        async with Connection(server.url) as conn:
            op = history.invoke("create", "p", ("m",), ttl=2)
            assert (await conn.request("PUT", f"{queue}/m?ttl=2", b"m")).status == 201
            history.ok(op)
            clock.jump(30)  # m expired: the queue is empty
            op = history.invoke("take", "t", hide=5)
            assert (await conn.request("POST", f"{queue}?limit=1&hide=5&detail=all")).status == 404
            history.ok(op, [])
            clock.jump(-30)
            op = history.invoke("take", "t", hide=5)
            reply = await conn.request("POST", f"{queue}?limit=1&hide=5&detail=all")
            history.ok(op, values_of(reply) if reply.status == 200 else [])
        await drain(history, server.url, queue)
    report = report_of(f"backward jump before a cleaner pass on {backend}", history)
    assert report.figures["expired unseen"] == 1


# -- the checker against servers that break the rules --------------------------------------------


class ScaledClock(Clock):
    """A server clock running ``rate`` times as fast as the wall clock the history reads."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.origin = time.time()

    def __call__(self) -> float:
        return self.origin + (time.time() - self.origin) * self.rate


@pytest.mark.parametrize(("rate", "caught"), [(4.0, ("hide_overlaps", "lost")), (0.25, ("after_ttl",))])
async def test_checker_catches_a_lying_server_clock(rate: float, caught: tuple[str, ...]) -> None:
    """The same workload, but the server's clock runs fast (hides and ttls end early: overlaps,
    and messages gone before their ttl) or slow (messages outlive their ttl): the checker,
    which believes the wall clock, must report it."""
    history = History()
    queue = "/v1.0/history/lying"
    async with running_server(settings_for("memory", Path()), ScaledClock(rate)) as server:
        load = V1Load(history, server.url, queue, "", Mix(abandon=0.2), random.Random(6))
        load.start()
        await asyncio.sleep(2.5)
        await load.stop()
        await drain(history, server.url, queue)
    report = history.check()
    print(f"\n[history] server clock at {rate:g}x the wall clock: {report.summary()}", flush=True)
    for name in caught:
        assert getattr(report, name), f"{name} not detected"
