"""When the SQLite backend acknowledges a write, per ``--fsync`` mode (burrow/backends/sqlite/writer.py).

A sync is held back (``before_sync`` blocks on an event) to see which results wait for it.
Power cuts themselves are simulated in tests/test_powercut.py.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from burrow.backends import open_backend
from burrow.backends.sqlite import SQLiteBackend
from burrow.backends.sqlite import writer as writer_module
from burrow.backends.sqlite.writer import Writer
from burrow.config import Settings, load_settings
from burrow.core.errors import StorageUnavailable
from burrow.core.model import Filter, Update

T = 1_000_000.0
ALL = Filter()


def writer_of(backend: SQLiteBackend) -> Writer:
    return backend._writer


class HeldSync:
    """A ``before_sync`` hook that blocks every sync until released (or raises, if told)."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.fail_next: BaseException | None = None

    def __call__(self) -> None:
        self.entered.set()
        self.gate.wait(10)
        error, self.fail_next = self.fail_next, None
        if error is not None:
            raise error


async def opened(path: Path, fsync: str = "batch", interval: float = 0.005) -> SQLiteBackend:
    backend = open_backend(f"sqlite:///{path}", Settings(fsync=fsync, fsync_interval=interval))
    assert isinstance(backend, SQLiteBackend)
    await backend.open()
    return backend


@pytest.fixture
def no_checkpoints(monkeypatch: pytest.MonkeyPatch) -> None:
    """No periodic checkpoint (each begins with a sync) to disturb a count of syncs."""
    monkeypatch.setattr(writer_module, "CHECKPOINT_SECONDS", 3600.0)


@pytest.fixture
async def held(tmp_path: Path, no_checkpoints: None) -> AsyncIterator[tuple[SQLiteBackend, HeldSync]]:
    backend = await opened(tmp_path / "burrow.db", "batch", interval=5.0)
    hook = HeldSync()
    writer_of(backend).before_sync = hook
    try:
        yield backend, hook
    finally:
        hook.gate.set()
        await backend.close()


async def settle() -> None:
    """Let the loop run a few iterations (batches are run one iteration after the call)."""
    for _ in range(5):
        await asyncio.sleep(0)
    await asyncio.sleep(0.02)


