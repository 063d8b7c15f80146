"""The operations, run by the writer (see ``writer``) on its one connection.

Each operation is a module-level function ``op(store, *args)``: the backend hands the
writer a tuple (function, arguments), not a closure, so a request allocates little. The
hot ones are shaped by measured cost: a put is one statement, a take two and a delete
two; no hot statement uses RETURNING or SETs a column it does not change (in SQLite 3.40
a RETURNING costs about as much as a second statement, and SET rewrites every index on
the column even when its value stays the same). Each operation is one call, so it is
atomic: claim, send and move do their reads and writes in one transaction.

FIFO group upkeep (see ``schema.SCHEMA``) runs only for queues flagged FIFO: the v1.0
and SQS-standard paths pay a set lookup for it and a partial-index test per write.
"""

from __future__ import annotations

import sqlite3
from bisect import insort
from typing import Any

from burrow.backends.sqlite.schema import CLEAN_CHUNK
from burrow.core.model import Counts, Filter, Message, Sent, Update

_MESSAGE_COLUMNS = "seq, id, body, expires, hidden_until, meta, receives, first_received, grp, sequence"
#: A message row: seq, then the fields of :class:`Message` in order (``_message``).
_Row = tuple[int, str, bytes, float, float, bytes, int, float, str, int]
_NOT_EXPIRED = "(expires <= 0 OR expires > ?)"
#: When a hidden message stops blocking its FIFO group (SQL for ``blocks_until``).
_BLOCKS_UNTIL = "CASE WHEN expires > 0 AND expires < hidden_until THEN expires ELSE hidden_until END"
#: Insert a message unless its id exists in the queue (rowcount 0 then). The per-message
#: columns take their defaults (never claimed, group "", no sequence).
_INSERT_NEW = (
    "INSERT INTO messages (qid, seq, id, body, expires, hidden_until, hidden, meta)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (qid, id) DO NOTHING"
)
#: The same with every column (FIFO sends, moves, and any insert into a FIFO queue).
_INSERT_FULL = (
    "INSERT INTO messages (qid, seq, id, body, expires, hidden_until, hidden, meta,"
    " receives, first_received, grp, sequence, fifo)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (qid, id) DO NOTHING"
)
#: A claim's write: the hide and the receive count, plus first_received on a first claim.
_CLAIM = "UPDATE messages SET hidden_until = ?, hidden = ?, receives = ? WHERE qid = ? AND seq = ?"
_CLAIM_FIRST = (
    "UPDATE messages SET hidden_until = ?, hidden = ?, receives = ?, first_received = ?"
    " WHERE qid = ? AND seq = ?"
)
_INF = float("inf")
#: Past any qid or seq: a cursor at (t, _BIG, _BIG) starts after every row at time t.
_BIG = 2**63 - 1
#: One part of a group's messages in messages_group (?1 = qid, ?2 = group).
_GROUP_PART = (
    "FROM messages INDEXED BY messages_group WHERE qid = ?1 AND grp = ?2 AND fifo = 1 AND hidden = 0"
)
#: fifo_groups.blocked values.
_OPEN, _BLOCKED, _UNKNOWN = 0, 1, 2


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
    """The message of a row selected with its queue id first."""
    return Message(row[1], row[2], row[3], row[4], row[5], row[6], row[7], row[8], row[9])


def _expired(expires: float, now: float) -> bool:
    return 0 < expires <= now


def _sql_limit(limit: int | None) -> int:
    return -1 if limit is None else limit


def blocks_until(hidden_until: float, expires: float, now: float) -> float:
    """Until when a message blocks its FIFO group: while hidden and unexpired (0 = not at all)."""
    if hidden_until <= now or 0 < expires <= now:
        return 0.0
    return expires if 0 < expires < hidden_until else hidden_until


