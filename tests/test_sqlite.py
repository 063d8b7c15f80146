"""What only the SQLite backend promises: URLs, restart recovery, WAL, group commit,
fsync modes, O(log n) query plans, chunked purges and honest failure on disk errors.

The contract itself is covered by tests/test_contract.py (sqlite-memory, sqlite-file).
Time is passed explicitly (``T``), so ttl and hide are checked without sleeping.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from burrow.backends import open_backend
from burrow.backends.sqlite import CLEAN_CHUNK, SCHEMA, SQLiteBackend, statements
from burrow.backends.sqlite import store as impl
from burrow.backends.sqlite.schema import SCHEMA_VERSION, install
from burrow.client import Connection
from burrow.config import Settings
from burrow.core.errors import StorageUnavailable
from burrow.core.model import Counts, Filter, Message, Sent, Update
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
    """Read the file with a separate connection: what is really committed. (Closed at once:
    while it is open, a backend cannot open the file, and the other way round.)"""
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute(sql).fetchone()[0])
    finally:
        conn.close()


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
        assert server.engine.backend.url == settings.backend_url()
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
        assert await second.clean(later, T) == []
        assert await second.clean(T + 30, later) == [("a", "q")]
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
        await second.clean(T, T)
        assert await ids(second, queue="big") == ["fresh"]
    finally:
        await second.close()
    assert raw_count(path) == 1
    assert raw_count(path, "SELECT count(*) FROM doomed") == 0


# -- pragmas and commits -------------------------------------------------------------


# NORMAL (1) in always and batch: commits are synced by the writer's sync thread (see writer).
@pytest.mark.parametrize(("fsync", "synchronous"), [("always", 1), ("batch", 1), ("never", 0)])
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
    assert await db.clean(T + 6, T) == [("a", "q")]
    assert await ids(db, now=T + 6) == ["m2", "m3", "m4"]
    taken = await db.update_messages("a", "q", Filter(limit=1), Update(hidden_until=T + 60), T + 10)
    assert [m.id for m in taken] == ["m1"]
    assert await ids(db, now=T + 10) == ["m2", "m3", "m4"]
    assert await ids(db, now=T + 60) == ["m1", "m2", "m3", "m4"]
    await db.delete_accounts(ALL, T)


def assert_index_searches(conn: sqlite3.Connection, seen: set[str], at_least: int) -> None:
    """Every traced statement's plan seeks an index: no full scan, no temporary sort."""
    checked = 0
    for sql in seen:
        if not sql.lstrip().upper().startswith(("SELECT", "UPDATE", "DELETE", "INSERT")):
            continue
        plan = [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql)]
        assert not any(step.startswith("SCAN") or "TEMP B-TREE" in step for step in plan), (sql, plan)
        checked += 1
    assert checked >= at_least


def test_every_request_query_is_an_index_search(tmp_path: Path) -> None:
    """Trace the SQL a workload runs and check SQLite's plan: no full scan anywhere.

    (count_messages and the startup seq lookup scan by design and are not in the workload.)
    """
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
    assert_index_searches(conn, seen, 15)


