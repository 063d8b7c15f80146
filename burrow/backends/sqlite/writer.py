"""Transactions on the event loop's thread; syncs and checkpoints on one sync thread.

Where the work runs. The statements run on the event loop's thread, one transaction per
loop iteration's batch of requests (``Writer.run_batch``): with ``synchronous=NORMAL``
(or ``OFF``) a COMMIT in WAL mode appends frames to the ``-wal`` file in the OS page
cache and does not wait for the disk, so it costs what the statements cost. That saves
what handing each batch to a thread cost (two thread wake-ups, a self-pipe write and GIL
hand-offs per batch, which at low concurrency is per request).
What waits for the disk runs on the sync thread (``Writer.run``): ``fdatasync`` of the
WAL, and checkpoints. The loop hands it one item per batch whose results wait for a sync;
takes and deletes acknowledged before their sync are watched by a loop timer and cost the
thread nothing unless their deadline passes unsynced. Results come back with one
``call_soon_threadsafe`` per sync.

One connection, ``locking_mode=EXCLUSIVE``: no file lock is taken or released per
transaction (in shared mode, a fifth of the system calls at one producer and one
consumer) and the WAL index lives in memory. The connection is used by the loop for
batches and by the sync thread for checkpoints, never at once: each holds
``Writer.lock``, and the loop only tries it (a batch that finds it taken waits in
``parked`` until the checkpoint ends). So no other process can open the file while
Burrow runs (a second server on it fails to start with "database is locked"), which the
store's in-memory counters need anyway.

Durability. A COMMIT survives the death of the process as soon as it returns (the frames
are in the kernel), but not a power cut until the WAL is synced. Per ``--fsync`` mode:

``batch`` (default)
    A batch's writes are committed together. Creates (and every write that is not a take,
    hide or delete, see ``_RELAXED``) are acknowledged only after an ``fdatasync`` of the
    WAL that began after their COMMIT: every create that arrives while a sync runs shares
    the next one (group commit). Takes, hides, deletes and the cleaner's steps are
    acknowledged at COMMIT, and a sync begins within ``fsync_interval`` seconds (sooner
    when a create's sync comes first). Losing one of those to a power cut makes a message
    visible again or brings a deleted one back, which at-least-once delivery allows.
    ``fsync_interval = 0`` makes them wait for their sync too.
``always``
    Every write is committed in its own transaction and acknowledged only after a sync
    that began after its COMMIT (one sync may cover several commits).
``never``
    No syncs (``synchronous=OFF``); acknowledged at COMMIT. Survives a process crash,
    not a power cut.

Why a sync of the WAL after a COMMIT makes that commit, and every earlier one, survive
a power cut (the reasoning the modes rely on; SQLite 3.40, WAL mode):

1. A commit is a run of frames appended to the WAL after the previous commit's frames,
   ending in a commit frame; each frame carries the WAL's salt and a checksum chained
   over every frame before it. Recovery replays frames from the start while salt and
   chain match and keeps the transactions up to the last valid commit frame, so what
   survives is always a prefix of the commits in order: a later commit never survives
   without every earlier one.
2. ``fdatasync(fd)`` on any descriptor of the file writes back every page of the file
   written before the call, and the file size. A commit counted in ``commits`` has
   returned from COMMIT, so its frames were written before the sync thread read the
   counter and then called ``fdatasync``: after the sync they are on disk, and by (1)
   so is every earlier commit still in the WAL.
3. Frames leave the WAL only through a checkpoint, which (synchronous NORMAL) syncs the
   WAL, copies the frames into the database file and syncs it before it records them as
   copied; the WAL is only rewritten from its start (a restart, with a new salt and a
   synced header) once everything in it was copied. So a commit whose frames a restart
   overwrote was already durable in the database file: a sync racing a restart loses
   nothing. (Checkpoints run on the sync thread with the connection's lock; the restart
   is made there too, by a one-page write, so its header sync never stops the loop.)
4. The directory is synced once the WAL exists, so the ``-wal`` file's entry survives.
   If the connection had to be reopened (a new WAL file), the descriptor no longer names
   the WAL (``st_nlink == 0``) and the sync is done by a full checkpoint instead.

A failed sync fails the requests waiting on it (503: the change was committed and may
or may not be on disk) and later syncs are done by a full checkpoint until one succeeds:
after an ``fdatasync`` error Linux may drop the failed pages' dirty state, so only
writing the committed pages again (a checkpoint copies them into the database file and
syncs it) proves them durable. A failed COMMIT acknowledges nothing of its transaction.
A commit or checkpoint that fails for lack of space gives up the disk reserve and pins the
database at its size (``Writer.on_full``, see ``reserve``): its requests get 507, and
deletes keep committing in the room the reserve held.
A request is never acknowledged with less than its mode promises; it may get more (a
sync that came early). ``tests/test_powercut.py`` checks all this by dropping every
write not yet synced at random moments under load.

Visibility. A batch's results reach their callers as soon as it commits, or after its
sync; so a consumer may receive a message before its producer's 201 (at-least-once: if
the power fails before the sync, the producer was never acknowledged and sends again).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import queue as queue_module
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from burrow.backends.sqlite import store as store_module
from burrow.backends.sqlite.reserve import RESERVE_BYTES, ROOM_FACTOR, Reserve, is_full, mib
from burrow.backends.sqlite.schema import CACHE_KIB, MAX_BATCH, SCHEMA_VERSION, install
from burrow.backends.sqlite.store import Store
from burrow.config import Settings
from burrow.core.errors import InsufficientStorage, StorageUnavailable
from burrow.core.model import Update

log = logging.getLogger("burrow.sqlite")

#: ``--fsync`` modes and the connection's ``PRAGMA synchronous`` in each. NORMAL: commits
#: are not synced (the sync thread does that) but checkpoints and WAL restarts are.
SYNCHRONOUS = {"always": "NORMAL", "batch": "NORMAL", "never": "OFF"}
#: Default ``fsync_interval`` (defined in config): seconds within which ``batch`` mode syncs a
#: take, hide or delete it acknowledged at COMMIT.
FSYNC_INTERVAL = Settings().fsync_interval
#: Seconds between checkpoints while something is being committed.
CHECKPOINT_SECONDS = 0.25
#: Page size of a new database file: a WAL frame is a whole page, and a message's writes
#: touch about a dozen pages (the row and each index), so smaller pages write and sync
#: about a quarter of the bytes of SQLite's default 4096 and cost less CPU per commit.
PAGE_SIZE = 1024
#: Seconds the sync thread, stopping, waits for batches still parked by a checkpoint.
STOP_SECONDS = 5.0

#: sqlite3 errors that mean a bad call, not a storage failure: passed to the caller as they are.
_MISUSE = (sqlite3.ProgrammingError, sqlite3.InterfaceError)

#: One request: the operation, its arguments after the store, the caller's future, and
#: whether it writes. A plain tuple and a module-level function rather than a closure per
#: request: the hot path allocates as little as possible.
Op = tuple[Callable[..., Any], tuple[Any, ...], "asyncio.Future[Any]", bool]
#: Results of one batch that wait for a sync: (commit number, loop, operations, results).
_Waiting = tuple[int, asyncio.AbstractEventLoop, list[Op], list[Any]]
STOP = object()

#: Writes ``batch`` mode acknowledges at COMMIT: takes, hides and deletes (and the
#: cleaner), whose loss in a power cut makes a message visible again or brings a deleted
#: one back. An update that changes a ``ttl`` is not among them (its loss would change
#: when a message expires). Looked up by name, so operations added to ``store`` later are
#: synced before their acknowledgement unless listed here.
_RELAXED_NAMES = (
    "update_messages",
    "update_message",
    "delete_messages",
    "delete_message",
    "delete_queues",
    "delete_accounts",
    "clean_step",
    "clean_counted",
    "claim",
)
_RELAXED: frozenset[Callable[..., Any]] = frozenset(
    fn for fn in (getattr(store_module, name, None) for name in _RELAXED_NAMES) if fn is not None
)


def relaxed(op: Op) -> bool:
    """Whether ``batch`` mode may acknowledge this write at COMMIT (see ``_RELAXED``)."""
    if op[0] not in _RELAXED:
        return False
    return not any(type(arg) is Update and arg.expires is not None for arg in op[1])


class _Failed:
    """An operation's result slot when it raised: the error its caller gets."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


