"""The writer thread: owns the connection, runs batches of operations in transactions.

See the package docstring for the threading and durability rules it keeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue as queue_module
import sqlite3
import threading
from collections.abc import Callable
from typing import Any

from burrow.backends.sqlite.schema import CACHE_KIB, MAX_BATCH, SCHEMA, SCHEMA_VERSION, statements
from burrow.backends.sqlite.store import Store
from burrow.core.errors import StorageUnavailable

log = logging.getLogger("burrow.sqlite")

#: sqlite3 errors that mean a bad call, not a storage failure: passed to the caller as they are.
_MISUSE = (sqlite3.ProgrammingError, sqlite3.InterfaceError)


#: One request: the operation, its arguments after the store, the caller's future, and
#: whether it writes. A plain tuple and a module-level function rather than a closure per
#: request: the hot path allocates as little as possible on either thread.
Op = tuple[Callable[..., Any], tuple[Any, ...], "asyncio.Future[Any]", bool]
#: The operations one event-loop iteration handed over, with that loop.
_Item = tuple[asyncio.AbstractEventLoop, list[Op]]
STOP = object()


class _Failed:
    """An operation's result slot when it raised: the error its caller gets."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


def _settle(ops: list[Op], results: list[Any]) -> None:
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


class Writer(threading.Thread):
    """Owns the connection; runs queued operations in batched transactions."""

    def __init__(self, path: str, synchronous: str, writes_per_commit: int) -> None:
        super().__init__(name="burrow-sqlite-writer", daemon=True)
        self.path = path
        self.synchronous = synchronous
        self.writes_per_commit = writes_per_commit
        #: Operations handed over by one event-loop iteration each, or STOP.
        self.requests: queue_module.SimpleQueue[_Item | object] = queue_module.SimpleQueue()
        self.store: Store | None = None
        self.commits = 0
        #: Test seam for disk faults: called right before each COMMIT; if it raises,
        #: the commit is treated exactly like a failed commit or sync (see _transaction).
        self.before_commit: Callable[[], None] | None = None
        self.ready: threading.Event = threading.Event()
        self.open_error: BaseException | None = None

    # -- connection -----------------------------------------------------------
    def connect(self) -> Store:
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
            for statement in statements(SCHEMA):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
            return Store(conn)
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
            if first is STOP:
                break
            items: list[_Item] = [first]  # type: ignore[list-item]
            size = len(items[0][1])
            while size < MAX_BATCH:
                try:
                    item = requests.get_nowait()
                except queue_module.Empty:
                    break
                if item is STOP:
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
            group: list[Op] = []
            writes = 0
            for op in ops:
                group.append(op)
                writes += op[3]
                if writes >= self.writes_per_commit:
                    results += self.transaction(group)
                    group, writes = [], 0
            if group:
                results += self.transaction(group)
        by_loop: dict[asyncio.AbstractEventLoop, tuple[list[Op], list[Any]]] = {}
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

    def transaction(self, group: list[Op], isolated: bool = False) -> list[Any]:
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
