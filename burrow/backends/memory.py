"""The in-memory backend: insertion-ordered dicts, nothing on disk.

Layout: ``accounts[account][queue][message_id] -> _Slot``. Python dicts keep
insertion order and keep a key's position when its value is replaced, which is
exactly the burrow ordering rule, so order costs nothing extra. Everything runs on
the event loop with no awaits inside a method, so each method is atomic.

Housekeeping is incremental: a heap of hide deadlines tells the cleaner which
queues had a message become visible, and each queue keeps a lower bound of its
earliest expiry so the cleaner only scans queues that may hold expired messages.
"""

from __future__ import annotations

import heapq
from collections.abc import Container, Iterator, Mapping

from burrow.backends.base import Backend
from burrow.core.model import Filter, Message, Update

_NEVER = float("inf")


class _Slot:
    """One stored message; mutable so updates do not reallocate."""

    __slots__ = ("body", "expires", "hidden_until", "meta")

    def __init__(self, body: bytes, expires: float, hidden_until: float, meta: bytes) -> None:
        self.body = body
        self.expires = expires
        self.hidden_until = hidden_until
        self.meta = meta


class _Queue:
    __slots__ = ("messages", "next_expiry")

    def __init__(self) -> None:
        self.messages: dict[str, _Slot] = {}
        #: No message in the queue expires before this time (a lower bound).
        self.next_expiry = _NEVER


def _after_marker(keys: Iterator[str], container: Container[str], marker: str | None) -> Iterator[str]:
    """Advance ``keys`` past ``marker`` if it is present; an unknown marker means the start."""
    if marker is not None and marker in container:
        for key in keys:
            if key == marker:
                break
    return keys


def _snapshot(key: str, slot: _Slot) -> Message:
    return Message(key, slot.body, slot.expires, slot.hidden_until, slot.meta)