def test_every_worker_and_fifo_query_is_an_index_search(tmp_path: Path) -> None:
    """The same for claim (plain and by group, including turning a plain queue FIFO), FIFO
    send with deduplication, move, count, compare-and-set metadata and the cleaner's report."""
    conn = sqlite3.connect(tmp_path / "plan.db", isolation_level=None)
    for statement in statements(SCHEMA):
        conn.execute(statement)
    store = impl.Store(conn)
    seen: set[str] = set()
    conn.set_trace_callback(seen.add)
    for i in range(6):
        impl.put_message(store, "a", "q", f"p{i}", b"x", T + 50, T + 5 if i % 2 else 0.0, T, b"")
    impl.claim(store, "a", "q", 2, T + 30, T, False)
    impl.count(store, "a", "q", T)
    impl.set_queue_meta(store, "a", "f", b"fifo")
    for i in range(6):
        hide = T + 5 if i == 4 else 0.0
        impl.send_message(store, "a", "f", f"s{i}", b"x", T + 50, hide, T, b"", f"g{i % 3}", f"d{i}", T + 300)
    impl.send_message(store, "a", "f", "dup", b"x", 0.0, 0.0, T, b"", "g0", "d0", T + 300)
    impl.claim(store, "a", "f", 2, T + 30, T, True)
    impl.claim(store, "a", "q", 3, T + 30, T + 1, True)  # makes the plain queue FIFO
    impl.put_message(store, "a", "q", "p0", b"y", 0.0, 0.0, T + 1, b"")
    impl.put_message(store, "a", "f", "s5", b"y", 0.0, 0.0, T + 1, b"")
    impl.update_message(store, "a", "f", "s0", Update(hidden_until=0.0), T + 1, None)
    impl.delete_message(store, "a", "f", "s1", T + 1, None, 1)
    impl.claim(store, "a", "f", 5, T + 30, T + 2, True)
    impl.count(store, "a", "f", T + 2)
    store.sizes.clear()
    impl.count(store, "a", "f", T + 2)  # the size from the index, once
    impl.move_message(store, "a", "f", "s2", "a", "dlq", 0.0, T + 2, None, True, None)
    impl.swap_queue_meta(store, "a", "f", b"fifo", None)
    impl.clean_step(store, T + 40)
    impl.woken_step(store, T, T + 40, None)
    impl.woken_step(store, T, T + 40, (0, T + 5, 3, 4))
    impl.delete_queues(store, "a", Filter(limit=1))
    impl.clean_step(store, T + 400)
    impl.delete_accounts(store, ALL)
    impl.clean_step(store, T + 400)
    conn.set_trace_callback(None)
    assert_index_searches(conn, seen, 40)


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
        backend = server.engine.backend
        assert isinstance(backend, SQLiteBackend)
        backend.inject_commit_fault(failing_commit())
        reply = await conn.request("PUT", "/v1.0/a/q/m", b"not stored")
        assert reply.status == 503, reply
        assert reply.json() == {"error": "storage_unavailable", "message": reply.json()["message"]}
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


# -- the v1.0 hot path -----------------------------------------------------------------


def test_hot_path_statements_per_request(tmp_path: Path) -> None:
    """A put is one statement, a take two, a delete two: the new per-message data and the
    FIFO machinery add none to plain queues (their indexes are partial on FIFO queues)."""
    conn = sqlite3.connect(":memory:", isolation_level=None)
    install(conn)
    store = impl.Store(conn)
    impl.put_message(store, "a", "q", "first", b"x", 0.0, 0.0, T, b"")  # creates the queue
    seen: list[str] = []
    conn.set_trace_callback(seen.append)

    def statements_of(call: Callable[[], object]) -> list[str]:
        seen.clear()
        call()
        return list(seen)

    assert len(statements_of(lambda: impl.put_message(store, "a", "q", "m", b"x", T + 60, 0.0, T, b""))) == 1
    take = Update(hidden_until=T + 30)
    assert len(statements_of(lambda: impl.update_messages(store, "a", "q", Filter(limit=1), take, T))) == 2
    assert len(statements_of(lambda: impl.delete_message(store, "a", "q", "first", T, None))) == 2
    replace = statements_of(lambda: impl.put_message(store, "a", "q", "m", b"y", 0.0, 0.0, T, b""))
    assert len(replace) == 2  # the insert that finds the id, then one UPDATE in place
    assert not any("RETURNING" in sql for sql in seen)


# -- schema versions -----------------------------------------------------------------

#: The schema of a version-1 file, as Burrow 1.0 created it.
V1_SCHEMA = """
CREATE TABLE accounts (seq INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE queues (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, account INTEGER NOT NULL, name TEXT NOT NULL,
    UNIQUE (account, name)
);
CREATE INDEX queues_order ON queues (account, seq);
CREATE TABLE messages (
    qid INTEGER NOT NULL, seq INTEGER NOT NULL, id TEXT NOT NULL, body BLOB NOT NULL,
    expires REAL NOT NULL, hidden_until REAL NOT NULL, hidden INTEGER NOT NULL, meta BLOB NOT NULL,
    PRIMARY KEY (qid, seq)
) WITHOUT ROWID;
CREATE UNIQUE INDEX messages_id ON messages (qid, id);
CREATE INDEX messages_ready ON messages (qid, seq) WHERE hidden = 0;
CREATE INDEX messages_due ON messages (qid, hidden_until) WHERE hidden = 1;
CREATE INDEX messages_unhide ON messages (hidden_until) WHERE hidden = 1;
CREATE INDEX messages_expiry ON messages (expires) WHERE expires > 0;
CREATE TABLE doomed (qid INTEGER PRIMARY KEY);
CREATE TABLE queue_meta (
    seq INTEGER PRIMARY KEY, account TEXT NOT NULL, queue TEXT NOT NULL, meta BLOB NOT NULL,
    UNIQUE (account, queue)
);
CREATE INDEX queue_meta_order ON queue_meta (account, seq);
"""


