"""Memory footprint and hot-path speed of a backend, for issue 2 (the compact memory backend).

1. Bytes per stored message: a fresh subprocess measures its RSS (``/proc``), opens the backend,
   puts ``--messages`` messages of a 16-byte id and a 100-byte body into one queue with the
   server's default ttl (600 s, so every message has a finite expiry) and no hide, runs the
   garbage collector and reports the RSS growth divided by the message count.
2. Hot-path micro-benchmark, in another fresh subprocess, on a queue prefilled with
   ``--prefill`` messages: PUT of a new message, GET of one message, the take step
   (``update_messages`` with ``Filter(limit=1)`` and a hide) and DELETE of one message,
   each reported in microseconds per backend call (the awaits included), as the best of
   ``--rounds`` rounds of ``--ops`` calls (a shared machine's noise only adds time).
   Also reported: the worst single cleaner pass while the whole queue expires (all its
   messages share one deadline second, the worst case for a pass).
3. FIFO operations against queue size (``--only fifo``): FIFO sends, FIFO claims of 10
   (each followed by deleting what it took) and counts on a queue of ``--fifo-small``
   messages and on one of ``--fifo-large`` messages, both spread over ``--fifo-groups``
   groups with 10 messages in flight, in microseconds per call and as large/small ratios
   (the target: within 2x).

Usage: ``.venv/bin/python benchmarks/memory_footprint.py --messages 1000000``;
``--backend sqlite://:memory:`` for SQLite; ``--factory module:Class`` measures another
implementation with the same interface (e.g. an older copy of the memory backend).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib
import itertools
import json
import os
import random
import subprocess
import sys
import time
from typing import Any

from burrow.backends import open_backend
from burrow.backends.base import Backend
from burrow.bench.procs import process_rss
from burrow.config import Settings
from burrow.core.model import Filter, Update

BODY = b"b" * 100
TTL = 600.0
ACCOUNT, QUEUE = "bench", "q"
TAKE = Filter(limit=1)


def message_id(n: int) -> str:
    return f"{n:016x}"  # 16 bytes


def make_backend(url: str, factory: str | None) -> Backend:
    if factory:
        module, _, name = factory.partition(":")
        backend: Backend = getattr(importlib.import_module(module), name)()
        return backend
    return open_backend(url, Settings())


async def fill(backend: Backend, start: int, count: int, now: float) -> None:
    put = backend.put_message
    for i in range(start, start + count):
        await put(ACCOUNT, QUEUE, message_id(i), BODY, now + TTL, 0.0, now)


def rss() -> int:
    return process_rss(os.getpid())


# -- child processes --------------------------------------------------------------------


async def child_footprint(args: argparse.Namespace) -> dict[str, Any]:
    backend = make_backend(args.backend, args.factory)
    await backend.open()
    gc.collect()
    before = rss()
    started = time.perf_counter()
    await fill(backend, 0, args.messages, time.time())
    elapsed = time.perf_counter() - started
    gc.collect()
    after = rss()
    stored = await backend.count_messages()
    await backend.close()
    return {"rss_delta": after - before, "stored": stored, "fill_s": elapsed}


async def timed(n: int, calls: Any) -> float:
    """Microseconds per call of the coroutine factory ``calls(i)`` over ``n`` calls."""
    started = time.perf_counter()
    for i in range(n):
        await calls(i)
    return (time.perf_counter() - started) / n * 1e6


async def best(rounds: int, n: int, calls: Any) -> float:
    """The fastest of ``rounds`` rounds of ``n`` calls (``calls(i)`` with i running on across
    rounds), in microseconds per call: the machine's noise only ever adds time."""
    times = []
    for r in range(rounds):
        times.append(await timed(n, lambda i: calls(r * n + i)))  # noqa: B023
    return min(times)