class Store:
    """The connection plus the writer's caches; used by the writer only."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        #: (account, queue) -> qid of existing queues; cleared on any rollback.
        self.qids: dict[tuple[str, str], int] = {}
        #: The cached qids whose queue is flagged FIFO (keeps fifo_groups rows).
        self.fifo: set[int] = set()
        #: qid -> number of message rows (expired ones included), for the queues that
        #: ``count`` has looked at; kept by every insert and delete, cleared on rollback.
        #: A B-tree has no range counts, so this is what keeps ``count`` O(log n) after
        #: its first call; queues never counted (v1.0) cost a failed lookup per write.
        self.sizes: dict[int, int] = {}
        #: (account, queue) -> [fifo_state id, counter] of the queues sent to; cleared on
        #: rollback and with the state (saves a send one of its statements).
        self.fifo_states: dict[tuple[str, str], list[int]] = {}
        # Order only matters within a queue and qids are never reused, so the largest seq
        # of each live queue (one index seek per queue) is enough; max(seq) would scan.
        row = conn.execute(
            "SELECT max((SELECT max(seq) FROM messages WHERE qid = q.seq)) FROM queues q"
        ).fetchone()
        self.next_seq = (row[0] or 0) + 1
        #: No row marked hidden has a smaller hidden_until: while now is below it, no
        #: lapsed hide can exist and list operations skip the ``messages_hidden`` query.
        self.next_unhide = _INF
        self.find_next_unhide()

    def find_next_unhide(self) -> None:
        """Reset the lower bound on hidden_until of rows still marked hidden (an index seek)."""
        row = self.conn.execute(
            "SELECT min(hidden_until) FROM messages INDEXED BY messages_hides"
            " WHERE hidden = 1 AND hidden_until > 0"
        ).fetchone()
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
        self.fifo.clear()
        self.sizes.clear()
        self.fifo_states.clear()

    def resize(self, qid: int, delta: int) -> None:
        sizes = self.sizes
        if qid in sizes:
            sizes[qid] += delta

    # -- accounts and queues ----------------------------------------------------
    def qid(self, account: str, queue: str) -> int | None:
        key = (account, queue)
        qid = self.qids.get(key)
        if qid is None:
            row = self.conn.execute(
                "SELECT q.seq, q.fifo FROM accounts a JOIN queues q ON q.account = a.seq"
                " WHERE a.name = ? AND q.name = ?",
                key,
            ).fetchone()
            if row is None:
                return None
            qid = self.qids[key] = row[0]
            if row[1]:
                self.fifo.add(qid)
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
        """Remove the queue row (and its account if that was its last queue).

        A FIFO queue's group rows go with its messages, through ``doomed``.
        """
        conn = self.conn
        row = conn.execute(
            "SELECT a.seq, a.name, q.name, q.fifo FROM queues q JOIN accounts a ON a.seq = q.account"
            " WHERE q.seq = ?",
            (qid,),
        ).fetchone()
        if row is None:
            return
        account_seq, account, queue, fifo = row
        conn.execute("DELETE FROM queues WHERE seq = ?", (qid,))
        if purge_later or fifo:
            conn.execute("INSERT OR IGNORE INTO doomed (qid) VALUES (?)", (qid,))
        self.qids.pop((account, queue), None)
        self.fifo.discard(qid)
        self.sizes.pop(qid, None)
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

    # -- FIFO groups (flagged queues only) --------------------------------------
    def make_fifo(self, qid: int) -> None:
        """Flag the queue FIFO: its messages join the group indexes and each group it already
        holds gets a row (once, O(n); a queue that starts with a FIFO send is empty)."""
        if qid in self.fifo:
            return
        conn = self.conn
        conn.execute("UPDATE messages SET fifo = 1 WHERE qid = ? AND fifo = 0", (qid,))
        conn.execute(
            "INSERT OR IGNORE INTO fifo_groups (qid, grp, head, blocked, blocked_until)"
            f" SELECT qid, grp, min(seq), {_UNKNOWN}, 0 FROM messages INDEXED BY messages_group"
            " WHERE qid = ? AND fifo = 1 GROUP BY grp",
            (qid,),
        )
        conn.execute("UPDATE queues SET fifo = 1 WHERE seq = ?", (qid,))
        self.fifo.add(qid)

    def group_enter(self, qid: int, grp: str, seq: int, until: float) -> None:
        """A message joined the group (``until``: when it stops blocking it, 0 = it does not)."""
        if until:
            self.group_block(qid, grp, seq, until)
        else:
            self.conn.execute(
                "INSERT INTO fifo_groups (qid, grp, head, blocked, blocked_until) VALUES (?, ?, ?, 0, 0)"
                " ON CONFLICT (qid, grp) DO UPDATE SET head = excluded.head WHERE excluded.head < head",
                (qid, grp, seq),
            )

    def group_block(self, qid: int, grp: str, seq: int, until: float) -> None:
        """A message of the group is hidden until ``until``: the group is blocked at least as long.

        Raising an unknown group to blocked may set too early a time (another message may
        block longer); the claim after it looks again, so that errs on the safe side.
        """
        self.conn.execute(
            "INSERT INTO fifo_groups (qid, grp, head, blocked, blocked_until) VALUES (?, ?, ?, 1, ?)"
            " ON CONFLICT (qid, grp) DO UPDATE SET head = min(head, excluded.head),"
            " blocked_until = CASE WHEN blocked = 1 THEN max(blocked_until, excluded.blocked_until)"
            " ELSE excluded.blocked_until END, blocked = 1",
            (qid, grp, seq, until),
        )

    def group_leave(self, qid: int, grp: str, until: float, gone: bool = False) -> None:
        """A message that blocked its group until ``until`` went (``gone``) or shortened its
        hide: the group's block is unknown until the next claim looks.

        A blocking message that goes is nearly always the group's first (an SQS delete after
        a receive), so its head moves on to the group's first message left (two seeks, in
        the same statement; past every seq if none is left), and claims do not meet it early.
        """
        if not until:
            return
        if gone:
            self.conn.execute(
                "UPDATE fifo_groups SET blocked = 2, head = min("
                f" coalesce((SELECT min(seq) {_GROUP_PART}), ?3),"
                f" coalesce((SELECT min(seq) {_GROUP_PART.replace('hidden = 0', 'hidden = 1')}), ?3))"
                " WHERE qid = ?1 AND grp = ?2",
                (qid, grp, _BIG),
            )
        else:
            self.conn.execute(
                "UPDATE fifo_groups SET blocked = 2 WHERE qid = ? AND grp = ? AND blocked <> 2", (qid, grp)
            )

    def group_change(self, qid: int, old: _Row, new: _Row, now: float) -> None:
        before = blocks_until(old[4], old[3], now)
        after = blocks_until(new[4], new[3], now)
        if after > before:
            self.group_block(qid, new[8], new[0], after)
        elif after < before:
            self.group_leave(qid, old[8], before)

    def group_blocked_until(self, qid: int, grp: str, now: float) -> float:
        """When the group's last blocking message stops blocking it; 0 if none does now."""
        row = self.conn.execute(
            f"SELECT max({_BLOCKS_UNTIL}) FROM messages INDEXED BY messages_group"
            f" WHERE qid = ? AND grp = ? AND fifo = 1 AND hidden = 1 AND hidden_until > ? AND {_NOT_EXPIRED}",
            (qid, grp, now, now),
        ).fetchone()
        return float(row[0] or 0.0)

    def group_rows(
        self, qid: int, grp: str, start: int, limit: int, now: float, upto: int = _BIG
    ) -> list[_Row]:
        """An open group's first ``limit`` unexpired messages with seq in [start, upto], in order.

        Those marked visible, merged (as in ``select``) with those still marked hidden when
        a hide may have lapsed since the cleaner's last pass; an open group has no others.
        """
        sql = (
            f"SELECT {_MESSAGE_COLUMNS} FROM messages INDEXED BY messages_group"
            " WHERE qid = ? AND grp = ? AND fifo = 1 AND hidden = ? AND seq >= ? AND seq <= ?"
            f" AND {_NOT_EXPIRED} ORDER BY seq LIMIT ?"
        )
        rows: list[_Row] = self.conn.execute(sql, (qid, grp, 0, start, upto, now, limit)).fetchall()
        if now >= self.next_unhide:
            lapsed: list[_Row] = self.conn.execute(sql, (qid, grp, 1, start, upto, now, limit)).fetchall()
            if lapsed:
                rows = sorted(rows + lapsed)[:limit]
        return rows

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
            f"SELECT {_MESSAGE_COLUMNS} FROM messages INDEXED BY messages_hidden"
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
        seq, mid, body, expires, hidden_until, meta, receives, first, grp, sequence = row
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
        new = (seq, mid, body, expires, hidden_until, meta, receives, first, grp, sequence)
        if qid in self.fifo:
            self.group_change(qid, row, new, now)
        return new

    def delete_rows(self, qid: int, rows: list[_Row], now: float) -> None:
        self.conn.executemany("DELETE FROM messages WHERE qid = ? AND seq = ?", [(qid, r[0]) for r in rows])
        self.resize(qid, -len(rows))
        if qid in self.fifo:
            for r in rows:
                self.group_leave(qid, r[8], blocks_until(r[4], r[3], now), gone=True)

    def remove(self, qid: int, row: _Row, now: float) -> None:
        """Delete one message row, dropping its queue if that was its last message."""
        self.delete_rows(qid, [row], now)
        self.drop_queue_if_empty(qid)

    def insert(self, qid: int, row: _Row, hidden: int, now: float) -> bool:
        """Insert a full row last in its queue, replacing a message of the same id; True if new."""
        conn = self.conn
        fifo = qid in self.fifo
        args = (qid, row[0], *row[1:5], hidden, *row[5:], int(fifo))
        created = True
        if not conn.execute(_INSERT_FULL, args).rowcount:
            old = self.row(qid, row[1])
            if old is not None:
                self.delete_rows(qid, [old], now)
            conn.execute(_INSERT_FULL, args)
            created = old is None or _expired(old[3], now)
        self.resize(qid, 1)
        if fifo:
            self.group_enter(qid, row[8], row[0], blocks_until(row[4], row[3], now))
        return created

    def next(self) -> int:
        seq = self.next_seq
        self.next_seq = seq + 1
        return seq


