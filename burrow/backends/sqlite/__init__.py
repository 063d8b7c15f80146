"""The durable SQLite backend: one writer thread, group commit, WAL.

Modules: ``schema`` (tables, indexes, constants), ``store`` (the operations, run on
the writer thread), ``writer`` (the thread and its transactions), ``backend`` (the
storage contract on the event loop).

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

Cost. The server is CPU-bound and the writer shares the GIL with the event loop (every
statement releases and retakes it), so requests and statements are kept few and cheap:
see ``store`` for the statements and ``writer`` for the hand-offs.

Times are stored as the absolute seconds the service passes in, so a restart keeps
the right remaining ``ttl``/``hide``. Schema and index rationale: see ``schema.SCHEMA``.
"""

from burrow.backends.sqlite.backend import SQLiteBackend
from burrow.backends.sqlite.schema import CLEAN_CHUNK, SCHEMA, statements

__all__ = ["CLEAN_CHUNK", "SCHEMA", "SQLiteBackend", "statements"]