async def child_hotpath(args: argparse.Namespace) -> dict[str, Any]:
    backend = make_backend(args.backend, args.factory)
    await backend.open()
    now = time.time()
    base = args.prefill
    await fill(backend, 0, base, now)
    gc.collect()
    rounds, ops = args.rounds, args.ops
    total = rounds * ops
    rng = random.Random(1)
    existing = [message_id(rng.randrange(base)) for _ in range(total)]
    fresh = [message_id(base + i) for i in range(total)]
    out: dict[str, Any] = {}
    b = backend
    out["put_new"] = await best(
        rounds, ops, lambda i: b.put_message(ACCOUNT, QUEUE, fresh[i], BODY, now + TTL, 0.0, now)
    )
    out["put_replace"] = await best(
        rounds, ops, lambda i: b.put_message(ACCOUNT, QUEUE, existing[i], BODY, now + TTL, 0.0, now)
    )
    out["get_one"] = await best(rounds, ops, lambda i: b.get_message(ACCOUNT, QUEUE, existing[i], now))
    taken: list[str] = []
    hide = Update(hidden_until=now + 30)

    async def take(i: int) -> None:
        got = await b.update_messages(ACCOUNT, QUEUE, TAKE, hide, now)
        taken.append(got[0].id)

    # takes pile up in flight at the head: a scan from the head would slow down with each one
    out["take"] = await best(rounds, ops, take)
    out["delete_one"] = await best(rounds, ops, lambda i: b.delete_message(ACCOUNT, QUEUE, taken[i], now))

    async def cycle(i: int) -> None:  # a worker at the head of the queue: take, then delete
        got = await b.update_messages(ACCOUNT, QUEUE, TAKE, hide, now)
        await b.delete_message(ACCOUNT, QUEUE, got[0].id, now)

    out["take_delete_cycle"] = await best(rounds, ops, cycle)
    out["get_list_100"] = await best(
        rounds, 20, lambda i: b.get_messages(ACCOUNT, QUEUE, Filter(limit=100), now)
    )
    # the cleaner while everything expires: worst single pass and total
    worst = spent_all = 0.0
    since = now
    for second in range(int(TTL) - 2, int(TTL) + 30):
        started = time.perf_counter()
        await b.clean(now + second, since)
        since = now + second
        spent = time.perf_counter() - started
        worst, spent_all = max(worst, spent), spent_all + spent
    out["clean_worst_ms"] = worst * 1e3
    out["clean_total_ms"] = spent_all * 1e3
    out["left_after_clean"] = await backend.count_messages()
    await backend.close()
    return out


