"""SQS API throughput for issue 4, in one run: Burrow's SQS path vs its v1.0 path vs moto_server.

One *cycle* is send + receive + delete of one message, issued back to back on one
keep-alive connection, by ``--connections`` concurrent connections for ``--seconds``
(each connection works its own queue, so cycles never contend):

* ``burrow v1.0``: ``PUT /v1.0/bench/q{c}/m{n}``, ``POST /v1.0/bench/q{c}?limit=1&hide=60&detail=all``,
  ``DELETE /v1.0/bench/q{c}/{id}``;
* ``burrow SQS``: the boto3-shaped JSON 1.0 requests (``X-Amz-Target``, ``Content-Type``,
  a SigV4 ``Authorization`` header and ``X-Amz-Date``) for SendMessage, ReceiveMessage
  (MaxNumberOfMessages 1, WaitTimeSeconds 0) and DeleteMessage with the receipt handle;
* ``moto SQS``: exactly the same SQS requests against ``moto_server`` on loopback.

The two Burrow runs use one ``burrow serve`` process (same backend, ``--backend``), pinned
to one CPU, the load generator to the other(s). The load is :mod:`burrow.client` (callback-driven
connections for Burrow, coroutine ones for moto), not boto3, which would be the bottleneck.
Reported: cycles/s for each and the ratios SQS/v1.0 (target >= 0.5) and Burrow SQS / moto
(target >= 10).

Usage: ``.venv/bin/python benchmarks/sqs_bench.py`` (~25 s); ``--seconds 10`` for steadier figures.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import orjson

from burrow.bench.procs import Placement, pin, raise_nofile, start_burrow
from burrow.client import Connection, PipelineProtocol, Span, SyncConnection, connect_many, encode_request
from burrow.http.server import loop_factory, run

BODY = "b" * 100
AUTH = (
    "AWS4-HMAC-SHA256 Credential=bench/20260101/us-east-1/sqs/aws4_request, "
    "SignedHeaders=content-type;host;x-amz-date;x-amz-target, Signature=" + "0" * 64
)


Cycle = Callable[[Connection, int, int], Awaitable[None]]


def _check(status: int, body: bytes, what: str) -> None:
    if status >= 300:
        raise RuntimeError(f"{what} failed: {status} {body[:200]!r}")


_DATE: list[object] = [0, ""]


def sqs_headers(action: str) -> dict[str, str]:
    """The headers boto3 sends (the signature is not checked: the servers run in dev mode)."""
    second = int(time.time())
    if _DATE[0] != second:
        _DATE[:] = [second, time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(second))]
    return {
        "Content-Type": "application/x-amz-json-1.0",
        "X-Amz-Target": f"AmazonSQS.{action}",
        "X-Amz-Date": str(_DATE[1]),
        "Authorization": AUTH,
    }


def make_sqs_cycle(urls: list[str]) -> Cycle:
    async def cycle(conn: Connection, c: int, n: int) -> None:
        url = urls[c]
        send = orjson.dumps({"QueueUrl": url, "MessageBody": BODY})
        reply = await conn.request("POST", "/", send, sqs_headers("SendMessage"))
        _check(reply.status, reply.body, "SendMessage")
        receive = orjson.dumps({"QueueUrl": url, "MaxNumberOfMessages": 1, "WaitTimeSeconds": 0})
        reply = await conn.request("POST", "/", receive, sqs_headers("ReceiveMessage"))
        _check(reply.status, reply.body, "ReceiveMessage")
        handle = orjson.loads(reply.body)["Messages"][0]["ReceiptHandle"]
        delete = orjson.dumps({"QueueUrl": url, "ReceiptHandle": handle})
        reply = await conn.request("POST", "/", delete, sqs_headers("DeleteMessage"))
        _check(reply.status, reply.body, "DeleteMessage")

    return cycle


async def create_queues(host: str, port: int, count: int, tag: str) -> list[str]:
    urls = []
    async with Connection(host=host, port=port) as conn:
        for c in range(count):
            body = orjson.dumps({"QueueName": f"bench-{tag}-{c}"})
            reply = await conn.request("POST", "/", body, sqs_headers("CreateQueue"))
            _check(reply.status, reply.body, "CreateQueue")
            urls.append(orjson.loads(reply.body)["QueueUrl"])
    return urls


async def drive(host: str, port: int, connections: int, seconds: float, cycle: Cycle) -> float:
    """Cycles per second over ``seconds`` (after a short warm-up) with ``connections`` concurrent loops."""
    done = 0
    measuring = False
    stop = False

    async def loop(c: int) -> None:
        nonlocal done
        conn = Connection(host=host, port=port)
        n = 0
        try:
            while not stop:
                await cycle(conn, c, n)
                n += 1
                if measuring:
                    done += 1
        finally:
            await conn.close()

    tasks = [asyncio.create_task(loop(c)) for c in range(connections)]
    await asyncio.sleep(min(1.0, seconds / 4))  # warm-up
    measuring, start = True, time.perf_counter()
    await asyncio.sleep(seconds)
    measuring = False
    rate = done / (time.perf_counter() - start)
    stop = True
    await asyncio.gather(*tasks)
    return rate


_ID = re.compile(rb'"id":"([^"]+)"')
_HANDLE = re.compile(rb'"ReceiptHandle":"([^"]+)"')


def raw(method: str, target: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    return encode_request(method, target, body, headers)


class Steps:
    """The three requests of one cycle; each takes the previous response body."""

    def first(self, c: int, n: int) -> bytes:
        raise NotImplementedError

    def after(self, step: int, c: int, body: bytes) -> bytes | None:
        raise NotImplementedError


class V1Steps(Steps):
    def first(self, c: int, n: int) -> bytes:
        return raw("PUT", f"/v1.0/bench/q{c}/m{n}", {}, BODY.encode())

    def after(self, step: int, c: int, body: bytes) -> bytes | None:
        if step == 0:
            return raw("POST", f"/v1.0/bench/q{c}?limit=1&hide=60&detail=all", {})
        if step == 1:
            found = _ID.search(body)
            assert found is not None, body[:200]
            return raw("DELETE", f"/v1.0/bench/q{c}/{found.group(1).decode()}", {})
        return None


class SqsSteps(Steps):
    def __init__(self, urls: list[str]) -> None:
        self.urls = urls

    def first(self, c: int, n: int) -> bytes:
        body = orjson.dumps({"QueueUrl": self.urls[c], "MessageBody": BODY})
        return raw("POST", "/", sqs_headers("SendMessage"), body)

    def after(self, step: int, c: int, body: bytes) -> bytes | None:
        if step == 0:
            receive = orjson.dumps({"QueueUrl": self.urls[c], "MaxNumberOfMessages": 1, "WaitTimeSeconds": 0})
            return raw("POST", "/", sqs_headers("ReceiveMessage"), receive)
        if step == 1:
            found = _HANDLE.search(body)
            assert found is not None, body[:200]
            delete = orjson.dumps({"QueueUrl": self.urls[c], "ReceiptHandle": found.group(1).decode()})
            return raw("POST", "/", sqs_headers("DeleteMessage"), delete)
        return None


class CycleConnection(PipelineProtocol):
    """Runs cycles back to back on one keep-alive connection, entirely in callbacks (cheap)."""

    wants_spans = True

    def __init__(self, steps: Steps, c: int, state: dict[str, float]) -> None:
        super().__init__()
        self.steps, self.c, self.state = steps, c, state
        self.step = 0
        self.n = 0
        self.idle: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        assert self.transport is not None
        self.transport.write(self.steps.first(self.c, self.n))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.idle.done():
            self.idle.set_result(None)

    def responses(self, count: int, buf: bytes, spans: list[Span] | None) -> None:
        assert spans is not None and self.transport is not None
        for code, start, body, end in spans:  # one at a time: the next request waits for it
            if code[0] != 0x32:  # not 2xx
                raise RuntimeError(f"step {self.step} failed: {buf[start : start + 300]!r}")
            following = self.steps.after(self.step, self.c, buf[body:end])
            if following is not None:
                self.step += 1
                self.transport.write(following)
                continue
            self.step = 0
            self.n += 1
            if self.state["measuring"]:
                self.state["done"] += 1
            if self.state["stop"]:
                self.transport.close()
                return
            self.transport.write(self.steps.first(self.c, self.n))


async def drive_fast(host: str, port: int, connections: int, seconds: float, steps: Steps) -> float:
    """Like :func:`drive`, with callback-driven connections so that the generator costs less."""
    state = {"measuring": 0.0, "done": 0.0, "stop": 0.0}
    conns = []
    for c in range(connections):
        conns += await connect_many(host, port, functools.partial(CycleConnection, steps, c, state), 1)
    await asyncio.sleep(min(1.0, seconds / 4))
    state["measuring"], start = 1.0, time.perf_counter()
    await asyncio.sleep(seconds)
    state["measuring"] = 0.0
    rate = state["done"] / (time.perf_counter() - start)
    state["stop"] = 1.0
    await asyncio.wait_for(asyncio.gather(*(p.idle for p in conns)), 30)
    return rate


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_moto(cpus: tuple[int, ...]) -> tuple[subprocess.Popen[bytes], int]:
    exe = Path(sys.executable).with_name("moto_server")
    if not exe.exists():
        raise SystemExit(
            "sqs_bench: moto_server is not installed; pip install 'burrow[bench]' for the moto "
            "comparison, or pass --skip-moto"
        )
    port = free_port()
    proc = subprocess.Popen(
        [str(exe), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    pin(proc.pid, cpus)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with SyncConnection(port=port, timeout=5) as conn:
                conn.request("GET", "/")  # any answer: moto is serving HTTP
            return proc, port
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("moto_server did not start")


@dataclass
class Results:
    v1: float = 0.0
    sqs: float = 0.0
    moto: float = 0.0
    #: Cycles per second of server CPU: the fair ratio when the generator, not the server, is the limit.
    v1_per_cpu: float = 0.0
    sqs_per_cpu: float = 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per run")
    parser.add_argument("--connections", type=int, default=32, help="concurrent keep-alive connections")
    parser.add_argument("--moto-connections", type=int, default=8, help="connections for moto (threaded)")
    parser.add_argument("--backend", default="memory://", help="Burrow storage URL for both Burrow runs")
    parser.add_argument("--skip-moto", action="store_true")
    args = parser.parse_args(argv)

    raise_nofile()
    loop_name = loop_factory()[0]
    placement = Placement.split()
    pin(os.getpid(), placement.client)
    print(f"sqs_bench: {placement.describe()}; load generator on {loop_name}; backend {args.backend}")
    results = Results()
    with start_burrow(args.backend, placement.server) as server:
        host, port = server.host, server.port
        window = server.window(placement.client)
        results.v1 = run(drive_fast(host, port, args.connections, args.seconds, V1Steps()))
        use = window.stop()
        results.v1_per_cpu = results.v1 / max(use.server, 1e-9)
        print(
            f"  burrow v1.0 : {results.v1:9.0f} cycles/s (PUT + POST hide + DELETE)"
            f"  server CPU {use.server:.0%}, generator CPUs {use.client_cpus_busy:.0%}"
        )
        urls = run(create_queues(host, port, args.connections, "burrow"))
        window = server.window(placement.client)
        results.sqs = run(drive_fast(host, port, args.connections, args.seconds, SqsSteps(urls)))
        use = window.stop()
        results.sqs_per_cpu = results.sqs / max(use.server, 1e-9)
        print(
            f"  burrow SQS  : {results.sqs:9.0f} cycles/s (SendMessage + ReceiveMessage + DeleteMessage)"
            f"  server CPU {use.server:.0%}, generator CPUs {use.client_cpus_busy:.0%}"
        )
    print(
        f"  SQS / v1.0  : {results.sqs / results.v1:9.2f}  (target >= 0.5); per server CPU second:"
        f" {results.sqs_per_cpu / results.v1_per_cpu:.2f}"
    )
    if args.skip_moto:
        return 0
    proc, port = start_moto(placement.server)
    try:
        urls = run(create_queues("127.0.0.1", port, args.moto_connections, "moto"))
        results.moto = run(
            drive("127.0.0.1", port, args.moto_connections, args.seconds, make_sqs_cycle(urls))
        )
    finally:
        proc.terminate()
        proc.wait(10)
    print(f"  moto SQS    : {results.moto:9.1f} cycles/s ({args.moto_connections} connections)")
    print(f"  Burrow/moto : {results.sqs / results.moto:9.1f}  (target >= 10)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
