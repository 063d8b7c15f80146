"""The queue service: where the clock, the core rules and a backend meet.

Front ends (burrow v1.0, SQS) call this and only translate. It owns what neither
the pure core nor a backend may do:

* reading the clock (injected, so tests drive time by hand),
* server defaults (``default_ttl``, ``default_hide``) and caps (``max_wait``, ``max_limit``),
* long polling: a ``wait`` operation that matches nothing parks on its queue until a
  create, an update to ``hide=0`` or a hide running out wakes it, or time runs out,
* the cleaner, which asks the backend to expire and unhide at ``clean_interval``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import TypeVar

from burrow.backends.base import Backend
from burrow.config import Settings
from burrow.core.model import Filter, Message, Update, deadline, new_update

log = logging.getLogger("burrow.service")

Clock = Callable[[], float]
T = TypeVar("T")
QueueKey = tuple[str, str]


class Service:
    """Queue operations with defaults, long polling and housekeeping."""

    def __init__(self, backend: Backend, settings: Settings, clock: Clock = time.time) -> None:
        self.backend = backend
        self.settings = settings
        self.clock = clock
        self._waiters: dict[QueueKey, set[asyncio.Future[None]]] = {}
        self._cleaner: asyncio.Task[None] | None = None
        self._stop_hooks: list[Callable[[], Awaitable[None]]] = []

    # -- lifecycle --------------------------------------------------------------
    async def start(self) -> None:
        """Open the backend and start the cleaner."""
        await self.backend.open()
        self._cleaner = asyncio.get_running_loop().create_task(self._clean_forever())

    async def stop(self) -> None:
        """Stop the cleaner, wake every waiter (they answer 404) and close the backend."""
        if self._cleaner is not None:
            self._cleaner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._cleaner
            self._cleaner = None
        for hook in self._stop_hooks:
            await hook()
        for key in list(self._waiters):
            self.notify(key)
        await self.backend.close()

    def on_stop(self, hook: Callable[[], Awaitable[None]]) -> None:
        """Run ``hook`` in :meth:`stop` before the backend closes (a front end's background tasks)."""
        self._stop_hooks.append(hook)

    async def clean(self) -> None:
        """One cleaner pass: expire, unhide, drop empty queues, wake whoever can now proceed."""
        for key in await self.backend.clean(self.clock()):
            self.notify(key)

    async def _clean_forever(self) -> None:
        interval = self.settings.clean_interval
        while True:
            await asyncio.sleep(interval)
            try:
                await self.clean()
            except Exception:  # the cleaner must survive a transient storage error
                log.exception("cleaner pass failed")

    @property
    def waiting(self) -> int:
        """Number of parked long-poll requests."""
        return sum(len(s) for s in self._waiters.values())

    # -- accounts and queues ----------------------------------------------------
    def _capped(self, filter: Filter) -> Filter:
        cap = self.settings.max_limit
        if filter.limit is None or filter.limit > cap:
            return replace(filter, limit=cap)
        return filter

    async def list_accounts(self, filter: Filter) -> list[str]:
        return await self.backend.list_accounts(self._capped(filter), self.clock())

    async def delete_accounts(self, filter: Filter) -> list[str]:
        return await self.backend.delete_accounts(filter, self.clock())

    async def list_queues(self, account: str, filter: Filter) -> list[str]:
        return await self.backend.list_queues(account, self._capped(filter), self.clock())

    async def delete_queues(self, account: str, filter: Filter) -> list[str]:
        return await self.backend.delete_queues(account, filter, self.clock())

    # -- message lists ----------------------------------------------------------
    async def get_messages(self, account: str, queue: str, filter: Filter, wait: int = 0) -> list[Message]:
        capped = self._capped(filter)
        if wait <= 0:  # no long poll: call the backend directly (no poll() and closure frames)
            return await self.backend.get_messages(account, queue, capped, self.clock())
        return await self.poll(
            account, queue, wait, lambda: self.backend.get_messages(account, queue, capped, self.clock())
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
            now = self.clock()
            result = await self.backend.update_messages(
                account, queue, filter, self._update(ttl, hide, now), now
            )
        else:
            result = await self._poll_update(account, queue, filter, ttl, hide, wait)
        if hide == 0 and result:
            self.notify((account, queue))
        return result

    async def _poll_update(
        self, account: str, queue: str, filter: Filter, ttl: int | None, hide: int | None, wait: int
    ) -> list[Message]:
        # A separate method so that update_messages has no closure (cell variables) to pay for.
        async def attempt() -> list[Message]:
            now = self.clock()
            update = self._update(ttl, hide, now)
            return await self.backend.update_messages(account, queue, filter, update, now)

        return await self.poll(account, queue, wait, attempt)

    async def delete_messages(self, account: str, queue: str, filter: Filter, wait: int = 0) -> list[Message]:
        if wait <= 0:  # no long poll: call the backend directly
            return await self.backend.delete_messages(account, queue, filter, self.clock())
        return await self.poll(
            account, queue, wait, lambda: self.backend.delete_messages(account, queue, filter, self.clock())
        )

    # -- one message ------------------------------------------------------------
    async def get_message(self, account: str, queue: str, message: str) -> Message | None:
        return await self.backend.get_message(account, queue, message, self.clock())

    async def put_message(
        self,
        account: str,
        queue: str,
        message: str,
        body: bytes,
        ttl: int | None = None,
        hide: int | None = None,
    ) -> bool:
        """Create or replace a message; missing attributes take the server defaults."""
        now = self.clock()
        settings = self.settings
        hide = settings.default_hide if hide is None else hide
        ttl = settings.default_ttl if ttl is None else ttl
        created = await self.backend.put_message(
            account, queue, message, body, deadline(ttl, now), deadline(hide, now), now
        )
        if not hide and self._waiters:  # checked here: most puts have no waiter anywhere to wake
            self.notify((account, queue))
        return created

    async def update_message(
        self, account: str, queue: str, message: str, ttl: int | None, hide: int | None
    ) -> Message | None:
        now = self.clock()
        result = await self.backend.update_message(account, queue, message, self._update(ttl, hide, now), now)
        if hide == 0 and result is not None:
            self.notify((account, queue))
        return result

    async def delete_message(self, account: str, queue: str, message: str) -> Message | None:
        return await self.backend.delete_message(account, queue, message, self.clock())

    # -- internals --------------------------------------------------------------
    @staticmethod
    def _update(ttl: int | None, hide: int | None, now: float) -> Update:
        return new_update(
            None if ttl is None else deadline(ttl, now),
            None if hide is None else deadline(hide, now),
        )

    async def poll(
        self, account: str, queue: str, wait: int, attempt: Callable[[], Awaitable[list[T]]]
    ) -> list[T]:
        """Run ``attempt``; if nothing matched, retry on each wake-up of the queue until ``wait`` runs out.

        The waiter is registered *before* each retry, so a wake-up that lands while a
        retry is in flight (a backend on another thread) is never lost.
        """
        result = await attempt()
        if result or wait <= 0:
            return result
        loop = asyncio.get_running_loop()
        end = loop.time() + min(wait, self.settings.max_wait)
        key = (account, queue)
        while True:
            fut: asyncio.Future[None] = loop.create_future()
            waiters = self._waiters.get(key)
            if waiters is None:
                waiters = self._waiters[key] = set()
            waiters.add(fut)
            timer = loop.call_at(end, _wake, fut)
            try:
                result = await attempt()
                if result or loop.time() >= end:
                    return result
                await fut
                if loop.time() >= end:
                    return await attempt()
            finally:
                timer.cancel()
                waiters.discard(fut)
                if not waiters and self._waiters.get(key) is waiters:
                    del self._waiters[key]

    def notify(self, key: QueueKey) -> None:
        waiters = self._waiters.get(key)
        if waiters:
            for fut in waiters:
                _wake(fut)


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