async def wait_for(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    for _ in range(int(seconds / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


async def test_batch_acknowledges_creates_after_their_sync_and_takes_at_commit(
    held: tuple[SQLiteBackend, HeldSync],
) -> None:
    backend, hook = held
    assert await backend.put_message("a", "q", "m1", b"x", 0.0, 0.0, T)
    hook.gate.clear()
    hook.entered.clear()
    create = asyncio.ensure_future(backend.put_message("a", "q", "m2", b"y", 0.0, 0.0, T))
    await asyncio.get_running_loop().run_in_executor(None, hook.entered.wait, 5)
    # the create is committed (reads see it) but not acknowledged while its sync is held
    take = asyncio.ensure_future(
        backend.update_messages("a", "q", Filter(limit=1), Update(hidden_until=T + 60), T)
    )
    delete = asyncio.ensure_future(backend.delete_message("a", "q", "m2", T))
    ttl = asyncio.ensure_future(backend.update_message("a", "q", "m1", Update(expires=T + 99), T))
    await settle()
    assert take.done() and [m.id for m in take.result()] == ["m1"]
    assert delete.done() and delete.result() is not None
    assert not create.done(), "a create was acknowledged before its sync"
    assert not ttl.done(), "a ttl change was acknowledged before its sync"
    hook.gate.set()
    assert await create is True
    assert await ttl is not None
    await backend.delete_accounts(ALL, T)


@pytest.mark.parametrize(("fsync", "interval"), [("always", 0.005), ("batch", 0.0)])
async def test_every_write_waits_for_its_sync(tmp_path: Path, fsync: str, interval: float) -> None:
    backend = await opened(tmp_path / "burrow.db", fsync, interval)
    hook = HeldSync()
    writer_of(backend).before_sync = hook
    try:
        assert await backend.put_message("a", "q", "m1", b"x", 0.0, 0.0, T)
        hook.gate.clear()
        delete = asyncio.ensure_future(backend.delete_message("a", "q", "m1", T))
        read = asyncio.ensure_future(backend.get_messages("a", "q", ALL, T))
        await settle()
        assert read.done() and read.result() == []  # reads never wait: the delete is committed
        assert not delete.done(), f"--fsync {fsync} (interval {interval}) acknowledged a delete unsynced"
        hook.gate.set()
        assert await delete is not None
    finally:
        hook.gate.set()
        await backend.close()


async def test_a_take_acknowledged_unsynced_is_synced_within_the_interval(
    tmp_path: Path, no_checkpoints: None
) -> None:
    backend = await opened(tmp_path / "burrow.db", "batch", interval=0.05)
    writer = writer_of(backend)
    try:
        assert await backend.put_message("a", "q", "m1", b"x", 0.0, 0.0, T)
        synced = writer.syncs_done
        taken = await backend.update_messages("a", "q", Filter(limit=1), Update(hidden_until=T + 9), T)
        assert [m.id for m in taken] == ["m1"]
        assert writer.syncs_done == synced, "the take waited for a sync"
        await wait_for(lambda: writer.synced >= writer.commits, seconds=2.0)
        assert writer.syncs_done == synced + 1
        await backend.delete_accounts(ALL, T)
    finally:
        await backend.close()


async def test_a_failed_sync_fails_the_waiting_creates_then_recovers(
    held: tuple[SQLiteBackend, HeldSync],
) -> None:
    backend, hook = held
    writer = writer_of(backend)
    hook.fail_next = OSError(5, "Input/output error")
    outcomes = await asyncio.gather(
        *(backend.put_message("a", "q", f"m{i}", b"x", 0.0, 0.0, T) for i in range(20)),
        return_exceptions=True,
    )
    assert all(isinstance(o, StorageUnavailable) for o in outcomes), outcomes
    assert "may not be on disk" in str(outcomes[0])
    checkpoints = writer.checkpoints
    # the next sync is a full checkpoint (fdatasync is not trusted after an error), then
    # fdatasync again
    assert await backend.put_message("a", "q", "after", b"y", 0.0, 0.0, T)
    assert writer.checkpoints == checkpoints + 1
    synced = writer.syncs_done
    assert await backend.put_message("a", "q", "later", b"z", 0.0, 0.0, T)
    assert (writer.checkpoints, writer.syncs_done) == (checkpoints + 1, synced + 1)
    # the failed creates were committed: a 503 says "maybe not on disk", not "not stored"
    assert len(await backend.get_messages("a", "q", ALL, T)) == 22
    await backend.delete_accounts(ALL, T)


async def test_a_checkpoint_parks_batches_and_restarts_the_wal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(writer_module, "CHECKPOINT_SECONDS", 0.02)
    path = tmp_path / "burrow.db"
    backend = await opened(path)
    writer = writer_of(backend)
    try:
        # while the connection is taken (as during a checkpoint), batches wait, in order
        assert writer.lock.acquire(timeout=5)
        put = asyncio.ensure_future(backend.put_message("a", "q", "m1", b"x", 0.0, 0.0, T))
        get = asyncio.ensure_future(backend.get_messages("a", "q", ALL, T))
        await settle()
        assert not put.done() and not get.done() and writer.parked
        writer.lock.release()
        writer.unpark()
        assert await put is True
        assert [m.id for m in await get] == ["m1"]
        # under steady writes the WAL is checkpointed and started over: it stays small
        for round in range(30):
            await asyncio.gather(
                *(backend.put_message("a", "q", f"r{round}-{i}", b"x" * 500, 0.0, 0.0, T) for i in range(50))
            )
            await backend.delete_messages("a", "q", Filter(limit=50), T)
        assert writer.checkpoints > 0
        assert os.path.getsize(f"{path}-wal") < 2_000_000
    finally:
        await backend.close()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("SELECT count(*) FROM messages").fetchone()[0] == 1
        assert conn.execute("PRAGMA page_size").fetchone()[0] == writer_module.PAGE_SIZE
    finally:
        conn.close()


async def test_one_server_per_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The connection holds the file exclusively: a second backend on it cannot open."""
    first = await opened(tmp_path / "burrow.db")
    try:
        second = SQLiteBackend(str(tmp_path / "burrow.db"), "batch")
        monkeypatch.setattr(sqlite3, "connect", _quick(sqlite3.connect))
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            await second.open()
    finally:
        await first.close()


def _quick(connect: Callable[..., sqlite3.Connection]) -> Callable[..., sqlite3.Connection]:
    def quick(*args: object, **kwargs: object) -> sqlite3.Connection:
        kwargs["timeout"] = 0.05
        return connect(*args, **kwargs)

    return quick


def test_fsync_interval_setting() -> None:
    assert Settings().fsync_interval == writer_module.FSYNC_INTERVAL > 0
    assert load_settings(environ={"BURROW_FSYNC_INTERVAL": "0.02"}).fsync_interval == 0.02
    assert load_settings({"fsync_interval": 0}, environ={}).fsync_interval == 0
    with pytest.raises(ValueError, match="fsync_interval"):
        Settings(fsync_interval=-1).validate()
    backend = SQLiteBackend.from_url("sqlite:///x.db", Settings(fsync_interval=0.25))
    assert writer_of(backend).fsync_interval == 0.25
    assert not writer_of(backend).sync_all
    assert writer_of(SQLiteBackend.from_url("sqlite:///x.db", Settings(fsync_interval=0))).sync_all
