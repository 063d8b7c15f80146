"""SQLite backend figures for issue 3, in one run: throughput vs memory, bytes per message, restart time.

1. Producer+consumer throughput through HTTP: for each backend (memory://, then SQLite with
   ``--fsync batch``, ``always``, ``never``) a real ``burrow serve`` process is started and
   ``--connections`` keep-alive clients hammer it for ``--seconds``: half are producers
   (PUT of a unique 16-byte id with a 100-byte body), half consumers (POST
   ``?limit=1&hide=30&wait=1`` then DELETE of the id). Reported: 2xx responses per second,
   messages consumed per second, and the server's CPU use (100% = one core: the server is
   the bottleneck, not the load generator).
2. Bytes per stored message in ``sqlite://:memory:``: ``--messages`` messages of a 16-byte id
   and a 100-byte body (132 bytes; the server's default ttl applies, so the expiry index is
   populated) are put through the backend; reported from the database size
   (``page_count * page_size``) and from the growth of the process RSS.
3. Restart time: the same number of messages in a file, then the time for a fresh backend's
   ``open()`` plus the first worker cycle (get-and-hide of the first message).

Usage: ``.venv/bin/python benchmarks/sqlite_bench.py`` (short defaults, ~1 minute);
``--messages 1000000 --seconds 10`` for the issue's figures. ``--only http|memory|restart``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import re
import resource
import sys
import tempfile
import time
from pathlib import Path

from burrow.backends.sqlite import SQLiteBackend
from burrow.client import Connection, encode_request
from burrow.core.model import Filter, Update
from burrow.http.server import run

READY = re.compile(r"listening on http://([0-9.]+):(\d+) ")
BODY = b"b" * 100
TTL = 600.0  # the server's default ttl: every message has an expiry, as in real use
PUT_CHUNK = 2000


def message_id(n: int) -> str:
    return f"{n:016x}"  # 16 bytes


# -- 1. HTTP throughput ---------------------------------------------------------------


async def start_server(url: str, fsync: str) -> tuple[asyncio.subprocess.Process, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "burrow",
        "serve",
        "--backend",
        url,
        "--fsync",
        fsync,
        "--port",
        "0",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    while True:
        line = (await asyncio.wait_for(proc.stderr.readline(), 30)).decode()
        if not line:
            raise RuntimeError(f"server for {url} exited before listening")
        found = READY.search(line)
        if found:
            return proc, f"http://{found.group(1)}:{found.group(2)}"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def producer(base: str, name: str, stop: float, counts: dict[str, int]) -> None:
    conn = await Connection(base).connect()
    n = 0
    while time.monotonic() < stop:
        reply = await conn.exchange(encode_request("PUT", f"/v1.0/bench/q/{name}{n:013x}", BODY))
        n += 1
        if 200 <= reply.status < 300:
            counts["ok"] += 1
    await conn.close()


async def consumer(base: str, stop: float, counts: dict[str, int]) -> None:
    conn = await Connection(base).connect()
    take = encode_request("POST", "/v1.0/bench/q?limit=1&hide=30&wait=1&detail=id")
    while time.monotonic() < stop:
        reply = await conn.exchange(take)
        if reply.status != 200:
            continue
        counts["ok"] += 1
        reply = await conn.exchange(encode_request("DELETE", f"/v1.0/bench/q/{reply.body[2:-2].decode()}"))
        if 200 <= reply.status < 300:
            counts["ok"] += 1
            counts["consumed"] += 1
    await conn.close()


async def throughput(
    proc: asyncio.subprocess.Process, base: str, tag: str, connections: int, seconds: float
) -> dict[str, float]:
    counts = {"ok": 0, "consumed": 0}
    cpu_before, started = cpu_seconds(proc.pid), time.monotonic()
    stop = started + seconds
    half = max(1, connections // 2)
    await asyncio.gather(
        *(producer(base, f"{tag}{i:03x}", stop, counts) for i in range(half)),
        *(consumer(base, stop, counts) for _ in range(half)),
    )
    elapsed = time.monotonic() - started
    cpu = cpu_seconds(proc.pid) - cpu_before
    return {
        "requests_per_s": counts["ok"] / elapsed,
        "consumed_per_s": counts["consumed"] / elapsed,
        "server_cpu_pct": 100 * cpu / elapsed,
    }


async def http_figures(args: argparse.Namespace, tmp: Path) -> None:
    """All servers run at once; rounds alternate between them so a noisy machine hits all alike."""
    print(
        f"\n== producer+consumer over HTTP: {args.connections} connections,"
        f" {args.rounds} rounds of {args.seconds:g} s per backend, median round =="
    )
    runs = [("memory", "memory://", "batch")] + [
        (f"sqlite fsync={mode}", f"sqlite:///{tmp / f'{mode}.db'}", mode)
        for mode in ("batch", "always", "never")
    ]
    servers = [await start_server(url, fsync) for _, url, fsync in runs]
    results: dict[str, list[dict[str, float]]] = {name: [] for name, _, _ in runs}
    try:
        for round in range(args.rounds):
            for (name, _, _), (proc, base) in zip(runs, servers, strict=True):
                tag = f"r{round:02x}"
                results[name].append(await throughput(proc, base, tag, args.connections, args.seconds))
    finally:
        for proc, _ in servers:
            proc.terminate()
            await proc.wait()
    base_rate = 0.0
    for name, rounds in results.items():
        r = sorted(rounds, key=lambda x: x["requests_per_s"])[len(rounds) // 2]
        base_rate = base_rate or r["requests_per_s"]
        spread = ", ".join(f"{x['requests_per_s']:.0f}" for x in rounds)
        print(
            f"{name:20s} {r['requests_per_s']:7.0f} req/s {r['consumed_per_s']:6.0f} msg/s consumed"
            f"  server CPU {r['server_cpu_pct']:3.0f}%  vs memory {r['requests_per_s'] / base_rate:.2f}"
            f"  (rounds: {spread})"
        )


# -- 2 and 3. bytes per message, restart ----------------------------------------------------


async def fill(backend: SQLiteBackend, count: int, now: float) -> None:
    for start in range(0, count, PUT_CHUNK):
        await asyncio.gather(
            *(
                backend.put_message("bench", "q", message_id(n), BODY, now + TTL, 0.0, now)
                for n in range(start, min(count, start + PUT_CHUNK))
            )
        )


def rss_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize()


async def memory_figures(args: argparse.Namespace) -> None:
    count = args.messages
    gc.collect()
    rss_before = rss_bytes()
    backend = SQLiteBackend(":memory:", "batch")
    await backend.open()
    started = time.monotonic()
    await fill(backend, count, time.time())
    elapsed = time.monotonic() - started
    [(pages,)] = await backend.pragma("page_count")
    [(page_size,)] = await backend.pragma("page_size")
    gc.collect()
    rss = rss_bytes() - rss_before
    assert await backend.count_messages() == count
    await backend.close()
    print(f"\n== sqlite://:memory: with {count} messages (16-byte id + 100-byte body) ==")
    print(f"database size      {pages * page_size / count:7.1f} bytes/message ({pages} pages of {page_size})")
    print(f"process RSS growth {rss / count:7.1f} bytes/message")
    print(f"filled at {count / elapsed:.0f} puts/s through the backend API")


async def restart_figures(args: argparse.Namespace, tmp: Path) -> None:
    count = args.messages
    path = tmp / "restart.db"
    now = time.time()
    backend = SQLiteBackend(str(path), "never")
    await backend.open()
    await fill(backend, count, now)
    await backend.close()
    size = sum(p.stat().st_size for p in tmp.glob("restart.db*"))
    started = time.monotonic()
    reopened = SQLiteBackend(str(path), "batch")
    await reopened.open()
    opened = time.monotonic()
    first = await reopened.update_messages("bench", "q", Filter(limit=1), Update(hidden_until=now + 30), now)
    cycle = time.monotonic()
    assert [m.id for m in first] == [message_id(0)]
    await reopened.close()
    print(f"\n== restart with {count} stored messages ({size / 1e6:.0f} MB file) ==")
    open_ms, cycle_ms = 1000 * (opened - started), 1000 * (cycle - started)
    print(f"open() {open_ms:.1f} ms; open + first get-and-hide {cycle_ms:.1f} ms")


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="burrow-sqlite-bench-") as name:
        tmp = Path(name)
        if args.only in (None, "http"):
            await http_figures(args, tmp)
        if args.only in (None, "memory"):
            await memory_figures(args)
        if args.only in (None, "restart"):
            await restart_figures(args, tmp)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=2.0, help="load duration per round [2]")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per backend [3]")
    parser.add_argument("--connections", type=int, default=64, help="HTTP connections, half producers [64]")
    parser.add_argument("--messages", type=int, default=100_000, help="stored messages for 2 and 3 [100000]")
    parser.add_argument("--only", choices=("http", "memory", "restart"), help="run one part")
    return parser.parse_args(argv)


if __name__ == "__main__":
    run(main(parse()))
