"""Power cuts under load, simulated: what each ``--fsync`` mode keeps of what it acknowledged.

A real ``burrow serve`` process runs with ``tests/powercut.c`` preloaded, so that every file
of its data directory has a copy as of its last sync. Concurrent producers (PUT of unique
ids) and consumers (take with ``hide=3600``, then DELETE) record what the server
acknowledged. At a random moment the process is killed and every file is replaced by its
last synced copy: a power cut that loses every write not yet synced. The file must pass
``integrity_check``; the server restarts and the load goes on, for ``BURROW_POWERCUT_CYCLES``
cycles (default 8). A final drain then checks each mode's promise (docs/operations.md):

* ``batch`` (the default): no acknowledged create is lost. Takes and deletes acknowledged
  within the last sync interval may be undone (the message comes back): counted, allowed.
* ``always``: nothing acknowledged is lost or undone: no create lost, no delete undone,
  no taken message visible again.
* ``never``: acknowledged creates are lost (this proves the simulation drops unsynced
  writes, so the two checks above are not vacuous).
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import sqlite3
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from burrow.client import Connection
from burrow.testing.process import ServeProcess
from tests.powercut import PowerCut, build, compiler

CYCLES = int(os.environ.get("BURROW_POWERCUT_CYCLES", "8"))
PRODUCERS = 4
CONSUMERS = 4
LOAD_SECONDS = (0.05, 0.4)
QUEUE = "/v1.0/power/jobs"

needs_cc = pytest.mark.skipif(
    compiler() is None and os.environ.get("BURROW_REQUIRE_SERVICES") != "1",
    reason="no C compiler to build the power-cut library",
)


def serve_args(db: Path, fsync: str) -> tuple[str, ...]:
    return ("--backend", f"sqlite:///{db}", "--port", "0", "--fsync", fsync)


@dataclass
class Ledger:
    sent_puts: set[str] = field(default_factory=set)
    acked_puts: set[str] = field(default_factory=set)
    acked_takes: set[str] = field(default_factory=set)
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
            reply = await conn.request("POST", f"{QUEUE}?limit=1&hide=3600&wait=1&detail=all")
            if reply.status != 200:
                continue
            listed = reply.json()
            assert isinstance(listed, list) and len(listed) == 1, listed
            mid = listed[0]["id"]
            assert listed[0]["body"] == f"payload {mid}"
            ledger.acked_takes.add(mid)
            ledger.received[mid] += 1
            ledger.sent_deletes.add(mid)
            reply = await conn.request("DELETE", f"{QUEUE}/{mid}")
            if 200 <= reply.status < 300:
                ledger.acked_deletes.add(mid)


def integrity(db: Path) -> str:
    """``integrity_check`` of a copy: opening the file itself would checkpoint its WAL into
    it behind the simulation's back (the shadow copies would no longer match)."""
    scratch = db.parent.parent / "integrity"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    for path in db.parent.glob(db.name + "*"):
        shutil.copyfile(path, scratch / path.name)
    conn = sqlite3.connect(scratch / db.name)
    try:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        conn.close()
        shutil.rmtree(scratch, ignore_errors=True)


async def listing(conn: Connection, hidden: bool) -> list[str]:
    present: list[str] = []
    marker = ""
    while True:
        reply = await conn.request(
            "GET", f"{QUEUE}?match_hidden={str(hidden).lower()}&detail=id&limit=1000{marker}"
        )
        if reply.status == 404:
            return present
        assert reply.status == 200, reply
        page = reply.json()
        assert isinstance(page, list)
        present += page
        marker = f"&marker={page[-1]}"


