"""Many receivers on ONE full queue: Burrow's SQS path against its v1.0 path under contention.

Two phases on one ``burrow serve`` process (pinned to the first CPU, the load to the others):

1. **SQS** (AWS JSON 1.0, the headers boto3 sends, account ``bench``): one standard queue is
   filled with ``--messages`` messages by SendMessageBatch (10 per call, ``--fill-connections``
   connections at once); then ``--receivers`` concurrent receivers, one keep-alive connection
   each, loop ReceiveMessage (MaxNumberOfMessages 1, VisibilityTimeout 60, WaitTimeSeconds 0)
   + DeleteMessage with the receipt handle, for ``--seconds`` (after a short warm-up).
2. **v1.0**: ``--messages`` messages PUT into ``/v1.0/bench/q``, then as many workers loop
   ``POST /v1.0/bench/q?limit=1&hide=60&detail=all`` + ``DELETE /v1.0/bench/q/{id}``.

Counted in the measured window: receives that returned a message, *empty* receives (none
returned while more than ``--low-water`` messages were still visible: every one of those is
contention, not an empty queue), and cycles (receive + delete). When the queue runs down to
the low-water mark the receivers stop, the queue is topped up to ``--messages`` again (not
measured; the ``refills`` column) and the measurement goes on, so every measured second is
on a full queue. Also counted: messages received twice (should be 0) and, for v1.0, DELETEs
answering 404.

Reported: cycles/s for each API, the ratio SQS / v1.0, the empty-receive percentage (empty /
all receives), fill time, and CPU use over the window: ``server CPU`` is the server process's,
``load CPU`` this process's (100% = one CPU; a server near 100% is the bottleneck, a load near
100% means the figures understate the server); a note says when other processes on the
machine took more than 10% of either side's CPU.

Usage: ``.venv/bin/python benchmarks/sqs_contention.py [--backend URL] [--seconds S]``. The
default backend is a SQLite file in a temporary directory (removed at exit); ``--backend
memory://`` works too. Exit status 0 when both phases ran, 1 when one failed (its error and
the server's log are printed), 2 when the server did not start.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import secrets
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from urllib.parse import quote

import orjson
from sqs_load import (
    ACCOUNT,
    REQUEST_TIMEOUT,
    BenchError,
    batch_failures,
    cpu_model,
    in_parallel,
    install_signal_handlers,
    request,
    server_report,
    snippet,
    sqs,
    sqs_headers,
)

from burrow.bench.procs import Placement, ServerProcess, pin, raise_nofile, start_burrow
from burrow.client import Connection
from burrow.http.server import loop_factory, run

BODY = "b" * 100
V1_QUEUE = "q"


@contextmanager
def backend_url(given: str | None) -> Iterator[str]:
    """The backend URL: ``given``, or a SQLite file in a temporary directory removed afterwards."""
    if given:
        yield given
        return
    with tempfile.TemporaryDirectory(prefix="burrow-contention-") as tmp:
        yield f"sqlite:///{os.path.join(tmp, 'bench.db')}"


# -- requests ---------------------------------------------------------------------------------


async def fill_sqs(url: str, queue_url: str, messages: int, connections: int) -> None:
    async def send_batch(conn: Connection, b: int) -> None:
        first = b * 10
        entries = [{"Id": str(j), "MessageBody": BODY} for j in range(min(10, messages - first))]
        data = await sqs(conn, "SendMessageBatch", {"QueueUrl": queue_url, "Entries": entries})
        batch_failures("SendMessageBatch", data, len(entries))

    await in_parallel(url, connections, (messages + 9) // 10, send_batch)


async def fill_v1(url: str, first: int, messages: int, connections: int) -> None:
    async def put(conn: Connection, i: int) -> None:
        target = f"/v1.0/{ACCOUNT}/{V1_QUEUE}/m{first + i:08d}?ttl=86400"
        reply = await request(conn, "PUT", target, BODY.encode())
        if reply.status not in (201, 204):
            raise BenchError(f"PUT {target}: HTTP {reply.status}: {snippet(reply.body)}")

    await in_parallel(url, connections, messages, put)


# -- the receivers ----------------------------------------------------------------------------


class Ops:
    """How one API receives one message and deletes it."""

    name = ""

    async def receive(self, conn: Connection) -> tuple[str, str] | None:
        """(message id, what delete needs), or None when nothing was returned."""
        raise NotImplementedError

    async def delete(self, conn: Connection, token: str) -> bool:
        """Delete; False when the server said the message was not there."""
        raise NotImplementedError


class SqsOps(Ops):
    name = "SQS"

    def __init__(self, queue_url: str) -> None:
        self.queue_url = queue_url
        self.receive_body = orjson.dumps(
            {"QueueUrl": queue_url, "MaxNumberOfMessages": 1, "VisibilityTimeout": 60, "WaitTimeSeconds": 0}
        )

    async def receive(self, conn: Connection) -> tuple[str, str] | None:
        headers = sqs_headers("ReceiveMessage")
        reply = await request(conn, "POST", "/", self.receive_body, headers, "SQS ReceiveMessage")
        if reply.status != 200:
            raise BenchError(f"SQS ReceiveMessage: HTTP {reply.status}: {snippet(reply.body)}")
        messages = orjson.loads(reply.body).get("Messages") if reply.body else None
        if not messages:
            return None
        if len(messages) > 1:
            raise BenchError(f"SQS ReceiveMessage: {len(messages)} messages for MaxNumberOfMessages 1")
        return str(messages[0]["MessageId"]), str(messages[0]["ReceiptHandle"])

    async def delete(self, conn: Connection, token: str) -> bool:
        await sqs(conn, "DeleteMessage", {"QueueUrl": self.queue_url, "ReceiptHandle": token})
        return True


class V1Ops(Ops):
    name = "v1.0"
    take = f"/v1.0/{ACCOUNT}/{V1_QUEUE}?limit=1&hide=60&detail=all"

    async def receive(self, conn: Connection) -> tuple[str, str] | None:
        reply = await request(conn, "POST", self.take)
        if reply.status == 404:  # nothing matched
            return None
        if reply.status != 200:
            raise BenchError(f"POST {self.take}: HTTP {reply.status}: {snippet(reply.body)}")
        found = orjson.loads(reply.body)
        if not isinstance(found, list) or len(found) != 1:
            raise BenchError(f"POST {self.take}: expected a list of one message: {snippet(reply.body)}")
        return str(found[0]["id"]), str(found[0]["id"])

    async def delete(self, conn: Connection, token: str) -> bool:
        target = f"/v1.0/{ACCOUNT}/{V1_QUEUE}/{quote(token, safe='')}"
        reply = await request(conn, "DELETE", target)
        if reply.status == 404:
            return False
        if reply.status >= 300:
            raise BenchError(f"DELETE {target}: HTTP {reply.status}: {snippet(reply.body)}")
        return True


@dataclass
class Phase:
    name: str
    messages: int = 0
    fill_seconds: float = 0.0
    refills: int = 0
    refill_seconds: float = 0.0
    window: float = 0.0
    receives: int = 0
    empty: int = 0
    cycles: int = 0
    duplicates: int = 0
    delete_misses: int = 0
    # CPU seconds over the measured window(s)
    server_cpu_s: float = 0.0
    load_cpu_s: float = 0.0
    other_server_cpu_s: float = 0.0
    other_load_cpu_s: float = 0.0
    error: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.cycles / self.window if self.window > 0 else 0.0

    @property
    def empty_pct(self) -> float:
        total = self.receives + self.empty
        return 100.0 * self.empty / total if total else 0.0

    def per_second(self, cpu_seconds: float) -> float:
        return cpu_seconds / self.window if self.window > 0 else 0.0


class Usage:
    """CPU use over one measured window: the server process, this process, and anything else."""

    def __init__(self, server: ServerProcess, placement: Placement) -> None:
        self.window = server.window(placement.client)
        self.cpu0 = time.process_time()

    def stop(self, phase: Phase) -> None:
        use = self.window.stop()
        load = time.process_time() - self.cpu0
        phase.server_cpu_s += use.server * use.wall
        phase.load_cpu_s += load
        # Busy time on each side that neither the server nor this process accounts for.
        phase.other_server_cpu_s += max(0.0, use.server_cpus_busy * use.wall - use.server * use.wall)
        client_cpus = len(self.window.client_cpus)
        phase.other_load_cpu_s += max(0.0, use.client_cpus_busy * use.wall - load / client_cpus)


class Contention:
    """``receivers`` loops of receive + delete on one queue, measured for ``seconds`` in all.

    When the queue runs down to ``low_water`` visible messages the receivers stop, the queue is
    topped up to ``phase.messages`` by ``refill`` (not measured) and they start again, so the
    window is never measured on a nearly empty queue.
    """

    def __init__(
        self,
        url: str,
        ops: Ops,
        phase: Phase,
        receivers: int,
        low_water: int,
        measure: Callable[[], Usage],
        refill: Callable[[int, int], Awaitable[None]],
    ) -> None:
        self.url, self.ops, self.phase = url, ops, phase
        self.receivers, self.low_water = receivers, low_water
        self.measure, self.refill = measure, refill
        self.visible = phase.messages  # in the queue and not received yet (we delete what we receive)
        self.next_id = phase.messages  # the first id of the next refill
        self.seen: set[str] = set()
        self.measuring = self.stop = False
        self.ended = asyncio.Event()  # the queue ran low, or a receiver failed
        self.failure: list[BaseException] = []

    async def receiver(self) -> None:
        phase = self.phase
        try:
            async with Connection(self.url) as conn:
                while not self.stop:
                    got = await self.ops.receive(conn)
                    if got is None:
                        if self.visible > self.low_water:
                            phase.empty += self.measuring
                        else:
                            self.ended.set()
                        continue
                    message_id, token = got
                    self.visible -= 1
                    if message_id in self.seen:
                        phase.duplicates += 1
                    self.seen.add(message_id)
                    phase.receives += self.measuring
                    if not await self.ops.delete(conn, token):
                        phase.delete_misses += 1
                    phase.cycles += self.measuring
                    if self.visible <= self.low_water:
                        self.ended.set()
        except BaseException as exc:
            if not isinstance(exc, asyncio.CancelledError):
                self.failure.append(exc)
                self.ended.set()
            raise

    def check(self) -> None:
        if self.failure:
            raise self.failure[0]

    async def segment(self, warmup: float, seconds: float) -> None:
        """Receivers running for ``warmup`` unmeasured then up to ``seconds`` measured seconds
        (less when the queue runs low; none when it runs low during the warm-up)."""
        self.stop = self.measuring = False
        self.ended.clear()
        tasks = [asyncio.create_task(self.receiver()) for _ in range(self.receivers)]
        try:
            if warmup > 0:
                with suppress(TimeoutError):
                    await asyncio.wait_for(self.ended.wait(), warmup)
                self.check()
            if not self.ended.is_set():
                usage = self.measure()
                self.measuring, start = True, time.perf_counter()
                with suppress(TimeoutError):
                    await asyncio.wait_for(self.ended.wait(), seconds)
                self.measuring = False
                self.phase.window += time.perf_counter() - start
                usage.stop(self.phase)
                self.check()
            self.stop = True
            _, pending = await asyncio.wait(tasks, timeout=REQUEST_TIMEOUT + 5)
            self.check()
            if pending:
                raise BenchError(f"{len(pending)} receivers did not stop within {REQUEST_TIMEOUT + 5:.0f} s")
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def run(self, warmup: float, seconds: float) -> None:
        phase = self.phase
        while True:
            await self.segment(warmup, seconds - phase.window)
            warmup = 0.0  # a warm-up cut short by a refill is not repeated
            if phase.window >= seconds - 1e-3:
                return
            # ran low: top the queue up to phase.messages, unmeasured
            count = phase.messages - self.visible
            start = time.perf_counter()
            await self.refill(self.next_id, count)
            self.next_id += count
            self.visible += count
            phase.refills += 1
            phase.refill_seconds += time.perf_counter() - start


# -- the two phases ---------------------------------------------------------------------------


def run_sqs_phase(server: ServerProcess, placement: Placement, args: argparse.Namespace, tag: str) -> Phase:
    url = f"http://{server.host}:{server.port}"
    phase = Phase("SQS", messages=args.messages)

    async def body() -> None:
        async with Connection(url) as conn:
            data = await sqs(conn, "CreateQueue", {"QueueName": f"contention-{tag}"})
        queue_url = str(data["QueueUrl"])
        start = time.perf_counter()
        await fill_sqs(url, queue_url, args.messages, args.fill_connections)
        phase.fill_seconds = time.perf_counter() - start
        async with Connection(url) as conn:
            attrs = await sqs(
                conn,
                "GetQueueAttributes",
                {"QueueUrl": queue_url, "AttributeNames": ["ApproximateNumberOfMessages"]},
            )
        visible = int(attrs.get("Attributes", {}).get("ApproximateNumberOfMessages", -1))
        if visible != args.messages:
            phase.notes.append(f"SQS: after the fill the queue reports {visible:,} visible messages")
        await asyncio.to_thread(server.wait_idle)

        async def refill(first: int, count: int) -> None:
            await fill_sqs(url, queue_url, count, args.fill_connections)
            await asyncio.to_thread(server.wait_idle)

        measure = functools.partial(Usage, server, placement)
        contention = Contention(
            url, SqsOps(queue_url), phase, args.receivers, args.low_water, measure, refill
        )
        await contention.run(args.warmup, args.seconds)
        try:  # so that the v1.0 phase runs beside an empty store
            async with Connection(url) as conn:
                await sqs(conn, "DeleteQueue", {"QueueUrl": queue_url})
        except BenchError as exc:
            phase.notes.append(f"SQS: DeleteQueue after the phase failed: {exc}")

    run(body())
    return phase


def run_v1_phase(server: ServerProcess, placement: Placement, args: argparse.Namespace) -> Phase:
    url = f"http://{server.host}:{server.port}"
    phase = Phase("v1.0", messages=args.messages)

    async def body() -> None:
        start = time.perf_counter()
        await fill_v1(url, 0, args.messages, args.fill_connections)
        phase.fill_seconds = time.perf_counter() - start
        await asyncio.to_thread(server.wait_idle)

        async def refill(first: int, count: int) -> None:
            await fill_v1(url, first, count, args.fill_connections)
            await asyncio.to_thread(server.wait_idle)

        measure = functools.partial(Usage, server, placement)
        contention = Contention(url, V1Ops(), phase, args.receivers, args.low_water, measure, refill)
        await contention.run(args.warmup, args.seconds)

    run(body())
    return phase


def guarded(server: ServerProcess, name: str, body: Callable[[], Phase]) -> Phase:
    """Run a phase; an error (or a dead server) becomes the phase's ``error``, printed with the server log."""
    if not server.alive():
        message = f"not run: the server exited with status {server.proc.returncode}"
        print(f"\n{name} phase {message}", file=sys.stderr, flush=True)
        return Phase(name, error=message)
    before = list(server.log)
    try:
        return body()
    except (BenchError, OSError, RuntimeError, KeyError, TypeError, ValueError) as exc:
        message = f"{type(exc).__name__}: {exc}" if not isinstance(exc, BenchError) else str(exc)
        sys.stdout.flush()
        print(
            f"\n{name} phase FAILED: {message}\n{server_report(server, before)}\n",
            file=sys.stderr,
            flush=True,
        )
        return Phase(name, error=message)


