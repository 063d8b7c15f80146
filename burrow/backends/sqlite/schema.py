"""The SQLite schema, its version and migration, and the batching constants.

Schema and index rationale are in the comment above ``SCHEMA``; every request query is an
index search (``tests/test_sqlite.py`` checks the plans).
"""

from __future__ import annotations

import sqlite3

SCHEMA_VERSION = 2

#: Accounts, queues and messages are ordered by a ``seq`` taken at first insertion.
#: Accounts and queues are small tables that exist exactly while they hold messages
#: (rows are removed with their last message; a re-created one gets a larger seq and
#: goes last), which keeps every listing a seek on an index instead of a min(seq) scan.
#:
#: Messages are clustered by (qid, seq): a queue's messages lie together in FIFO order,
#: so paging from a marker is a seek on the primary key. ``seq`` comes from a counter
#: owned by the writer and is kept when a message is replaced.
#:
#: ``hidden`` is 1 while ``hidden_until`` may still lie ahead: it is set from the
#: write's ``now`` and cleared by the cleaner's unhide scan. Visible messages of a queue
#: are therefore the partial index ``messages_ready`` (hidden = 0) plus the few hidden
#: ones whose hide ran out since the last clean (``messages_hidden``), so the worker
#: cycle ("first visible message") is O(log n) however many messages are in flight.
#: ``messages_hidden`` also carries ``receives`` and ``expires``, so ``count`` splits the
#: hidden messages into in flight and delayed from the index alone.
#: ``messages_hides`` orders every message that was ever hidden by its deadline, flag
#: first: the unhide scan is its ``hidden = 1`` part, and the queues whose hide ran out
#: in a window (``clean``'s report) are a range of both parts, so the report depends on
#: the stored deadlines only, not on which cleaner's pass cleared the flag.
#: Messages of a deleted queue are not removed in the deleting request: the queue row
#: goes (so the queue vanishes atomically, O(1)), its qid is put in ``doomed`` and the
#: cleaner purges the messages in bounded chunks. Queue seqs are AUTOINCREMENT so a
#: doomed qid is never reused.
#:
#: FIFO (``claim(fifo=True)``). A queue that was ever sent to or claimed by group is
#: flagged (``queues.fifo``, and ``messages.fifo`` on each of its messages). Only flagged
#: messages are in ``messages_group``, so plain queues (v1.0, SQS standard) pay for it a
#: partial-index test per write and no more (one index rather than two: each test costs
#: about 2% of a put). Per group it lists the visible messages in queue order, then the
#: hidden ones with their deadlines, so "is the group blocked, until when" is a covering
#: range (``fifo`` is in it too, only so that the queries naming it are covered). A
#: flagged queue has one ``fifo_groups`` row per group holding messages:
#: ``head`` is a lower bound on the seq of its first unexpired message (claims fix it up
#: as they read), ``blocked`` is 0 open, 1 blocked until ``blocked_until``, or 2 unknown
#: (a blocking message went or its hide shortened: the next claim looks). Every write on
#: a flagged queue keeps this: a hide raises its group to 1, anything that may lower a
#: block sets 2. A claim walks ``fifo_groups_ready`` (open and unknown groups in head
#: order), so it never reads a blocked group, and reopens lapsed blocks through
#: ``fifo_groups_blocked``.
#:
#: FIFO send state lives with the queue metadata: ``fifo_state`` (the sequence counter,
#: keyed by names because the queue row comes and goes with its messages) and
#: ``fifo_dedup`` (deduplication records by state id). Removing the metadata removes the
#: state row; its records, under an id never reused, are dead at once and the cleaner
#: drops them at their ``until`` like any other (``fifo_dedup_until``, in chunks).
SCHEMA = """
CREATE TABLE IF NOT EXISTS accounts (
    seq  INTEGER PRIMARY KEY,                   -- first-insertion order
    name TEXT NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS queues (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,  -- order and the qid of its messages; never reused
    account INTEGER NOT NULL,                   -- accounts.seq
    name    TEXT NOT NULL,
    fifo    INTEGER NOT NULL DEFAULT 0,         -- 1: FIFO, it has fifo_groups rows
    UNIQUE (account, name)
);
CREATE INDEX IF NOT EXISTS queues_order ON queues (account, seq);
CREATE TABLE IF NOT EXISTS messages (
    qid            INTEGER NOT NULL,            -- queues.seq
    seq            INTEGER NOT NULL,            -- insertion order, kept on replace
    id             TEXT NOT NULL,
    body           BLOB NOT NULL,
    expires        REAL NOT NULL,               -- absolute seconds; 0 = never
    hidden_until   REAL NOT NULL,               -- absolute seconds; <= now = visible
    hidden         INTEGER NOT NULL,            -- 1 until the cleaner saw hidden_until pass
    meta           BLOB NOT NULL,               -- a front end's opaque bytes
    receives       INTEGER NOT NULL DEFAULT 0,  -- claims that took it
    first_received REAL NOT NULL DEFAULT 0,     -- when the first claim took it; 0 = never
    grp            TEXT NOT NULL DEFAULT '',    -- FIFO group
    sequence       INTEGER NOT NULL DEFAULT 0,  -- FIFO sequence number; 0 = none
    fifo           INTEGER NOT NULL DEFAULT 0,  -- 1: its queue is FIFO (so it is in messages_group)
    PRIMARY KEY (qid, seq)
) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS messages_id ON messages (qid, id);
CREATE INDEX IF NOT EXISTS messages_ready ON messages (qid, seq) WHERE hidden = 0;
CREATE INDEX IF NOT EXISTS messages_hidden ON messages (qid, hidden_until, receives, expires)
    WHERE hidden = 1;
CREATE INDEX IF NOT EXISTS messages_hides ON messages (hidden, hidden_until) WHERE hidden_until > 0;
CREATE INDEX IF NOT EXISTS messages_expiry ON messages (expires) WHERE expires > 0;
CREATE INDEX IF NOT EXISTS messages_group ON messages (qid, grp, hidden, seq, hidden_until, expires, fifo)
    WHERE fifo = 1;
CREATE TABLE IF NOT EXISTS doomed (
    qid INTEGER PRIMARY KEY                     -- a deleted queue whose messages await purging
);
CREATE TABLE IF NOT EXISTS fifo_groups (
    qid           INTEGER NOT NULL,             -- queues.seq
    grp           TEXT NOT NULL,
    head          INTEGER NOT NULL,             -- <= seq of the group's first unexpired message
    blocked       INTEGER NOT NULL,             -- 0 open, 1 until blocked_until, 2 unknown
    blocked_until REAL NOT NULL,
    PRIMARY KEY (qid, grp)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS fifo_groups_ready ON fifo_groups (qid, head) WHERE blocked <> 1;
CREATE INDEX IF NOT EXISTS fifo_groups_blocked ON fifo_groups (qid, blocked_until) WHERE blocked = 1;
CREATE TABLE IF NOT EXISTS queue_meta (
    seq     INTEGER PRIMARY KEY,                -- creation order (kept on replace)
    account TEXT NOT NULL,
    queue   TEXT NOT NULL,
    meta    BLOB NOT NULL,
    UNIQUE (account, queue)
);
CREATE INDEX IF NOT EXISTS queue_meta_order ON queue_meta (account, seq);
CREATE TABLE IF NOT EXISTS fifo_state (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: a dropped state's records are dead
    account TEXT NOT NULL,
    queue   TEXT NOT NULL,
    counter INTEGER NOT NULL,                   -- the last sequence number given out
    UNIQUE (account, queue)
);
CREATE TABLE IF NOT EXISTS fifo_dedup (
    state    INTEGER NOT NULL,                  -- fifo_state.id
    key      TEXT NOT NULL,
    message  TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    until    REAL NOT NULL,                     -- the record counts while until > now
    PRIMARY KEY (state, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS fifo_dedup_until ON fifo_dedup (until);
"""

