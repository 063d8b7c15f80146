"""The durable SQLite backend: WAL, group commit, a sync thread.

Modules: ``schema`` (tables, indexes, constants), ``store`` (the operations),
``writer`` (transactions, syncs and checkpoints, and the durability reasoning),
``reserve`` (the disk space held for a full disk), ``backend`` (the storage contract on
the event loop).

Threading. Every method becomes a small function queued for the current event-loop
iteration; at the iteration's end the whole list runs in one transaction on the loop's
own thread (a COMMIT with ``synchronous=NORMAL`` only hands pages to the kernel), and
reads and writes go through that one connection (which keeps ``:memory:`` working). What
waits for the disk, ``fdatasync`` of the WAL and checkpoints, runs on one sync thread;
results that must wait for a sync are delivered from there with one
``loop.call_soon_threadsafe`` per sync. Creates that arrive while a sync runs share the
next one: that is the group commit. If an operation fails mid-batch, the transaction is
rolled back and the batch replayed with a SAVEPOINT around each write, so only the
failing one fails.

Durability (``Settings.fsync``, promises in docs/operations.md): ``batch`` acknowledges
a create after the sync that follows its commit and a take, hide or delete at its
commit, with its sync within ``Settings.fsync_interval``; ``always`` commits every write
on its own and acknowledges it after its sync; ``never`` never syncs (survives a process
crash, not a power cut). A failed commit rolls the transaction back and fails every
request of the batch with :class:`StorageUnavailable`; a failed sync fails the requests
waiting for it. Nothing is acknowledged with less than its mode promises.

Full disk (``reserve``, docs/operations.md "Full disk"). A preallocated file beside the
database is given up when a commit or checkpoint finds no space, so that deletes and expiry
can still commit; the database is then pinned at its size (new messages fill only the pages
deletes freed; others get 507) until the disk has room for the reserve again.

Cost. The server is CPU-bound, so requests, statements and thread hand-offs are kept
few: see ``store`` for the statements and ``writer`` for the hand-offs.

Times are stored as the absolute seconds the service passes in, so a restart keeps
the right remaining ``ttl``/``hide``. Schema and index rationale: see ``schema.SCHEMA``.

Schema versions. The file records its schema version (``PRAGMA user_version``); opening
an older file migrates it in place, in one transaction (``schema.install``: added
columns take the defaults that mean "never claimed, no group", new tables and indexes
are built), so an existing user's file keeps working; a file from a newer Burrow is
refused.
"""

from burrow.backends.sqlite.backend import SQLiteBackend
from burrow.backends.sqlite.schema import CLEAN_CHUNK, SCHEMA, SCHEMA_VERSION, install, statements

__all__ = ["CLEAN_CHUNK", "SCHEMA", "SCHEMA_VERSION", "SQLiteBackend", "install", "statements"]
