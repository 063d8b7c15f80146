"""The SQLite schema, its version, and the durability and batching constants.

Schema and index rationale are in the comment above ``SCHEMA``; every request query is an
index search (``tests/test_sqlite.py`` checks the plans).
"""

from __future__ import annotations

import sqlite3

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