# -- the operations ----------------------------------------------------------------------
# Each takes the store and returns a plain value; the backend's methods hand them over.


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
        s.delete_rows(qid, rows, now)
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
    if qid in s.fifo:
        row = (seq, message, body, expires, hidden_until, meta, 0, 0.0, "", 0)
        if conn.execute(
            _INSERT_FULL, (qid, seq, message, body, expires, hidden_until, hidden, meta, 0, 0.0, "", 0, 1)
        ).rowcount:
            s.resize(qid, 1)
            s.group_enter(qid, "", seq, blocks_until(hidden_until, expires, now))
            return True
        return _replace(s, qid, row, hidden, now)
    # The common case, a new id, is one plain INSERT. (No RETURNING anywhere on the hot
    # path: in SQLite it costs as much as a second statement.)
    if conn.execute(_INSERT_NEW, (qid, seq, message, body, expires, hidden_until, hidden, meta)).rowcount:
        sizes = s.sizes
        if qid in sizes:
            sizes[qid] += 1
        return True
    # The id exists: replace it in place (it keeps its seq). A plain message (never
    # claimed, no group) is one UPDATE that leaves the per-message columns alone, as
    # they already hold their reset values.
    if conn.execute(
        "UPDATE messages SET body = ?, expires = ?, hidden_until = ?, hidden = ?, meta = ?"
        f" WHERE qid = ? AND id = ? AND {_NOT_EXPIRED} AND receives = 0 AND grp = '' AND sequence = 0",
        (body, expires, hidden_until, hidden, meta, qid, message, now),
    ).rowcount:
        return False
    return _replace(s, qid, (seq, message, body, expires, hidden_until, meta, 0, 0.0, "", 0), hidden, now)


