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
* the cleaner, which asks the backend to expire and reports hides that ran out.

Relative times are whole seconds from the API (``ttl``, ``hide``: 0 = none for a
deadline, visible now for a hide); absolute ones are clock readings.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from typing import TypeVar

from burrow.backends.base import Backend
from burrow.clock import Clock
from burrow.config import Settings
from burrow.core.errors import StorageUnavailable
from burrow.core.model import Counts, Filter, Message, Sent, Update, deadline, new_update
from burrow.metrics import MessageCounts
from burrow.notify import LocalNotifier, Notifier, QueueKey, wake
from burrow.quotas import Quota

log = logging.getLogger("burrow.engine")

T = TypeVar("T")


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

    def set_quotas(self, quotas: Mapping[str, Quota]) -> None:
        """Replace every account's quotas (at start, and when the credentials file is reloaded)."""
        self.quotas = dict(quotas)

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
            return replace(filter, limit=cap)
        return filter

    async def list_accounts(self, filter: Filter) -> list[str]:
        return await self.backend.list_accounts(self._capped(filter), self.now())

    async def delete_accounts(self, filter: Filter) -> list[str]:
        return await self.backend.delete_accounts(filter, self.now())

    async def list_queues(self, account: str, filter: Filter) -> list[str]:
        return await self.backend.list_queues(account, self._capped(filter), self.now())

    async def delete_queues(self, account: str, filter: Filter) -> list[str]:
        return await self.backend.delete_queues(account, filter, self.now())

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
        created = await self.backend.put_message(
            account, queue, message, body, deadline(ttl, now), deadline(hide, now), now, meta
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
        if moved is not None:
            self.notifier.publish((to_account, to_queue), 1)
            if self.counts is not None:  # a dead-letter move keeps the receive count; a move task resets it
                if receives:
                    self.counts.dead_lettered += 1
                else:
                    self.counts.moved += 1
        return moved

    async def count(self, account: str, queue: str) -> Counts:
        return await self.backend.count(account, queue, self.now())

    # -- queue metadata (front ends whose queues exist while empty) --------------
    async def get_queue_meta(self, account: str, queue: str) -> bytes | None:
        return await self.backend.get_queue_meta(account, queue)

    async def set_queue_meta(self, account: str, queue: str, meta: bytes | None) -> None:
        await self.backend.set_queue_meta(account, queue, meta)

    async def swap_queue_meta(
        self, account: str, queue: str, expect: bytes | None, meta: bytes | None
    ) -> bool:
        return await self.backend.swap_queue_meta(account, queue, expect, meta)

    async def list_queue_meta(self, account: str) -> list[tuple[str, bytes]]:
        return await self.backend.list_queue_meta(account)

    # -- internals --------------------------------------------------------------
    @staticmethod
    def _update(ttl: int | None, hide: int | None, now: float) -> Update:
        return new_update(
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
