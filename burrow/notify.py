"""Wake-ups for long polls: the one place where waiters park and events wake them.

The engine publishes an event whenever a write may have made a message visible in a
queue (a create, an unhide, a hide running out, a move, a FIFO group unblocked), and
parks a long poll with :meth:`Notifier.subscribe`. Nothing else wakes waiters, so a
notifier that crosses processes (Redis pub/sub, PostgreSQL LISTEN/NOTIFY) replaces
:class:`LocalNotifier` without the front ends noticing: ``publish`` would send the event
out and deliver what arrives to the local waiters.

No herds: an event says how many messages it made visible, when the writer knows, and
wakes every *reader* (a poll that only looks) but only that many *takers* (polls that
hide or delete what they find: one message satisfies one taker), oldest first. The rest
stay parked, so one create does not make hundreds of parked workers retry. A taker that
was woken but ends without retrying (its client went away) passes its wake-up on.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod

QueueKey = tuple[str, str]


class Notifier(ABC):
    """Delivers "something may be visible in (account, queue)" to parked waiters."""

    async def start(self) -> None:
        """Connect (a cross-process notifier subscribes here)."""

    async def close(self) -> None:
        """Disconnect; wakes nobody (the engine answers waiters before closing)."""

    @abstractmethod
    def subscribe(self, key: QueueKey, waiter: asyncio.Future[None], taker: bool) -> None:
        """Park ``waiter`` on the queue; an event for it resolves the future.

        ``taker``: the poll consumes what it finds (hides or deletes it), so one visible
        message is enough for one taker.
        """

    @abstractmethod
    def unsubscribe(self, key: QueueKey, waiter: asyncio.Future[None]) -> None:
        """Forget ``waiter`` (done or not)."""

    @abstractmethod
    def publish(self, key: QueueKey, visible: int | None = None) -> None:
        """Wake the queue's readers and ``visible`` of its takers (None: not known, wake all).

        Woken waiters retry; the operation's atomicity decides who wins.
        """

    @abstractmethod
    def wake_all(self) -> None:
        """Wake every waiter of every queue (shutdown)."""

    @property
    @abstractmethod
    def waiting(self) -> int:
        """Parked waiters in this process."""

    @abstractmethod
    def has_waiters(self) -> bool:
        """Whether any waiter is parked here; lets a write skip building events nobody needs.

        A cross-process notifier answers True: waiters elsewhere may need the event.
        """


class LocalNotifier(Notifier):
    """Waiters and events within one process (the memory and SQLite backends)."""

    def __init__(self) -> None:
        #: queue -> waiters, readers and takers apart; dicts keep subscription order, so the
        #: oldest taker wakes first, and an event costs O(readers + visible), not O(waiters).
        self._readers: dict[QueueKey, dict[asyncio.Future[None], None]] = {}
        self._takers: dict[QueueKey, dict[asyncio.Future[None], None]] = {}

    def subscribe(self, key: QueueKey, waiter: asyncio.Future[None], taker: bool) -> None:
        table = self._takers if taker else self._readers
        waiters = table.get(key)
        if waiters is None:
            waiters = table[key] = {}
        waiters[waiter] = None

    def unsubscribe(self, key: QueueKey, waiter: asyncio.Future[None]) -> None:
        for table in (self._takers, self._readers):
            waiters = table.get(key)
            if waiters is not None and waiter in waiters:
                del waiters[waiter]
                if not waiters:
                    del table[key]
                return

    def publish(self, key: QueueKey, visible: int | None = None) -> None:
        readers = self._readers.get(key)
        if readers:
            for waiter in readers:
                wake(waiter)
        takers = self._takers.get(key)
        if not takers:
            return
        if visible is None:
            for waiter in takers:
                wake(waiter)
            return
        for waiter in takers:
            if visible <= 0:
                break
            if not waiter.done():
                waiter.set_result(None)
                visible -= 1

    def wake_all(self) -> None:
        for table in (self._readers, self._takers):
            for waiters in table.values():
                for waiter in waiters:
                    wake(waiter)

    @property
    def waiting(self) -> int:
        return sum(map(len, self._readers.values())) + sum(map(len, self._takers.values()))

    def has_waiters(self) -> bool:
        return bool(self._readers or self._takers)

    def watching(self, key: QueueKey) -> bool:
        """Whether any waiter is parked on ``key`` (a cross-process notifier subscribes while so)."""
        return key in self._readers or key in self._takers


def wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