def _replace(s: Store, qid: int, row: _Row, hidden: int, now: float) -> bool:
    """A put of an existing id (``row`` holds a fresh seq and reset per-message data)."""
    old = s.row(qid, row[1])
    assert old is not None
    if _expired(old[3], now):
        # An expired message counts as absent: it is replaced by a new message at the end.
        s.delete_rows(qid, [old], now)
        s.insert(qid, row, hidden, now)
        return True
    # A replaced message is a new message in the old position: its per-message data resets.
    s.conn.execute(
        "UPDATE messages SET body = ?, expires = ?, hidden_until = ?, hidden = ?, meta = ?,"
        " receives = 0, first_received = 0, grp = '', sequence = 0 WHERE qid = ? AND seq = ?",
        (row[2], row[3], row[4], hidden, row[5], qid, old[0]),
    )
    if qid in s.fifo:
        s.group_leave(qid, old[8], blocks_until(old[4], old[3], now), gone=True)
        s.group_enter(qid, "", old[0], blocks_until(row[4], row[3], now))
    return False


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
    s: Store,
    account: str,
    queue: str,
    message: str,
    now: float,
    expect: float | None,
    expect_receives: int | None = None,
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
    if (
        found is None
        or (expect is not None and found[4] != expect)
        or (expect_receives is not None and found[6] != expect_receives)
    ):
        return None
    s.conn.execute("DELETE FROM messages WHERE qid = ? AND seq = ?", (qid, found[0]))
    row: _Row = found[:10]
    sizes = s.sizes
    if qid in sizes:
        sizes[qid] -= 1
    if qid in s.fifo:
        s.group_leave(qid, row[8], blocks_until(row[4], row[3], now), gone=True)
    if not found[10]:
        s.drop_queue(qid, purge_later=False)
    return None if _expired(row[3], now) else _message(row)


# -- worker operations -----------------------------------------------------------------


