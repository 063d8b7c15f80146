"""The Python load generator, run as a subprocess: ``python -m burrow.bench.client`` (config on stdin).

Protocol on stdin/stdout: the first stdin line is a JSON config; the client connects, prints
``ready``, waits for a ``go`` line, runs, and prints one JSON result line. Raw sockets, requests
pre-built per batch, responses counted by reading Content-Length; ``depth`` requests are written
at once per connection (1 = wrk-style request/response, 100 = the 2011 pipelined method).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from typing import Any, cast

from burrow.bench.procs import raise_nofile
from burrow.bench.workloads import Script, make_script
from burrow.http.server import run


class Stats:
    """Counters shared by the connections of one client process."""

    def __init__(self) -> None:
        self.responses = 0
        self.statuses: dict[int, int] = {}
        self.last = 0.0
        self.errors: list[str] = []


class LoadConnection(asyncio.Protocol):
    """Keep ``depth`` requests in flight until the deadline or the script ends.

    Depth 1 is request/response; deeper pipelines are topped up once half of them are answered,
    so the server never waits for the generator's round trip.
    """

    def __init__(self, script: Script, depth: int, stats: Stats, done: asyncio.Future[None]) -> None:
        self.script, self.depth, self.stats, self.done = script, depth, stats, done
        self.wants_body = script.wants_body
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.outstanding = 0
        self.deadline = 0.0
        self.finished = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses

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

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        pos, size = 0, len(buf)
        statuses = self.stats.statuses
        got = 0
        while True:
            head_end = buf.find(b"\r\n\r\n", pos)
            if head_end < 0:
                break
            status = int(buf[pos + 9 : pos + 12])
            at = buf.find(b"ength:", pos, head_end)  # Content-Length / content-length
            length = int(buf[at + 6 : buf.find(b"\r\n", at, head_end + 2)]) if at >= 0 else 0
            end = head_end + 4 + length
            if end > size:
                break
            statuses[status] = statuses.get(status, 0) + 1
            if self.wants_body:
                self.script.response(status, buf[head_end + 4 : end])
            got += 1
            pos = end
        self.buf = buf[pos:] if pos < size else b""
        if not got:
            return
        self.stats.responses += got
        self.outstanding -= got
        if self.outstanding <= self.depth // 2:
            now = time.perf_counter()
            self.stats.last = max(self.stats.last, now)
            if now < self.deadline:
                self._send()
            elif not self.outstanding:
                self._finish()


async def _read_line() -> str:
    return await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)


async def _connect(port: int, factory: Any, count: int, chunk: int = 500) -> list[Any]:
    """Open ``count`` connections, ``chunk`` at a time (so the listen backlog never overflows)."""
    loop = asyncio.get_running_loop()
    protocols: list[Any] = []
    for first in range(0, count, chunk):
        pairs = await asyncio.gather(
            *(loop.create_connection(factory, "127.0.0.1", port) for _ in range(min(chunk, count - first)))
        )
        protocols.extend(protocol for _, protocol in pairs)
    return protocols


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

    conns: list[LoadConnection] = await _connect(config["port"], factory, connections)
    print("ready", flush=True)
    await _read_line()
    cpu0, start = time.process_time(), time.perf_counter()
    deadline = start + config["duration"]
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
        "statuses": {str(k): v for k, v in sorted(stats.statuses.items())},
        "elapsed": max(end - start, 1e-9),
        "cpu": cpu,
        "errors": stats.errors[:5],
    }


class Waiter(asyncio.Protocol):
    """One long-poll GET; records when (and with which status) its response arrives."""

    def __init__(self) -> None:
        self.buf = b""
        self.at = 0.0
        self.status = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses

    def data_received(self, data: bytes) -> None:
        if not self.at:
            self.at = time.perf_counter()
        self.buf += data
        if not self.status and len(self.buf) >= 12:
            self.status = int(self.buf[9:12])


class Waker(asyncio.Protocol):
    """Sends one PUT at a time on a keep-alive connection; each response resolves ``reply``."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.reply: asyncio.Future[int] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses

    def data_received(self, data: bytes) -> None:
        self.buf += data
        head_end = self.buf.find(b"\r\n\r\n")
        if head_end < 0:
            return
        at = self.buf.find(b"ength:", 0, head_end)
        length = int(self.buf[at + 6 : self.buf.find(b"\r\n", at)]) if at >= 0 else 0
        if len(self.buf) < head_end + 4 + length:
            return
        status = int(self.buf[9:12])
        self.buf = self.buf[head_end + 4 + length :]
        if self.reply is not None and not self.reply.done():
            self.reply.set_result(status)


async def run_longpoll(config: dict[str, Any]) -> dict[str, Any]:
    """Hold ``waiters`` long polls on queues ``lp<i>``; then PUT one message per queue, one at a time.

    Wake latency is measured from the PUT's response (and, as an upper bound, from the PUT's send).
    """
    from burrow.bench.workloads import ACCOUNT, BODY, request_bytes

    loop = asyncio.get_running_loop()
    n: int = config["waiters"]
    wait: int = config["wait"]
    t0 = time.perf_counter()
    waiters: list[Waiter] = await _connect(config["port"], Waiter, n)
    for i, waiter in enumerate(waiters):
        assert waiter.transport is not None
        waiter.transport.write(request_bytes("GET", f"/v1.0/{ACCOUNT}/lp{i}?wait={wait}"))
    _, waker = await loop.create_connection(Waker, "127.0.0.1", config["port"])
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
        waker.transport.write(request_bytes("PUT", f"/v1.0/{ACCOUNT}/lp{i}/w{i:015d}", BODY))
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