# -- output -----------------------------------------------------------------------------------


def print_table(phases: list[Phase], receivers: int) -> None:
    header = (
        f"{'API':<6} {'receivers':>9} {'messages':>9} {'fill s':>7} {'refills':>7} {'window s':>8}"
        f" {'receives':>9} {'empty':>7} {'empty %':>7} {'cycles/s':>9} {'server CPU':>10} {'load CPU':>8}"
        f" {'dup':>4}"
    )
    print(header)
    print("-" * len(header))
    for p in phases:
        if p.error is not None:
            print(f"{p.name:<6} {receivers:>9} FAILED: {p.error}")
            continue
        print(
            f"{p.name:<6} {receivers:>9} {p.messages:>9,} {p.fill_seconds:>7.2f} {p.refills:>7}"
            f" {p.window:>8.2f} {p.receives:>9,} {p.empty:>7,} {p.empty_pct:>6.1f}% {p.rate:>9,.0f}"
            f" {p.per_second(p.server_cpu_s):>10.0%} {p.per_second(p.load_cpu_s):>8.0%} {p.duplicates:>4}"
        )


def print_summary(sqs_phase: Phase, v1_phase: Phase) -> None:
    def rate(p: Phase) -> str:
        return "failed" if p.error is not None else f"{p.rate:,.0f}"

    def empty(p: Phase) -> str:
        return "-" if p.error is not None else f"{p.empty_pct:.1f}%"

    ok = sqs_phase.error is None and v1_phase.error is None and v1_phase.rate > 0
    ratio = f"{sqs_phase.rate / v1_phase.rate:.2f}" if ok else "-"
    print(f"{'':<22} {'SQS':>10} {'v1.0':>10}")
    print(f"{'cycles/s':<22} {rate(sqs_phase):>10} {rate(v1_phase):>10}")
    print(f"{'empty receives':<22} {empty(sqs_phase):>10} {empty(v1_phase):>10}")
    print(f"{'SQS / v1.0 cycles/s':<22} {ratio:>10}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--backend", help="storage URL (default: a SQLite file in a temporary directory)")
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per API (default 5)")
    parser.add_argument("--messages", type=int, default=20_000, help="messages in the queue (default 20,000)")
    parser.add_argument("--receivers", type=int, default=8, help="concurrent receivers (default 8)")
    parser.add_argument("--fill-connections", type=int, default=8, help="connections for the fill (8)")
    parser.add_argument("--warmup", type=float, default=None, help="unmeasured seconds first (min(1, S/4))")
    parser.add_argument(
        "--low-water",
        type=int,
        default=None,
        help="refill the queue (unmeasured) when this few messages are left visible"
        " (default max(10 x receivers, 1%% of messages))",
    )
    args = parser.parse_args(argv)
    if args.messages < 1 or args.receivers < 1 or args.seconds <= 0 or args.fill_connections < 1:
        parser.error("--messages, --receivers, --fill-connections and --seconds must be positive")
    if args.warmup is None:
        args.warmup = min(1.0, args.seconds / 4)
    if args.low_water is None:
        args.low_water = max(10 * args.receivers, args.messages // 100)
    if args.low_water >= args.messages:
        parser.error(f"--messages must be above the low-water mark ({args.low_water})")

    install_signal_handlers()
    raise_nofile()
    placement = Placement.split()
    pin(os.getpid(), placement.client)
    print(f"CPU: {cpu_model()} ({os.cpu_count()} CPUs)")
    tag = secrets.token_hex(3)
    with backend_url(args.backend) as backend:
        print(f"sqs_contention: {placement.describe()}; load on {loop_factory()[0]}; backend {backend}")
        print(
            f"one queue of {args.messages:,} messages, {args.receivers} receivers, {args.seconds:g} s"
            f" measured after {args.warmup:g} s warm-up; empty receives counted while > {args.low_water}"
            " visible"
        )
        try:
            server = start_burrow(backend, placement.server)
        except (RuntimeError, OSError) as exc:
            sys.stdout.flush()
            print(f"error: the burrow server did not start: {exc}", file=sys.stderr)
            return 2
        with server:
            sqs_phase = guarded(server, "SQS", lambda: run_sqs_phase(server, placement, args, tag))
            v1_phase = guarded(server, "v1.0", lambda: run_v1_phase(server, placement, args))
    phases = [sqs_phase, v1_phase]
    print()
    print_table(phases, args.receivers)
    print()
    print_summary(sqs_phase, v1_phase)
    print()
    notes = [n for p in phases for n in p.notes]
    notes += [f"{p.name}: {p.duplicates} messages received twice" for p in phases if p.duplicates]
    notes += [f"{p.name}: {p.delete_misses} DELETEs answered 404" for p in phases if p.delete_misses]
    for p in phases:
        other_server, other_load = p.per_second(p.other_server_cpu_s), p.per_second(p.other_load_cpu_s)
        if p.error is None and max(other_server, other_load) > 0.10:
            notes.append(
                f"{p.name}: other processes took {other_server:.0%} of the server's CPU and"
                f" {other_load:.0%} of the load generator's during the window (figures understated)"
            )
    notes += [
        f"{p.name}: the queue ran down to {args.low_water} visible messages {p.refills} times and was"
        f" topped up to {args.messages:,} ({p.refill_seconds:.1f} s, not measured)"
        for p in phases
        if p.refills
    ]
    for note in notes:
        print(f"note: {note}")
    return 1 if any(p.error is not None for p in phases) else 0


if __name__ == "__main__":
    raise SystemExit(main())