def claim(
    s: Store, account: str, queue: str, limit: int, hidden_until: float, now: float, fifo: bool
) -> list[Message]:
    """Take and hide in one call: the rows a take would see (or the FIFO ones), then one
    UPDATE each that also counts the receive."""
    qid = s.qid(account, queue)
    if qid is None or limit <= 0:
        return []
    heads: dict[str, tuple[int, int]] = {}
    rows = _fifo_rows(s, qid, limit, now, heads) if fifo else s.select(qid, Filter(limit=limit), now)
    hidden = s.hiding(hidden_until, now) if rows else 0
    again: list[tuple[Any, ...]] = []
    first: list[tuple[Any, ...]] = []
    out: list[Message] = []
    for seq, mid, body, expires, _, meta, receives, first_received, grp, sequence in rows:
        if receives:
            again.append((hidden_until, hidden, receives + 1, qid, seq))
        else:
            first.append((hidden_until, hidden, 1, now, qid, seq))
            first_received = now
        out.append(
            _message(
                (seq, mid, body, expires, hidden_until, meta, receives + 1, first_received, grp, sequence)
            )
        )
    conn = s.conn
    if again:
        conn.executemany(_CLAIM, again)
    if first:
        conn.executemany(_CLAIM_FIRST, first)
    if qid in s.fifo:
        # The taken messages were visible, so each only raises its group's block.
        blocks: dict[str, float] = {}
        for row in rows:
            blocks[row[8]] = max(blocks.get(row[8], 0.0), blocks_until(hidden_until, row[3], now))
        for grp, until in blocks.items():
            if grp in heads:
                # Open when this claim looked, and its first message is taken: the row is
                # exact now (its head, its block), one UPDATE instead of a fix-up and a block.
                del heads[grp]
                conn.execute(
                    "UPDATE fifo_groups SET head = ?, blocked = ?, blocked_until = ?"
                    " WHERE qid = ? AND grp = ?",
                    (min(r[0] for r in rows if r[8] == grp), _BLOCKED if until else _OPEN, until, qid, grp),
                )
            elif until:
                s.group_block(qid, grp, min(r[0] for r in rows if r[8] == grp), until)
        for grp, (hint, head) in heads.items():
            if head != hint:
                conn.execute("UPDATE fifo_groups SET head = ? WHERE qid = ? AND grp = ?", (head, qid, grp))
    return out


def _fifo_rows(s: Store, qid: int, limit: int, now: float, heads: dict[str, tuple[int, int]]) -> list[_Row]:
    """The first ``limit`` visible messages of the queue's unblocked groups, in queue order.

    A merge over the groups in head order. Each group row's ``head`` is a lower bound of
    its first message, so once ``limit`` groups have shown their first message, the
    ``limit``-th smallest of those (``bound``) is at least the last message taken, and a
    group whose head lies beyond it (and every group after it) can add nothing. A group
    gives its first two messages; only one whose second is within the bound is read on.
    Blocked groups are not in ``fifo_groups_ready`` and cost nothing; unknown ones are
    checked (one range of ``messages_group``) and filed as open or blocked; heads are
    fixed up on the way. So a claim reads about ``limit`` groups, never the whole queue.

    Fills ``heads`` with (hint, first seq) of each open group it read, for ``claim`` to
    write back with the groups' new blocks (a group found open is left unknown until then).
    """
    s.make_fifo(qid)
    conn = s.conn
    # Lapsed blocks become unknown rather than open: a later hide may still block.
    conn.execute(
        "UPDATE fifo_groups SET blocked = 2 WHERE qid = ? AND blocked = 1 AND blocked_until <= ?", (qid, now)
    )
    found: dict[str, list[_Row]] = {}
    firsts: list[int] = []  # the first seq of each group in ``found``, sorted
    bound = _BIG
    at: tuple[int, str] = (-1, "")
    batch = limit + 8
    more = True
    while more:
        groups = conn.execute(
            "SELECT head, grp, blocked FROM fifo_groups INDEXED BY fifo_groups_ready"
            " WHERE qid = ? AND blocked <> 1 AND (head, grp) > (?, ?) ORDER BY head, grp LIMIT ?",
            (qid, *at, batch),
        ).fetchall()
        more = len(groups) == batch
        if more:
            at = (groups[-1][0], groups[-1][1])
        for head, grp, blocked in groups:
            if head > bound:
                more = False
                break
            if grp in found:
                continue  # met again after its head moved on
            if blocked == _UNKNOWN:
                until = s.group_blocked_until(qid, grp, now)
                if until:
                    conn.execute(
                        "UPDATE fifo_groups SET blocked = 1, blocked_until = ? WHERE qid = ? AND grp = ?",
                        (until, qid, grp),
                    )
                    continue
            rows = s.group_rows(qid, grp, head, 2, now)
            if not rows:
                # No unexpired message left: the group is gone (a new one brings the row back).
                conn.execute("DELETE FROM fifo_groups WHERE qid = ? AND grp = ?", (qid, grp))
                continue
            heads[grp] = (head, rows[0][0])
            found[grp] = rows
            insort(firsts, rows[0][0])
            if len(firsts) >= limit:
                bound = firsts[limit - 1]
    taken: list[_Row] = []
    for grp, rows in found.items():
        if len(rows) == 2 and limit > 2 and rows[1][0] < bound:
            rows += s.group_rows(qid, grp, rows[1][0] + 1, limit - 2, now, bound)
        for row in rows:
            if row[0] > bound or row[4] > now:
                break  # (a hidden one: only if the clock went back; the group is blocked from there)
            taken.append(row)
    taken.sort()
    return taken[:limit]


