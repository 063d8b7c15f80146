"""``SQLiteBackend``: the storage contract over the writer thread (see the package docstring)."""

from __future__ import annotations

import asyncio
import re
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from burrow.backends.base import Backend, BackupResult
from burrow.backends.sqlite import store as ops
from burrow.backends.sqlite.backup import run_backup
from burrow.backends.sqlite.reserve import RESERVE_BYTES, parse_size
from burrow.backends.sqlite.writer import FSYNC_INTERVAL, STOP, SYNCHRONOUS, Op, Writer
from burrow.config import Settings
from burrow.core.errors import Conflict, InsufficientStorage, NotSupported, StorageUnavailable
from burrow.core.model import Counts, Filter, Message, Sent, Update
from burrow.quotas import Usage

T = TypeVar("T")

_PRAGMA_NAME = re.compile(r"^[a-z_]+$")


class SQLiteBackend(Backend):
    """Durable storage in one SQLite file (or ``:memory:``); see the package docstring."""

    def __init__(
        self,
        path: str,
        fsync: str = "batch",
        url: str = "",
        fsync_interval: float = FSYNC_INTERVAL,
        reserve_bytes: int = RESERVE_BYTES,
        max_bytes: int = 0,
    ) -> None:
        if fsync not in SYNCHRONOUS:
            raise ValueError(f"fsync must be always, batch or never, got {fsync!r}")
        self.path = path
        #: ``--max-disk``: a create that would take the database's used pages (its size less
        #: its free list, ``store.used_bytes``) past this many bytes is refused with 507; 0 =
        #: no limit but the disk's own (the reserve file and its 507, docs/operations.md).
        self.max_bytes = max_bytes
        self.fsync = fsync
        self.url = url or ("sqlite://:memory:" if path == ":memory:" else f"sqlite:///{path}")
        self._writer = Writer(path, fsync, fsync_interval, reserve_bytes)
        self._pending: list[Op] = []
        #: The loop that opened the backend; every call comes from it (asking for the running
        #: loop per call costs a getpid() system call on Python 3.11).
        self._loop: asyncio.AbstractEventLoop
        self._open = False
        #: Set while an online backup runs (one at a time).
        self._backing_up = False

    @classmethod
    def from_url(cls, url: str, settings: Settings) -> SQLiteBackend:
        """``sqlite:///relative.db``, ``sqlite:////absolute.db`` or ``sqlite://:memory:``;
        a file URL may end in ``?reserve=SIZE`` (bytes, or ``64MiB``; 0 = none), the disk
        space held for deletes on a full disk (``reserve.RESERVE_BYTES`` by default)."""
        scheme, _, rest = url.partition("://")
        if scheme != "sqlite":
            raise ValueError(f"not a sqlite URL: {url!r}")
        if rest == ":memory:":
            return cls(":memory:", settings.fsync, url, settings.fsync_interval, max_bytes=settings.max_disk)
        reserve = RESERVE_BYTES
        rest, option, value = rest.partition("?reserve=")
        if option:
            reserve = parse_size(value)
        path = rest[1:] if rest.startswith("/") else ""
        if not path or path.endswith("/"):
            raise ValueError(
                f"sqlite URL must name a file: sqlite:///relative.db, sqlite:////absolute.db"
                f" or sqlite://:memory:, got {url!r}"
            )
        return cls(path, settings.fsync, url, settings.fsync_interval, reserve, settings.max_disk)

    # -- plumbing ---------------------------------------------------------------
    def observe_commits(self, callback: Callable[[int, float], None]) -> None:
        """Metrics: ``callback(operations, seconds)`` after each committed write transaction."""
        self._writer.on_commit = callback

    @property
    def commits(self) -> int:
        """Transactions committed that contained writes (group commit makes this < writes)."""
        return self._writer.commits

    @property
    def pinned(self) -> bool:
        """The disk was full: the file may not grow until the disk has room for the reserve again."""
        return self._writer.pinned

    def inject_commit_fault(self, fault: Callable[[], None] | None) -> None:
        """Test seam: ``fault`` runs on the writer thread before every COMMIT of a write;
        if it raises, that transaction is rolled back and its requests get StorageUnavailable."""
        self._writer.before_commit = fault

    def _call(self, fn: Callable[..., T], args: tuple[Any, ...], write: bool) -> asyncio.Future[T]:
        """Queue ``fn(store, *args)`` for this iteration's batch; the future settles after
        its commit, or its sync (see writer for which).

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
            # One transaction per loop iteration, not per request.
            loop.call_soon(self._flush)
        return fut

    def _flush(self) -> None:
        if self._pending:
            pending, self._pending = self._pending, []
            self._writer.run_batch(self._loop, pending)  # on this thread (see writer)

    async def pragma(self, name: str, value: int | str | None = None) -> list[tuple[Any, ...]]:
        """Run ``PRAGMA name [= value]`` on the writer's connection (diagnostics and tests)."""
        if not _PRAGMA_NAME.match(name) or not (value is None or re.match(r"^[\w-]+$", str(value))):
            raise ValueError(f"bad pragma {name!r} = {value!r}")
        sql = f"PRAGMA {name}" if value is None else f"PRAGMA {name} = {value}"
        return await self._call(ops.fetch_all, (sql,), False)

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
        self._writer.requests.put(STOP)
        await asyncio.get_running_loop().run_in_executor(None, self._writer.join)

    # -- accounts ---------------------------------------------------------------
    async def list_accounts(self, filter: Filter, now: float) -> list[str]:
        return await self._call(ops.list_accounts, (filter,), False)

    async def delete_accounts(self, filter: Filter, now: float) -> list[str]:
        return await self._call(ops.delete_accounts, (filter,), True)

    # -- queues -----------------------------------------------------------------
    async def list_queues(self, account: str, filter: Filter, now: float) -> list[str]:
        return await self._call(ops.list_queues, (account, filter), False)

    async def delete_queues(self, account: str, filter: Filter, now: float) -> list[str]:
        return await self._call(ops.delete_queues, (account, filter), True)

    # -- message lists ----------------------------------------------------------
    async def get_messages(self, account: str, queue: str, filter: Filter, now: float) -> list[Message]:
        return await self._call(ops.get_messages, (account, queue, filter, now), False)

    async def update_messages(
        self, account: str, queue: str, filter: Filter, update: Update, now: float
    ) -> list[Message]:
        return await self._call(ops.update_messages, (account, queue, filter, update, now), True)

    async def delete_messages(self, account: str, queue: str, filter: Filter, now: float) -> list[Message]:
        return await self._call(ops.delete_messages, (account, queue, filter, now), True)

    # -- one message ------------------------------------------------------------
    async def get_message(self, account: str, queue: str, message: str, now: float) -> Message | None:
        return await self._call(ops.get_message, (account, queue, message, now), False)

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
        if self.max_bytes:
            needed = len(message) + len(body) + len(meta)
            args = (self.max_bytes, needed, account, queue, message, body, expires, hidden_until, now, meta)
            return self._within(await self._call(ops.put_within, args, True), needed)
        return await self._call(
            ops.put_message, (account, queue, message, body, expires, hidden_until, now, meta), True
        )

    def _within(self, result: T | ops.OverBudget, needed: int) -> T:
        """The result of a budgeted write, or the 507 it was refused with."""
        if isinstance(result, ops.OverBudget):
            raise InsufficientStorage(
                f"insufficient storage: the database uses {result.used} bytes and this write needs"
                f" about {needed} more, over its --max-disk budget of {self.max_bytes} bytes;"
                " reads, takes, deletes and expiry still work and make room"
            )
        return result

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
            ops.update_message, (account, queue, message, update, now, expect_hidden_until), True
        )

    async def delete_message(
        self,
        account: str,
        queue: str,
        message: str,
        now: float,
        expect_hidden_until: float | None = None,
        expect_receives: int | None = None,
    ) -> Message | None:
        return await self._call(
            ops.delete_message, (account, queue, message, now, expect_hidden_until, expect_receives), True
        )

    # -- worker operations (each one writer call, so one transaction) ------------
    async def claim(
        self, account: str, queue: str, limit: int, hidden_until: float, now: float, fifo: bool = False
    ) -> list[Message]:
        return await self._call(ops.claim, (account, queue, limit, hidden_until, now, fifo), True)

    async def send_message(
        self,
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
        args = (account, queue, message, body, expires, hidden_until, now, meta, group, dedup, dedup_until)
        if self.max_bytes:
            needed = len(message) + len(body) + len(meta) + len(group)
            return self._within(
                await self._call(ops.send_within, (self.max_bytes, needed, *args), True), needed
            )
        return await self._call(ops.send_message, args, True)

    async def move_message(
        self,
        account: str,
        queue: str,
        message: str,
        to_account: str,
        to_queue: str,
        expires: float,
        now: float,
        meta: bytes | None = None,
        receives: int | None = None,
        expect_receives: int | None = None,
    ) -> Message | None:
        """Atomic: the delete and the insert are one transaction."""
        return await self._call(
            ops.move_message,
            (
                account,
                queue,
                message,
                to_account,
                to_queue,
                expires,
                now,
                meta,
                receives,
                expect_receives,
            ),
            True,
        )

    async def count(self, account: str, queue: str, now: float) -> Counts:
        return await self._call(ops.count, (account, queue, now), False)

    # -- queue metadata ---------------------------------------------------------
    async def get_queue_meta(self, account: str, queue: str) -> bytes | None:
        return await self._call(ops.get_queue_meta, (account, queue), False)

    async def set_queue_meta(self, account: str, queue: str, meta: bytes | None) -> None:
        if self.max_bytes:
            args = (self.max_bytes, False, account, queue, meta)
            self._within(await self._call(ops.meta_within, args, True), len(meta or b""))
            return
        await self._call(ops.set_queue_meta, (account, queue, meta), True)

    async def swap_queue_meta(
        self, account: str, queue: str, expect: bytes | None, meta: bytes | None
    ) -> bool:
        if self.max_bytes:
            args = (self.max_bytes, True, account, queue, expect, meta)
            return bool(self._within(await self._call(ops.meta_within, args, True), len(meta or b"")))
        return await self._call(ops.swap_queue_meta, (account, queue, expect, meta), True)

    async def list_queue_meta(self, account: str) -> list[tuple[str, bytes]]:
        return await self._call(ops.list_queue_meta, (account,), False)

    # -- housekeeping -----------------------------------------------------------
    async def clean(self, now: float, since: float) -> list[tuple[str, str]]:
        """Purge, expire, unhide and drop dedup records, then report the queues whose hide ran
        out in ``(since, now]``: all in bounded steps so other requests run in between.

        The report comes after the expiry (expired messages are gone by then) and reads
        the stored deadlines only; the cursor lives in this call, nothing is remembered.
        """
        while True:
            more, expired = await self._call(ops.clean_counted, (now,), True)
            self.expired += expired
            if not more:
                break
        woken: dict[tuple[str, str], None] = {}
        at: ops.WokenCursor | None = None
        while True:
            step, at = await self._call(ops.woken_step, (since, now, at), False)
            woken.update(dict.fromkeys(step))
            if at is None:
                return list(woken)

    async def usage(self, account: str, now: float, with_bytes: bool = False) -> Usage:
        names, messages, size = await self._call(ops.usage, (account, with_bytes), False)
        return Usage(set(names), messages, size)

    async def backup(self, directory: str, keep: int) -> BackupResult:
        """An online copy with SQLite's backup API (see ``backup``); ``directory`` defaults
        to ``backups/`` beside the database file."""
        if self.path == ":memory:":
            raise NotSupported("an in-memory SQLite store has no file to back up")
        if not self._open:
            raise StorageUnavailable("storage unavailable: the SQLite backend is not open")
        if self._backing_up:
            raise Conflict("a backup is running; try again when it is done")
        target = Path(directory) if directory else Path(self.path).parent / "backups"
        self._backing_up = True
        try:
            return await asyncio.to_thread(run_backup, self._writer, target, keep)
        except (OSError, sqlite3.Error) as error:
            raise StorageUnavailable(f"the backup failed and was removed: {error}") from error
        finally:
            self._backing_up = False

    async def count_messages(self) -> int:
        return await self._call(ops.count_messages, (), False)
