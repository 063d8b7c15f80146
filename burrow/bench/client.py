"""The Python load generator, run as a subprocess: ``python -m burrow.bench.client`` (config on stdin).

Protocol on stdin/stdout: the first stdin line is a JSON config; the client connects, prints
``ready``, waits for a ``go`` line, runs, and prints one JSON result line. Connections are
:class:`burrow.client.PipelineProtocol` (callbacks, no coroutine per request; responses framed by
the shared client code); ``depth`` requests are written at once per connection (1 = wrk-style
request/response, 100 = the 2011 pipelined method).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from typing import Any

from burrow.bench.procs import raise_nofile
from burrow.bench.workloads import Script, Static, make_script
from burrow.client import PipelineProtocol, Span, connect_many, encode_request
from burrow.http.server import run


class Stats:
    """Counters shared by the connections of one client process."""

    def __init__(self) -> None:
        self.responses = 0
        #: Responses by status code as on the wire (b"200").
        self.statuses: dict[bytes, int] = {}
        self.last = 0.0
        self.errors: list[str] = []


class LoadConnection(PipelineProtocol):
    """Keep ``depth`` requests in flight until the deadline or the script ends.

    Depth 1 is request/response; deeper pipelines are topped up once half of them are answered,
    so the server never waits for the generator's round trip.
    """

    def __init__(self, script: Script, depth: int, stats: Stats, done: asyncio.Future[None]) -> None:
        super().__init__(stats.statuses)
        self.script, self.depth, self.stats, self.done = script, depth, stats, done
        self.wants_spans = script.wants_body
        #: A script that always sends the same request: a batch is that request repeated.
        self.static = script.data if isinstance(script, Static) else None
        self.outstanding = 0
        self.deadline = 0.0
        self.finished = False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.finished:
            self.stats.errors.append(f"connection lost: {exc or 'closed by server'}")
            self._finish()

    def _finish(self) -> None:
        self.finished = True
        if not self.done.done():
            self.done.set_result(None)

    def start(self, deadline: float) -> None:
        self.deadline = deadline
        self._send()

    def _send(self) -> None:
        if self.static is not None and self.transport is not None:
            n = self.depth - self.outstanding
            self.outstanding += n
            self.transport.write(self.static * n)
            return
        batch: list[bytes] = []
        request = self.script.request
        for _ in range(self.depth - self.outstanding):
            data = request()
            if data is None:
                break
            batch.append(data)
        if self.transport is None or (not batch and not self.outstanding):
            self._finish()
            return
        if batch:
            self.outstanding += len(batch)
            self.transport.write(b"".join(batch))

    def responses(self, count: int, buf: bytes, spans: list[Span] | None) -> None:
        if spans is not None:
            response = self.script.response
            for code, _, body, end in spans:
                response(code, buf[body:end])
        self.stats.responses += count
        self.outstanding -= count
        if self.outstanding <= self.depth // 2:
            now = time.perf_counter()
            self.stats.last = max(self.stats.last, now)
            if now < self.deadline:
                self._send()
            elif not self.outstanding:
                self._finish()


async def _read_line() -> str:
    return await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)


async def run_load(config: dict[str, Any]) -> dict[str, Any]:
    """Connections x depth requests of one workload for ``duration`` s (or until the scripts end)."""
    loop = asyncio.get_running_loop()
    stats = Stats()
    connections: int = config["connections"]
    base: int = config["stream_base"]
    dones: list[asyncio.Future[None]] = [loop.create_future() for _ in range(connections)]
    scripts = [
        make_script(config["workload"], config["params"], base + i, config["streams"])
        for i in range(connections)
    ]
    made = iter(range(connections))

    def factory() -> LoadConnection:
        i = next(made)
        return LoadConnection(scripts[i], config["depth"], stats, dones[i])

    conns = await connect_many("127.0.0.1", config["port"], factory, connections)
    return await drive(conns, dones, stats, config["duration"])


async def drive(
    conns: list[LoadConnection], dones: list[asyncio.Future[None]], stats: Stats, duration: float
) -> dict[str, Any]:
    """Say ready, await go (a line on stdin), run the connections for ``duration`` s, report."""
    print("ready", flush=True)
    await _read_line()
    cpu0, start = time.process_time(), time.perf_counter()
    deadline = start + duration
    for conn in conns:
        conn.start(deadline)
    await asyncio.gather(*dones)
    end = stats.last or time.perf_counter()
    cpu = time.process_time() - cpu0
    for conn in conns:
        if conn.transport is not None:
            conn.transport.close()
    return {
        "responses": stats.responses,
        "statuses": {k.decode(): v for k, v in sorted(stats.statuses.items())},
        "elapsed": max(end - start, 1e-9),
        "cpu": cpu,
        "errors": stats.errors[:5],
    }


class Waiter(PipelineProtocol):
    """One long-poll GET; records when its response starts arriving, and its status."""

    wants_spans = True

    def __init__(self) -> None:
        super().__init__()
        self.at = 0.0
        self.status = 0

    def data_received(self, data: bytes) -> None:
        if not self.at:
            self.at = time.perf_counter()
        super().data_received(data)

    def responses(self, count: int, buf: bytes, spans: list[Span] | None) -> None:
        if not self.status and spans:
            self.status = int(spans[0][0])


class Waker(PipelineProtocol):
    """Sends one PUT at a time on a keep-alive connection; each response resolves ``reply``."""

    wants_spans = True

    def __init__(self) -> None:
        super().__init__()
        self.reply: asyncio.Future[int] | None = None

    def responses(self, count: int, buf: bytes, spans: list[Span] | None) -> None:
        if spans and self.reply is not None and not self.reply.done():
            self.reply.set_result(int(spans[-1][0]))


async def run_longpoll(config: dict[str, Any]) -> dict[str, Any]:
    """Hold ``waiters`` long polls on queues ``lp<i>``; then PUT one message per queue, one at a time.

    Wake latency is measured from the PUT's response (and, as an upper bound, from the PUT's send).
    """
    from burrow.bench.workloads import ACCOUNT, BODY

    loop = asyncio.get_running_loop()
    n: int = config["waiters"]
    wait: int = config["wait"]
    t0 = time.perf_counter()
    waiters = await connect_many("127.0.0.1", config["port"], Waiter, n)
    for i, waiter in enumerate(waiters):
        assert waiter.transport is not None
        waiter.transport.write(encode_request("GET", f"/v1.0/{ACCOUNT}/lp{i}?wait={wait}"))
    [waker] = await connect_many("127.0.0.1", config["port"], Waker, 1)
    print(json.dumps({"connected_s": time.perf_counter() - t0}), flush=True)
    await _read_line()  # the runner says go once the server has gone idle (all waits registered)
    early = sum(1 for w in waiters if w.at)
    sent: list[float] = []
    replied: list[float] = []
    statuses: dict[int, int] = {}
    start = time.perf_counter()
    for i in range(n):
        waker.reply = loop.create_future()
        sent.append(time.perf_counter())
        assert waker.transport is not None
        waker.transport.write(encode_request("PUT", f"/v1.0/{ACCOUNT}/lp{i}/w{i:015d}", BODY))
        status = await waker.reply
        replied.append(time.perf_counter())
        statuses[status] = statuses.get(status, 0) + 1
    wake_end = time.perf_counter()
    pending = [w for w in waiters if not w.at]
    limit = time.perf_counter() + 5.0
    while pending and time.perf_counter() < limit:
        await asyncio.sleep(0.01)
        pending = [w for w in pending if not w.at]
    from_reply = [(w.at - replied[i]) * 1e3 for i, w in enumerate(waiters) if w.at]
    from_send = [(w.at - sent[i]) * 1e3 for i, w in enumerate(waiters) if w.at]
    waiter_statuses: dict[int, int] = {}
    for w in waiters:
        waiter_statuses[w.status] = waiter_statuses.get(w.status, 0) + 1
        if w.transport is not None:
            w.transport.close()
    if waker.transport is not None:
        waker.transport.close()
    return {
        "waiters": n,
        "woken": len(from_reply),
        "early": early,
        "put_statuses": {str(k): v for k, v in sorted(statuses.items())},
        "waiter_statuses": {str(k): v for k, v in sorted(waiter_statuses.items())},
        "wake_seconds": wake_end - start,
        "from_reply_ms": from_reply,
        "from_send_ms": from_send,
    }


async def _main() -> None:
    config = json.loads(await _read_line())
    if config.get("cpus"):
        os.sched_setaffinity(0, config["cpus"])
    raise_nofile()
    runner = run_longpoll if config["mode"] == "longpoll" else run_load
    result = await runner(config)
    print(json.dumps(result), flush=True)


def main() -> int:
    run(_main())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
