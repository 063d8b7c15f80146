"""The queue engine: the one owner of every queue operation, under both APIs.

Front ends (burrow v1.0, SQS) translate requests into calls on :class:`Engine` and
results into responses; nothing else holds the storage backend. The engine owns what
neither the pure core nor a backend may do:

* reading the clock (injected: :class:`burrow.clock.Clock`, whose timers also bound
  long polls, so tests drive ``wait`` by hand),
* server defaults (``default_ttl``, ``default_hide``) and caps (``max_wait``,
  ``max_limit``), and turning relative seconds into absolute deadlines,
* long polling: an operation that matches nothing parks on its queue until an event
  wakes it or its deadline passes,
* events: every write that may have made a message visible publishes one through the
  :class:`~burrow.notify.Notifier` (the only place waiters are woken),
* the cleaner, which asks the backend to expire and reports hides that ran out,
* per-account quotas (:mod:`burrow.quotas`): a create, or a long poll, over one is
  :class:`~burrow.core.errors.QuotaExceeded` (429). An account's usage is read from the
  backend (:meth:`~burrow.backends.base.Backend.usage`) at most once every USAGE_SECONDS
  and kept up to date in between by this engine's own creates and deletes, so a check
  costs a few comparisons; what others change meanwhile (the cleaner's expiry, other
  processes sharing a Redis store) shows at the next read. Accounts without quotas pay
  one dict lookup per create.

Relative times are whole seconds from the API (``ttl``, ``hide``: 0 = none for a
deadline, visible now for a hide); absolute ones are clock readings.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TypeVar

from burrow.backends.base import Backend, BackupResult
from burrow.clock import Clock
from burrow.config import Settings
from burrow.core.errors import QuotaExceeded, StorageUnavailable
from burrow.core.model import Counts, Filter, Message, Sent, Update, deadline
from burrow.metrics import MessageCounts
from burrow.notify import LocalNotifier, Notifier, QueueKey, wake
from burrow.quotas import Quota, Usage

log = logging.getLogger("burrow.engine")

T = TypeVar("T")

#: Seconds an account's usage read from the backend is trusted (kept current by this
#: engine's own creates and deletes) before a create reads it again; also the
#: ``Retry-After`` of a quota refusal.
USAGE_SECONDS = 1.0
#: A queue create over the ``queues`` quota reads the usage again first if it is older than
#: this (a queue emptied by deletes is not seen otherwise): so at most ten reads a second.
QUEUES_REREAD = 0.1


class Tally:
    """An account's usage as the engine last read it, with its own changes since then."""

    __slots__ = ("read_at", "usage")

    def __init__(self, usage: Usage, read_at: float) -> None:
        self.usage = usage
        #: ``time.monotonic()`` of the read.
        self.read_at = read_at

    def add(self, messages: int, size: int) -> None:
        usage = self.usage
        usage.messages += messages
        usage.bytes += size


