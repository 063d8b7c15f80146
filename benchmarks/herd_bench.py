"""PUT rate to a queue with hundreds of long-poll takers parked on it, against none (issue 12: no herds).

For each backend a fresh ``burrow serve`` (pinned to the first CPU, the load to the others):

1. **none**: ``--producers`` connections keep ``--depth`` PUTs of unique messages to
   ``/v1.0/herd/q`` in flight each (callback-driven connections, so the load costs little
   CPU), and one more connection PUTs one at a time for the latency percentiles; measured
   for ``--seconds`` after a ``--warmup``.
2. **takers**: a separate process first parks ``--waiters`` long polls on that queue
   (``POST /v1.0/herd/q?limit=1&hide=30&wait=20``, one connection each), each parking again
   as soon as it is answered; once all are written and the server is idle, the same PUTs run.

A create wakes one taker (burrow/notify.py), not all of them; with a herd, each PUT would make
every parked taker retry. The takers do consume: every PUT also costs the server the woken
taker's claim and answer and its next long poll, so each phase also reports the requests
handled per second (PUTs + taker answers + new polls) and the server's CPU per PUT and per
request. CPU per request is the figure a shared machine disturbs least: without a herd it
stays about the same with takers as without.

Usage: ``.venv/bin/python benchmarks/herd_bench.py [--backends memory,sqlite] [--waiters 200]
[--seconds 5] [--producers 4] [--depth 16] [--json FILE]``. The SQLite store is a file in a
temporary directory. Prints the figures; no pass/fail (the issue's target: PUT/s with the
takers at least 0.8 x PUT/s without).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from burrow.bench.procs import Placement, ServerProcess, close_client, pin, raise_nofile, start_burrow
from burrow.client import Connection, PipelineProtocol, Span, connect_many, encode_request
from burrow.http.server import run

QUEUE = "/v1.0/herd/q"
TAKE_REQUEST = encode_request("POST", f"{QUEUE}?limit=1&hide=30&wait=20&detail=id")
BODY = b"x" * 100


@dataclass
class Phase:
    backend: str
    waiters: int
    puts_per_s: float
    p50_ms: float
    p99_ms: float
    takes_per_s: float
    requests_per_s: float
    server_cpu: float
    server_cpu_us_per_put: float
    server_cpu_us_per_request: float


# -- the takers' process ---------------------------------------------------------------------


class Taker(PipelineProtocol):
    """One long poll at a time on a keep-alive connection, written again as each is answered.

    Callbacks, no coroutine per request: the takers' process costs little CPU, so on a small
    machine the server, not the load, is what is measured."""

    def __init__(self, statuses: dict[bytes, int]) -> None:
        super().__init__(statuses)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        assert self.transport is not None
        self.transport.write(TAKE_REQUEST)

    def responses(self, count: int, buf: bytes, spans: list[Span] | None) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(TAKE_REQUEST * count)


async def takers(port: int, count: int) -> dict[str, int]:
    """``count`` long polls that park again as soon as they are answered, until stdin closes."""
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    threading.Thread(
        target=lambda: (sys.stdin.read(), loop.call_soon_threadsafe(stop.set_result, None)), daemon=True
    ).start()
    statuses: dict[bytes, int] = {}
    conns = await connect_many("127.0.0.1", port, lambda: Taker(statuses), count)
    await asyncio.sleep(0.2)  # every first request written
    print("parked", flush=True)
    await stop
    for conn in conns:
        if conn.transport is not None:
            conn.transport.close()
    return {code.decode(): n for code, n in statuses.items()}


# -- the producer ----------------------------------------------------------------------------


class Producer(PipelineProtocol):
    """PUTs of unique messages, ``depth`` in flight, until ``stop`` is set."""

    def __init__(self, name: str, depth: int, statuses: dict[bytes, int]) -> None:
        super().__init__(statuses)
        self.name, self.depth, self.sent = name, depth, 0
        self.stop = False

    def put(self, n: int) -> None:
        assert self.transport is not None
        first = self.sent
        self.sent += n
        self.transport.write(
            b"".join(encode_request("PUT", f"{QUEUE}/{self.name}-{i}", BODY) for i in range(first, self.sent))
        )

    def responses(self, count: int, buf: bytes, spans: list[Span] | None) -> None:
        if not self.stop:
            self.put(count)


async def produce(server: ServerProcess, args: argparse.Namespace, client_cpus: tuple[int, ...]) -> Load:
    """``--producers`` pipelined connections of PUTs, and sequential PUTs on one more connection
    for their latency; measured after ``--warmup`` for ``--seconds``."""
    port = server.port
    statuses: dict[bytes, int] = {}
    names = itertools.count()
    producers = await connect_many(
        "127.0.0.1", port, lambda: Producer(f"p{next(names)}", args.depth, statuses), args.producers
    )
    for producer in producers:
        producer.put(args.depth)
    latencies: list[float] = []
    measuring = True

    async def probe() -> None:
        async with Connection(host="127.0.0.1", port=port) as conn:
            i = 0
            while measuring:
                began = time.perf_counter()
                reply = await conn.request("PUT", f"{QUEUE}/probe-{i}", BODY)
                if reply.status != 201:
                    raise RuntimeError(f"PUT answered {reply.status}: {reply.body[:200]!r}")
                latencies.append(time.perf_counter() - began)
                i += 1

    await asyncio.sleep(args.warmup)
    task = asyncio.ensure_future(probe())
    before = sum(statuses.values())
    window = server.window(client_cpus)
    await asyncio.sleep(args.seconds)
    use = window.stop()
    puts = sum(statuses.values()) - before
    measuring = False
    await task
    for producer in producers:
        producer.stop = True
    await asyncio.sleep(0.2)  # what is in flight is answered
    for producer in producers:
        if producer.transport is not None:
            producer.transport.close()
    if set(statuses) != {b"201"}:
        raise RuntimeError(f"PUTs answered {statuses}")
    return Load((puts + len(latencies)) / use.wall, latencies, use.server)


@dataclass
class Load:
    puts_per_s: float
    latencies: list[float]
    #: The server's CPU over the measured window (1.0 = one CPU).
    server_cpu: float


def percentile(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))] if ordered else 0.0


def run_phase(backend: str, url: str, waiters: int, args: argparse.Namespace, placement: Placement) -> Phase:
    server: ServerProcess = start_burrow(url, placement.server)
    child: subprocess.Popen[str] | None = None
    try:
        if waiters:
            child = subprocess.Popen(
                [
                    sys.executable,
                    __file__,
                    "--role",
                    "takers",
                    "--port",
                    str(server.port),
                    "--waiters",
                    str(waiters),
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            pin(child.pid, placement.client)
            assert child.stdout is not None
            if child.stdout.readline().strip() != "parked":
                raise RuntimeError("the takers' process did not start")
        server.wait_idle()
        started = time.monotonic()
        load = run(produce(server, args, placement.client))
        wall = time.monotonic() - started
        taken = 0
        if child is not None:
            assert child.stdin is not None and child.stdout is not None
            child.stdin.close()  # the takers' signal to stop and report
            counts = json.loads(child.stdout.readline())
            close_client(child, 10)
            child = None
            taken = counts.pop("200", 0)
            if set(counts) - {"404"}:
                raise RuntimeError(f"takers were answered {counts}")
        takes = taken / wall  # over the whole run, warm-up included (the takers count all of it)
        requests = load.puts_per_s + 2 * takes  # each take: its answer, then the next poll
        return Phase(
            backend=backend,
            waiters=waiters,
            puts_per_s=load.puts_per_s,
            p50_ms=percentile(load.latencies, 0.5) * 1000,
            p99_ms=percentile(load.latencies, 0.99) * 1000,
            takes_per_s=takes,
            requests_per_s=requests,
            server_cpu=load.server_cpu,
            server_cpu_us_per_put=load.server_cpu / load.puts_per_s * 1e6 if load.puts_per_s else 0.0,
            server_cpu_us_per_request=load.server_cpu / requests * 1e6 if requests else 0.0,
        )
    finally:
        if child is not None:
            child.kill()
            child.wait()
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--role", choices=["bench", "takers"], default="bench", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--backends", default="memory,sqlite", help="memory, sqlite or both [memory,sqlite]")
    parser.add_argument("--waiters", type=int, default=200, help="long-poll takers parked on the queue [200]")
    parser.add_argument("--producers", type=int, default=4, help="PUT connections, pipelined [4]")
    parser.add_argument("--depth", type=int, default=16, help="PUTs in flight per producer connection [16]")
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per phase [5]")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds first [1]")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    if args.role == "takers":
        print(json.dumps(run(takers(args.port, args.waiters))), flush=True)
        return
    raise_nofile(4 * args.waiters + 1024)
    placement = Placement.split()
    pin(os.getpid(), placement.client)
    print(f"herd_bench: {placement.describe()}; CPU {cpu_model()}", flush=True)
    phases: list[Phase] = []
    with tempfile.TemporaryDirectory(prefix="herd-bench-") as tmp:
        urls = {"memory": "memory://", "sqlite": f"sqlite:///{Path(tmp) / 'herd.db'}"}
        for backend in args.backends.split(","):
            for waiters in (0, args.waiters):
                phase = run_phase(backend, urls[backend], waiters, args, placement)
                phases.append(phase)
                print(
                    f"{backend:7} {waiters:4} takers: {phase.puts_per_s:8.0f} PUT/s"
                    f"  p50 {phase.p50_ms:6.2f} ms  p99 {phase.p99_ms:6.2f} ms"
                    f"  takes {phase.takes_per_s:7.0f}/s"
                    f"  requests {phase.requests_per_s:8.0f}/s  server CPU {phase.server_cpu:4.0%}"
                    f" ({phase.server_cpu_us_per_put:.0f} us per PUT,"
                    f" {phase.server_cpu_us_per_request:.0f} us per request)",
                    flush=True,
                )
            none, some = phases[-2], phases[-1]
            print(
                f"{backend:7} with {args.waiters} takers / without:"
                f" PUT/s x{some.puts_per_s / none.puts_per_s:.2f},"
                f" p99 x{some.p99_ms / none.p99_ms:.2f}, requests handled/s x"
                f"{some.requests_per_s / none.requests_per_s:.2f}, server CPU per request x"
                f"{some.server_cpu_us_per_request / none.server_cpu_us_per_request:.2f}",
                flush=True,
            )
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(p) for p in phases], indent=2))


def cpu_model() -> str:
    """``lscpu``'s "Model name"."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    for line in out.splitlines():
        name, _, value = line.partition(":")
        if name.strip() == "Model name":
            return value.strip()
    return "unknown"


if __name__ == "__main__":
    main()