def send_message(
    s: Store,
    account: str,
    queue: str,
    message: str,
    body: bytes,
    expires: float,
    hidden_until: float,
    now: float,
    meta: bytes,
    group: str,
    dedup: str | None,
    dedup_until: float,
) -> Sent:
    conn = s.conn
    key = (account, queue)
    state = s.fifo_states.get(key)
    if state is None:
        found = conn.execute(
            "SELECT id, counter FROM fifo_state WHERE account = ? AND queue = ?", key
        ).fetchone()
        if found is None:
            cursor = conn.execute("INSERT INTO fifo_state (account, queue, counter) VALUES (?, ?, 0)", key)
            found = (int(cursor.lastrowid or 0), 0)
        state = s.fifo_states[key] = list(found)
    state_id, counter = state
    if dedup is not None:
        hit = conn.execute(
            "SELECT message, sequence FROM fifo_dedup WHERE state = ? AND key = ? AND until > ?",
            (state_id, dedup, now),
        ).fetchone()
        if hit is not None:
            return Sent(hit[0], hit[1], False)
    sequence = state[1] = counter + 1
    conn.execute("UPDATE fifo_state SET counter = ? WHERE id = ?", (sequence, state_id))
    if dedup is not None:
        conn.execute(
            "INSERT INTO fifo_dedup (state, key, message, sequence, until) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (state, key) DO UPDATE SET message = excluded.message,"
            " sequence = excluded.sequence, until = excluded.until",
            (state_id, dedup, message, sequence, dedup_until),
        )
    qid = s.ensure_qid(account, queue)
    s.make_fifo(qid)
    row = (s.next(), message, body, expires, hidden_until, meta, 0, 0.0, group, sequence)
    s.insert(qid, row, s.hiding(hidden_until, now), now)
    return Sent(message, sequence, True)


def move_message(
    s: Store,
    account: str,
    queue: str,
    message: str,
    to_account: str,
    to_queue: str,
    expires: float,
    now: float,
    meta: bytes | None,
    receives: int | None,
    expect_receives: int | None,
) -> Message | None:
    """Delete and insert in one transaction, so the move is atomic."""
    qid = s.qid(account, queue)
    if qid is None:
        return None
    old = s.row(qid, message)
    if old is None or _expired(old[3], now) or (expect_receives is not None and old[6] != expect_receives):
        return None
    s.remove(qid, old, now)
    to = s.ensure_qid(to_account, to_queue)
    first = old[7] if receives else 0.0
    receives = receives or 0
    row = (
        s.next(),
        old[1],
        old[2],
        expires,
        0.0,
        old[5] if meta is None else meta,
        receives,
        first,
        old[8],
        old[9],
    )
    s.insert(to, row, 0, now)
    return _message(row)


def count(s: Store, account: str, queue: str, now: float) -> Counts:
    """Index range counts: the queue's size (cached, see ``Store.sizes``) less its expired
    and its hidden messages, the latter split by ``receives`` from ``messages_hidden``."""
    qid = s.qid(account, queue)
    if qid is None:
        return Counts()
    conn = s.conn
    size = s.sizes.get(qid)
    if size is None:
        size = s.sizes[qid] = int(
            conn.execute("SELECT count(*) FROM messages WHERE qid = ?", (qid,)).fetchone()[0]
        )
    expired = conn.execute(
        "SELECT count(*) FROM messages INDEXED BY messages_expiry"
        " WHERE expires > 0 AND expires <= ? AND qid = ?",
        (now, qid),
    ).fetchone()[0]
    in_flight, delayed = conn.execute(
        "SELECT count(*) FILTER (WHERE receives > 0), count(*) FILTER (WHERE receives = 0)"
        " FROM messages INDEXED BY messages_hidden"
        f" WHERE qid = ? AND hidden = 1 AND hidden_until > ? AND {_NOT_EXPIRED}",
        (qid, now, now),
    ).fetchone()
    return Counts(size - expired - in_flight - delayed, in_flight, delayed)


# -- queue metadata ----------------------------------------------------------------------


def get_queue_meta(s: Store, account: str, queue: str) -> bytes | None:
    row = s.conn.execute(
        "SELECT meta FROM queue_meta WHERE account = ? AND queue = ?", (account, queue)
    ).fetchone()
    return None if row is None else bytes(row[0])


