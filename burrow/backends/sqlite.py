"""The durable SQLite backend: one writer thread, group commit, WAL.

Threading. The event loop never touches the database. Every method becomes a small
function handed to ONE writer thread that owns the connection (reads go through it
too: a single connection keeps ``:memory:`` working and reads never see a write that
may still fail). The event loop hands over one list of requests per loop iteration
through a queue; the thread takes everything waiting, runs it in one transaction,
commits, and only then settles the callers' futures with one
``loop.call_soon_threadsafe`` per batch. While a commit (and its fsync) is in progress
new requests pile up in the queue and form the next batch: that is the group commit.
If an operation fails mid-batch, the transaction is rolled back and the batch replayed
with a SAVEPOINT around each write, so only the failing one fails.

Durability (``Settings.fsync``): ``always`` commits every write on its own with
``synchronous=FULL`` (one fsync per acknowledged write); ``batch`` commits whole
batches with ``synchronous=FULL`` (every acknowledged write is fsynced, throughput
rises with concurrency); ``never`` uses ``synchronous=OFF`` (survives a process crash,
not a power cut). A failed commit or sync rolls the transaction back and fails every
request of the batch with :class:`StorageUnavailable`; nothing is acknowledged that is
not committed, and the next batch tries again (after reconnecting if the connection
could not even roll back).

Cost. The server is CPU-bound and the writer shares the GIL with the event loop, so
the hot operations are shaped by measured CPU per request: a request is a plain tuple
(function, arguments, future), not a closure; results go back as one list per batch;
every statement releases and retakes the GIL, so a put is one statement, a take two and
a delete two; and no hot statement uses RETURNING or SETs a column it does not change
(in SQLite 3.40 a RETURNING costs about as much as a second statement, and SET rewrites
every index on the column even when its value stays the same).

Times are stored as the absolute seconds the service passes in, so a restart keeps
the right remaining ``ttl``/``hide``. Schema and index rationale: see ``SCHEMA``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue as queue_module
import re
import sqlite3
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from burrow.backends.base import Backend
from burrow.config import Settings
from burrow.core.errors import StorageUnavailable
from burrow.core.model import Filter, Message, Update

log = logging.getLogger("burrow.sqlite")

T = TypeVar("T")

SCHEMA_VERSION = 1

#: Accounts, queues and messages are ordered by a ``seq`` taken at first insertion.
#: Accounts and queues are small tables that exist exactly while they hold messages
#: (rows are removed with their last message; a re-created one gets a larger seq and
#: goes last), which keeps every listing a seek on an index instead of a min(seq) scan.
#:
#: Messages are clustered by (qid, seq): a queue's messages lie together in FIFO order,
#: so paging from a marker is a seek on the primary key. ``seq`` comes from a counter
#: owned by the writer thread and is kept when a message is replaced.
#:
#: ``hidden`` is 1 while ``hidden_until`` may still lie ahead: it is set from the
#: write's ``now`` and cleared by the cleaner's unhide scan. Visible messages of a queue
#: are therefore the partial index ``messages_ready`` (hidden = 0) plus the few hidden
#: ones whose hide ran out since the last clean (``messages_due``), so the worker cycle
#: ("first visible message") is O(log n) however many messages are in flight.
#: Messages of a deleted queue are not removed in the deleting request: the queue row
#: goes (so the queue vanishes atomically, O(1)), its qid is put in ``doomed`` and the
#: cleaner purges the messages in bounded chunks. Queue seqs are AUTOINCREMENT so a
#: doomed qid is never reused.
SCHEMA = """
CREATE TABLE IF NOT EXISTS accounts (
    seq  INTEGER PRIMARY KEY,                   -- first-insertion order
    name TEXT NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS queues (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,  -- order and the qid of its messages; never reused
    account INTEGER NOT NULL,                   -- accounts.seq
    name    TEXT NOT NULL,
    UNIQUE (account, name)
);
CREATE INDEX IF NOT EXISTS queues_order ON queues (account, seq);
CREATE TABLE IF NOT EXISTS messages (
    qid          INTEGER NOT NULL,              -- queues.seq
    seq          INTEGER NOT NULL,              -- insertion order, kept on replace
    id           TEXT NOT NULL,
    body         BLOB NOT NULL,
    expires      REAL NOT NULL,                 -- absolute seconds; 0 = never
    hidden_until REAL NOT NULL,                 -- absolute seconds; <= now = visible
    hidden       INTEGER NOT NULL,              -- 1 until the cleaner saw hidden_until pass
    meta         BLOB NOT NULL,                 -- a front end's opaque bytes
    PRIMARY KEY (qid, seq)
) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS messages_id ON messages (qid, id);
CREATE INDEX IF NOT EXISTS messages_ready ON messages (qid, seq) WHERE hidden = 0;
CREATE INDEX IF NOT EXISTS messages_due ON messages (qid, hidden_until) WHERE hidden = 1;
CREATE INDEX IF NOT EXISTS messages_unhide ON messages (hidden_until) WHERE hidden = 1;
CREATE INDEX IF NOT EXISTS messages_expiry ON messages (expires) WHERE expires > 0;
CREATE TABLE IF NOT EXISTS doomed (
    qid INTEGER PRIMARY KEY                     -- a deleted queue whose messages await purging
);
CREATE TABLE IF NOT EXISTS queue_meta (
    seq     INTEGER PRIMARY KEY,                -- creation order (kept on replace)
    account TEXT NOT NULL,
    queue   TEXT NOT NULL,
    meta    BLOB NOT NULL,
    UNIQUE (account, queue)
);
CREATE INDEX IF NOT EXISTS queue_meta_order ON queue_meta (account, seq);
"""

#: PRAGMA synchronous for each ``--fsync`` mode.
SYNCHRONOUS = {"always": "FULL", "batch": "FULL", "never": "OFF"}
#: Most requests run in one transaction (bounds latency of the batch's first request).
MAX_BATCH = 512
#: Rows the cleaner expires, unhides or purges per step; other requests run in between.
CLEAN_CHUNK = 2000
#: SQLite page cache per connection (negative = KiB).
CACHE_KIB = 65536

_MESSAGE_COLUMNS = "seq, id, body, expires, hidden_until, meta"
_Row = tuple[int, str, bytes, float, float, bytes]
_NOT_EXPIRED = "(expires <= 0 OR expires > ?)"
#: Insert a message unless its id exists in the queue (rowcount 0 then).
_INSERT_NEW = (
    "INSERT INTO messages (qid, seq, id, body, expires, hidden_until, hidden, meta)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (qid, id) DO NOTHING"
)
_PRAGMA_NAME = re.compile(r"^[a-z_]+$")
_INF = float("inf")
#: sqlite3 errors that mean a bad call, not a storage failure: passed to the caller as they are.
_MISUSE = (sqlite3.ProgrammingError, sqlite3.InterfaceError)


def _set_fields_sql(expires: bool, hide: bool, meta: bool) -> str:
    columns = ["expires = ?"] * expires + ["hidden_until = ?, hidden = ?"] * hide + ["meta = ?"] * meta
    return f"UPDATE messages SET {', '.join(columns)} WHERE qid = ? AND seq = ?"


#: (sets expires, sets hidden_until, sets meta) -> the UPDATE for _Store.set_fields.
_SET_FIELDS = {
    (e, h, m): _set_fields_sql(e, h, m)
    for e in (False, True)
    for h in (False, True)
    for m in (False, True)
    if e or h or m
}


def _statements(script: str) -> list[str]:
    """Split a script into statements (unlike executescript, this stays inside our transaction)."""
    out: list[str] = []
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            out.append(pending)
            pending = ""
    return out


def _message(row: _Row) -> Message:
    return Message(row[1], row[2], row[3], row[4], row[5])


def _expired(expires: float, now: float) -> bool:
    return 0 < expires <= now


def _sql_limit(limit: int | None) -> int:
    return -1 if limit is None else limit


class _Store:
    """The connection plus the writer thread's caches; used on the writer thread only."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        #: (account, queue) -> qid of existing queues; cleared on any rollback.
        self.qids: dict[tuple[str, str], int] = {}
        # Order only matters within a queue and qids are never reused, so the largest seq
        # of each live queue (one index seek per queue) is enough; max(seq) would scan.
        row = conn.execute(
            "SELECT max((SELECT max(seq) FROM messages WHERE qid = q.seq)) FROM queues q"
        ).fetchone()
        self.next_seq = (row[0] or 0) + 1
        #: No row marked hidden has a smaller hidden_until: while now is below it, no
        #: lapsed hide can exist and list operations skip the ``messages_due`` query.
        self.next_unhide = _INF
        self.find_next_unhide()

    def find_next_unhide(self) -> None:
        """Reset the lower bound on hidden_until of rows still marked hidden (an index seek)."""
        row = self.conn.execute("SELECT min(hidden_until) FROM messages WHERE hidden = 1").fetchone()
        self.next_unhide = _INF if row[0] is None else row[0]

    def hiding(self, hidden_until: float, now: float) -> int:
        """The ``hidden`` flag for a write, keeping the next_unhide bound (it may only be too low)."""
        if hidden_until <= now:
            return 0
        if hidden_until < self.next_unhide:
            self.next_unhide = hidden_until
        return 1

    def forget(self) -> None:
        """Drop caches that a rollback may have invalidated."""
        self.qids.clear()

    # -- accounts and queues ----------------------------------------------------
    def qid(self, account: str, queue: str) -> int | None:
        key = (account, queue)
        qid = self.qids.get(key)
        if qid is None:
            row = self.conn.execute(
                "SELECT q.seq FROM accounts a JOIN queues q ON q.account = a.seq"
                " WHERE a.name = ? AND q.name = ?",
                key,
            ).fetchone()
            if row is None:
                return None
            qid = self.qids[key] = row[0]
        return qid

    def ensure_qid(self, account: str, queue: str) -> int:
        qid = self.qid(account, queue)
        if qid is not None:
            return qid
        conn = self.conn
        row = conn.execute("SELECT seq FROM accounts WHERE name = ?", (account,)).fetchone()
        account_seq = (
            row[0] if row else conn.execute("INSERT INTO accounts (name) VALUES (?)", (account,)).lastrowid
        )
        cursor = conn.execute("INSERT INTO queues (account, name) VALUES (?, ?)", (account_seq, queue))
        qid = self.qids[(account, queue)] = int(cursor.lastrowid or 0)
        return qid

    def account_seq(self, account: str) -> int | None:
        row = self.conn.execute("SELECT seq FROM accounts WHERE name = ?", (account,)).fetchone()
        return None if row is None else int(row[0])

    def drop_queue(self, qid: int, purge_later: bool) -> None:
        """Remove the queue row (and its account if that was its last queue)."""
        conn = self.conn
        row = conn.execute(
            "SELECT a.seq, a.name, q.name FROM queues q JOIN accounts a ON a.seq = q.account WHERE q.seq = ?",
            (qid,),
        ).fetchone()
        if row is None:
            return
        account_seq, account, queue = row
        conn.execute("DELETE FROM queues WHERE seq = ?", (qid,))
        if purge_later:
            conn.execute("INSERT OR IGNORE INTO doomed (qid) VALUES (?)", (qid,))
        self.qids.pop((account, queue), None)
        if conn.execute("SELECT 1 FROM queues WHERE account = ? LIMIT 1", (account_seq,)).fetchone() is None:
            conn.execute("DELETE FROM accounts WHERE seq = ?", (account_seq,))

    def drop_queue_if_empty(self, qid: int) -> None:
        if self.conn.execute("SELECT 1 FROM messages WHERE qid = ? LIMIT 1", (qid,)).fetchone() is None:
            self.drop_queue(qid, purge_later=False)

    def after(self, table: str, where: str, args: tuple[Any, ...], marker: str | None) -> int:
        """The seq of ``marker`` among the rows ``where`` selects, or 0 (unknown = start)."""
        if marker is None:
            return 0
        row = self.conn.execute(
            f"SELECT seq FROM {table} WHERE {where} AND name = ?", (*args, marker)
        ).fetchone()
        return 0 if row is None else int(row[0])

    # -- messages ---------------------------------------------------------------
    def row(self, qid: int, message: str) -> _Row | None:
        row: _Row | None = self.conn.execute(
            f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE qid = ? AND id = ?", (qid, message)
        ).fetchone()
        return row

    def start(self, qid: int, marker: str | None) -> int:
        """The seq to page after: the marker's, or 0 (none or unknown = from the beginning)."""
        if marker is None:
            return 0
        found = self.conn.execute(
            "SELECT seq FROM messages WHERE qid = ? AND id = ?", (qid, marker)
        ).fetchone()
        return 0 if found is None else int(found[0])

    def select(self, qid: int, filter: Filter, now: float) -> list[_Row]:
        """The rows a list operation matches, in order (see SCHEMA for the visibility split)."""
        conn = self.conn
        start = self.start(qid, filter.marker)
        limit = _sql_limit(filter.limit)
        if filter.match_hidden:
            return conn.execute(
                f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE qid = ? AND seq > ? AND {_NOT_EXPIRED}"
                " ORDER BY seq LIMIT ?",
                (qid, start, now, limit),
            ).fetchall()
        ready: list[_Row] = conn.execute(
            f"SELECT {_MESSAGE_COLUMNS} FROM messages INDEXED BY messages_ready"
            f" WHERE qid = ? AND hidden = 0 AND seq > ? AND hidden_until <= ? AND {_NOT_EXPIRED}"
            " ORDER BY seq LIMIT ?",
            (qid, start, now, now, limit),
        ).fetchall()
        if now < self.next_unhide:
            return ready
        due: list[_Row] = conn.execute(
            f"SELECT {_MESSAGE_COLUMNS} FROM messages INDEXED BY messages_due"
            f" WHERE qid = ? AND hidden = 1 AND hidden_until <= ? AND seq > ? AND {_NOT_EXPIRED}",
            (qid, now, start, now),
        ).fetchall()
        if not due:
            return ready
        merged = sorted(ready + due)
        return merged if filter.limit is None else merged[: filter.limit]

    def set_fields(self, qid: int, row: _Row, update: Update, now: float) -> _Row:
        """Write the update's fields to one row; return the row as updated.

        Only the given columns are SET: SQLite rewrites every index on a SET column even
        when its value is unchanged (a take, which sets only the hide, would otherwise
        rewrite its ``messages_expiry`` entry too). One cached statement per combination.
        """
        seq, mid, body, expires, hidden_until, meta = row
        args: list[Any] = []
        if update.expires is not None:
            args.append(expires := update.expires)
        if update.hidden_until is not None:
            args += (hidden_until := update.hidden_until, self.hiding(update.hidden_until, now))
        if update.meta is not None:
            args.append(meta := update.meta)
        if args:
            key = (update.expires is not None, update.hidden_until is not None, update.meta is not None)
            self.conn.execute(_SET_FIELDS[key], (*args, qid, seq))
        return (seq, mid, body, expires, hidden_until, meta)

    def delete_rows(self, qid: int, rows: Iterable[_Row]) -> None:
        self.conn.executemany("DELETE FROM messages WHERE qid = ? AND seq = ?", [(qid, r[0]) for r in rows])


# -- the operations, run on the writer thread ----------------------------------------
# Each takes the store and returns a plain value; the backend methods below wrap them.


def _list_accounts(s: _Store, filter: Filter) -> list[str]:
    start = s.after("accounts", "1 = ?", (1,), filter.marker)
    rows = s.conn.execute(
        "SELECT name FROM accounts WHERE seq > ? ORDER BY seq LIMIT ?", (start, _sql_limit(filter.limit))
    ).fetchall()
    return [r[0] for r in rows]


def _queue_rows(s: _Store, account_seq: int, filter: Filter) -> list[tuple[int, str]]:
    start = s.after("queues", "account = ?", (account_seq,), filter.marker)
    return s.conn.execute(
        "SELECT seq, name FROM queues WHERE account = ? AND seq > ? ORDER BY seq LIMIT ?",
        (account_seq, start, _sql_limit(filter.limit)),
    ).fetchall()


def _delete_accounts(s: _Store, filter: Filter) -> list[str]:
    names = _list_accounts(s, filter)
    for account in names:
        account_seq = s.account_seq(account)
        if account_seq is not None:
            for qid, _ in _queue_rows(s, account_seq, Filter()):
                s.drop_queue(qid, purge_later=True)
    return names


def _list_queues(s: _Store, account: str, filter: Filter) -> list[str]:
    account_seq = s.account_seq(account)
    return [] if account_seq is None else [name for _, name in _queue_rows(s, account_seq, filter)]


def _delete_queues(s: _Store, account: str, filter: Filter) -> list[str]:
    account_seq = s.account_seq(account)
    if account_seq is None:
        return []
    rows = _queue_rows(s, account_seq, filter)
    for qid, _ in rows:
        s.drop_queue(qid, purge_later=True)
    return [name for _, name in rows]


def _get_messages(s: _Store, account: str, queue: str, filter: Filter, now: float) -> list[Message]:
    qid = s.qid(account, queue)
    return [] if qid is None else [_message(r) for r in s.select(qid, filter, now)]


def _update_messages(
    s: _Store, account: str, queue: str, filter: Filter, update: Update, now: float
) -> list[Message]:
    qid = s.qid(account, queue)
    if qid is None:
        return []
    return [_message(s.set_fields(qid, row, update, now)) for row in s.select(qid, filter, now)]


def _delete_messages(s: _Store, account: str, queue: str, filter: Filter, now: float) -> list[Message]:
    qid = s.qid(account, queue)
    if qid is None:
        return []
    rows = s.select(qid, filter, now)
    if rows:
        s.delete_rows(qid, rows)
        s.drop_queue_if_empty(qid)
    return [_message(r) for r in rows]


def _get_message(s: _Store, account: str, queue: str, message: str, now: float) -> Message | None:
    qid = s.qid(account, queue)
    row = None if qid is None else s.row(qid, message)
    return None if row is None or _expired(row[3], now) else _message(row)


def _put_message(
    s: _Store,
    account: str,
    queue: str,
    message: str,
    body: bytes,
    expires: float,
    hidden_until: float,
    now: float,
    meta: bytes,
) -> bool:
    qid = s.ensure_qid(account, queue)
    conn = s.conn
    seq = s.next_seq
    s.next_seq = seq + 1
    hidden = s.hiding(hidden_until, now)
    # The common case, a new id, is one plain INSERT. (No RETURNING anywhere on the hot
    # path: in SQLite it costs as much as a second statement.)
    if conn.execute(_INSERT_NEW, (qid, seq, message, body, expires, hidden_until, hidden, meta)).rowcount:
        return True
    # The id exists: replace it in place (it keeps its seq), unless it has expired, which
    # counts as absent: then it is replaced by a new message at the end.
    replaced = conn.execute(
        "UPDATE messages SET body = ?, expires = ?, hidden_until = ?, hidden = ?, meta = ?"
        f" WHERE qid = ? AND id = ? AND {_NOT_EXPIRED}",
        (body, expires, hidden_until, hidden, meta, qid, message, now),
    ).rowcount
    if replaced:
        return False
    conn.execute("DELETE FROM messages WHERE qid = ? AND id = ?", (qid, message))
    conn.execute(_INSERT_NEW, (qid, seq, message, body, expires, hidden_until, hidden, meta))
    return True


def _update_message(
    s: _Store, account: str, queue: str, message: str, update: Update, now: float, expect: float | None
) -> Message | None:
    qid = s.qid(account, queue)
    if qid is None:
        return None
    row = s.row(qid, message)
    if row is None or _expired(row[3], now) or (expect is not None and row[4] != expect):
        return None
    return _message(s.set_fields(qid, row, update, now))


def _delete_message(
    s: _Store, account: str, queue: str, message: str, now: float, expect: float | None
) -> Message | None:
    qid = s.qid(account, queue)
    if qid is None:
        return None
    # The row, and whether the queue holds another message (so would not be left empty):
    # one statement, where a separate emptiness check after the DELETE would be another.
    found = s.conn.execute(
        f"SELECT {_MESSAGE_COLUMNS}, EXISTS (SELECT 1 FROM messages WHERE qid = ?1 AND seq <> m.seq)"
        " FROM messages m WHERE qid = ?1 AND id = ?2",
        (qid, message),
    ).fetchone()
    if found is None or (expect is not None and found[4] != expect):
        return None
    s.conn.execute("DELETE FROM messages WHERE qid = ? AND seq = ?", (qid, found[0]))
    if not found[6]:
        s.drop_queue(qid, purge_later=False)
    row: _Row = found[:6]
    return None if _expired(row[3], now) else _message(row)


def _get_queue_meta(s: _Store, account: str, queue: str) -> bytes | None:
    row = s.conn.execute(
        "SELECT meta FROM queue_meta WHERE account = ? AND queue = ?", (account, queue)
    ).fetchone()
    return None if row is None else bytes(row[0])


def _set_queue_meta(s: _Store, account: str, queue: str, meta: bytes | None) -> None:
    if meta is None:
        s.conn.execute("DELETE FROM queue_meta WHERE account = ? AND queue = ?", (account, queue))
    else:
        s.conn.execute(
            "INSERT INTO queue_meta (account, queue, meta) VALUES (?, ?, ?)"
            " ON CONFLICT (account, queue) DO UPDATE SET meta = excluded.meta",
            (account, queue, meta),
        )


def _list_queue_meta(s: _Store, account: str) -> list[tuple[str, bytes]]:
    rows = s.conn.execute("SELECT queue, meta FROM queue_meta WHERE account = ? ORDER BY seq", (account,))
    return [(q, bytes(m)) for q, m in rows]


def _clean_step(s: _Store, now: float) -> tuple[list[tuple[str, str]], bool]:
    """One bounded cleaner step: purge, expire, unhide. Returns (woken queues, more to do)."""
    conn = s.conn
    more = False
    qid = conn.execute("SELECT min(qid) FROM doomed").fetchone()[0]
    if qid is not None:
        cursor = conn.execute(
            "DELETE FROM messages WHERE qid = ? AND seq IN (SELECT seq FROM messages WHERE qid = ? LIMIT ?)",
            (qid, qid, CLEAN_CHUNK),
        )
        if cursor.rowcount < CLEAN_CHUNK:
            conn.execute("DELETE FROM doomed WHERE qid = ?", (qid,))
        more = True
    expired = conn.execute(
        "SELECT qid, seq FROM messages INDEXED BY messages_expiry WHERE expires > 0 AND expires <= ? LIMIT ?",
        (now, CLEAN_CHUNK),
    ).fetchall()
    if expired:
        conn.executemany("DELETE FROM messages WHERE qid = ? AND seq = ?", expired)
        for qid in {q for q, _ in expired}:
            s.drop_queue_if_empty(qid)
        more = more or len(expired) == CLEAN_CHUNK
    unhidden = conn.execute(
        "SELECT qid, seq FROM messages INDEXED BY messages_unhide"
        " WHERE hidden = 1 AND hidden_until <= ? LIMIT ?",
        (now, CLEAN_CHUNK),
    ).fetchall()
    woken: list[tuple[str, str]] = []
    if unhidden:
        conn.executemany("UPDATE messages SET hidden = 0 WHERE qid = ? AND seq = ?", unhidden)
        for qid in dict.fromkeys(q for q, _ in unhidden):
            names = conn.execute(
                "SELECT a.name, q.name FROM queues q JOIN accounts a ON a.seq = q.account WHERE q.seq = ?",
                (qid,),
            ).fetchone()
            if names is not None:
                woken.append((names[0], names[1]))
        more = more or len(unhidden) == CLEAN_CHUNK
    if not more:
        s.find_next_unhide()
    return woken, more


def _fetch_all(s: _Store, sql: str) -> list[tuple[Any, ...]]:
    return s.conn.execute(sql).fetchall()


def _count_messages(s: _Store) -> int:
    row = s.conn.execute("SELECT count(*) FROM messages WHERE qid IN (SELECT seq FROM queues)").fetchone()
    return int(row[0])


# -- the writer thread ----------------------------------------------------------------

#: One request: the operation, its arguments after the store, the caller's future, and
#: whether it writes. A plain tuple and a module-level function rather than a closure per
#: request: the hot path allocates as little as possible on either thread.
_Op = tuple[Callable[..., Any], tuple[Any, ...], "asyncio.Future[Any]", bool]
#: The operations one event-loop iteration handed over, with that loop.
_Item = tuple[asyncio.AbstractEventLoop, list[_Op]]
_STOP = object()


class _Failed:
    """An operation's result slot when it raised: the error its caller gets."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


def _settle(ops: list[_Op], results: list[Any]) -> None:
    """On the event loop: deliver one batch's results (one call per batch, not per request)."""
    for op, result in zip(ops, results, strict=True):
        fut = op[2]
        if fut.done():
            continue  # the caller went away (cancelled)
        if type(result) is _Failed:
            fut.set_exception(result.error)
        else:
            fut.set_result(result)


def _unavailable(error: BaseException) -> StorageUnavailable:
    return StorageUnavailable(f"storage unavailable: the change was not committed ({error})")


class _Writer(threading.Thread):
    """Owns the connection; runs queued operations in batched transactions."""

    def __init__(self, path: str, synchronous: str, writes_per_commit: int) -> None:
        super().__init__(name="burrow-sqlite-writer", daemon=True)
        self.path = path
        self.synchronous = synchronous
        self.writes_per_commit = writes_per_commit
        #: Operations handed over by one event-loop iteration each, or _STOP.
        self.requests: queue_module.SimpleQueue[_Item | object] = queue_module.SimpleQueue()
        self.store: _Store | None = None
        self.commits = 0
        #: Test seam for disk faults: called right before each COMMIT; if it raises,
        #: the commit is treated exactly like a failed commit or sync (see _transaction).
        self.before_commit: Callable[[], None] | None = None
        self.ready: threading.Event = threading.Event()
        self.open_error: BaseException | None = None

    # -- connection -----------------------------------------------------------
    def connect(self) -> _Store:
        conn = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, cached_statements=256
        )
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute(f"PRAGMA synchronous = {self.synchronous}")
            conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
            conn.execute("PRAGMA temp_store = MEMORY")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, SCHEMA_VERSION):
                raise RuntimeError(
                    f"{self.path} has schema version {version}; this Burrow knows {SCHEMA_VERSION}"
                )
            conn.execute("BEGIN")
            for statement in _statements(SCHEMA):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
            return _Store(conn)
        except BaseException:
            conn.close()
            raise

    def run(self) -> None:
        try:
            self.store = self.connect()
        except BaseException as error:
            self.open_error = error
            self.ready.set()
            return
        self.ready.set()
        requests = self.requests
        stopping = False
        while not stopping:
            first = requests.get()
            if first is _STOP:
                break
            items: list[_Item] = [first]  # type: ignore[list-item]
            size = len(items[0][1])
            while size < MAX_BATCH:
                try:
                    item = requests.get_nowait()
                except queue_module.Empty:
                    break
                if item is _STOP:
                    stopping = True
                    break
                items.append(item)  # type: ignore[arg-type]
                size += len(item[1])  # type: ignore[index]
            self.run_batch(items)
        if self.store is not None:
            self.store.conn.close()

    def run_batch(self, items: list[_Item]) -> None:
        """Run the operations in transactions of at most ``writes_per_commit`` writes, then
        hand each event loop its results with one ``call_soon_threadsafe``."""
        ops = items[0][1] if len(items) == 1 else [op for _, part in items for op in part]
        if self.writes_per_commit >= len(ops):
            results = self.transaction(ops)
        else:
            results = []
            group: list[_Op] = []
            writes = 0
            for op in ops:
                group.append(op)
                writes += op[3]
                if writes >= self.writes_per_commit:
                    results += self.transaction(group)
                    group, writes = [], 0
            if group:
                results += self.transaction(group)
        by_loop: dict[asyncio.AbstractEventLoop, tuple[list[_Op], list[Any]]] = {}
        at = 0
        for loop, part in items:
            end = at + len(part)
            mine = by_loop.get(loop)
            if mine is None:
                by_loop[loop] = (part, results[at:end]) if len(items) > 1 else (part, results)
            else:
                mine[0].extend(part)
                mine[1].extend(results[at:end])
            at = end
        for loop, (loop_ops, loop_results) in by_loop.items():
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting any more
                loop.call_soon_threadsafe(_settle, loop_ops, loop_results)

    def transaction(self, group: list[_Op], isolated: bool = False) -> list[Any]:
        """Run one transaction and return a result (or _Failed) per operation; every
        result is final only because COMMIT succeeded.

        The fast path runs the operations back to back. If one raises, the transaction is
        rolled back and the group replayed with a SAVEPOINT around each write, so only the
        failing operation fails (operations are pure functions of the store and their
        arguments, and nothing is delivered before COMMIT, so a replay is invisible).
        """
        store = self.store
        if store is None:
            try:
                store = self.store = self.connect()
            except Exception as error:
                return self.fail(group, error)
        conn = store.conn
        results: list[Any] = []
        wrote = False
        try:
            conn.execute("BEGIN")
            if not isolated:
                append = results.append
                for fn, args, _, write in group:
                    append(fn(store, *args))
                    wrote = wrote or write
            else:
                for fn, args, _, write in group:
                    if write:
                        conn.execute("SAVEPOINT op")
                    try:
                        results.append(fn(store, *args))
                        if write:
                            conn.execute("RELEASE op")
                            wrote = True
                    except Exception as error:
                        if not conn.in_transaction:
                            raise  # SQLite rolled the whole transaction back: fail the batch
                        if write:
                            conn.execute("ROLLBACK TO op")
                            conn.execute("RELEASE op")
                        store.forget()
                        if isinstance(error, sqlite3.Error) and not isinstance(error, _MISUSE):
                            log.error("sqlite operation failed: %s", error)
                            error = _unavailable(error)
                        results.append(_Failed(error))
        except Exception as error:
            if isolated or not conn.in_transaction:
                self.abandon(store)
                return self.fail(group, error)
            self.abandon(store)
            return self.transaction(group, isolated=True)
        try:
            if wrote and self.before_commit is not None:
                self.before_commit()
            conn.execute("COMMIT")
        except Exception as error:  # the commit or its sync failed
            self.abandon(store)
            return self.fail(group, error)
        if wrote:
            self.commits += 1
        return results

    @staticmethod
    def fail(group: list[_Op], error: BaseException) -> list[Any]:
        log.error("sqlite transaction failed, %d requests not acknowledged: %s", len(group), error)
        return [_Failed(_unavailable(error)) for _ in group]

    def abandon(self, store: _Store) -> None:
        """Roll back after a failed transaction; reconnect on the next batch if even that fails."""
        store.forget()
        try:
            if store.conn.in_transaction:
                store.conn.execute("ROLLBACK")
        except sqlite3.Error as error:
            log.error("sqlite rollback failed, reconnecting: %s", error)
            if self.path != ":memory:":
                store.conn.close()
                self.store = None