def make_v1_file(path: Path) -> None:
    """A version-1 file with a visible and a hidden message, a second queue and metadata."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.executescript(V1_SCHEMA)
        conn.executescript(
            f"""
            INSERT INTO accounts (seq, name) VALUES (1, 'a');
            INSERT INTO queues (seq, account, name) VALUES (1, 1, 'q'), (2, 1, 'r');
            INSERT INTO messages VALUES (1, 1, 'm1', x'6f6e65', 0.0, 0.0, 0, x'');
            INSERT INTO messages VALUES (1, 2, 'm2', x'74776f', {T + 100}, {T + 30}, 1, x'6d657461');
            INSERT INTO messages VALUES (2, 3, 'r1', x'78', 0.0, 0.0, 0, x'');
            INSERT INTO queue_meta (account, queue, meta) VALUES ('a', 'q', x'6174747273');
            PRAGMA user_version = 1;
            """
        )
    finally:
        conn.close()


def schema_shape(path: Path | str) -> tuple[dict[str, list[tuple[object, ...]]], dict[str, str]]:
    """Every table's columns (name, type, not null, default, key) and every index's SQL."""
    conn = sqlite3.connect(path)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        columns = {t: [tuple(c[1:]) for c in conn.execute(f"PRAGMA table_info({t})")] for t in tables}
        indexes = dict(
            conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL")
        )
        return columns, indexes
    finally:
        conn.close()


async def test_a_version_1_file_is_migrated_in_place(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    make_v1_file(path)
    backend = sqlite_at(path)
    await backend.open()
    try:
        # old rows read back with the new per-message data at its "never claimed" defaults
        m1, m2 = Message("m1", b"one", 0.0, 0.0), Message("m2", b"two", T + 100, T + 30, b"meta")
        assert await backend.get_messages("a", "q", HIDDEN_TOO, T) == [m1, m2]
        assert await backend.get_queue_meta("a", "q") == b"attrs"
        assert await backend.count("a", "q", T) == Counts(visible=1, in_flight=0, delayed=1)
        # and every new operation works on them
        assert await backend.claim("a", "q", 5, T + 60, T) == [
            Message("m1", b"one", 0.0, T + 60, receives=1, first_received=T)
        ]
        assert await backend.clean(T + 30, T) == [("a", "q")]
        assert await backend.claim("a", "q", 5, T + 90, T + 30, fifo=True) == []  # m1 blocks group ""
        again = await backend.claim("a", "q", 5, T + 90, T + 60, fifo=True)
        assert [(m.id, m.receives) for m in again] == [("m1", 2), ("m2", 1)]
        assert await backend.send_message("a", "r", "r2", b"y", 0.0, 0.0, T, b"", "g", "d", T + 9) == Sent(
            "r2", 1, True
        )
        assert await ids(backend, queue="r") == ["r1", "r2"]  # the insertion order goes on
        assert await backend.delete_message("a", "q", "m1", T + 60, expect_receives=1) is None
        assert await backend.delete_message("a", "q", "m1", T + 60, expect_receives=2) is not None
        await backend.set_queue_meta("a", "r", None)
    finally:
        await backend.close()
    # the file now has exactly the schema a new one gets (columns, indexes), and is sound
    fresh = tmp_path / "fresh.db"
    conn = sqlite3.connect(fresh, isolation_level=None)
    install(conn)
    conn.close()
    assert schema_shape(path) == schema_shape(fresh)
    assert raw_count(path, "PRAGMA user_version") == SCHEMA_VERSION
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        conn.close()
    reopened = sqlite_at(path)
    await reopened.open()
    try:
        assert await ids(reopened, HIDDEN_TOO, T + 60) == ["m2"]
        assert await ids(reopened, queue="r") == ["r1", "r2"]
        await reopened.delete_accounts(ALL, T)
    finally:
        await reopened.close()


async def test_a_file_from_a_newer_burrow_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    backend = sqlite_at(path)
    with pytest.raises(RuntimeError, match=f"schema version {SCHEMA_VERSION + 1}"):
        await backend.open()
    await backend.close()
    assert raw_count(path, "PRAGMA user_version") == SCHEMA_VERSION + 1  # left as it was


# -- worker operations ----------------------------------------------------------------


@pytest.mark.parametrize("fifo", [False, True], ids=["plain", "fifo"])
async def test_concurrent_claimers_never_come_back_empty_while_messages_are_visible(
    db: SQLiteBackend, fifo: bool
) -> None:
    """8 claimers at once: every claim is one writer call, so none sees a queue that another
    has half taken; each gets a full batch until the queue runs out, and no message twice."""
    claimers, rounds, limit = 8, 5, 4
    names = [f"m{i:03d}" for i in range(claimers * rounds * limit)]
    await db.set_queue_meta("a", "q", b"fifo")
    for name in names:  # (by group: one message per group, so groups never hold a claimer back)
        await db.send_message("a", "q", name, b"x", 0.0, 0.0, T, b"", name, None, 0.0)

    async def claimer() -> list[list[str]]:
        return [[m.id for m in await db.claim("a", "q", limit, T + 30, T, fifo)] for _ in range(rounds)]

    batches = [batch for got in await asyncio.gather(*(claimer() for _ in range(claimers))) for batch in got]
    assert all(len(batch) == limit for batch in batches), batches
    assert sorted(m for batch in batches for m in batch) == names
    assert await db.claim("a", "q", limit, T + 30, T, fifo) == []
    await db.delete_accounts(ALL, T)
    await db.set_queue_meta("a", "q", None)


async def test_move_is_one_transaction(db: SQLiteBackend) -> None:
    await db.put_message("a", "q", "m", b"x", 0.0, 0.0, T, meta=b"attrs")
    db.inject_commit_fault(failing_commit())
    with pytest.raises(StorageUnavailable):
        await db.move_message("a", "q", "m", "a", "dlq", T + 60, T)
    assert await ids(db) == ["m"]
    assert await db.list_queues("a", ALL, T) == ["q"]
    db.inject_commit_fault(None)
    moved = await db.move_message("a", "q", "m", "a", "dlq", T + 60, T)
    assert moved == Message("m", b"x", T + 60, 0.0, b"attrs")
    assert await db.list_queues("a", ALL, T) == ["dlq"]
    await db.delete_accounts(ALL, T)


async def test_count_comes_from_indexes_and_survives_restart_and_rollback(tmp_path: Path) -> None:
    path = tmp_path / "burrow.db"
    first = sqlite_at(path)
    await first.open()
    for i in range(6):
        await first.put_message("a", "q", f"v{i}", b"x", 0.0, 0.0, T)
    await first.put_message("a", "q", "delayed", b"x", 0.0, T + 50, T)
    await first.put_message("a", "q", "old", b"x", T + 5, 0.0, T)
    await first.put_message("a", "q", "old-hidden", b"x", T + 5, T + 50, T)
    assert len(await first.claim("a", "q", 2, T + 30, T)) == 2
    expected = Counts(visible=5, in_flight=2, delayed=2)
    assert await first.count("a", "q", T) == expected
    later = Counts(visible=4, in_flight=2, delayed=1)  # two expired; one of them was delayed
    assert await first.count("a", "q", T + 10) == later
    # a rolled-back write leaves the count as it was
    first.inject_commit_fault(failing_commit())
    with pytest.raises(StorageUnavailable):
        await first.put_message("a", "q", "lost", b"x", 0.0, 0.0, T)
    first.inject_commit_fault(None)
    assert await first.count("a", "q", T + 10) == later
    await first.delete_message("a", "q", "v5", T + 10)
    await first.close()
    second = sqlite_at(path)
    await second.open()
    try:
        assert await second.count("a", "q", T + 10) == Counts(visible=3, in_flight=2, delayed=1)
        await second.clean(T + 10, T)
        await second.put_message("a", "q", "new", b"x", 0.0, 0.0, T + 10)
        assert await second.count("a", "q", T + 40) == Counts(visible=6, in_flight=0, delayed=1)
        assert await second.count("a", "none", T) == Counts()
        await second.delete_accounts(ALL, T)
    finally:
        await second.close()


# -- FIFO -------------------------------------------------------------------------------


def fifo_work(messages: int, groups: int, rounds: int = 20) -> dict[str, int]:
    """SQLite virtual-machine steps per operation on a FIFO queue: a send of 10, a claim of
    10 and the deletes of what it took, a count (a measure of rows read, unlike a clock)."""
    conn = sqlite3.connect(":memory:", isolation_level=None)
    install(conn)
    store = impl.Store(conn)
    conn.execute("BEGIN")
    for i in range(messages):
        impl.send_message(
            store, "a", "q", f"m{i}", b"x", 0.0, 0.0, T, b"", f"g{i % groups}", f"d{i}", T + 300
        )
    conn.execute("COMMIT")
    steps = [0]

    def step() -> int:
        steps[0] += 1
        return 0

    work = dict.fromkeys(("send", "claim", "delete", "count"), 0)
    sent, now = messages, T
    taken: list[Message] = []
    for r in range(rounds):
        now += 1
        for op in work:
            conn.set_progress_handler(step, 1)
            steps[0] = 0
            if op == "send":
                for i in range(sent, sent + 10):
                    impl.send_message(
                        store, "a", "q", f"m{i}", b"x", 0.0, 0.0, now, b"", f"g{i % groups}", None, 0
                    )
                sent += 10
            elif op == "claim":
                taken = impl.claim(store, "a", "q", 10, now + 30, now, True)
                assert len(taken) == 10
            elif op == "delete":
                for m in taken:
                    assert impl.delete_message(store, "a", "q", m.id, now, None, m.receives) is not None
            else:
                impl.count(store, "a", "q", now)
            conn.set_progress_handler(None, 1)
            if r >= 5:  # after the first rounds have fixed up the groups' heads
                work[op] += steps[0]
    conn.close()
    return work


def test_fifo_operations_cost_the_same_on_a_large_queue() -> None:
    """The target: send, claim (+ delete) and count on a FIFO queue of many messages in many
    groups within 2x of the same on 100 messages in 10 groups."""
    small = fifo_work(100, 10)
    large = fifo_work(20_000, 1_000)
    for op in small:
        assert large[op] <= 2 * small[op], (op, small, large)


def test_a_claim_never_reads_blocked_groups() -> None:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    install(conn)
    store = impl.Store(conn)
    for i in range(5_000):
        impl.send_message(store, "a", "q", f"m{i}", b"x", 0.0, 0.0, T, b"", f"g{i % 1000}", None, 0)
    assert len(impl.claim(store, "a", "q", 1000, T + 30, T, True)) == 1000  # blocks every group
    steps = [0]

    def step() -> int:
        steps[0] += 1
        return 0

    conn.set_progress_handler(step, 1)
    assert impl.claim(store, "a", "q", 10, T + 30, T + 1, True) == []
    conn.set_progress_handler(None, 1)
    assert steps[0] < 100, steps[0]


async def test_fifo_state_and_blocks_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "burrow.db"
    first = sqlite_at(path)
    await first.open()
    await first.set_queue_meta("a", "q", b"fifo")
    assert await first.send_message("a", "q", "m1", b"x", 0.0, 0.0, T, b"", "g", "d1", T + 300) == Sent(
        "m1", 1, True
    )
    assert await first.send_message("a", "q", "m2", b"x", 0.0, 0.0, T, b"", "g", None, 0) == Sent(
        "m2", 2, True
    )
    assert [m.id for m in await first.claim("a", "q", 1, T + 30, T, fifo=True)] == ["m1"]
    await first.close()
    second = sqlite_at(path)
    await second.open()
    try:
        hit = await second.send_message("a", "q", "m9", b"x", 0.0, 0.0, T + 1, b"", "g", "d1", T + 300)
        assert hit == Sent("m1", 1, False)
        assert await second.send_message("a", "q", "m3", b"x", 0.0, 0.0, T + 1, b"", "g", None, 0) == Sent(
            "m3", 3, True
        )
        assert await second.claim("a", "q", 10, T + 60, T + 1, fifo=True) == []  # g is still blocked
        got = await second.claim("a", "q", 10, T + 60, T + 30, fifo=True)
        assert [(m.id, m.receives) for m in got] == [("m1", 2), ("m2", 1), ("m3", 1)]
        await second.delete_accounts(ALL, T)
        await second.set_queue_meta("a", "q", None)
    finally:
        await second.close()


# -- the cleaner -------------------------------------------------------------------------


async def test_clean_report_depends_only_on_the_deadlines_and_the_window(db: SQLiteBackend) -> None:
    await db.put_message("a", "q1", "m", b"x", 0.0, T + 5, T)
    await db.put_message("a", "q2", "m", b"x", 0.0, T + 50, T)
    assert await db.clean(T + 10, T) == [("a", "q1")]
    # asked again (another cleaner, a retry): the same answer, nothing was remembered
    assert await db.clean(T + 10, T) == [("a", "q1")]
    assert await db.clean(T + 10, T + 4) == [("a", "q1")]
    assert await db.clean(T + 10, T + 5) == []  # the window is (since, now]
    assert await db.clean(T + 60, T + 10) == [("a", "q2")]
    assert sorted(await db.clean(T + 60, 0.0)) == [("a", "q1"), ("a", "q2")]
    await db.delete_accounts(ALL, T)


async def test_clean_report_reads_large_windows_in_chunks(db: SQLiteBackend) -> None:
    await asyncio.gather(
        *(db.put_message("a", "big", f"m{i}", b"x", 0.0, T + 5, T) for i in range(CLEAN_CHUNK + 10))
    )
    await db.put_message("a", "late", "m", b"x", 0.0, T + 5, T)  # sorts after every row of "big"
    assert sorted(await db.clean(T + 10, T)) == [("a", "big"), ("a", "late")]
    assert sorted(await db.clean(T + 10, T)) == [("a", "big"), ("a", "late")]
    await db.delete_accounts(ALL, T)


async def test_spent_dedup_records_are_dropped_in_chunks(tmp_path: Path) -> None:
    path = tmp_path / "burrow.db"
    backend = sqlite_at(path)
    await backend.open()
    await backend.set_queue_meta("a", "q", b"fifo")
    await asyncio.gather(
        *(
            backend.send_message("a", "q", f"m{i}", b"x", T + 1, 0.0, T, b"", "", f"d{i}", T + 10)
            for i in range(CLEAN_CHUNK + 10)
        )
    )
    await backend.set_queue_meta("a", "q", None)  # the state goes; its records wait for the cleaner
    await backend.clean(T + 9, T)
    await backend.close()
    assert raw_count(path, "SELECT count(*) FROM fifo_dedup") == CLEAN_CHUNK + 10
    assert raw_count(path, "SELECT count(*) FROM fifo_state") == 0
    backend = sqlite_at(path)
    await backend.open()
    await backend.clean(T + 10, T + 9)
    await backend.close()
    assert raw_count(path, "SELECT count(*) FROM fifo_dedup") == 0
    assert raw_count(path) == 0


# -- the group bookkeeping against a naive model ------------------------------------------


class NaiveQueues:
    """The contract's rules written the slow way: every answer from a full scan."""

    def __init__(self) -> None:
        self.queues: dict[str, list[dict[str, Any]]] = {}

    def live(self, queue: str, now: float) -> list[dict[str, Any]]:
        return [m for m in self.queues.get(queue, []) if not 0 < m["expires"] <= now]

    def add(self, queue: str, mid: str, group: str, expires: float, hidden_until: float) -> None:
        self.queues.setdefault(queue, []).append(
            {"id": mid, "group": group, "expires": expires, "hidden_until": hidden_until, "receives": 0}
        )

    def claim(self, queue: str, limit: int, hidden_until: float, now: float, fifo: bool) -> list[str]:
        live = self.live(queue, now)
        blocked = {m["group"] for m in live if m["hidden_until"] > now} if fifo else set()
        taken = [m for m in live if m["hidden_until"] <= now and m["group"] not in blocked][:limit]
        for m in taken:
            m["receives"] += 1
            m["hidden_until"] = hidden_until
        return [m["id"] for m in taken]

    def count(self, queue: str, now: float) -> Counts:
        live = self.live(queue, now)
        hidden = [m for m in live if m["hidden_until"] > now]
        in_flight = sum(m["receives"] > 0 for m in hidden)
        return Counts(len(live) - len(hidden), in_flight, len(hidden) - in_flight)

    def woken(self, since: float, now: float) -> set[tuple[str, str]]:
        return {
            ("a", q) for q, ms in self.queues.items() if any(since < m["hidden_until"] <= now for m in ms)
        }