@dataclass
class Outcome:
    ledger: Ledger
    stored: set[str]
    visible: set[str]
    cuts: int

    @property
    def lost(self) -> set[str]:
        """Acknowledged creates gone, though no DELETE of them was ever sent."""
        return self.ledger.acked_puts - self.ledger.sent_deletes - self.stored

    @property
    def undeleted(self) -> set[str]:
        return self.ledger.acked_deletes & self.stored

    @property
    def untaken(self) -> set[str]:
        """Taken (acknowledged, hidden for an hour) yet visible again."""
        return self.ledger.acked_takes & self.visible

    def report(self, fsync: str) -> str:
        ledger = self.ledger
        return (
            f"\npower cut test, --fsync {fsync}: {self.cuts} cuts; puts sent {len(ledger.sent_puts)},"
            f" acknowledged {len(ledger.acked_puts)}; takes acknowledged {len(ledger.acked_takes)};"
            f" deletes acknowledged {len(ledger.acked_deletes)}; left {len(self.stored)};"
            f" acknowledged creates lost {len(self.lost)}; acknowledged deletes undone"
            f" {len(self.undeleted)}; acknowledged takes undone {len(self.untaken)}"
        )


async def run_cuts(tmp_path: Path, fsync: str, cycles: int) -> Outcome:
    lib = build(tmp_path)
    sim = PowerCut(lib, tmp_path / "data", tmp_path / "shadow")
    db = sim.data / "burrow.db"
    ledger = Ledger()
    for cycle in range(cycles):
        server = ServeProcess(*serve_args(db, fsync), env=sim.env())
        url = await server.start()
        clients = [asyncio.ensure_future(producer(url, f"c{cycle}p{i}", ledger)) for i in range(PRODUCERS)]
        clients += [asyncio.ensure_future(consumer(url, ledger)) for _ in range(CONSUMERS)]
        await asyncio.sleep(random.uniform(*LOAD_SECONDS))
        for client in clients:
            if client.done():
                raise AssertionError(f"client stopped before the cut: {client.exception()!r}")
        await server.kill()
        results = await asyncio.gather(*clients, return_exceptions=True)
        for result in results:
            assert isinstance(result, (OSError, asyncio.IncompleteReadError, EOFError)), repr(result)
        back = sim.restore()
        if "burrow.db" in back:
            assert integrity(db) == "ok", f"cycle {cycle}: integrity_check failed"

    server = ServeProcess(*serve_args(db, fsync))
    url = await server.start()
    async with Connection(url) as conn:
        stored = await listing(conn, hidden=True)
        visible = await listing(conn, hidden=False)
        if stored:
            reply = await conn.request("DELETE", f"{QUEUE}?match_hidden=true&detail=none")
            assert reply.status == 204, reply
    await server.stop()
    assert integrity(db) == "ok"
    assert len(stored) == len(set(stored)), "the queue listed a message twice"
    assert not set(stored) - ledger.sent_puts, "messages that were never sent"
    assert len(ledger.acked_puts) > cycles, "the load was too light to test anything"
    return Outcome(ledger, set(stored), set(visible), cycles)


@needs_cc
async def test_power_cut_loses_no_acknowledged_create_in_batch_mode(tmp_path: Path) -> None:
    outcome = await run_cuts(tmp_path, "batch", CYCLES)
    print(outcome.report("batch"))
    assert not outcome.lost, f"acknowledged PUTs lost: {sorted(outcome.lost)[:20]}"
    assert outcome.ledger.acked_deletes, "no consumer ever completed a message"


@needs_cc
async def test_power_cut_loses_nothing_acknowledged_in_always_mode(tmp_path: Path) -> None:
    outcome = await run_cuts(tmp_path, "always", CYCLES)
    print(outcome.report("always"))
    assert not outcome.lost, f"acknowledged PUTs lost: {sorted(outcome.lost)[:20]}"
    assert not outcome.undeleted, f"acknowledged DELETEs undone: {sorted(outcome.undeleted)[:20]}"
    assert not outcome.untaken, f"acknowledged takes undone: {sorted(outcome.untaken)[:20]}"
    assert outcome.ledger.acked_deletes, "no consumer ever completed a message"


@needs_cc
async def test_the_simulation_drops_unsynced_writes(tmp_path: Path) -> None:
    """``never`` syncs nothing: a cut must lose acknowledged creates, or the shim is broken."""
    outcome = await run_cuts(tmp_path, "never", 2)
    print(outcome.report("never"))
    assert outcome.lost, "a power cut in --fsync never lost nothing: the simulation drops nothing"