class SQLiteBackend(Backend):
    """Durable storage in one SQLite file (or ``:memory:``); see the module docstring."""

    def __init__(self, path: str, fsync: str = "batch", url: str = "") -> None:
        if fsync not in SYNCHRONOUS:
            raise ValueError(f"fsync must be always, batch or never, got {fsync!r}")
        self.path = path
        self.fsync = fsync
        self.url = url or ("sqlite://:memory:" if path == ":memory:" else f"sqlite:///{path}")
        self._writer = _Writer(path, SYNCHRONOUS[fsync], 1 if fsync == "always" else MAX_BATCH)
        self._pending: list[_Op] = []
        #: The loop that opened the backend; every call comes from it (asking for the running
        #: loop per call costs a getpid() system call on Python 3.11).
        self._loop: asyncio.AbstractEventLoop
        self._open = False

    @classmethod
    def from_url(cls, url: str, settings: Settings) -> SQLiteBackend:
        """``sqlite:///relative.db``, ``sqlite:////absolute.db`` or ``sqlite://:memory:``."""
        scheme, _, rest = url.partition("://")
        if scheme != "sqlite":
            raise ValueError(f"not a sqlite URL: {url!r}")
        if rest == ":memory:":
            return cls(":memory:", settings.fsync, url)
        path = rest[1:] if rest.startswith("/") else ""
        if not path or path.endswith("/"):
            raise ValueError(
                f"sqlite URL must name a file: sqlite:///relative.db, sqlite:////absolute.db"
                f" or sqlite://:memory:, got {url!r}"
            )
        return cls(path, settings.fsync, url)

    # -- plumbing ---------------------------------------------------------------
    @property
    def commits(self) -> int:
        """Transactions committed that contained writes (group commit makes this < writes)."""
        return self._writer.commits

    def inject_commit_fault(self, fault: Callable[[], None] | None) -> None:
        """Test seam: ``fault`` runs on the writer thread before every COMMIT of a write;
        if it raises, that transaction is rolled back and its requests get StorageUnavailable."""
        self._writer.before_commit = fault

    def _call(self, fn: Callable[..., T], args: tuple[Any, ...], write: bool) -> asyncio.Future[T]:
        """Queue ``fn(store, *args)`` for the writer; the future settles after its commit.

        A plain function returning the future (the methods await it): no coroutine frame
        of its own on the hot path.
        """
        if not self._open:
            raise StorageUnavailable("storage unavailable: the SQLite backend is not open")
        loop = self._loop
        fut: asyncio.Future[T] = loop.create_future()
        pending = self._pending
        pending.append((fn, args, fut, write))
        if len(pending) == 1:
            # Hand the writer one list per loop iteration: fewer thread wake-ups and GIL
            # hand-offs than one queue item per request.
            loop.call_soon(self._flush)
        return fut

    def _flush(self) -> None:
        if self._pending:
            self._writer.requests.put((self._loop, self._pending))
            self._pending = []

    async def pragma(self, name: str, value: int | str | None = None) -> list[tuple[Any, ...]]:
        """Run ``PRAGMA name [= value]`` on the writer's connection (diagnostics and tests)."""
        if not _PRAGMA_NAME.match(name) or not (value is None or re.match(r"^[\w-]+$", str(value))):
            raise ValueError(f"bad pragma {name!r} = {value!r}")
        sql = f"PRAGMA {name}" if value is None else f"PRAGMA {name} = {value}"
        return await self._call(_fetch_all, (sql,), False)

    async def open(self) -> None:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        writer = self._writer
        writer.start()
        await asyncio.get_running_loop().run_in_executor(None, writer.ready.wait)
        if writer.open_error is not None:
            raise writer.open_error
        self._loop = asyncio.get_running_loop()
        self._open = True

    async def close(self) -> None:
        if not self._writer.is_alive():
            return
        self._open = False
        self._flush()
        self._writer.requests.put(_STOP)
        await asyncio.get_running_loop().run_in_executor(None, self._writer.join)

    # -- accounts ---------------------------------------------------------------
    async def list_accounts(self, filter: Filter, now: float) -> list[str]:
        return await self._call(_list_accounts, (filter,), False)

    async def delete_accounts(self, filter: Filter, now: float) -> list[str]:
        return await self._call(_delete_accounts, (filter,), True)

    # -- queues -----------------------------------------------------------------
    async def list_queues(self, account: str, filter: Filter, now: float) -> list[str]:
        return await self._call(_list_queues, (account, filter), False)

    async def delete_queues(self, account: str, filter: Filter, now: float) -> list[str]:
        return await self._call(_delete_queues, (account, filter), True)

    # -- message lists ----------------------------------------------------------
    async def get_messages(self, account: str, queue: str, filter: Filter, now: float) -> list[Message]:
        return await self._call(_get_messages, (account, queue, filter, now), False)

    async def update_messages(
        self, account: str, queue: str, filter: Filter, update: Update, now: float
    ) -> list[Message]:
        return await self._call(_update_messages, (account, queue, filter, update, now), True)

    async def delete_messages(self, account: str, queue: str, filter: Filter, now: float) -> list[Message]:
        return await self._call(_delete_messages, (account, queue, filter, now), True)

    # -- one message ------------------------------------------------------------
    async def get_message(self, account: str, queue: str, message: str, now: float) -> Message | None:
        return await self._call(_get_message, (account, queue, message, now), False)

    async def put_message(
        self,
        account: str,
        queue: str,
        message: str,
        body: bytes,
        expires: float,
        hidden_until: float,
        now: float,
        meta: bytes = b"",
    ) -> bool:
        return await self._call(
            _put_message, (account, queue, message, body, expires, hidden_until, now, meta), True
        )

    async def update_message(
        self,
        account: str,
        queue: str,
        message: str,
        update: Update,
        now: float,
        expect_hidden_until: float | None = None,
    ) -> Message | None:
        return await self._call(
            _update_message, (account, queue, message, update, now, expect_hidden_until), True
        )

    async def delete_message(
        self, account: str, queue: str, message: str, now: float, expect_hidden_until: float | None = None
    ) -> Message | None:
        return await self._call(_delete_message, (account, queue, message, now, expect_hidden_until), True)

    # -- queue metadata ---------------------------------------------------------
    async def get_queue_meta(self, account: str, queue: str) -> bytes | None:
        return await self._call(_get_queue_meta, (account, queue), False)

    async def set_queue_meta(self, account: str, queue: str, meta: bytes | None) -> None:
        await self._call(_set_queue_meta, (account, queue, meta), True)

    async def list_queue_meta(self, account: str) -> list[tuple[str, bytes]]:
        return await self._call(_list_queue_meta, (account,), False)

    # -- housekeeping -----------------------------------------------------------
    async def clean(self, now: float) -> list[tuple[str, str]]:
        """Purge, expire and unhide in bounded steps so other requests run in between."""
        woken: dict[tuple[str, str], None] = {}
        more = True
        while more:
            step, more = await self._call(_clean_step, (now,), True)
            woken.update(dict.fromkeys(step))
        return list(woken)

    async def count_messages(self) -> int:
        return await self._call(_count_messages, (), False)
