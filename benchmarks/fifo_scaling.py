"""FIFO queues that scale: SQS FIFO operation latency on a small and a large queue, in one run.

One ``burrow serve`` process (pinned to the first CPU, the load to the others) holds two FIFO
queues of account ``bench``, filled by SendMessageBatch (10 entries per call, MessageGroupId
round-robin over the groups, an explicit MessageDeduplicationId per message) over
``--fill-connections`` concurrent connections:

* ``small``: 100 messages in 10 groups;
* ``large``: ``--messages`` messages (default 100,000) in ``--groups`` groups (default 1,000).

The fill prints its progress every 10 s and gives up with an error when it is projected to take
longer than ``--max-fill-seconds`` (600): a send path that slows down as the queue grows shows
there first.

Then, on one keep-alive connection, ``--calls`` rounds (default 200, after a few unmeasured
warm-up rounds), alternating between the two queues, each round timing on each queue:

* SendMessageBatch of 10 new messages (new deduplication ids, the next groups in turn);
* ReceiveMessage (MaxNumberOfMessages 10, WaitTimeSeconds 0) + DeleteMessageBatch of what
  came back (one figure for the pair; the messages per receive are reported beside it);
* GetQueueAttributes (All).

Each round sends 10 and deletes what it received, so the queues keep their size. Reported: the
fill time of each queue, and a table of ms per operation (mean, with p50 and p99) for small and
large and the ratio large / small (the target is <= 2x: operations must not slow down as a FIFO
queue grows). The time is the client's, around the request: the round trip over loopback plus
the server's work.

Usage: ``.venv/bin/python benchmarks/fifo_scaling.py [--backend URL] [--seconds S]``. The
default backend is ``memory://``; ``--backend sqlite:////tmp/fifo.db`` for SQLite (the store
is emptied first). ``--seconds`` caps the measured rounds' time (default 60). Exit status 0
when everything ran, 1 when a request failed (the error and the server's log are printed), 2
when the server did not start.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import sys
import time
from dataclasses import dataclass, field

from sqs_load import (
    BenchError,
    batch_failures,
    cpu_model,
    in_parallel,
    install_signal_handlers,
    server_report,
    sqs,
)

from burrow.bench.procs import Placement, pin, raise_nofile, start_burrow
from burrow.client import Connection
from burrow.http.server import loop_factory, run

SMALL_MESSAGES, SMALL_GROUPS = 100, 10
BODY_BYTES = 100

SEND = "SendMessageBatch (10 entries)"
RECEIVE = "ReceiveMessage (10) + DeleteMessageBatch"
ATTRIBUTES = "GetQueueAttributes (All)"
OPERATIONS = (SEND, RECEIVE, ATTRIBUTES)


# -- requests ---------------------------------------------------------------------------------


# -- the queues -------------------------------------------------------------------------------


@dataclass
class Queue:
    label: str
    messages: int
    groups: int
    name: str = ""
    url: str = ""
    sent: int = 0  # messages sent so far: the next message's index (its group and dedup id)
    filled: int = 0  # messages the fill has had acknowledged
    fill_seconds: float = 0.0
    after_fill: dict[str, str] = field(default_factory=dict)
    last_attributes: dict[str, str] = field(default_factory=dict)
    samples: dict[str, list[float]] = field(default_factory=lambda: {op: [] for op in OPERATIONS})
    received: list[int] = field(default_factory=list)

    def entries(self, count: int) -> list[dict[str, str]]:
        """The next ``count`` messages: groups round-robin, a deduplication id never used before."""
        out = []
        for j in range(count):
            i = self.sent + j
            out.append(
                {
                    "Id": str(j),
                    "MessageBody": f"m{i:010d}".ljust(BODY_BYTES, "b"),
                    "MessageGroupId": f"g{i % self.groups}",
                    "MessageDeduplicationId": f"d{i}",
                }
            )
        self.sent += count
        return out


async def attributes(conn: Connection, queue: Queue) -> dict[str, str]:
    data = await sqs(conn, "GetQueueAttributes", {"QueueUrl": queue.url, "AttributeNames": ["All"]})
    attrs = data.get("Attributes")
    if not isinstance(attrs, dict):
        raise BenchError(f"SQS GetQueueAttributes: no Attributes in {str(data)[:200]}")
    return {str(k): str(v) for k, v in attrs.items()}


async def create_and_fill(url: str, queue: Queue, connections: int, max_seconds: float) -> None:
    """CreateQueue, then the fill; progress every 10 s, and an error once it is clearly too slow."""
    async with Connection(url) as conn:
        data = await sqs(conn, "CreateQueue", {"QueueName": queue.name, "Attributes": {"FifoQueue": "true"}})
    queue.url = str(data["QueueUrl"])

    async def send_batch(conn: Connection, b: int) -> None:
        entries = queue.entries(min(10, queue.messages - queue.sent))
        reply = await sqs(conn, "SendMessageBatch", {"QueueUrl": queue.url, "Entries": entries})
        batch_failures("SendMessageBatch", reply, len(entries))
        queue.filled += len(entries)

    start = time.perf_counter()
    fill = asyncio.create_task(in_parallel(url, connections, (queue.messages + 9) // 10, send_batch))
    try:
        while True:
            done, _ = await asyncio.wait({fill}, timeout=10.0)
            if done:
                fill.result()
                break
            elapsed = time.perf_counter() - start
            rate = queue.filled / elapsed
            projected = queue.messages / rate if rate > 0 else float("inf")
            print(
                f"  filling {queue.label}: {queue.filled:,} of {queue.messages:,} after {elapsed:.0f} s"
                f" ({rate:,.0f} msgs/s, about {projected:,.0f} s in all at this rate)",
                flush=True,
            )
            if projected > max_seconds:
                raise BenchError(
                    f"the fill of {queue.label} is too slow: {queue.filled:,} of {queue.messages:,} messages"
                    f" in {elapsed:.0f} s ({rate:,.0f} msgs/s); about {projected:,.0f} s in all is more than"
                    f" --max-fill-seconds {max_seconds:g} (SendMessageBatch does not scale with the queue?)"
                )
    finally:
        fill.cancel()
        await asyncio.gather(fill, return_exceptions=True)
    queue.fill_seconds = time.perf_counter() - start
    async with Connection(url) as conn:
        queue.after_fill = await attributes(conn, queue)


async def one_round(conn: Connection, queue: Queue, measured: bool) -> None:
    """SendMessageBatch of 10, ReceiveMessage (10) + DeleteMessageBatch, GetQueueAttributes (All)."""
    params = {"QueueUrl": queue.url, "Entries": queue.entries(10)}
    t0 = time.perf_counter()
    data = await sqs(conn, "SendMessageBatch", params)
    t1 = time.perf_counter()
    batch_failures("SendMessageBatch", data, 10)

    receive = {"QueueUrl": queue.url, "MaxNumberOfMessages": 10, "WaitTimeSeconds": 0}
    t2 = time.perf_counter()
    data = await sqs(conn, "ReceiveMessage", receive)
    messages = data.get("Messages") or []
    if messages:
        entries = [{"Id": str(j), "ReceiptHandle": m["ReceiptHandle"]} for j, m in enumerate(messages)]
        deleted = await sqs(conn, "DeleteMessageBatch", {"QueueUrl": queue.url, "Entries": entries})
        t3 = time.perf_counter()
        batch_failures("DeleteMessageBatch", deleted, len(entries))
    else:
        t3 = time.perf_counter()

    t4 = time.perf_counter()
    attrs = await attributes(conn, queue)
    t5 = time.perf_counter()
    if measured:
        queue.samples[SEND].append(t1 - t0)
        queue.samples[RECEIVE].append(t3 - t2)
        queue.samples[ATTRIBUTES].append(t5 - t4)
        queue.received.append(len(messages))
        queue.last_attributes = attrs


async def measure(url: str, queues: list[Queue], calls: int, warmup: int, seconds: float) -> int:
    """Alternate rounds over ``queues``; returns the number of measured rounds."""
    async with Connection(url) as conn:
        for _ in range(warmup):
            for queue in queues:
                await one_round(conn, queue, measured=False)
        deadline = time.perf_counter() + seconds
        done = 0
        while done < calls and time.perf_counter() < deadline:
            for queue in queues:
                await one_round(conn, queue, measured=True)
            done += 1
    return done


# -- output -----------------------------------------------------------------------------------


def ms(values: list[float], q: float | None = None) -> float:
    if not values:
        return float("nan")
    if q is None:
        return 1000.0 * statistics.fmean(values)
    ordered = sorted(values)
    return 1000.0 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def count(attributes: dict[str, str], name: str) -> str:
    """An approximate-count attribute with thousands separators ('?' when missing)."""
    value = attributes.get(name, "?")
    return f"{int(value):,}" if value.isdigit() else value


def print_fill(queues: list[Queue], connections: int) -> None:
    print(f"fill: SendMessageBatch of 10 entries over {connections} connections")
    header = (
        f"{'queue':<8} {'messages':>9} {'groups':>7} {'fill s':>8} {'msgs/s':>9}"
        f" {'then visible':>12} {'in flight':>9} {'delayed':>7}"
    )
    print(header)
    print("-" * len(header))
    for q in queues:
        a = q.after_fill
        print(
            f"{q.label:<8} {q.messages:>9,} {q.groups:>7,} {q.fill_seconds:>8.2f}"
            f" {q.messages / max(q.fill_seconds, 1e-9):>9,.0f}"
            f" {count(a, 'ApproximateNumberOfMessages'):>12}"
            f" {count(a, 'ApproximateNumberOfMessagesNotVisible'):>9}"
            f" {count(a, 'ApproximateNumberOfMessagesDelayed'):>7}"
        )


def print_latency(small: Queue, large: Queue, rounds: int) -> list[str]:
    """The table; returns the operations whose large/small ratio is over 2."""
    print(f"ms per operation over {rounds} rounds (mean; p50 / p99), rounds alternating between the queues")
    header = (
        f"{'operation':<41} {'small':>7} {'large':>7} {'large/small':>11} {'<= 2x':>7}"
        f"   {'small p50/p99':>15}   {'large p50/p99':>15} {'p50 ratio':>9}"
    )
    print(header)
    print("-" * len(header))
    over = []
    for op in OPERATIONS:
        s, g = small.samples[op], large.samples[op]
        ratio = ms(g) / ms(s) if s and ms(s) > 0 else float("nan")
        met = "met" if ratio <= 2.0 else "NOT MET"
        if not ratio <= 2.0:
            over.append(op)
        p50_ratio = ms(g, 0.5) / ms(s, 0.5) if s and ms(s, 0.5) > 0 else float("nan")
        print(
            f"{op:<41} {ms(s):>7.3f} {ms(g):>7.3f} {ratio:>10.2f}x {met:>7}"
            f"   {ms(s, 0.5):>7.3f}/{ms(s, 0.99):<7.3f}   {ms(g, 0.5):>7.3f}/{ms(g, 0.99):<7.3f}"
            f" {p50_ratio:>8.2f}x"
        )
    return over


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--backend", default="memory://", help="storage URL (default memory://)")
    parser.add_argument("--messages", type=int, default=100_000, help="messages in the large queue (100,000)")
    parser.add_argument("--groups", type=int, default=1_000, help="message groups in the large queue (1,000)")
    parser.add_argument("--calls", "-k", type=int, default=200, help="measured rounds per queue (K, 200)")
    parser.add_argument("--warmup", type=int, default=5, help="unmeasured rounds first (5)")
    parser.add_argument("--seconds", type=float, default=60.0, help="cap on the measured rounds' time (60)")
    parser.add_argument("--fill-connections", type=int, default=8, help="connections for the fill (8)")
    parser.add_argument(
        "--max-fill-seconds",
        type=float,
        default=600.0,
        help="give up on a fill projected to take longer than this (600)",
    )
    args = parser.parse_args(argv)
    if min(args.messages, args.groups, args.calls, args.fill_connections) < 1 or args.seconds <= 0:
        parser.error("--messages, --groups, --calls, --fill-connections and --seconds must be positive")
    if args.warmup < 0:
        parser.error("--warmup must be >= 0")

    install_signal_handlers()
    raise_nofile()
    placement = Placement.split()
    pin(os.getpid(), placement.client)
    print(f"CPU: {cpu_model()} ({os.cpu_count()} CPUs)")
    print(f"fifo_scaling: {placement.describe()}; load on {loop_factory()[0]}; backend {args.backend}")
    tag = secrets.token_hex(3)
    small = Queue("small", SMALL_MESSAGES, SMALL_GROUPS, name=f"small-{tag}.fifo")
    large = Queue("large", args.messages, args.groups, name=f"large-{tag}.fifo")
    queues = [small, large]
    try:
        server = start_burrow(args.backend, placement.server)
    except (RuntimeError, OSError) as exc:
        sys.stdout.flush()
        print(f"error: the burrow server did not start: {exc}", file=sys.stderr)
        return 2
    with server:
        url = f"http://{server.host}:{server.port}"
        step = "fill"
        try:
            for queue in queues:
                run(create_and_fill(url, queue, args.fill_connections, args.max_fill_seconds))
            server.wait_idle()
            step = "measurement"
            window, cpu0 = server.window(placement.client), time.process_time()
            rounds = run(measure(url, queues, args.calls, args.warmup, args.seconds))
            use = window.stop()
            load = (time.process_time() - cpu0) / use.wall
        except (BenchError, OSError, RuntimeError, KeyError, TypeError, ValueError) as exc:
            message = str(exc) if isinstance(exc, BenchError) else f"{type(exc).__name__}: {exc}"
            sys.stdout.flush()
            print(f"\n{step} FAILED: {message}\n{server_report(server)}", file=sys.stderr, flush=True)
            return 1
    print()
    print_fill(queues, args.fill_connections)
    print()
    over = print_latency(small, large, rounds)
    print()
    notes = []
    for q in queues:
        per_receive = statistics.fmean(q.received) if q.received else 0.0
        a = q.last_attributes
        notes.append(
            f"{q.label}: {per_receive:.1f} messages per receive; at the end"
            f" {count(a, 'ApproximateNumberOfMessages')} visible,"
            f" {count(a, 'ApproximateNumberOfMessagesNotVisible')} in flight"
        )
        visible = q.after_fill.get("ApproximateNumberOfMessages")
        if visible != str(q.messages):
            notes.append(f"{q.label}: after the fill the queue reports {visible} visible, not {q.messages:,}")
        if q.received and min(q.received) == 0:
            empty = sum(1 for n in q.received if n == 0)
            notes.append(f"{q.label}: {empty} receives returned nothing (their time is a receive alone)")
    other_server = max(0.0, use.server_cpus_busy - use.server)
    other_load = max(0.0, use.client_cpus_busy - load / len(placement.client))
    notes.append(f"during the rounds: server CPU {use.server:.0%}, this process {load:.0%}")
    if max(other_server, other_load) > 0.10:
        notes.append(
            f"other processes took {other_server:.0%} of the server's CPU and {other_load:.0%} of the load"
            " generator's during the rounds: latencies are inflated and noisy (the p50 ratio is steadier)"
        )
    if rounds < args.calls:
        notes.append(f"stopped after {rounds} of {args.calls} rounds: --seconds {args.seconds:g} reached")
    notes.append(
        "target large/small <= 2x: "
        + ("met for every operation" if not over else "NOT MET for " + ", ".join(over))
    )
    for note in notes:
        print(f"note: {note}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