async def fifo_case(
    backend: Backend, queue: str, size: int, groups: int, ops: int, rounds: int
) -> dict[str, float]:
    """µs per send, claim-of-10-and-delete step and count on a FIFO queue of ``size`` messages.

    Ten more messages, in groups of their own, stay in flight throughout (blocked groups);
    every round puts the queue back to its size, untimed.
    """
    now = time.time()
    b, a = backend, ACCOUNT
    await b.set_queue_meta(a, queue, b"fifo")
    serial = itertools.count()

    async def send(group: str | None = None) -> None:
        n = next(serial)
        mid, dedup = f"{queue}-{n:012d}", f"d{n}"
        group = f"g{n % groups}" if group is None else group
        await b.send_message(a, queue, mid, BODY, now + 86_400, 0.0, now, b"", group, dedup, now + 300)

    async def trim(k: int) -> None:  # delete the k oldest visible messages
        for m in await b.claim(a, queue, k, now + 30, now):
            await b.delete_message(a, queue, m.id, now)

    for i in range(10):
        await send(f"busy{i}")
    assert len(await b.claim(a, queue, 10, now + 86_400, now, fifo=True)) == 10
    for _ in range(size):
        await send()
    gc.collect()
    steps = max(ops // 10, 1)
    sends, claims, counts = [], [], []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(ops):
            await send()
        sends.append((time.perf_counter() - started) / ops)
        await trim(ops)
        spent = 0.0
        for _ in range(steps):
            started = time.perf_counter()
            taken = await b.claim(a, queue, 10, now + 30, now, fifo=True)
            for m in taken:
                await b.delete_message(a, queue, m.id, now)
            spent += time.perf_counter() - started
            assert len(taken) == 10, "the FIFO claim ran dry"
            for _ in taken:
                await send()
        claims.append(spent / steps)
        started = time.perf_counter()
        for _ in range(ops):
            await b.count(a, queue, now)
        counts.append((time.perf_counter() - started) / ops)
    size_now = (await b.count(a, queue, now)).visible
    return {
        "send": min(sends) * 1e6,
        "claim10_delete": min(claims) * 1e6,
        "count": min(counts) * 1e6,
        "size": size_now,
    }


async def child_fifo(args: argparse.Namespace) -> dict[str, Any]:
    backend = make_backend(args.backend, args.factory)
    await backend.open()
    small = await fifo_case(backend, "small", args.fifo_small, args.fifo_groups, args.ops, args.rounds)
    large = await fifo_case(backend, "large", args.fifo_large, args.fifo_groups, args.ops, args.rounds)
    await backend.close()
    return {"small": small, "large": large}


# -- parent -----------------------------------------------------------------------------


def run_child(mode: str, args: argparse.Namespace) -> dict[str, Any]:
    argv = [sys.executable, __file__, "--child", mode, "--messages", str(args.messages)]
    argv += ["--backend", args.backend, "--prefill", str(args.prefill), "--ops", str(args.ops)]
    argv += ["--rounds", str(args.rounds), "--fifo-small", str(args.fifo_small)]
    argv += ["--fifo-large", str(args.fifo_large), "--fifo-groups", str(args.fifo_groups)]
    if args.factory:
        argv += ["--factory", args.factory]
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"benchmark child failed:\n{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=200_000, help="messages for the footprint figure")
    parser.add_argument("--backend", default="memory://", help="memory:// or sqlite://:memory:")
    parser.add_argument("--factory", default=None, help="module:Class of another backend to measure")
    parser.add_argument("--prefill", type=int, default=100_000, help="queue size for the micro-benchmark")
    parser.add_argument("--ops", type=int, default=2_000, help="calls per round of a micro-benchmark")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per micro-benchmark (the best counts)")
    parser.add_argument("--fifo-small", type=int, default=100, help="small FIFO queue's size")
    parser.add_argument("--fifo-large", type=int, default=100_000, help="large FIFO queue's size")
    parser.add_argument("--fifo-groups", type=int, default=1_000, help="groups of the FIFO queues")
    parser.add_argument("--only", choices=["footprint", "hotpath", "fifo"], default=None)
    parser.add_argument("--child", choices=["footprint", "hotpath", "fifo"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        runners = {"footprint": child_footprint, "hotpath": child_hotpath, "fifo": child_fifo}
        print(json.dumps(asyncio.run(runners[args.child](args))))
        return
    name = args.factory or args.backend
    if args.only in (None, "footprint"):
        fp = run_child("footprint", args)
        assert fp["stored"] == args.messages, fp
        print(f"== {name}: {args.messages} messages (16-byte id + 100-byte body, ttl 600 s) ==")
        print(f"RSS growth {fp['rss_delta'] / args.messages:7.1f} bytes/message")
        print(f"filled at {args.messages / fp['fill_s']:,.0f} puts/s through the backend API")
    if args.only in (None, "hotpath"):
        hp = run_child("hotpath", args)
        print(f"== {name}: hot path on a queue of {args.prefill} messages, µs per backend call ==")
        for key in ("put_new", "put_replace", "get_one", "take", "delete_one", "take_delete_cycle"):
            print(f"{key:18} {hp[key]:7.2f}")
        print(f"{'get_list_100':18} {hp['get_list_100']:7.1f}")
        print(f"cleaner while the prefill expires: worst pass {hp['clean_worst_ms']:.1f} ms, ", end="")
        print(f"total {hp['clean_total_ms']:.1f} ms; left {hp['left_after_clean']}")
    if args.only in (None, "fifo"):
        ff = run_child("fifo", args)
        small, large = ff["small"], ff["large"]
        print(f"== {name}: FIFO queue of {small['size']:.0f} vs {large['size']:.0f} messages ", end="")
        print(f"in {args.fifo_groups} groups, µs per backend call ==")
        for key in ("send", "claim10_delete", "count"):
            print(f"{key:18} {small[key]:7.2f} {large[key]:7.2f}   x{large[key] / small[key]:.2f}")


if __name__ == "__main__":
    main()