def run_against_the_model(seed: int, steps: int = 300) -> None:
    rnd = random.Random(seed)
    conn = sqlite3.connect(":memory:", isolation_level=None)
    install(conn)
    s = impl.Store(conn)
    model = NaiveQueues()
    now, made = T, 0
    for step in range(steps):
        where = (seed, step)
        q, op = rnd.choice(("q1", "q2")), rnd.random()
        live = model.live(q, now)
        if op < 0.25:  # a FIFO send or a plain put (sometimes replacing a message in place)
            made += 1
            mid, group = f"m{made}", rnd.choice(("", "a", "b", "c"))
            ttl, hide = rnd.choice((0, 0, 0, 5, 30)), rnd.choice((0, 0, 0, 0, 3, 20))
            expires, hidden_until = (now + ttl if ttl else 0.0), (now + hide if hide else 0.0)
            if rnd.random() < 0.7:
                impl.send_message(s, "a", q, mid, b"x", expires, hidden_until, now, b"", group, None, 0.0)
                model.add(q, mid, group, expires, hidden_until)
                continue
            if live and rnd.random() < 0.3:
                mid = rnd.choice(live)["id"]
            old = next((m for m in live if m["id"] == mid), None)
            assert impl.put_message(s, "a", q, mid, b"x", expires, hidden_until, now, b"") == (old is None), (
                where
            )
            if old is None:
                model.queues[q] = [m for m in model.queues.get(q, []) if m["id"] != mid]
                model.add(q, mid, "", expires, hidden_until)
            else:
                old.update(group="", expires=expires, hidden_until=hidden_until, receives=0)
        elif op < 0.5:
            fifo, limit, hide = rnd.random() < 0.7, rnd.choice((1, 2, 3, 10)), rnd.choice((0, 5, 10))
            got = [m.id for m in impl.claim(s, "a", q, limit, now + hide, now, fifo)]
            assert got == model.claim(q, limit, now + hide, now, fifo), where
        elif op < 0.62 and live:
            gone = rnd.choice(live)
            assert impl.delete_message(s, "a", q, gone["id"], now, None, gone["receives"]) is not None, where
            model.queues[q].remove(gone)
        elif op < 0.7 and live:
            changed, hide = rnd.choice(live), rnd.choice((0, 2, 15))
            changed["hidden_until"] = now + hide if hide else 0.0
            assert impl.update_message(
                s, "a", q, changed["id"], Update(hidden_until=changed["hidden_until"]), now, None
            )
        elif op < 0.75 and live:
            moved, to = rnd.choice(live), rnd.choice(("q1", "q2"))
            assert impl.move_message(s, "a", q, moved["id"], "a", to, 0.0, now, None, False, None), where
            model.queues[q].remove(moved)
            model.add(to, moved["id"], moved["group"], 0.0, 0.0)
        elif op < 0.8:  # a v1.0 take or a list delete of the first visible ones
            visible = [m for m in live if m["hidden_until"] <= now][:2]
            if rnd.random() < 0.5:
                taken = impl.update_messages(s, "a", q, Filter(limit=2), Update(hidden_until=now + 4), now)
                for m in visible:
                    m["hidden_until"] = now + 4
            else:
                taken = impl.delete_messages(s, "a", q, Filter(limit=2), now)
                for m in visible:
                    model.queues[q].remove(m)
            assert [m.id for m in taken] == [m["id"] for m in visible], where
        elif op < 0.87:
            now += rnd.choice((0.5, 1, 3, 7))
        elif op < 0.92:
            while impl.clean_step(s, now):
                pass
            model.queues = {name: model.live(name, now) for name in model.queues}
            since, woken, at = now - rnd.choice((0.5, 1, 5, 30)), set(), None
            while True:
                found, at = impl.woken_step(s, since, now, at)
                woken.update(found)
                if at is None:
                    break
            assert woken == model.woken(since, now), where
        else:
            assert impl.count(s, "a", q, now) == model.count(q, now), where
            listed = impl.get_messages(s, "a", q, HIDDEN_TOO, now)
            assert [m.id for m in listed] == [m["id"] for m in model.live(q, now)], where
    conn.close()


def test_fifo_bookkeeping_matches_a_naive_model() -> None:
    """Random sends, puts, claims (by group and not), deletes, hides, moves, takes, clock
    steps, cleaner passes and counts, checked against the rules applied by brute force."""
    for seed in range(60):
        run_against_the_model(seed)
