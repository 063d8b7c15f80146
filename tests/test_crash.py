"""Crash safety of ``burrow serve`` on SQLite: SIGKILL under load, restart, check.

A real server process (``python -m burrow serve --fsync batch``) takes concurrent
producers (PUT of unique ids) and consumers (get-and-hide, then DELETE) over real
sockets. Each client records only what the server acknowledged with a 2xx. The
server is killed with SIGKILL at a random moment, the file is checked with
``PRAGMA integrity_check`` and the server restarted, for ``BURROW_CRASH_CYCLES``
cycles (default 20). A final drain then proves: no acknowledged PUT is lost unless
its DELETE was at least attempted, no acknowledged DELETE is undone, nothing appears
that was never sent. Redeliveries (at-least-once) are counted and printed.
"""

from __future__ import annotations

import asyncio
import os
import random
import sqlite3
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from burrow.client import Connection
from burrow.testing.process import ServeProcess

CYCLES = int(os.environ.get("BURROW_CRASH_CYCLES", "20"))
PRODUCERS = 4
CONSUMERS = 4
#: Seconds of load before the kill, drawn uniformly from this range each cycle.
LOAD_SECONDS = (0.05, 0.5)
QUEUE = "/v1.0/crash/jobs"


@dataclass
class Ledger:
    """What the clients sent and what the server acknowledged, across all cycles."""

    sent_puts: set[str] = field(default_factory=set)
    acked_puts: set[str] = field(default_factory=set)
    sent_deletes: set[str] = field(default_factory=set)
    acked_deletes: set[str] = field(default_factory=set)
    received: Counter[str] = field(default_factory=Counter)


async def producer(url: str, name: str, ledger: Ledger) -> None:
    async with Connection(url) as conn:
        for n in range(1_000_000):
            mid = f"{name}-{n}"
            ledger.sent_puts.add(mid)
            reply = await conn.request("PUT", f"{QUEUE}/{mid}", b"payload " + mid.encode())
            if 200 <= reply.status < 300:
                ledger.acked_puts.add(mid)


async def consumer(url: str, ledger: Ledger) -> None:
    async with Connection(url) as conn:
        while True:
            reply = await conn.request("POST", f"{QUEUE}?limit=1&hide=30&wait=1&detail=all")
            if reply.status != 200:
                continue
            listed = reply.json()
            assert isinstance(listed, list) and len(listed) == 1, listed
            message = listed[0]
            mid = message["id"]
            assert message["body"] == f"payload {mid}"
            ledger.received[mid] += 1
            ledger.sent_deletes.add(mid)
            reply = await conn.request("DELETE", f"{QUEUE}/{mid}")
            if 200 <= reply.status < 300:
                ledger.acked_deletes.add(mid)


async def load_until_killed(server: ServeProcess, url: str, cycle: int, ledger: Ledger) -> None:
    clients = [asyncio.ensure_future(producer(url, f"c{cycle}p{i}", ledger)) for i in range(PRODUCERS)]
    clients += [asyncio.ensure_future(consumer(url, ledger)) for _ in range(CONSUMERS)]
    await asyncio.sleep(random.uniform(*LOAD_SECONDS))  # the random moment of the crash
    for client in clients:
        if client.done():  # a client may only stop because the server went away
            raise AssertionError(f"client stopped before the kill: {client.exception()!r}")
    await server.kill()
    results = await asyncio.gather(*clients, return_exceptions=True)
    for result in results:
        # every client must have died of the lost connection, not of a wrong answer
        assert isinstance(result, (OSError, asyncio.IncompleteReadError, EOFError)), repr(result)


def integrity(db: Path) -> str:
    conn = sqlite3.connect(db)
    try:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        conn.close()


async def drain(url: str) -> list[str]:
    """Every message left, hidden or not, in order; then delete them all."""
    present: list[str] = []
    async with Connection(url) as conn:
        marker = ""
        while True:
            reply = await conn.request("GET", f"{QUEUE}?match_hidden=true&detail=id&limit=1000{marker}")
            if reply.status == 404:
                break
            assert reply.status == 200, reply
            page = reply.json()
            assert isinstance(page, list)
            present += page
            marker = f"&marker={page[-1]}"
        if present:
            reply = await conn.request("DELETE", f"{QUEUE}?match_hidden=true&detail=none")
            assert reply.status == 204, reply
        assert (await conn.request("GET", f"{QUEUE}?match_hidden=true")).status == 404
    return present


async def test_sigkill_under_load_loses_no_acknowledged_write(tmp_path: Path) -> None:
    db = tmp_path / "crash" / "burrow.db"
    ledger = Ledger()
    started = time.monotonic()
    for cycle in range(CYCLES):
        server = ServeProcess("--backend", f"sqlite:///{db}", "--port", "0", "--fsync", "batch")
        url = await server.start()
        await load_until_killed(server, url, cycle, ledger)
        assert integrity(db) == "ok", f"cycle {cycle}: integrity_check failed"

    server = ServeProcess("--backend", f"sqlite:///{db}", "--port", "0", "--fsync", "batch")
    url = await server.start()
    present = await drain(url)
    await server.stop()
    assert integrity(db) == "ok"

    stored = set(present)
    assert len(present) == len(stored), "the queue listed a message twice"
    lost = ledger.acked_puts - ledger.sent_deletes - stored
    undeleted = ledger.acked_deletes & stored
    phantoms = stored - ledger.sent_puts
    redelivered = {mid: n for mid, n in ledger.received.items() if n > 1}
    in_flight_at_kill = (ledger.sent_deletes - ledger.acked_deletes) & stored
    print(
        f"\ncrash test: {CYCLES} SIGKILL cycles in {time.monotonic() - started:.1f}s;"
        f" puts sent {len(ledger.sent_puts)}, acknowledged {len(ledger.acked_puts)};"
        f" deletes acknowledged {len(ledger.acked_deletes)}; left at drain {len(stored)}"
        f" (of which {len(in_flight_at_kill)} received but not deleted before a kill);"
        f" duplicates (received more than once): {len(redelivered)} {sorted(redelivered)[:20]}"
    )
    assert not lost, f"acknowledged PUTs lost: {sorted(lost)[:20]}"
    assert not undeleted, f"acknowledged DELETEs undone: {sorted(undeleted)[:20]}"
    assert not phantoms, f"messages never sent: {sorted(phantoms)[:20]}"
    assert len(ledger.acked_puts) > CYCLES, "the load was too light to test anything"
    assert ledger.acked_deletes, "no consumer ever completed a message"