class Engine:
    """Queue operations with defaults, caps, long polling, events and housekeeping."""

    def __init__(
        self,
        backend: Backend,
        settings: Settings,
        clock: Clock | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        self.backend = backend
        self.settings = settings
        self.clock = Clock() if clock is None else clock
        if notifier is None:
            notifier = backend.notifier() or LocalNotifier()
        self.notifier = notifier
        #: Set by :meth:`drain`: long polls no longer park (the server is stopping).
        self.draining = False
        self._cleaner: asyncio.Task[None] | None = None
        self._cleaned_to = 0.0
        #: The latest reading of the clock (see :meth:`now`).
        self._latest = 0.0
        self._stop_hooks: list[Callable[[], Awaitable[None]]] = []
        #: Message events for the metrics (plain increments); None with ``--metrics off``.
        self.counts: MessageCounts | None = MessageCounts() if settings.metrics == "on" else None
        #: Per-account limits (credentials file); an account not listed has none.
        self.quotas: dict[str, Quota] = {}
        #: The usage of accounts with quotas (see Tally), by account.
        self._tallies: dict[str, Tally] = {}
        #: Long polls parked in this process, by account (only accounts with a waiters quota).
        self._waiters: dict[str, int] = {}

    def set_quotas(self, quotas: Mapping[str, Quota]) -> None:
        """Replace every account's quotas (at start, and when the credentials file is reloaded)."""
        self.quotas = {account: quota for account, quota in quotas.items() if quota != Quota()}
        self._tallies = {}

    # -- quotas -------------------------------------------------------------------
    async def usage(self, account: str, quota: Quota) -> Tally:
        """The account's tally, read again from the backend if it is USAGE_SECONDS old."""
        tally = self._tallies.get(account)
        now = time.monotonic()
        if tally is None or now - tally.read_at >= USAGE_SECONDS:
            usage = await self.backend.usage(account, self.now(), quota.bytes is not None)
            tally = self._tallies[account] = Tally(usage, now)
        return tally

    async def _admit(self, account: str, queue: str, quota: Quota, messages: int, size: int) -> Tally:
        """Check a create of ``messages`` messages of ``size`` body bytes (0, 0: a queue's
        metadata) in ``queue`` against the account's quota, and count it (the caller takes it
        back if the create fails); raise QuotaExceeded if it does not fit."""
        tally = await self.usage(account, quota)
        usage = tally.usage
        retry = int(USAGE_SECONDS) or 1
        if quota.queues is not None and queue not in usage.queues and len(usage.queues) >= quota.queues:
            # Deletes here count messages out, not queues (whether one emptied is not known
            # without asking), so a refusal first reads the usage again, if not just read.
            if time.monotonic() - tally.read_at >= QUEUES_REREAD:
                tally.read_at = 0.0
                return await self._admit(account, queue, quota, messages, size)
            raise QuotaExceeded(
                f"account {account!r} has {len(usage.queues)} queues, its quota of {quota.queues}:"
                f" queue {queue!r} cannot be created until one is deleted",
                "queues",
                retry,
            )
        if messages and quota.messages is not None and usage.messages + messages > quota.messages:
            raise QuotaExceeded(
                f"account {account!r} holds {usage.messages} messages, its quota is {quota.messages}:"
                " take or delete some first",
                "messages",
                retry,
            )
        if size and quota.bytes is not None and usage.bytes + size > quota.bytes:
            raise QuotaExceeded(
                f"account {account!r} holds {usage.bytes} bytes of message bodies and this message"
                f" has {size}, over its quota of {quota.bytes} bytes: take or delete some first",
                "bytes",
                retry,
            )
        usage.queues.add(queue)
        tally.add(messages, size)
        return tally

    def _gone(self, account: str, messages: list[Message]) -> None:
        """Count deleted messages out of the account's tally (if it has quotas)."""
        tally = self._tallies.get(account)
        if tally is not None and messages:
            tally.add(-len(messages), -sum(len(m.body) for m in messages))

    def _forget(self, account: str) -> None:
        """The account's usage changed in a way not counted here: read it again at its next create."""
        self._tallies.pop(account, None)

    async def _put_within(
        self,
        quota: Quota,
        account: str,
        queue: str,
        message: str,
        body: bytes,
        expires: float,
        hidden_until: float,
        now: float,
        meta: bytes,
    ) -> bool:
        """:meth:`Backend.put_message` for an account with quotas. A replacement adds no message
        and only the bytes its body grows by, which is looked up only when a new message would
        not fit (one more store read, on the refusal path); a replacement that did fit as new
        keeps its old body counted until the usage is read again."""
        refusal: QuotaExceeded | None = None
        try:
            tally = await self._admit(account, queue, quota, 1, len(body))
            added, grown = 1, len(body)
        except QuotaExceeded as error:
            if error.quota not in ("messages", "bytes"):
                raise
            refusal = error
        if refusal is not None:
            # Outside the except block: compiled by mypyc, an await inside one that re-raises
            # the handled exception afterwards frees it too early (a crash, seen in tests).
            old = await self.backend.get_message(account, queue, message, now)
            if old is None:
                raise refusal
            added, grown = 0, len(body) - len(old.body)
            tally = await self._admit(account, queue, quota, 0, max(0, grown))
            if grown < 0:
                tally.add(0, grown)
        try:
            created = await self.backend.put_message(
                account, queue, message, body, expires, hidden_until, now, meta
            )
        except BaseException:
            tally.add(-added, -grown)
            raise
        if created != bool(added):  # counted as new but replaced (its old body counts until the
            tally.add(1 if created else -1, 0)  # next read), or the other way round
        return created

    def now(self) -> float:
        """The engine's time: its clock's reading, never going back.

        A wall clock stepped back (NTP, an operator) holds the engine's time still until
        it catches up, so a message that expired, or a hide that ran out, at a later
        reading never comes back; deadlines only run late, never early.
        """
        now = self.clock()
        if now < self._latest:
            return self._latest
        self._latest = now
        return now

    # -- lifecycle --------------------------------------------------------------
    async def start(self) -> None:
        """Open the backend and the notifier, and start the cleaner."""
        await self.backend.open()
        await self.notifier.start()
        self._cleaned_to = self.now()
        self._cleaner = asyncio.get_running_loop().create_task(self._clean_forever())

    def drain(self) -> None:
        """Answer every parked long poll now and park no more (the first step of a shutdown).

        Each woken poll makes its last attempt and returns what it finds (usually
        nothing: v1.0 answers 404, SQS an empty receive), so its client gets a response
        before the server closes connections.
        """
        self.draining = True
        self.notifier.wake_all()

    async def stop(self) -> None:
        """Drain, stop the cleaner and background hooks, and close the store."""
        self.drain()
        if self._cleaner is not None:
            self._cleaner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._cleaner
            self._cleaner = None
        for hook in self._stop_hooks:
            await hook()
        await self.notifier.close()
        await self.backend.close()

    def on_stop(self, hook: Callable[[], Awaitable[None]]) -> None:
        """Run ``hook`` in :meth:`stop` before the backend closes (a front end's background tasks)."""
        self._stop_hooks.append(hook)

    async def clean(self) -> None:
        """One cleaner pass: expire, then wake queues whose hidden messages became visible."""
        now = self.now()
        since, self._cleaned_to = self._cleaned_to, now
        for key in await self.backend.clean(now, since):
            self.notifier.publish(key)

    async def _clean_forever(self) -> None:
        interval = self.settings.clean_interval
        warned = 0.0  # when the last "store unavailable" warning was logged (one a minute at most)
        while True:
            await asyncio.sleep(interval)
            try:
                await self.clean()
            except StorageUnavailable as error:  # an outage: expected, retried next pass, said once a minute
                if self.clock() - warned >= 60.0:
                    warned = self.clock()
                    log.warning("cleaner pass skipped: %s", error)
            except Exception:  # anything else is a bug; the cleaner must still survive it
                log.exception("cleaner pass failed")

    @property
    def waiting(self) -> int:
        """Number of parked long-poll requests in this process."""
        return self.notifier.waiting

    # -- accounts and queues ----------------------------------------------------
    def _capped(self, filter: Filter) -> Filter:
        cap = self.settings.max_limit
        if filter.limit is None or filter.limit > cap:
            return filter.with_limit(cap)
        return filter

    async def list_accounts(self, filter: Filter) -> list[str]:
        return await self.backend.list_accounts(self._capped(filter), self.now())

    async def delete_accounts(self, filter: Filter) -> list[str]:
        names = await self.backend.delete_accounts(filter, self.now())
        if self._tallies:
            for account in names:
                self._forget(account)
        return names

    async def list_queues(self, account: str, filter: Filter) -> list[str]:
        return await self.backend.list_queues(account, self._capped(filter), self.now())

    async def delete_queues(self, account: str, filter: Filter) -> list[str]:
        names = await self.backend.delete_queues(account, filter, self.now())
        if names and self._tallies:
            self._forget(account)
        return names

    # -- message lists ----------------------------------------------------------
    async def get_messages(self, account: str, queue: str, filter: Filter, wait: int = 0) -> list[Message]:
        capped = self._capped(filter)
        if wait <= 0:  # no long poll: call the backend directly (no poll() and closure frames)
            return await self.backend.get_messages(account, queue, capped, self.now())
        return await self.poll(
            account,
            queue,
            wait,
            lambda: self.backend.get_messages(account, queue, capped, self.now()),
            taker=False,
        )

    async def update_messages(
        self,
        account: str,
        queue: str,
        filter: Filter,
        ttl: int | None,
        hide: int | None,
        wait: int = 0,
    ) -> list[Message]:
        if wait <= 0:  # no long poll (the common take): one attempt, without poll() and its closure
            now = self.now()
            result = await self.backend.update_messages(
                account, queue, filter, self._update(ttl, hide, now), now
            )
        else:
            result = await self._poll_update(account, queue, filter, ttl, hide, wait)
        if hide == 0 and result:
            self.notifier.publish((account, queue), len(result))
        elif hide and result and self.counts is not None:
            self.counts.delivered += len(result)
        return result

    async def _poll_update(
        self, account: str, queue: str, filter: Filter, ttl: int | None, hide: int | None, wait: int
    ) -> list[Message]:
        # A separate method so that update_messages has no closure (cell variables) to pay for.
        async def attempt() -> list[Message]:
            now = self.now()
            update = self._update(ttl, hide, now)
            return await self.backend.update_messages(account, queue, filter, update, now)

        return await self.poll(account, queue, wait, attempt, taker=bool(hide))

    async def delete_messages(self, account: str, queue: str, filter: Filter, wait: int = 0) -> list[Message]:
        if wait <= 0:  # no long poll: call the backend directly
            result = await self.backend.delete_messages(account, queue, filter, self.now())
        else:
            result = await self.poll(
                account,
                queue,
                wait,
                lambda: self.backend.delete_messages(account, queue, filter, self.now()),
                taker=True,
            )
        if self.counts is not None:
            self.counts.deleted += len(result)
        if self._tallies:
            self._gone(account, result)
        return result

    # -- one message ------------------------------------------------------------
    async def get_message(self, account: str, queue: str, message: str) -> Message | None:
        return await self.backend.get_message(account, queue, message, self.now())

    async def put_message(
        self,
        account: str,
        queue: str,
        message: str,
        body: bytes,
        ttl: int | None = None,
        hide: int | None = None,
        meta: bytes = b"",
    ) -> bool:
        """Create or replace a message; missing attributes take the server defaults."""
        now = self.now()
        settings = self.settings
        hide = settings.default_hide if hide is None else hide
        ttl = settings.default_ttl if ttl is None else ttl
        quota = self.quotas.get(account)
        if quota is None:
            created = await self.backend.put_message(
                account, queue, message, body, deadline(ttl, now), deadline(hide, now), now, meta
            )
        else:
            created = await self._put_within(
                quota, account, queue, message, body, deadline(ttl, now), deadline(hide, now), now, meta
            )
        if not hide and self.notifier.has_waiters():  # most puts have no waiter anywhere to wake
            self.notifier.publish((account, queue), 1)
        if self.counts is not None:
            self.counts.sent += 1
        return created

    async def update_message(
        self,
        account: str,
        queue: str,
        message: str,
        ttl: int | None,
        hide: int | None,
        expect_hidden_until: float | None = None,
    ) -> Message | None:
        """New ``ttl``/``hide`` for one message; with ``expect_hidden_until``, only if unchanged."""
        now = self.now()
        result = await self.backend.update_message(
            account, queue, message, self._update(ttl, hide, now), now, expect_hidden_until
        )
        if hide == 0 and result is not None:
            self.notifier.publish((account, queue), 1)
        return result

    async def delete_message(
        self, account: str, queue: str, message: str, expect_receives: int | None = None
    ) -> Message | None:
        """Delete one message; with ``expect_receives``, only if no claim took it since (a receipt)."""
        now = self.now()
        gone = await self.backend.delete_message(
            account, queue, message, now, expect_receives=expect_receives
        )
        if gone is not None and gone.group and gone.hidden_until > now:
            self.notifier.publish((account, queue))  # its FIFO group is unblocked: how many, unknown
        if gone is not None and self.counts is not None:
            self.counts.deleted += 1
        if gone is not None and self._tallies:
            self._gone(account, [gone])
        return gone

    # -- worker operations ------------------------------------------------------
    async def claim(
        self, account: str, queue: str, limit: int, hide: int, wait: int = 0, fifo: bool = False
    ) -> list[Message]:
        """Take up to ``limit`` visible messages, hide them ``hide`` seconds and count the receive.

        Long polls up to ``wait`` seconds (capped at ``max_wait``) when there are none.
        ``hide`` 0 leaves them visible (SQS VisibilityTimeout=0) but still counts the receive.
        """
        if wait <= 0:
            now = self.now()
            result = await self.backend.claim(account, queue, limit, now + hide if hide else now, now, fifo)
        else:

            async def attempt() -> list[Message]:
                now = self.now()
                return await self.backend.claim(account, queue, limit, now + hide if hide else now, now, fifo)

            result = await self.poll(account, queue, wait, attempt, taker=True)
        if self.counts is not None:
            self.counts.delivered += len(result)
        return result

    async def send(
        self,
        account: str,
        queue: str,
        message: str,
        body: bytes,
        ttl: int,
        delay: int,
        meta: bytes,
        group: str,
        dedup: str | None,
        dedup_window: int,
    ) -> Sent:
        """A FIFO send: sequence number and deduplication (``dedup_window`` seconds) in one store call."""
        now = self.now()
        quota = self.quotas.get(account)
        tally = None if quota is None else await self._admit(account, queue, quota, 1, len(body))
        try:
            sent = await self.backend.send_message(
                account,
                queue,
                message,
                body,
                deadline(ttl, now),
                deadline(delay, now),
                now,
                meta,
                group,
                dedup,
                now + dedup_window,
            )
        except BaseException:
            if tally is not None:
                tally.add(-1, -len(body))
            raise
        if tally is not None and not sent.created:  # deduplicated: nothing was stored
            tally.add(-1, -len(body))
        if sent.created and not delay:
            self.notifier.publish((account, queue), 1)
        if sent.created and self.counts is not None:
            self.counts.sent += 1
        return sent

    async def move(
        self,
        account: str,
        queue: str,
        message: str,
        to_account: str,
        to_queue: str,
        ttl: int,
        meta: bytes | None = None,
        receives: int | None = None,
        expect_receives: int | None = None,
        sent: float | None = None,
    ) -> Message | None:
        """Move a message to another queue, living ``ttl`` seconds from ``sent`` (default now)."""
        now = self.now()
        expires = deadline(ttl, now if sent is None else sent)
        moved = await self.backend.move_message(
            account, queue, message, to_account, to_queue, expires, now, meta, receives, expect_receives
        )
        if moved is not None and self._tallies:  # moves are not refused: they only carry a message over
            self._gone(account, [moved])
            tally = self._tallies.get(to_account)
            if tally is not None:
                tally.usage.queues.add(to_queue)
                tally.add(1, len(moved.body))
        if moved is not None:
            self.notifier.publish((to_account, to_queue), 1)
            if self.counts is not None:  # a dead-letter move keeps the receive count; a move task resets it
                if receives:
                    self.counts.dead_lettered += 1
                else:
                    self.counts.moved += 1
        return moved

    async def backup(self) -> BackupResult:
        """An online backup of the store (SQLite; ``--backup-dir``, ``--backup-keep``)."""
        return await self.backend.backup(self.settings.backup_dir, self.settings.backup_keep)

    async def count(self, account: str, queue: str) -> Counts:
        return await self.backend.count(account, queue, self.now())

    # -- queue metadata (front ends whose queues exist while empty) --------------
    async def get_queue_meta(self, account: str, queue: str) -> bytes | None:
        return await self.backend.get_queue_meta(account, queue)

    async def set_queue_meta(self, account: str, queue: str, meta: bytes | None) -> None:
        """Store or (None) remove the queue's metadata; a new queue counts towards the account's
        ``queues`` quota (SQS queues exist while empty)."""
        quota = self.quotas.get(account)
        if quota is not None and meta is not None:
            await self._admit(account, queue, quota, 0, 0)
        await self.backend.set_queue_meta(account, queue, meta)
        if meta is None and self._tallies:
            self._forget(account)

    async def swap_queue_meta(
        self, account: str, queue: str, expect: bytes | None, meta: bytes | None
    ) -> bool:
        """Compare-and-set of the queue's metadata; creating it counts as :meth:`set_queue_meta`."""
        quota = self.quotas.get(account)
        if quota is not None and meta is not None and expect is None:
            await self._admit(account, queue, quota, 0, 0)
        swapped = await self.backend.swap_queue_meta(account, queue, expect, meta)
        if meta is None and swapped and self._tallies:
            self._forget(account)
        return swapped

    async def list_queue_meta(self, account: str) -> list[tuple[str, bytes]]:
        return await self.backend.list_queue_meta(account)

    # -- internals --------------------------------------------------------------
    @staticmethod
    def _update(ttl: int | None, hide: int | None, now: float) -> Update:
        return Update(
            None if ttl is None else deadline(ttl, now),
            None if hide is None else deadline(hide, now),
        )

    async def poll(
        self,
        account: str,
        queue: str,
        wait: int,
        attempt: Callable[[], Awaitable[list[T]]],
        taker: bool,
    ) -> list[T]:
        """Run ``attempt``; if nothing matched, retry on each event of the queue until ``wait`` runs out.

        The waiter is subscribed *before* each retry, so an event that lands while a
        retry is in flight (a backend on another thread) is never lost. The deadline is
        a time on the engine's clock. ``taker``: the attempt consumes what it finds (see
        :mod:`burrow.notify`); a taker woken for a message but cancelled before it could
        retry passes the wake-up on to the next taker.
        """
        result = await attempt()
        if result or wait <= 0 or self.draining:
            return result
        quota = self.quotas.get(account)
        if quota is None or quota.waiters is None:
            return await self._park(account, queue, wait, attempt, taker)
        parked = self._waiters.get(account, 0)
        if parked >= quota.waiters:
            raise QuotaExceeded(
                f"account {account!r} has {parked} long polls waiting, its quota of {quota.waiters}:"
                " retry when one has ended, or poll without waiting",
                "waiters",
                int(USAGE_SECONDS) or 1,
            )
        self._waiters[account] = parked + 1
        try:
            return await self._park(account, queue, wait, attempt, taker)
        finally:
            left = self._waiters[account] - 1
            if left:
                self._waiters[account] = left
            else:
                del self._waiters[account]

    async def _park(
        self,
        account: str,
        queue: str,
        wait: int,
        attempt: Callable[[], Awaitable[list[T]]],
        taker: bool,
    ) -> list[T]:
        """:meth:`poll` once its first attempt found nothing: retry on events until ``wait`` runs out."""
        loop = asyncio.get_running_loop()
        clock, notifier = self.clock, self.notifier
        end = clock() + min(wait, self.settings.max_wait)  # the raw clock: a wait is a duration
        key: QueueKey = (account, queue)
        while True:
            fut: asyncio.Future[None] = loop.create_future()
            notifier.subscribe(key, fut, taker)
            timer = clock.call_at(end, functools.partial(wake, fut))
            try:
                result = await attempt()
                if result or clock() >= end or self.draining:
                    return result
                await fut
                if clock() >= end or self.draining:
                    return await attempt()
            except asyncio.CancelledError:
                if taker and fut.done():
                    notifier.publish(key, 1)
                raise
            finally:
                timer.cancel()
                notifier.unsubscribe(key, fut)