class MemoryBackend(Backend):
    """Fast, non-durable storage; the reference implementation of the contract."""

    url = "memory://"

    def __init__(self) -> None:
        self._accounts: dict[str, dict[str, _Queue]] = {}
        self._unhide: list[tuple[float, str, str]] = []
        self._queue_meta: dict[str, dict[str, bytes]] = {}

    # -- helpers ----------------------------------------------------------------
    def _names(self, container: Mapping[str, object], filter: Filter) -> list[str]:
        keys = _after_marker(iter(container), container, filter.marker)
        limit = filter.limit
        out: list[str] = []
        for key in keys:
            out.append(key)
            if limit is not None and len(out) >= limit:
                break
        return out

    def _select(self, q: _Queue, filter: Filter, now: float) -> list[tuple[str, _Slot]]:
        messages = q.messages
        keys = _after_marker(iter(messages), messages, filter.marker)
        limit = filter.limit
        match_hidden = filter.match_hidden
        out: list[tuple[str, _Slot]] = []
        for key in keys:
            slot = messages[key]
            if 0 < slot.expires <= now or (slot.hidden_until > now and not match_hidden):
                continue
            out.append((key, slot))
            if limit is not None and len(out) >= limit:
                break
        return out

    def _queue(self, account: str, queue: str) -> _Queue | None:
        queues = self._accounts.get(account)
        return None if queues is None else queues.get(queue)

    def _drop_if_empty(self, account: str, queue: str, q: _Queue) -> None:
        if not q.messages:
            queues = self._accounts[account]
            del queues[queue]
            if not queues:
                del self._accounts[account]

    def _apply(self, account: str, queue: str, q: _Queue, slot: _Slot, update: Update, now: float) -> None:
        if update.expires is not None:
            slot.expires = update.expires
            if 0 < update.expires < q.next_expiry:
                q.next_expiry = update.expires
        if update.hidden_until is not None:
            slot.hidden_until = update.hidden_until
            if update.hidden_until > now:
                heapq.heappush(self._unhide, (update.hidden_until, account, queue))
        if update.meta is not None:
            slot.meta = update.meta

    # -- accounts ---------------------------------------------------------------
    async def list_accounts(self, filter: Filter, now: float) -> list[str]:
        return self._names(self._accounts, filter)

    async def delete_accounts(self, filter: Filter, now: float) -> list[str]:
        names = self._names(self._accounts, filter)
        for account in names:
            del self._accounts[account]
        return names

    # -- queues -----------------------------------------------------------------
    async def list_queues(self, account: str, filter: Filter, now: float) -> list[str]:
        queues = self._accounts.get(account)
        return [] if queues is None else self._names(queues, filter)

    async def delete_queues(self, account: str, filter: Filter, now: float) -> list[str]:
        queues = self._accounts.get(account)
        if queues is None:
            return []
        names = self._names(queues, filter)
        for queue in names:
            del queues[queue]
        if not queues:
            del self._accounts[account]
        return names

    # -- message lists ----------------------------------------------------------
    async def get_messages(self, account: str, queue: str, filter: Filter, now: float) -> list[Message]:
        q = self._queue(account, queue)
        if q is None:
            return []
        return [_snapshot(key, slot) for key, slot in self._select(q, filter, now)]

    async def update_messages(
        self, account: str, queue: str, filter: Filter, update: Update, now: float
    ) -> list[Message]:
        q = self._queue(account, queue)
        if q is None:
            return []
        out = []
        for key, slot in self._select(q, filter, now):
            self._apply(account, queue, q, slot, update, now)
            out.append(_snapshot(key, slot))
        return out

    async def delete_messages(self, account: str, queue: str, filter: Filter, now: float) -> list[Message]:
        q = self._queue(account, queue)
        if q is None:
            return []
        selected = self._select(q, filter, now)
        messages = q.messages
        for key, _ in selected:
            del messages[key]
        self._drop_if_empty(account, queue, q)
        return [_snapshot(key, slot) for key, slot in selected]

    # -- one message ------------------------------------------------------------
    async def get_message(self, account: str, queue: str, message: str, now: float) -> Message | None:
        q = self._queue(account, queue)
        slot = None if q is None else q.messages.get(message)
        if slot is None or 0 < slot.expires <= now:
            return None
        return _snapshot(message, slot)

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
        queues = self._accounts.get(account)
        if queues is None:
            queues = self._accounts[account] = {}
        q = queues.get(queue)
        if q is None:
            q = queues[queue] = _Queue()
        messages = q.messages
        slot = messages.get(message)
        created = slot is None or 0 < slot.expires <= now
        if slot is not None and created:
            del messages[message]  # an expired message is replaced as a new one, at the end
        messages[message] = _Slot(body, expires, hidden_until, meta)
        if 0 < expires < q.next_expiry:
            q.next_expiry = expires
        if hidden_until > now:
            heapq.heappush(self._unhide, (hidden_until, account, queue))
        return created

    async def update_message(
        self,
        account: str,
        queue: str,
        message: str,
        update: Update,
        now: float,
        expect_hidden_until: float | None = None,
    ) -> Message | None:
        q = self._queue(account, queue)
        slot = None if q is None else q.messages.get(message)
        if q is None or slot is None or 0 < slot.expires <= now:
            return None
        if expect_hidden_until is not None and slot.hidden_until != expect_hidden_until:
            return None
        self._apply(account, queue, q, slot, update, now)
        return _snapshot(message, slot)

    async def delete_message(
        self, account: str, queue: str, message: str, now: float, expect_hidden_until: float | None = None
    ) -> Message | None:
        q = self._queue(account, queue)
        if q is None:
            return None
        slot = q.messages.get(message)
        if slot is None:
            return None
        if expect_hidden_until is not None and slot.hidden_until != expect_hidden_until:
            return None
        del q.messages[message]
        self._drop_if_empty(account, queue, q)
        return None if 0 < slot.expires <= now else _snapshot(message, slot)

    # -- queue metadata ---------------------------------------------------------
    async def get_queue_meta(self, account: str, queue: str) -> bytes | None:
        metas = self._queue_meta.get(account)
        return None if metas is None else metas.get(queue)

    async def set_queue_meta(self, account: str, queue: str, meta: bytes | None) -> None:
        metas = self._queue_meta.setdefault(account, {})
        if meta is None:
            metas.pop(queue, None)
            if not metas:
                del self._queue_meta[account]
        else:
            metas[queue] = meta

    async def list_queue_meta(self, account: str) -> list[tuple[str, bytes]]:
        return list(self._queue_meta.get(account, {}).items())

    # -- housekeeping -----------------------------------------------------------
    async def clean(self, now: float) -> list[tuple[str, str]]:
        for account, queues in list(self._accounts.items()):
            for queue, q in list(queues.items()):
                if q.next_expiry <= now:
                    self._expire(q, now)
                    self._drop_if_empty(account, queue, q)
        woken: dict[tuple[str, str], None] = {}
        heap = self._unhide
        while heap and heap[0][0] <= now:
            _, account, queue = heapq.heappop(heap)
            if self._queue(account, queue) is not None:
                woken[(account, queue)] = None
        return list(woken)

    @staticmethod
    def _expire(q: _Queue, now: float) -> None:
        messages = q.messages
        dead = [key for key, slot in messages.items() if 0 < slot.expires <= now]
        for key in dead:
            del messages[key]
        q.next_expiry = min((s.expires for s in messages.values() if s.expires > 0), default=_NEVER)

    async def count_messages(self) -> int:
        return sum(len(q.messages) for queues in self._accounts.values() for q in queues.values())
