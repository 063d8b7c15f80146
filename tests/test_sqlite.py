"""What only the SQLite backend promises: URLs, restart recovery, WAL, group commit,
fsync modes, O(log n) query plans, chunked purges and honest failure on disk errors.

The contract itself is covered by tests/test_contract.py (sqlite-memory, sqlite-file).
Time is passed explicitly (``T``), so ttl and hide are checked without sleeping.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from burrow.backends import open_backend
from burrow.backends.sqlite import CLEAN_CHUNK, SCHEMA, SQLiteBackend, statements
from burrow.client import Connection
from burrow.config import Settings
from burrow.core.errors import StorageUnavailable
from burrow.core.model import Filter, Message, Update
from burrow.testing.server import running_server

T = 1_000_000.0
ALL = Filter()
HIDDEN_TOO = Filter(match_hidden=True)


def sqlite_at(path: Path, fsync: str = "batch") -> SQLiteBackend:
    backend = open_backend(f"sqlite:///{path}", Settings(fsync=fsync))
    assert isinstance(backend, SQLiteBackend)
    return backend


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[SQLiteBackend]:
    backend = sqlite_at(tmp_path / "data" / "burrow.db")
    await backend.open()
    try:
        yield backend
    finally:
        await backend.close()


async def ids(b: SQLiteBackend, f: Filter = ALL, now: float = T, queue: str = "q") -> list[str]:
    return [m.id for m in await b.get_messages("a", queue, f, now)]


def raw_count(path: Path, sql: str = "SELECT count(*) FROM messages") -> int:
    """Read the file with a separate connection: what is really committed."""
    with sqlite3.connect(path) as conn:
        return int(conn.execute(sql).fetchone()[0])


# -- URLs and files ------------------------------------------------------------------


def test_url_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = Settings(fsync="never")
    relative = SQLiteBackend.from_url("sqlite:///rel/dir/x.db", settings)
    assert (relative.path, relative.fsync) == ("rel/dir/x.db", "never")
    assert SQLiteBackend.from_url("sqlite:////abs/x.db", settings).path == "/abs/x.db"
    assert SQLiteBackend.from_url("sqlite://:memory:", settings).path == ":memory:"
    for bad in ("sqlite://", "sqlite://x.db", "sqlite:///", "sqlite:///dir/"):
        with pytest.raises(ValueError, match="sqlite URL must name a file"):
            open_backend(bad, settings)


async def test_relative_url_creates_parent_directories(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    backend = open_backend("sqlite:///deep/er/burrow.db", Settings())
    await backend.open()
    await backend.put_message("a", "q", "m", b"x", 0.0, 0.0, T)
    await backend.close()
    assert raw_count(tmp_path / "deep" / "er" / "burrow.db") == 1


async def test_default_backend_is_a_sqlite_file_in_the_data_dir(tmp_path: Path) -> None:
    settings = Settings(data_dir=str(tmp_path / "fresh" / "data"))
    assert settings.backend_url().startswith("sqlite:////")
    async with running_server(settings) as server, Connection(server.url) as conn:
        assert server.service.backend.url == settings.backend_url()
        assert (await conn.request("PUT", "/v1.0/a/q/m", b"durable")).status == 201
    assert raw_count(tmp_path / "fresh" / "data" / "burrow.db") == 1


# -- restart -------------------------------------------------------------------------


async def test_restart_recovers_messages_with_absolute_deadlines(tmp_path: Path) -> None:
    path = tmp_path / "burrow.db"
    first = sqlite_at(path)
    await first.open()
    await first.put_message("a", "q", "m1", b"one", T + 100, 0.0, T)
    await first.put_message("a", "q", "m2", b"two", 0.0, T + 30, T, meta=b"meta")
    await first.put_message("a", "q", "m3", b"three", T + 10, 0.0, T)
    await first.put_message("b", "r", "m", b"other", 0.0, 0.0, T)
    await first.set_queue_meta("a", "q", b"attrs")
    await first.close()

    second = sqlite_at(path)
    await second.open()
    try:
        later = T + 20  # m3 has expired meanwhile, m2 is still hidden for 10 s
        assert await second.list_accounts(ALL, later) == ["a", "b"]
        assert await ids(second, now=later) == ["m1"]
        assert await second.get_messages("a", "q", HIDDEN_TOO, later) == [
            Message("m1", b"one", T + 100, 0.0),
            Message("m2", b"two", 0.0, T + 30, b"meta"),
        ]
        assert await second.get_queue_meta("a", "q") == b"attrs"
        # the cleaner resumes: expiry and "became visible" both work on recovered rows
        assert await second.clean(later) == []
        assert await second.clean(T + 30) == [("a", "q")]
        assert await ids(second, now=T + 30) == ["m1", "m2"]
        # new messages still go last: the insertion sequence continues after restart
        await second.put_message("a", "q", "m0", b"new", 0.0, 0.0, T + 30)
        assert await ids(second, now=T + 30) == ["m1", "m2", "m0"]
        assert await second.count_messages() == 4
    finally:
        await second.close()


async def test_restart_resumes_an_interrupted_purge(tmp_path: Path) -> None:
    path = tmp_path / "burrow.db"
    first = sqlite_at(path)
    await first.open()
    count = CLEAN_CHUNK + 500
    await asyncio.gather(*(first.put_message("a", "big", f"m{i}", b"x", 0.0, 0.0, T) for i in range(count)))
    assert await first.delete_queues("a", ALL, T) == ["big"]
    # the queue vanished at once; its rows wait for the cleaner
    assert await first.list_accounts(ALL, T) == []
    assert await first.count_messages() == 0
    await first.put_message("a", "big", "fresh", b"y", 0.0, 0.0, T)
    assert await ids(first, queue="big") == ["fresh"]
    await first.close()
    assert raw_count(path) == count + 1

    second = sqlite_at(path)
    await second.open()
    try:
        await second.clean(T)
        assert await ids(second, queue="big") == ["fresh"]
    finally:
        await second.close()
    assert raw_count(path) == 1
    assert raw_count(path, "SELECT count(*) FROM doomed") == 0


# -- pragmas and commits -------------------------------------------------------------


@pytest.mark.parametrize(("fsync", "synchronous"), [("always", 2), ("batch", 2), ("never", 0)])
async def test_wal_mode_and_synchronous_per_fsync_mode(tmp_path: Path, fsync: str, synchronous: int) -> None:
    backend = sqlite_at(tmp_path / "burrow.db", fsync)
    await backend.open()
    try:
        assert await backend.pragma("journal_mode") == [("wal",)]
        assert await backend.pragma("synchronous") == [(synchronous,)]
    finally:
        await backend.close()


async def test_group_commit_groups_concurrent_writes(db: SQLiteBackend) -> None:
    before = db.commits
    created = await asyncio.gather(
        *(db.put_message("a", "q", f"m{i}", b"x", 0.0, 0.0, T) for i in range(200))
    )
    assert all(created)
    commits = db.commits - before
    assert 1 <= commits <= 20, f"200 concurrent puts took {commits} commits"
    assert await db.count_messages() == 200


async def test_fsync_always_commits_every_write_alone(tmp_path: Path) -> None:
    backend = sqlite_at(tmp_path / "burrow.db", "always")
    await backend.open()
    try:
        before = backend.commits
        await asyncio.gather(*(backend.put_message("a", "q", f"m{i}", b"x", 0.0, 0.0, T) for i in range(50)))
        assert backend.commits - before == 50
    finally:
        await backend.close()


# -- visibility and indexes ----------------------------------------------------------


async def test_visibility_merges_ready_and_lapsed_hides_in_order(db: SQLiteBackend) -> None:
    for m, hide in (("m1", 10.0), ("m2", 0.0), ("m3", 5.0), ("m4", 0.0)):
        await db.put_message("a", "q", m, b"x", 0.0, T + hide if hide else 0.0, T)
    # before any cleaner pass, lapsed hides are found through the due index, in FIFO order
    assert await ids(db, now=T + 6) == ["m2", "m3", "m4"]
    assert await ids(db, Filter(limit=2), now=T + 6) == ["m2", "m3"]
    assert await ids(db, Filter(marker="m2", limit=1), now=T + 6) == ["m3"]
    assert await db.clean(T + 6) == [("a", "q")]
    assert await ids(db, now=T + 6) == ["m2", "m3", "m4"]
    taken = await db.update_messages("a", "q", Filter(limit=1), Update(hidden_until=T + 60), T + 10)
    assert [m.id for m in taken] == ["m1"]
    assert await ids(db, now=T + 10) == ["m2", "m3", "m4"]
    assert await ids(db, now=T + 60) == ["m1", "m2", "m3", "m4"]
    await db.delete_accounts(ALL, T)


def test_every_request_query_is_an_index_search(tmp_path: Path) -> None:
    """Trace the SQL a workload runs and check SQLite's plan: no full scan anywhere.

    (count_messages and the startup seq lookup scan by design and are not in the workload.)
    """
    from burrow.backends.sqlite import store as impl

    conn = sqlite3.connect(tmp_path / "plan.db", isolation_level=None)
    for statement in statements(SCHEMA):
        conn.execute(statement)
    store = impl.Store(conn)
    seen: set[str] = set()
    conn.set_trace_callback(seen.add)
    for i in range(5):
        impl.put_message(store, "a", "q", f"m{i}", b"x", T + 50, T + 5 if i % 2 else 0.0, T, b"")
    impl.get_messages(store, "a", "q", Filter(limit=2, marker="m1"), T + 1)
    impl.get_messages(store, "a", "q", Filter(match_hidden=True, marker="m1"), T + 1)
    impl.update_messages(store, "a", "q", Filter(limit=1), Update(hidden_until=T + 9), T + 6)
    impl.update_message(store, "a", "q", "m1", Update(meta=b"z"), T, T + 5)
    impl.get_message(store, "a", "q", "m2", T)
    impl.delete_message(store, "a", "q", "m2", T, None)
    impl.delete_messages(store, "a", "q", Filter(limit=1), T)
    impl.list_accounts(store, Filter(marker="a"))
    impl.list_queues(store, "a", Filter(marker="q"))
    impl.set_queue_meta(store, "a", "q", b"m")
    impl.list_queue_meta(store, "a")
    impl.get_queue_meta(store, "a", "q")
    impl.clean_step(store, T + 20)
    impl.delete_queues(store, "a", Filter(limit=1))
    impl.clean_step(store, T + 100)
    impl.delete_accounts(store, ALL)
    conn.set_trace_callback(None)
    checked = 0
    for sql in seen:
        if not sql.lstrip().upper().startswith(("SELECT", "UPDATE", "DELETE")):
            continue
        plan = [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql)]
        assert not any(step.startswith("SCAN") for step in plan), (sql, plan)
        checked += 1
    assert checked >= 15


# -- disk errors ---------------------------------------------------------------------


def failing_commit(message: str = "disk I/O error") -> Callable[[], None]:
    def fail() -> None:
        raise sqlite3.OperationalError(message)

    return fail


async def test_failed_commit_acknowledges_nothing_and_recovers(tmp_path: Path) -> None:
    path = tmp_path / "burrow.db"
    backend = sqlite_at(path)
    await backend.open()
    await backend.put_message("a", "q", "kept", b"before", 0.0, 0.0, T)
    backend.inject_commit_fault(failing_commit())
    puts = [backend.put_message("a", "q", f"lost{i}", b"x", 0.0, 0.0, T) for i in range(50)]
    outcomes = await asyncio.gather(
        *puts, backend.delete_message("a", "q", "kept", T), return_exceptions=True
    )
    assert all(isinstance(o, StorageUnavailable) for o in outcomes), outcomes
    assert "disk I/O error" in str(outcomes[0])
    # reads still work and see only what is committed
    assert await ids(backend) == ["kept"]
    backend.inject_commit_fault(None)
    assert await backend.put_message("a", "q", "after", b"y", 0.0, 0.0, T)
    await backend.close()

    reopened = sqlite_at(path)
    await reopened.open()
    try:
        assert await ids(reopened) == ["kept", "after"]
    finally:
        await reopened.close()


async def test_one_failing_operation_does_not_fail_its_batch(db: SQLiteBackend) -> None:
    """A write that fails inside a batch is rolled back alone; its neighbours commit."""
    before = db.commits
    bad_body: bytes = object()  # type: ignore[assignment]  # sqlite3 cannot bind it
    outcomes = await asyncio.gather(
        db.put_message("a", "q", "m1", b"x", 0.0, 0.0, T),
        db.put_message("a", "q", "bad", bad_body, 0.0, 0.0, T),
        db.put_message("a", "q", "m2", b"y", 0.0, 0.0, T),
        return_exceptions=True,
    )
    assert outcomes[0] is True and outcomes[2] is True
    assert isinstance(outcomes[1], sqlite3.ProgrammingError)
    assert db.commits - before == 1
    assert await ids(db) == ["m1", "m2"]
    await db.delete_accounts(ALL, T)


async def test_disk_full_fails_the_write_and_stores_nothing(db: SQLiteBackend) -> None:
    """A real SQLITE_FULL from SQLite (max_page_count caps the file), not a simulated one."""
    await db.put_message("a", "q", "small", b"x", 0.0, 0.0, T)
    [(pages,)] = await db.pragma("page_count")
    await db.pragma("max_page_count", pages)
    with pytest.raises(StorageUnavailable, match="full"):
        await db.put_message("a", "q", "big", b"y" * 200_000, 0.0, 0.0, T)
    assert await ids(db) == ["small"]
    await db.pragma("max_page_count", 1_000_000)
    assert await db.put_message("a", "q", "big", b"y" * 200_000, 0.0, 0.0, T)
    assert await ids(db) == ["small", "big"]
    await db.delete_accounts(ALL, T)


async def test_failed_commit_is_a_503_over_http(tmp_path: Path) -> None:
    settings = Settings(backend=f"sqlite:///{tmp_path / 'burrow.db'}")
    async with running_server(settings) as server, Connection(server.url) as conn:
        backend = server.service.backend
        assert isinstance(backend, SQLiteBackend)
        backend.inject_commit_fault(failing_commit())
        reply = await conn.request("PUT", "/v1.0/a/q/m", b"not stored")
        assert reply.status == 503, reply
        assert reply.json() == {"error": "storage_unavailable", "message": reply.json()["message"]}  # type: ignore[index]
        assert (await conn.request("GET", "/v1.0/a/q/m")).status == 404
        backend.inject_commit_fault(None)
        assert (await conn.request("PUT", "/v1.0/a/q/m", b"stored")).status == 201
        reply = await conn.request("GET", "/v1.0/a/q/m?detail=body")
        assert (reply.status, reply.body) == (200, b"stored")


async def test_closed_backend_refuses_work(tmp_path: Path) -> None:
    backend = sqlite_at(tmp_path / "burrow.db")
    await backend.open()
    await backend.close()
    with pytest.raises(StorageUnavailable):
        await backend.put_message("a", "q", "m", b"x", 0.0, 0.0, T)
