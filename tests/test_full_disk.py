"""A full disk and failing syncs under a real ``burrow serve`` on SQLite (docs/operations.md, "Full disk").

The database lives on a small tmpfs mounted for the test (root only; skipped otherwise), and
is filled for real: by PUTs, or by another file. Checked each time: every write that failed
was answered 507 ``insufficient_storage`` and is not there, every acknowledged message
is still readable, DELETE and the cleaner's expiry still work and make room, and PUT works
again without a restart once there is room, inside the file or on the disk; the file
passes ``integrity_check`` at the end.

Without root, the same state machine is driven in process: a commit made to fail with a
real ``SQLITE_FULL`` error.

Failing syncs use the power-cut library (``tests/powercut.c``): while its flag file exists
every ``fsync``/``fdatasync`` fails with EIO. No create may be acknowledged while its sync
cannot happen, and after a power cut every acknowledged create must be there.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from burrow.backends.sqlite import SQLiteBackend
from burrow.backends.sqlite import reserve as reserve_module
from burrow.backends.sqlite.reserve import parse_size
from burrow.client import Connection
from burrow.config import Settings
from burrow.core.errors import InsufficientStorage
from burrow.core.model import Filter
from burrow.testing.process import ServeProcess
from tests.powercut import PowerCut, build, compiler

#: Message bodies: large enough that a few hundred fill the disk quickly.
BODY = 16 * 1024
#: Space the server holds back for deletes (the ``?reserve=`` of the SQLite URL).
RESERVE = "1MiB"
#: PUTs in flight at once while filling.
CONCURRENCY = 8


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs to fill, unmounted afterwards."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command: cannot make a small filesystem to fill")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(disk)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to fill (needs root): {mounted.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True, check=False)


def serve(disk: Path) -> ServeProcess:
    return ServeProcess(
        "--backend",
        f"sqlite:///{disk / 'burrow.db'}?reserve={RESERVE}",
        "--port",
        "0",
        "--clean-interval",
        "0.2",
    )


def body(name: str) -> bytes:
    return name.encode().ljust(BODY, b".")


class Ledger:
    """What the server answered: acknowledged names (still expected) and refused ones."""

    def __init__(self) -> None:
        self.acked: set[str] = set()
        self.refused: set[str] = set()
        self.other: list[tuple[str, int, bytes]] = []

    async def put(self, conn: Connection, queue: str, name: str, query: str = "") -> int:
        reply = await conn.request("PUT", f"/v1.0/a/{queue}/{name}{query}", body(name))
        if reply.status in (201, 204):
            self.acked.add(f"{queue}/{name}")
        elif reply.status == 507:
            assert reply.json()["error"] == "insufficient_storage", reply
            self.refused.add(f"{queue}/{name}")
        else:
            self.other.append((name, reply.status, reply.body[:200]))
        return reply.status

    async def fill(self, url: str, queue: str, prefix: str, query: str = "", most: int = 2000) -> int:
        """PUT until the disk refuses (every connection saw a 507); returns how many got a 2xx."""
        before = len(self.acked)
        names = iter(f"{prefix}{i}" for i in range(most))
        async with asyncio.TaskGroup() as tasks:
            for _ in range(CONCURRENCY):
                tasks.create_task(self._filler(url, queue, names, query))
        assert not self.other, f"a write answered other than 2xx or 507: {self.other[:5]}"
        return len(self.acked) - before

    async def _filler(self, url: str, queue: str, names: Iterator[str], query: str) -> None:
        """PUT until three in a row are refused (a refusal can be the log's end, which the
        next checkpoint clears)."""
        refusals = 0
        async with Connection(url) as conn:
            for name in names:
                if await self.put(conn, queue, name, query) != 507:
                    refusals = 0
                    continue
                refusals += 1
                if refusals == 3:
                    return
                await asyncio.sleep(0.05)
        raise AssertionError(f"the disk never filled: {len(self.acked)} PUTs stored")

    async def check(self, url: str) -> None:
        """Every acknowledged message reads back whole; no refused one exists."""
        async with Connection(url) as conn:
            for key in sorted(self.acked):
                reply = await conn.request("GET", f"/v1.0/a/{key}?detail=body")
                assert (reply.status, reply.body) == (200, body(key.split("/")[1])), key
            for key in sorted(self.refused - self.acked):
                reply = await conn.request("GET", f"/v1.0/a/{key}")
                assert reply.status == 404, f"{key} was answered 507 but is stored"


def integrity(db: Path) -> None:
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()


async def eventually_put(url: str, ledger: Ledger, queue: str, name: str, seconds: float = 10.0) -> float:
    """PUT ``name`` until it is stored (507s meanwhile); returns the seconds it took."""
    start = time.monotonic()
    async with Connection(url) as conn:
        while await ledger.put(conn, queue, name) == 507:
            assert time.monotonic() - start < seconds, f"no room came back within {seconds} s"
            await asyncio.sleep(0.1)
    assert not ledger.other, ledger.other
    return time.monotonic() - start


async def test_filled_by_puts_deletes_and_expiry_make_room(tmpfs: Path) -> None:
    server = serve(tmpfs)
    url = await server.start()
    ledger = Ledger()
    try:
        stored = await ledger.fill(url, "keep", "k")
        assert stored > 200 and ledger.refused, (stored, len(ledger.refused))
        assert not (tmpfs / "burrow.db.reserve").exists(), "the reserve was not given up"
        assert any("the disk is full" in line for line in server.log), server.log[-5:]
        await ledger.check(url)

        # DELETE works on the full disk, and what it freed inside the file takes new messages:
        # ones that expire in 2 s, so that once the disk refuses again only the cleaner's
        # expiry can make room
        async with Connection(url) as conn:
            for key in sorted(ledger.acked)[:40]:
                assert (await conn.request("DELETE", f"/v1.0/a/{key}")).status == 204, key
                ledger.acked.discard(key)
        again = await ledger.fill(url, "short", "s", query="?ttl=2")
        assert again >= 20, f"only {again} PUTs fitted where 40 messages were deleted"
        ledger.acked -= {key for key in ledger.acked if key.startswith("short/")}  # they expire
        took = await eventually_put(url, ledger, "keep", "after-expiry")
        print(f"\nfull disk: {stored} PUTs filled it, {again} after 40 DELETEs; PUT back {took:.1f} s after")
        await ledger.check(url)
    finally:
        await server.stop()
    integrity(tmpfs / "burrow.db")
    # after a restart on the same full disk everything acknowledged is still there
    server = serve(tmpfs)
    url = await server.start()
    try:
        await ledger.check(url)
    finally:
        await server.stop()


def fill_with_a_file(path: Path) -> int:
    """Write zeros into ``path`` until the filesystem is full; returns the bytes written."""
    written = 0
    chunk = bytes(64 * 1024)
    with path.open("wb", buffering=0) as fh:
        while True:
            try:
                written += fh.write(chunk) or 0
            except OSError:
                break
        for size in (4096, 512, 1):  # the last few bytes too
            while True:
                try:
                    written += fh.write(bytes(size)) or 0
                except OSError:
                    break
    return written


async def test_filled_by_another_file_writes_come_back_when_it_goes(tmpfs: Path) -> None:
    server = serve(tmpfs)
    url = await server.start()
    ledger = Ledger()
    try:
        async with Connection(url) as conn:
            for i in range(40):
                assert await ledger.put(conn, "q", f"before{i}") == 201
        filler = tmpfs / "filler"
        await asyncio.to_thread(fill_with_a_file, filler)
        stored = await ledger.fill(url, "q", "full")  # what still fits in the log and the file
        assert ledger.refused
        await ledger.check(url)
        async with Connection(url) as conn:
            for i in range(10):
                assert (await conn.request("DELETE", f"/v1.0/a/q/before{i}")).status == 204
                ledger.acked.discard(f"q/before{i}")
        # the space the deletes freed inside the file takes new messages
        assert await ledger.fill(url, "q", "freed") >= 5
        assert not (tmpfs / "burrow.db.reserve").exists()

        filler.unlink()
        took = await eventually_put(url, ledger, "q", "back")
        # the database grows again: far more than the deletes freed fits now
        async with Connection(url) as conn:
            for i in range(150):
                assert await ledger.put(conn, "q", f"grown{i}") == 201, f"grown{i}"
        assert (tmpfs / "burrow.db.reserve").exists(), "the reserve was not made again"
        assert any("room again" in line for line in server.log), server.log[-5:]
        print(f"\nfull disk (another file): {stored} PUTs fitted after the fill; PUT back {took:.1f} s after")
        await ledger.check(url)
    finally:
        await server.stop()
    integrity(tmpfs / "burrow.db")


# -- failing syncs ------------------------------------------------------------------------

needs_cc = pytest.mark.skipif(
    compiler() is None and os.environ.get("BURROW_REQUIRE_SERVICES") != "1",
    reason="no C compiler to build the power-cut library",
)


@needs_cc
@pytest.mark.parametrize("fsync", ["batch", "always"])
async def test_no_create_is_acknowledged_while_syncs_fail(tmp_path: Path, fsync: str) -> None:
    """While every sync fails with EIO, no create (and in ``always`` no delete) gets a 2xx;
    once syncs work again so do writes, without a restart; after a power cut every
    acknowledged create is there."""
    sim = PowerCut(build(tmp_path), tmp_path / "data", tmp_path / "shadow")
    db = sim.data / "burrow.db"
    args = ("--backend", f"sqlite:///{db}?reserve=1MiB", "--port", "0", "--fsync", fsync)
    server = ServeProcess(*args, env=sim.env())
    url = await server.start()
    ledger = Ledger()
    async with Connection(url) as conn:
        for i in range(20):
            assert await ledger.put(conn, "q", f"ok{i}") == 201
        sim.fail_syncs(True)
        statuses = [
            (await conn.request("PUT", f"/v1.0/a/q/failing{i}", body(f"failing{i}"))).status
            for i in range(20)
        ]
        assert statuses == [503] * 20, statuses
        delete = (await conn.request("DELETE", "/v1.0/a/q/ok0")).status
        # batch acknowledges a delete at commit (a power cut may bring it back); always does not
        assert delete == (503 if fsync == "always" else 204), delete
        ledger.acked.discard("q/ok0")  # committed: gone or (after the cut) back, either is right
        sim.fail_syncs(False)
        for i in range(20):
            assert await ledger.put(conn, "q", f"after{i}") == 201
    await server.kill()
    sim.restore()
    server = ServeProcess(*args)
    url = await server.start()
    try:
        ledger.refused.clear()  # the 503s were committed, so they may be there: only the 2xx are checked
        await ledger.check(url)
    finally:
        await server.stop()
    integrity(db)


# -- the state machine in process (no root needed) -----------------------------------------

T = 1_000_000.0


def full_error() -> sqlite3.OperationalError:
    """What SQLite raises when a write finds the disk full."""
    error = sqlite3.OperationalError("database or disk is full")
    error.sqlite_errorcode = sqlite3.SQLITE_FULL
    return error


def pinned(backend: SQLiteBackend) -> bool:
    return backend.pinned


async def test_a_full_commit_gives_up_the_reserve_and_pins_until_there_is_room(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reserve_module, "ROOM_FACTOR", 1 << 40)  # "no room" until set back
    backend = SQLiteBackend(str(tmp_path / "b.db"), reserve_bytes=1 << 20)
    reserve = tmp_path / "b.db.reserve"
    await backend.open()
    try:
        assert reserve.stat().st_size == 1 << 20 and reserve.stat().st_blocks * 512 >= 1 << 20
        for i in range(20):
            assert await backend.put_message("a", "q", f"m{i}", b"x" * 4000, 0.0, 0.0, T)
        await backend.delete_messages("a", "q", Filter(limit=10), T)  # room inside the file

        faults = [full_error()]

        def fail_once() -> None:
            if faults:
                raise faults.pop()

        backend.inject_commit_fault(fail_once)
        big, small, delete = await asyncio.gather(
            backend.put_message("a", "q", "big", b"y" * 200_000, 0.0, 0.0, T),
            backend.put_message("a", "q", "small", b"z" * 4000, 0.0, 0.0, T),
            backend.delete_message("a", "q", "m10", T),
            return_exceptions=True,
        )
        backend.inject_commit_fault(None)
        # the reserve went, the file is pinned: what needs new pages is refused (507, not
        # stored), what fits in freed pages is stored, and the delete in the batch went through
        assert not faults and pinned(backend) and not reserve.exists()
        assert isinstance(big, InsufficientStorage) and big.status == 507, big
        assert small is True and delete is not None, (small, delete)
        stored = [m.id for m in await backend.get_messages("a", "q", Filter(), T)]
        assert stored == [f"m{i}" for i in range(11, 20)] + ["small"]

        # pinned, a commit that finds the log at its end is tried again after a checkpoint
        faults.append(full_error())
        checkpoints = backend._writer.checkpoints
        backend.inject_commit_fault(fail_once)
        assert await backend.delete_message("a", "q", "m11", T) is not None
        backend.inject_commit_fault(None)
        assert not faults and backend._writer.checkpoints > checkpoints

        await asyncio.sleep(0.6)  # two of the sync thread's rounds: no room, so still pinned
        assert pinned(backend) and not reserve.exists()
        with pytest.raises(InsufficientStorage):
            await big_put(backend)

        # room again: the reserve is made again and the pin lifted
        monkeypatch.setattr(reserve_module, "ROOM_FACTOR", 2)
        for _ in range(300):
            if not pinned(backend):
                break
            await asyncio.sleep(0.01)
        assert not pinned(backend) and reserve.stat().st_size == 1 << 20
        assert await big_put(backend)
    finally:
        await backend.close()
    assert not reserve.exists(), "a stopped server holds no reserve"


async def big_put(backend: SQLiteBackend) -> bool:
    return await backend.put_message("a", "q", "big", b"y" * 200_000, 0.0, 0.0, T)


def test_reserve_size_on_the_url(tmp_path: Path) -> None:
    db = tmp_path / "x.db"
    assert SQLiteBackend.from_url(f"sqlite:///{db}?reserve=2MiB", Settings())._writer.reserve.size == 2 << 20
    assert SQLiteBackend.from_url(f"sqlite:///{db}?reserve=0", Settings())._writer.reserve.size == 0
    assert SQLiteBackend.from_url(f"sqlite:///{db}", Settings())._writer.reserve.size == 64 << 20
    assert SQLiteBackend.from_url("sqlite://:memory:", Settings())._writer.reserve.size == 0
    sizes = [parse_size(t) for t in ("512", "4k", "3M", "1GiB", "8mb")]
    assert sizes == [512, 4096, 3 << 20, 1 << 30, 8 << 20]
    for bad in ("", "MiB", "-1", "1.5M", "2TiB"):
        with pytest.raises(ValueError, match="reserve"):
            parse_size(bad)