def set_queue_meta(s: Store, account: str, queue: str, meta: bytes | None) -> None:
    if meta is None:
        s.conn.execute("DELETE FROM queue_meta WHERE account = ? AND queue = ?", (account, queue))
        # The FIFO state goes with it; its dedup records are dead at once (their state id
        # is never reused) and the cleaner drops them at their ``until``.
        s.conn.execute("DELETE FROM fifo_state WHERE account = ? AND queue = ?", (account, queue))
        s.fifo_states.pop((account, queue), None)
    else:
        s.conn.execute(
            "INSERT INTO queue_meta (account, queue, meta) VALUES (?, ?, ?)"
            " ON CONFLICT (account, queue) DO UPDATE SET meta = excluded.meta",
            (account, queue, meta),
        )


def swap_queue_meta(s: Store, account: str, queue: str, expect: bytes | None, meta: bytes | None) -> bool:
    if get_queue_meta(s, account, queue) != expect:
        return False
    set_queue_meta(s, account, queue, meta)
    return True


def list_queue_meta(s: Store, account: str) -> list[tuple[str, bytes]]:
    rows = s.conn.execute("SELECT queue, meta FROM queue_meta WHERE account = ? ORDER BY seq", (account,))
    return [(q, bytes(m)) for q, m in rows]


# -- budgets and quotas ----------------------------------------------------------------


def used_bytes(s: Store) -> int:
    """What ``--max-disk`` counts: the database's pages in use (its size less its free list),
    uncommitted changes of this transaction included."""
    conn = s.conn
    pages = (
        conn.execute("PRAGMA page_count").fetchone()[0] - conn.execute("PRAGMA freelist_count").fetchone()[0]
    )
    return int(pages) * int(conn.execute("PRAGMA page_size").fetchone()[0])


class OverBudget:
    """What a budgeted write returns instead of writing: the bytes in use then. A result, not
    an exception, so the batch around it commits without a replay."""

    __slots__ = ("used",)

    def __init__(self, used: int) -> None:
        self.used = used


def put_within(s: Store, max_bytes: int, needed: int, *args: Any) -> bool | OverBudget:
    """:func:`put_message` unless the database's used bytes plus ``needed`` pass ``max_bytes``."""
    used = used_bytes(s)
    if used + needed > max_bytes:
        return OverBudget(used)
    return put_message(s, *args)


def send_within(s: Store, max_bytes: int, needed: int, *args: Any) -> Sent | OverBudget:
    """:func:`send_message` unless the database's used bytes plus ``needed`` pass ``max_bytes``."""
    used = used_bytes(s)
    if used + needed > max_bytes:
        return OverBudget(used)
    return send_message(s, *args)


def meta_within(s: Store, max_bytes: int, swap: bool, *args: Any) -> bool | OverBudget | None:
    """:func:`set_queue_meta` (``swap``: :func:`swap_queue_meta`) unless the database is at
    ``max_bytes``; metadata that is removed always passes."""
    if args[-1] is not None:
        used = used_bytes(s)
        if used + len(args[-1]) > max_bytes:
            return OverBudget(used)
    if swap:
        return swap_queue_meta(s, *args)
    set_queue_meta(s, *args)
    return None


def usage(s: Store, account: str, with_bytes: bool) -> tuple[list[str], int, int]:
    """An account's queue names (with messages or metadata), messages and, with ``with_bytes``,
    their body bytes: one index range per queue (bodies are not read: ``length`` of a blob
    reads its size from the row header)."""
    conn = s.conn
    names = [
        row[0]
        for row in conn.execute(
            "SELECT q.name FROM queues q JOIN accounts a ON a.seq = q.account WHERE a.name = ?"
            " UNION SELECT queue FROM queue_meta WHERE account = ?",
            (account, account),
        )
    ]
    column = "total(length(m.body))" if with_bytes else "0"
    messages, size = conn.execute(
        f"SELECT count(*), {column} FROM queues q JOIN accounts a ON a.seq = q.account"
        " JOIN messages m ON m.qid = q.seq WHERE a.name = ?",
        (account,),
    ).fetchone()
    return names, int(messages), int(size)


# -- housekeeping ------------------------------------------------------------------------


def clean_step(s: Store, now: float) -> bool:
    """One bounded cleaner step (see :func:`clean_counted`); returns whether there is more to do."""
    return clean_counted(s, now)[0]