def _settle(ops: list[Op], results: list[Any]) -> None:
    """On the event loop: deliver results (one call per batch, not per request)."""
    for op, result in zip(ops, results, strict=True):
        fut = op[2]
        if fut.done():
            continue  # the caller went away (cancelled)
        if type(result) is _Failed:
            fut.set_exception(result.error)
        else:
            fut.set_result(result)


#: ``Writer._attempt``'s operations to leave out on the fast path: none (never written to).
_NO_DROPS: dict[int, _Failed] = {}


def _unavailable(error: BaseException) -> StorageUnavailable:
    if is_full(error):
        return InsufficientStorage(
            f"insufficient storage: the disk is full and the change was not stored ({error});"
            " deletes and expiry still work and make room"
        )
    return StorageUnavailable(f"storage unavailable: the change was not committed ({error})")


def _not_synced(error: BaseException) -> StorageUnavailable:
    return StorageUnavailable(f"storage unavailable: the change may not be on disk ({error})")


def _name_thread(name: str) -> None:
    """Show the thread under its name in ``top -H`` and ``/proc/PID/task/*/comm``."""
    with contextlib.suppress(OSError):
        Path(f"/proc/self/task/{threading.get_native_id()}/comm").write_text(name[:15])


class Writer(threading.Thread):
    """Runs batches in transactions (on the loop's thread) and syncs them (on this thread)."""

    def __init__(
        self,
        path: str,
        fsync: str,
        fsync_interval: float = FSYNC_INTERVAL,
        reserve_bytes: int = RESERVE_BYTES,
    ) -> None:
        super().__init__(name="burrow-sqlite-sync", daemon=True)
        if fsync not in SYNCHRONOUS:
            raise ValueError(f"fsync must be always, batch or never, got {fsync!r}")
        if fsync_interval < 0:
            raise ValueError(f"fsync_interval must be >= 0, got {fsync_interval}")
        self.path = path
        self.fsync = fsync
        self.synchronous = SYNCHRONOUS[fsync]
        self.fsync_interval = fsync_interval
        self.writes_per_commit = 1 if fsync == "always" else MAX_BATCH
        #: Whether anything is ever synced (not in ``never`` mode, nor for ``:memory:``).
        self.syncs = fsync != "never" and path != ":memory:"
        #: Whether every write waits for its sync (``always``, or ``batch`` with interval 0).
        self.sync_all = fsync == "always" or fsync_interval == 0
        #: Items for the sync thread: _Waiting; (commit number, 0.0), a deferred commit's
        #: deadline passed unsynced: sync now; or STOP.
        self.requests: queue_module.SimpleQueue[Any] = queue_module.SimpleQueue()
        self.store: Store | None = None
        #: Held by whoever uses the connection: the loop for a batch (it never waits for it:
        #: a batch that finds it taken waits in ``parked``), the sync thread for a checkpoint.
        self.lock = threading.Lock()
        self.parked: list[tuple[asyncio.AbstractEventLoop, list[Op]]] = []
        self.loop: asyncio.AbstractEventLoop | None = None
        #: Write transactions committed so far; the number of the last one.
        self.commits = 0
        #: Metrics hook: after each committed write transaction, (operations, seconds BEGIN..COMMIT).
        self.on_commit: Callable[[int, float], None] | None = None
        #: Every commit up to this number is on disk (written by the sync thread).
        self.synced = 0
        #: Syncs and checkpoints done (diagnostics and tests).
        self.syncs_done = 0
        self.checkpoints = 0
        #: On the loop: (commit number, loop time) of relaxed commits that may not be synced
        #: yet, oldest first, and whether a timer watches the oldest one's deadline.
        self.unsynced: collections.deque[tuple[int, float]] = collections.deque()
        self.timer_armed = False
        #: Test seams for disk faults: called right before each COMMIT of a write / each
        #: sync; if one raises, that commit or sync is treated exactly like a failed one.
        self.before_commit: Callable[[], None] | None = None
        self.before_sync: Callable[[], None] | None = None
        self.ready: threading.Event = threading.Event()
        self.open_error: BaseException | None = None
        self._wal_fd = -1
        #: A sync failed: prove durability with a full checkpoint before trusting fdatasync again.
        self._broken = False
        #: Room held for a full disk (see ``reserve``); none for ``:memory:``. Made, released
        #: and made again with ``lock`` held, like every use of the connection.
        self.reserve = Reserve(path + ".reserve", 0 if path == ":memory:" else reserve_bytes)
        #: The database may not grow (``max_page_count`` is its size): the reserve is not held.
        self.pinned = False
        #: SQLite's own ``max_page_count``, restored when the pin is lifted.
        self._max_pages = 0
        #: Set by the last transaction attempt: something in it failed for lack of space; its
        #: COMMIT did (the log could not grow).
        self._full = False
        self._commit_full = False

    # -- the connection -----------------------------------------------------------
    def connect(self) -> Store:
        """Open the connection, with the schema installed (on either thread, lock held)."""
        conn = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, cached_statements=256
        )
        try:
            conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")  # takes effect for a new file only
            conn.execute("PRAGMA locking_mode = EXCLUSIVE")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute(f"PRAGMA synchronous = {self.synchronous}")
            conn.execute("PRAGMA wal_autocheckpoint = 0")
            conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
            conn.execute("PRAGMA temp_store = MEMORY")
            if self.reserve.size:  # a restarted log is cut back to this (see _wal_outgrew_reserve)
                conn.execute(f"PRAGMA journal_size_limit = {self.reserve.size // 2}")
            install(conn, self.path)  # a write: the WAL file exists after it
            if not self._max_pages:
                self._max_pages = int(conn.execute("PRAGMA max_page_count").fetchone()[0])
            if self.pinned:
                self._pin(conn)
            return Store(conn)
        except BaseException:
            conn.close()
            raise

    def _open_wal(self) -> None:
        """A descriptor of the WAL to sync, and the directory synced so the file's entry lasts."""
        if self._wal_fd >= 0:
            os.close(self._wal_fd)
            self._wal_fd = -1
        self._wal_fd = os.open(self.path + "-wal", os.O_RDONLY | os.O_CLOEXEC)
        directory = os.open(os.path.dirname(os.path.abspath(self.path)), os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    def _wal_gone(self) -> bool:
        """The WAL our descriptor names was removed (the connection was reopened)."""
        return os.fstat(self._wal_fd).st_nlink == 0

    def _close(self) -> None:
        if self.store is not None:
            self.store.conn.close()  # SQLite checkpoints (with syncs) and removes the WAL
            self.store = None
        if self._wal_fd >= 0:
            os.close(self._wal_fd)
            self._wal_fd = -1
        self.reserve.release()  # a stopped server holds no space; the next start makes it again

    # -- a full disk (see ``reserve``) ------------------------------------------------
    def on_full(self, conn: sqlite3.Connection | None) -> bool:
        """A write or checkpoint failed for lack of space (lock held): give up the reserve and
        pin the database at its size. Returns whether that made room (the reserve was held),
        so the caller may try once more.

        Pinned, a write that needs a new page fails at once with SQLITE_FULL (507) while
        deletes, expiry and checkpoints use the room the reserve held, and new messages
        fill only what they freed inside the file.
        """
        if not self.reserve.size:
            return False
        made_room = self.reserve.release()
        if not self.pinned:
            self.pinned = True
            log.warning(
                "sqlite: the disk is full; released the %s reserve %s. New messages now only"
                " fill space that deletes and expiry free inside the database (others get 507);"
                " the database grows again once the disk has %s free",
                mib(self.reserve.size),
                self.reserve.path,
                mib(ROOM_FACTOR * self.reserve.size),
            )
        if conn is not None:
            try:
                self._pin(conn)
            except sqlite3.Error as error:
                log.error("sqlite: cannot pin the database size: %s", error)
        return made_room

    def _wal_outgrew_reserve(self) -> bool:
        """Whether the log file holds more than half the reserve: then it is checkpointed at
        once rather than at the next tick.

        A checkpoint grows the database by the new pages the log holds, at most the log's
        size; kept under half the reserve (``journal_size_limit`` cuts a restarted log back
        to it), the reserve covers that growth on a full disk and leaves as much for deletes.
        """
        if not self.reserve.size:
            return False
        try:
            fd = self._wal_fd
            size = os.fstat(fd).st_size if fd >= 0 else os.stat(self.path + "-wal").st_size
        except OSError:
            return False
        return size > self.reserve.size // 2

    def _start_reserve(self) -> None:
        """At start (lock held): make the reserve, or start pinned if the disk has no room for it."""
        if not self.reserve.size or self.reserve.make():
            return
        self.pinned = True
        log.warning(
            "sqlite: no room for the %s reserve %s; the database will not grow (new messages"
            " only fill space freed inside it) until the disk has %s free",
            mib(self.reserve.size),
            self.reserve.path,
            mib(ROOM_FACTOR * self.reserve.size),
        )

    @staticmethod
    def _pin(conn: sqlite3.Connection) -> None:
        """No new pages: ``max_page_count`` at the current size (SQLite never sets it lower)."""
        pages = int(conn.execute("PRAGMA page_count").fetchone()[0])
        conn.execute(f"PRAGMA max_page_count = {pages}")

    def _unpin_if_room(self) -> None:
        """On the sync thread: once the disk has room, make the reserve again and lift the pin."""
        if not self.reserve.room():
            return
        try:
            with self.lock:
                if not self.pinned or not self.reserve.make():
                    return
                store = self.store
                if store is not None:
                    store.conn.execute(f"PRAGMA max_page_count = {self._max_pages}")
                self.pinned = False
        except sqlite3.Error as error:
            log.error("sqlite: cannot lift the database size pin: %s", error)
            return
        finally:
            self._unpark_later()
        log.info("sqlite: the disk has room again; the reserve %s is back", self.reserve.path)

    # -- the loop's side ----------------------------------------------------------
    def run_batch(self, loop: asyncio.AbstractEventLoop, ops: list[Op]) -> None:
        """On the event loop: run one iteration's operations and deliver what need not wait.

        Results that wait for a sync are handed to the sync thread, which delivers them.
        While the sync thread checkpoints, the batch waits in ``parked`` (the loop never
        blocks on the lock) and runs when the checkpoint ends (``unpark``).
        """
        self.loop = loop
        if self.parked or not self.lock.acquire(blocking=False):
            self.parked.append((loop, ops))
            return
        try:
            self._run(loop, ops)
        finally:
            self.lock.release()

    def unpark(self) -> None:
        """On the event loop, after a checkpoint: run the batches that waited for it, in order."""
        if not self.parked or not self.lock.acquire(blocking=False):
            return  # nothing waits, or another checkpoint began: its end calls this again
        try:
            batches = list(self.parked)
            for loop, ops in batches:
                self._run(loop, ops)
            # Emptied only now, so the sync thread, stopping, sees parked work until it is queued.
            del self.parked[: len(batches)]
        finally:
            self.lock.release()

    def _run(self, loop: asyncio.AbstractEventLoop, ops: list[Op]) -> None:
        if self.writes_per_commit >= len(ops):
            self._deliver(loop, ops, self.transaction(ops))
            return
        group: list[Op] = []
        writes = 0
        for op in ops:
            group.append(op)
            writes += op[3]
            if writes >= self.writes_per_commit:
                self._deliver(loop, group, self.transaction(group))
                group, writes = [], 0
        if group:
            self._deliver(loop, group, self.transaction(group))

    def _deliver(self, loop: asyncio.AbstractEventLoop, ops: list[Op], results: list[Any]) -> None:
        """Settle what may be acknowledged now; queue the rest for the sync after this commit."""
        if not self.syncs:
            _settle(ops, results)
            return
        if len(ops) == 1:  # the common case at low load
            op = ops[0]
            if not op[3] or type(results[0]) is _Failed:
                _settle(ops, results)
            elif self.sync_all or not relaxed(op):
                self.requests.put((self.commits, loop, ops, results))
            else:
                _settle(ops, results)
                self._defer(loop)
            return
        wait_ops: list[Op] = []
        wait_results: list[Any] = []
        now_ops: list[Op] = []
        now_results: list[Any] = []
        deferred = False
        sync_all = self.sync_all
        for op, result in zip(ops, results, strict=True):
            if not op[3] or type(result) is _Failed:
                now_ops.append(op)
                now_results.append(result)
            elif sync_all or not relaxed(op):
                wait_ops.append(op)
                wait_results.append(result)
            else:
                now_ops.append(op)
                now_results.append(result)
                deferred = True
        if now_ops:
            _settle(now_ops, now_results)
        if wait_ops:
            self.requests.put((self.commits, loop, wait_ops, wait_results))
        elif deferred:
            self._defer(loop)

    def _defer(self, loop: asyncio.AbstractEventLoop) -> None:
        """On the loop: this commit was acknowledged unsynced; see that a sync starts in time.

        A loop timer, not the sync thread, watches the deadline: most deferred commits are
        covered by a create's sync before it passes, and waking a thread costs more than
        a timer. Only a deadline that passes unsynced sends the sync thread a request.
        """
        unsynced = self.unsynced
        unsynced.append((self.commits, loop.time()))
        if not self.timer_armed:
            self.timer_armed = True
            loop.call_at(unsynced[0][1] + self.fsync_interval, self._deadline, loop)

    def _deadline(self, loop: asyncio.AbstractEventLoop) -> None:
        unsynced = self.unsynced
        synced = self.synced
        while unsynced and unsynced[0][0] <= synced:
            unsynced.popleft()
        if not unsynced:
            self.timer_armed = False
            return
        due = unsynced[0][1] + self.fsync_interval
        if due > loop.time():
            loop.call_at(due, self._deadline, loop)
            return
        # A sync that starts after this request covers every commit so far.
        self.requests.put((self.commits, 0.0))
        unsynced.clear()
        self.timer_armed = False

    def transaction(self, group: list[Op], isolated: bool = False) -> list[Any]:
        """Run one transaction and return a result (or _Failed) per operation; every
        result is final only because COMMIT succeeded.

        The fast path runs the operations back to back. If one raises, the transaction is
        rolled back and the group replayed with a SAVEPOINT around each write, so only the
        failing operation fails (operations are pure functions of the store and their
        arguments, and nothing is delivered before COMMIT, so a replay is invisible).
        A failure for lack of space releases the reserve and pins the database
        (``on_full``); if that made room the group is replayed once, so its deletes commit
        in the room the reserve held while its new messages fail at the pin.
        """
        self._full = self._commit_full = False
        results = None if isolated else self._attempt(group, False, _NO_DROPS)
        if results is not None and not self._full:
            return results  # the common case
        dropped: dict[int, _Failed] = {}
        if results is None:
            results = self._replayed(group, dropped)
        if (dropped or self._full) and (
            self.on_full(None if self.store is None else self.store.conn) or self._restart_log()
        ):
            dropped.clear()
            results = self._replayed(group, dropped)
        return results

    def _restart_log(self) -> bool:
        """Pinned, a COMMIT found no room to extend the log: checkpoint now (lock held, on the
        loop's thread: a few milliseconds, only on a full disk) so that the log starts over
        in the space it already has; whether the transaction may be tried once more.

        The sync thread checkpoints after every commit while pinned, but batches committed
        in between can fill the log; a statement refused by the pin is not this (it is
        expected, and costs no checkpoint).
        """
        store = self.store
        if not self._commit_full or store is None:
            return False
        try:
            busy, frames, _ = store.conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
            if busy:
                return False
            if frames:
                self._restart_wal(store.conn)
        except sqlite3.Error as error:
            log.warning("sqlite: checkpoint on a full disk failed: %s", error)
            return False
        self.checkpoints += 1
        return True

    def _replayed(self, group: list[Op], dropped: dict[int, _Failed]) -> list[Any]:
        """Isolated attempts until one ends; ``self._full``: something failed for lack of space.

        SQLite may answer SQLITE_FULL by rolling the whole transaction back rather than the
        statement: that operation is then failed alone (``dropped``, by index) and the rest
        replayed, so a new message that does not fit never fails the deletes beside it.
        """
        while True:
            self._full = self._commit_full = False
            results = self._attempt(group, True, dropped)
            if results is not None:
                return results

    def _attempt(self, group: list[Op], isolated: bool, dropped: dict[int, _Failed]) -> list[Any] | None:
        """One transaction; None: replay it isolated (with ``dropped`` left out)."""
        store = self.store
        if store is None:
            try:
                store = self.store = self.connect()
            except Exception as error:
                self._full = is_full(error)
                return self.fail(group, error)
        conn = store.conn
        results: list[Any] = []
        wrote = False
        started = time.perf_counter()
        try:
            conn.execute("BEGIN")
            if not isolated:
                append = results.append
                for fn, args, _, write in group:
                    append(fn(store, *args))
                    wrote = wrote or write
            else:
                for i, (fn, args, _, write) in enumerate(group):
                    if i in dropped:
                        results.append(dropped[i])
                        continue
                    if write:
                        conn.execute("SAVEPOINT op")
                    try:
                        results.append(fn(store, *args))
                        if write:
                            conn.execute("RELEASE op")
                            wrote = True
                    except Exception as error:
                        if not conn.in_transaction:
                            if is_full(error):
                                # SQLite rolled the whole transaction back: replay without it
                                dropped[i] = _Failed(_unavailable(error))
                                self.abandon(store)
                                return None
                            raise  # fail the batch
                        if write:
                            conn.execute("ROLLBACK TO op")
                            conn.execute("RELEASE op")
                        store.forget()
                        if isinstance(error, sqlite3.Error) and not isinstance(error, _MISUSE):
                            if is_full(error):
                                self._full = True  # expected while pinned: no log line each
                            else:
                                log.error("sqlite operation failed: %s", error)
                            error = _unavailable(error)
                        results.append(_Failed(error))
        except Exception as error:
            # replay isolated unless SQLite rolled everything back for a reason other than space
            replay = not isolated and (conn.in_transaction or is_full(error))
            self.abandon(store)
            if replay:
                return None
            self._full = self._full or is_full(error)
            return self.fail(group, error)
        try:
            if wrote and self.before_commit is not None:
                self.before_commit()
            conn.execute("COMMIT")
        except Exception as error:  # the commit failed
            self.abandon(store)
            if is_full(error):
                self._full = self._commit_full = True
            return self.fail(group, error)
        if wrote:
            self.commits += 1
            if self.on_commit is not None:
                self.on_commit(len(group), time.perf_counter() - started)
        return results

    @staticmethod
    def fail(group: list[Op], error: BaseException) -> list[Any]:
        log.error("sqlite transaction failed, %d requests not acknowledged: %s", len(group), error)
        return [_Failed(_unavailable(error)) for _ in group]

    def abandon(self, store: Store) -> None:
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
                self._broken = True  # a new WAL: the next sync proves durability by a checkpoint

    # -- the sync thread ----------------------------------------------------------
    def run(self) -> None:
        _name_thread("burrow-sync")
        try:
            with self.lock:
                self._start_reserve()
                try:
                    self.store = self.connect()
                except sqlite3.Error as error:
                    if not (is_full(error) and self.on_full(None)):
                        raise
                    self.store = self.connect()  # in the room the reserve held
                if self.syncs:
                    self._open_wal()
            if self.syncs:
                self._sync()  # the schema, and whatever a crash left unsynced
        except BaseException as error:
            self.open_error = error
            with contextlib.suppress(Exception):
                self._close()
            self.ready.set()
            return
        self.ready.set()
        try:
            self._serve()
        finally:
            with self.lock:
                self._close()

    def _serve(self) -> None:
        requests = self.requests
        waiting: list[_Waiting] = []
        due = 0.0  # when a sync is due though nobody waits for it; 0 = none
        self.synced = self.commits
        checkpointed = self.commits
        next_checkpoint = time.monotonic() + CHECKPOINT_SECONDS
        stop_by = 0.0  # once STOP came: how long to wait for batches still parked
        while True:
            now = time.monotonic()
            try:
                if stop_by:
                    item = requests.get_nowait()
                else:
                    wake = min(next_checkpoint, due) if due else next_checkpoint
                    item = requests.get(timeout=max(0.0, wake - now))
            except queue_module.Empty:
                item = None
            while item is not None:
                if item is STOP:
                    stop_by = time.monotonic() + STOP_SECONDS
                elif len(item) == 4:
                    waiting.append(item)
                else:  # a deferred commit's deadline passed: sync now
                    due = now
                try:
                    item = requests.get_nowait()
                except queue_module.Empty:
                    item = None
            now = time.monotonic()
            if self.commits != checkpointed and (self.pinned or self._wal_outgrew_reserve()):
                next_checkpoint = now  # pinned: the log cannot grow, so restart it after each write
            checkpoint = now >= next_checkpoint and self.commits != checkpointed and not stop_by
            if self.syncs and (
                (waiting and waiting[-1][0] > self.synced) or (due and now >= due) or checkpoint
            ):
                # A checkpoint syncs the WAL first; syncing it here keeps that (the lock
                # held) short, and acknowledges what waits without waiting for the copy.
                try:
                    self.synced = self._sync()
                except Exception as error:
                    synced = self.synced  # batches an earlier sync covered are on disk all the same
                    failed = [item for item in waiting if item[0] > synced]
                    log.error("sqlite sync failed, %d batches not acknowledged: %s", len(failed), error)
                    self._deliver_synced(failed, _not_synced(error))
                    waiting = [item for item in waiting if item[0] <= synced]
                    due = now + 0.05  # what was acknowledged at COMMIT is synced by a retry
                    checkpoint = False
                else:
                    due = 0.0
            if waiting:
                self._deliver_synced(waiting, None)
                waiting = []
            if stop_by:
                if (self.parked or not requests.empty()) and now < stop_by:
                    time.sleep(0.001)  # the loop still runs batches that waited for a checkpoint
                    continue
                if self.syncs and self.commits > self.synced:
                    try:
                        self.synced = self._sync()
                    except Exception as error:
                        log.error("sqlite sync at close failed: %s", error)
                return
            if now >= next_checkpoint:
                next_checkpoint = now + CHECKPOINT_SECONDS
                if self.pinned:
                    self._unpin_if_room()
                if self.path == ":memory:":
                    continue
                if checkpoint or (not self.syncs and self.commits != checkpointed):
                    checkpointed = self.commits
                    self._checkpoint()

    def _deliver_synced(self, waiting: list[_Waiting], error: BaseException | None) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, tuple[list[Op], list[Any]]] = {}
        for _, loop, ops, results in waiting:
            mine = by_loop.setdefault(loop, ([], []))
            mine[0].extend(ops)
            mine[1].extend(results if error is None else [_Failed(error)] * len(ops))
        for loop, (ops, results) in by_loop.items():
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting any more
                loop.call_soon_threadsafe(_settle, ops, results)

    def _sync(self) -> int:
        """Make every commit so far durable; return the number of the last one it covers.

        See the module docstring (2, 4 and the failure rule). The WAL descriptor is checked
        after the sync: if the connection was reopened meanwhile (a new WAL), a checkpoint
        proves durability instead.
        """
        if self.before_sync is not None:
            try:
                self.before_sync()
            except BaseException:
                self._broken = True
                raise
        if self._broken or self._wal_gone():
            return self._sync_by_checkpoint()
        target = self.commits
        try:
            os.fdatasync(self._wal_fd)
        except OSError as error:
            self._broken = True
            if is_full(error):  # write-back found no space (thin provisioning, NFS)
                with self.lock:
                    self.on_full(None if self.store is None else self.store.conn)
                self._unpark_later()
            raise
        if self._wal_gone():
            return self._sync_by_checkpoint()
        self.syncs_done += 1
        return target

    def _sync_by_checkpoint(self) -> int:
        """Copy every commit into the database file and sync it (TRUNCATE checkpoint)."""
        try:
            with self.lock:
                store = self.store
                if store is None:
                    raise OSError("the database is being reopened")
                target = self.commits
                busy = self._checkpoint_with_room(store.conn, "TRUNCATE")[0]
                if busy:
                    raise OSError("a checkpoint could not complete")
                self._restart_wal(store.conn)
                self._open_wal()
        finally:
            self._unpark_later()
        self._broken = False
        self.checkpoints += 1
        return target

    def _checkpoint(self) -> None:
        """Copy committed frames into the database file and start the WAL over.

        The loop's batches wait in ``parked`` meanwhile (the copy, one sync of the database
        file and the restart's header sync: a few milliseconds every ``CHECKPOINT_SECONDS``
        while writes come). Without this the WAL would grow for as long as writes come.
        """
        try:
            with self.lock:
                store = self.store
                if store is None:
                    return
                busy, frames, _ = self._checkpoint_with_room(store.conn, "RESTART")
                if not busy and frames:
                    self._restart_wal(store.conn)
                self.checkpoints += 1
        except sqlite3.Error as error:
            log.warning("sqlite checkpoint failed (will retry): %s", error)
        finally:
            self._unpark_later()

    def _checkpoint_with_room(self, conn: sqlite3.Connection, mode: str) -> tuple[int, int, int]:
        """``PRAGMA wal_checkpoint(mode)`` (lock held); if the copy finds the disk full (the
        database file grows by the pages the log holds), once more in the reserve's room."""
        try:
            busy, frames, copied = conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
        except sqlite3.Error as error:
            if not (is_full(error) and self.on_full(conn)):
                raise
            busy, frames, copied = conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
        return int(busy), int(frames), int(copied)

    @staticmethod
    def _restart_wal(conn: sqlite3.Connection) -> None:
        """A one-page write (``user_version``, unchanged) right after a complete checkpoint:
        it starts the WAL over here, so the restart's header sync is this thread's."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        finally:
            if conn.in_transaction:
                conn.execute("ROLLBACK")

    def unpark_soon(self) -> None:
        """For another thread that used the connection under ``lock`` (an online backup)."""
        self._unpark_later()

    def _unpark_later(self) -> None:
        """After this thread released the lock: have the loop run what it parked meanwhile.

        Unconditionally: the loop may have found the lock taken and be about to park a
        batch right now; ``unpark`` runs after that on the loop's thread and sees it.
        """
        if self.loop is not None:
            with contextlib.suppress(RuntimeError):  # a closed loop has nothing parked
                self.loop.call_soon_threadsafe(self.unpark)
