"""The operations, run on the writer thread against one connection.

Each operation is a module-level function ``op(store, *args)``: the backend hands the
writer a tuple (function, arguments), not a closure, so a request allocates little. The
hot ones are shaped by measured cost: a put is one statement, a take two and a delete
two; no hot statement uses RETURNING or SETs a column it does not change (in SQLite 3.40
a RETURNING costs about as much as a second statement, and SET rewrites every index on
the column even when its value stays the same).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from typing import Any

from burrow.backends.sqlite.schema import CLEAN_CHUNK
from burrow.core.model import Filter, Message, Update

_MESSAGE_COLUMNS = "seq, id, body, expires, hidden_until, meta"
_Row = tuple[int, str, bytes, float, float, bytes]
_NOT_EXPIRED = "(expires <= 0 OR expires > ?)"
#: Insert a message unless its id exists in the queue (rowcount 0 then).
_INSERT_NEW = (
    "INSERT INTO messages (qid, seq, id, body, expires, hidden_until, hidden, meta)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (qid, id) DO NOTHING"
)
_INF = float("inf")


def _set_fields_sql(expires: bool, hide: bool, meta: bool) -> str:
    columns = ["expires = ?"] * expires + ["hidden_until = ?, hidden = ?"] * hide + ["meta = ?"] * meta
    return f"UPDATE messages SET {', '.join(columns)} WHERE qid = ? AND seq = ?"


#: (sets expires, sets hidden_until, sets meta) -> the UPDATE for Store.set_fields.
_SET_FIELDS = {
    (e, h, m): _set_fields_sql(e, h, m)
    for e in (False, True)
    for h in (False, True)
    for m in (False, True)
    if e or h or m
}


def _message(row: _Row) -> Message:
    return Message(row[1], row[2], row[3], row[4], row[5])


def _expired(expires: float, now: float) -> bool:
    return 0 < expires <= now


def _sql_limit(limit: int | None) -> int:
    return -1 if limit is None else limit


class Store:
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


def list_accounts(s: Store, filter: Filter) -> list[str]:
    start = s.after("accounts", "1 = ?", (1,), filter.marker)
    rows = s.conn.execute(
        "SELECT name FROM accounts WHERE seq > ? ORDER BY seq LIMIT ?", (start, _sql_limit(filter.limit))
    ).fetchall()
    return [r[0] for r in rows]


def _queue_rows(s: Store, account_seq: int, filter: Filter) -> list[tuple[int, str]]:
    start = s.after("queues", "account = ?", (account_seq,), filter.marker)
    return s.conn.execute(
        "SELECT seq, name FROM queues WHERE account = ? AND seq > ? ORDER BY seq LIMIT ?",
        (account_seq, start, _sql_limit(filter.limit)),
    ).fetchall()


def delete_accounts(s: Store, filter: Filter) -> list[str]:
    names = list_accounts(s, filter)
    for account in names:
        account_seq = s.account_seq(account)
        if account_seq is not None:
            for qid, _ in _queue_rows(s, account_seq, Filter()):
                s.drop_queue(qid, purge_later=True)
    return names


def list_queues(s: Store, account: str, filter: Filter) -> list[str]:
    account_seq = s.account_seq(account)
    return [] if account_seq is None else [name for _, name in _queue_rows(s, account_seq, filter)]


def delete_queues(s: Store, account: str, filter: Filter) -> list[str]:
    account_seq = s.account_seq(account)
    if account_seq is None:
        return []
    rows = _queue_rows(s, account_seq, filter)
    for qid, _ in rows:
        s.drop_queue(qid, purge_later=True)
    return [name for _, name in rows]


def get_messages(s: Store, account: str, queue: str, filter: Filter, now: float) -> list[Message]:
    qid = s.qid(account, queue)
    return [] if qid is None else [_message(r) for r in s.select(qid, filter, now)]


def update_messages(
    s: Store, account: str, queue: str, filter: Filter, update: Update, now: float
) -> list[Message]:
    qid = s.qid(account, queue)
    if qid is None:
        return []
    return [_message(s.set_fields(qid, row, update, now)) for row in s.select(qid, filter, now)]


def delete_messages(s: Store, account: str, queue: str, filter: Filter, now: float) -> list[Message]:
    qid = s.qid(account, queue)
    if qid is None:
        return []
    rows = s.select(qid, filter, now)
    if rows:
        s.delete_rows(qid, rows)
        s.drop_queue_if_empty(qid)
    return [_message(r) for r in rows]


def get_message(s: Store, account: str, queue: str, message: str, now: float) -> Message | None:
    qid = s.qid(account, queue)
    row = None if qid is None else s.row(qid, message)
    return None if row is None or _expired(row[3], now) else _message(row)


def put_message(
    s: Store,
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


def update_message(
    s: Store, account: str, queue: str, message: str, update: Update, now: float, expect: float | None
) -> Message | None:
    qid = s.qid(account, queue)
    if qid is None:
        return None
    row = s.row(qid, message)
    if row is None or _expired(row[3], now) or (expect is not None and row[4] != expect):
        return None
    return _message(s.set_fields(qid, row, update, now))


def delete_message(
    s: Store, account: str, queue: str, message: str, now: float, expect: float | None
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


def get_queue_meta(s: Store, account: str, queue: str) -> bytes | None:
    row = s.conn.execute(
        "SELECT meta FROM queue_meta WHERE account = ? AND queue = ?", (account, queue)
    ).fetchone()
    return None if row is None else bytes(row[0])


def set_queue_meta(s: Store, account: str, queue: str, meta: bytes | None) -> None:
    if meta is None:
        s.conn.execute("DELETE FROM queue_meta WHERE account = ? AND queue = ?", (account, queue))
    else:
        s.conn.execute(
            "INSERT INTO queue_meta (account, queue, meta) VALUES (?, ?, ?)"
            " ON CONFLICT (account, queue) DO UPDATE SET meta = excluded.meta",
            (account, queue, meta),
        )


def list_queue_meta(s: Store, account: str) -> list[tuple[str, bytes]]:
    rows = s.conn.execute("SELECT queue, meta FROM queue_meta WHERE account = ? ORDER BY seq", (account,))
    return [(q, bytes(m)) for q, m in rows]


def clean_step(s: Store, now: float) -> tuple[list[tuple[str, str]], bool]:
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


def fetch_all(s: Store, sql: str) -> list[tuple[Any, ...]]:
    return s.conn.execute(sql).fetchall()


def count_messages(s: Store) -> int:
    row = s.conn.execute("SELECT count(*) FROM messages WHERE qid IN (SELECT seq FROM queues)").fetchone()
    return int(row[0])