def clean_counted(s: Store, now: float) -> tuple[bool, int]:
    """One bounded cleaner step: purge, expire, unhide, drop spent dedup records. Returns
    whether there is more to do, and how many messages it deleted because they expired."""
    conn = s.conn
    more = False
    qid = conn.execute("SELECT min(qid) FROM doomed").fetchone()[0]
    if qid is not None:
        cursor = conn.execute(
            "DELETE FROM messages WHERE qid = ? AND seq IN (SELECT seq FROM messages WHERE qid = ? LIMIT ?)",
            (qid, qid, CLEAN_CHUNK),
        )
        groups = conn.execute(
            "DELETE FROM fifo_groups WHERE qid = ?"
            " AND grp IN (SELECT grp FROM fifo_groups WHERE qid = ? LIMIT ?)",
            (qid, qid, CLEAN_CHUNK),
        )
        if cursor.rowcount < CLEAN_CHUNK and groups.rowcount < CLEAN_CHUNK:
            conn.execute("DELETE FROM doomed WHERE qid = ?", (qid,))
        more = True
    expired: list[tuple[int, int]] = conn.execute(
        "SELECT qid, seq FROM messages INDEXED BY messages_expiry WHERE expires > 0 AND expires <= ? LIMIT ?",
        (now, CLEAN_CHUNK),
    ).fetchall()
    if expired:
        conn.executemany("DELETE FROM messages WHERE qid = ? AND seq = ?", expired)
        per_queue: dict[int, int] = {}
        for qid, _ in expired:
            per_queue[qid] = per_queue.get(qid, 0) + 1
        for qid, n in per_queue.items():
            s.resize(qid, -n)
            s.drop_queue_if_empty(qid)
        more = more or len(expired) == CLEAN_CHUNK
    unhidden = conn.execute(
        "SELECT qid, seq FROM messages INDEXED BY messages_hides"
        " WHERE hidden = 1 AND hidden_until > 0 AND hidden_until <= ? LIMIT ?",
        (now, CLEAN_CHUNK),
    ).fetchall()
    if unhidden:
        conn.executemany("UPDATE messages SET hidden = 0 WHERE qid = ? AND seq = ?", unhidden)
        more = more or len(unhidden) == CLEAN_CHUNK
    spent = conn.execute(
        "SELECT state, key FROM fifo_dedup INDEXED BY fifo_dedup_until WHERE until <= ? LIMIT ?",
        (now, CLEAN_CHUNK),
    ).fetchall()
    if spent:
        conn.executemany("DELETE FROM fifo_dedup WHERE state = ? AND key = ?", spent)
        more = more or len(spent) == CLEAN_CHUNK
    if not more:
        s.find_next_unhide()
    return more, len(expired)


#: Where a ``woken_step`` scan goes on: (hidden flag, hidden_until, qid, seq).
WokenCursor = tuple[int, float, int, int]


def woken_step(
    s: Store, since: float, now: float, at: WokenCursor | None
) -> tuple[list[tuple[str, str]], WokenCursor | None]:
    """One bounded step of the queues whose hide ran out in ``(since, now]``; the next cursor or None.

    A range of ``messages_hides``, so the answer is a function of the stored deadlines
    and the window only. The ``hidden = 1`` part is read before the ``hidden = 0`` part:
    an unhide pass (ours or another cleaner's) only moves rows from the first to the
    second, so a row moved between two steps is still read once.
    """
    flag, after, after_qid, after_seq = (1, since, _BIG, _BIG) if at is None else at
    rows = s.conn.execute(
        "SELECT hidden_until, qid, seq FROM messages INDEXED BY messages_hides"
        " WHERE hidden = ? AND hidden_until > 0 AND (hidden_until, qid, seq) > (?, ?, ?)"
        " AND hidden_until <= ?"
        " ORDER BY hidden_until, qid, seq LIMIT ?",
        (flag, after, after_qid, after_seq, now, CLEAN_CHUNK),
    ).fetchall()
    woken: list[tuple[str, str]] = []
    for qid in dict.fromkeys(r[1] for r in rows):
        names = s.conn.execute(
            "SELECT a.name, q.name FROM queues q JOIN accounts a ON a.seq = q.account WHERE q.seq = ?",
            (qid,),
        ).fetchone()
        if names is not None:
            woken.append((names[0], names[1]))
    if len(rows) == CLEAN_CHUNK:
        last = rows[-1]
        return woken, (flag, last[0], last[1], last[2])
    return woken, ((0, since, _BIG, _BIG) if flag else None)


def fetch_all(s: Store, sql: str) -> list[tuple[Any, ...]]:
    return s.conn.execute(sql).fetchall()


def count_messages(s: Store) -> int:
    row = s.conn.execute("SELECT count(*) FROM messages WHERE qid IN (SELECT seq FROM queues)").fetchone()
    return int(row[0])