#: Version 1 -> 2, run before ``SCHEMA`` (which then creates the new tables and indexes):
#: the per-message columns with their "never claimed, no group" defaults, the queue flag,
#: and the two v1 indexes on hidden messages that v2 replaces.
MIGRATE_1_TO_2 = """
ALTER TABLE messages ADD COLUMN receives INTEGER NOT NULL DEFAULT 0;
ALTER TABLE messages ADD COLUMN first_received REAL NOT NULL DEFAULT 0;
ALTER TABLE messages ADD COLUMN grp TEXT NOT NULL DEFAULT '';
ALTER TABLE messages ADD COLUMN sequence INTEGER NOT NULL DEFAULT 0;
ALTER TABLE messages ADD COLUMN fifo INTEGER NOT NULL DEFAULT 0;
ALTER TABLE queues ADD COLUMN fifo INTEGER NOT NULL DEFAULT 0;
DROP INDEX IF EXISTS messages_due;
DROP INDEX IF EXISTS messages_unhide;
"""

#: Scripts that bring a database of the key's version to the next one.
MIGRATIONS = {1: MIGRATE_1_TO_2}

#: Most requests run in one transaction (bounds latency of the batch's first request).
MAX_BATCH = 512
#: Rows the cleaner expires, unhides or purges per step; other requests run in between.
CLEAN_CHUNK = 2000
#: SQLite page cache per connection (negative = KiB).
CACHE_KIB = 65536


def statements(script: str) -> list[str]:
    """Split a script into statements (unlike executescript, this stays inside our transaction)."""
    out: list[str] = []
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            out.append(pending)
            pending = ""
    return out


def install(conn: sqlite3.Connection, path: str = "") -> int:
    """Create the schema, or migrate an older one in place, in one transaction.

    An existing user's file keeps working across upgrades; a file from a newer Burrow is
    refused rather than guessed at. Returns the version found (0 = a new database).
    """
    found = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if found > SCHEMA_VERSION or (found and found not in MIGRATIONS and found != SCHEMA_VERSION):
        raise RuntimeError(
            f"{path or 'the database'} has schema version {found}; this Burrow knows {SCHEMA_VERSION}"
        )
    conn.execute("BEGIN")
    try:
        version = found
        while version and version < SCHEMA_VERSION:
            for statement in statements(MIGRATIONS[version]):
                conn.execute(statement)
            version += 1
        for statement in statements(SCHEMA):
            conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return found
