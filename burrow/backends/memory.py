"""The in-memory backend: compact packed records, nothing on disk.

Accounts and queues are insertion-ordered dicts (``accounts[account][queue] ->
QueueStore``), which gives their order for free. Messages are not Python objects:
each queue packs them into segments of at most 64 KiB (:mod:`memory_arena` has the
record layout), finds them by id through a hash index of 32-bit locations
(:mod:`memory_index`) and expires them through per-segment in-order walks and wheels
driven by one shared schedule (:mod:`memory_queue`). A message of a 16-byte id and a 100-byte body costs
about 150 bytes of process memory instead of about 210 as dict entries (see
``benchmarks/memory_footprint.py``).

Everything runs on the event loop with no awaits inside a method, so each method is
atomic. Housekeeping is incremental: a cleaner pass costs the deadlines that come due,
never a scan of a queue.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping

from burrow.backends.base import Backend
from burrow.backends.memory_arena import F64, FAR, MAX_ID_BYTES, OFF_BITS, OFF_MASK, REC, Schedule, Segment
from burrow.backends.memory_index import M64
from burrow.backends.memory_queue import QueueStore
from burrow.core.model import Filter, Message, Update

#: At most about this many expired records are deleted per cleaner pass (well under
#: 0.1 s of work); the rest wait for the next pass. Expired records are invisible
#: meanwhile, so a burst of expiries (a million messages put in the same second) holds
#: memory a little longer instead of stalling the event loop.
CLEAN_BUDGET = 20_000


class MemoryBackend(Backend):
    """Fast, compact, non-durable storage; the reference implementation of the contract."""

    url = "memory://"

    def __init__(self) -> None:
        self._accounts: dict[str, dict[str, QueueStore]] = {}
        self._schedule = Schedule()
        #: Hide deadlines for the cleaner's wake-ups: second -> (account, queue) -> latest
        #: deadline in that second (one float per queue and second, not per message); a
        #: heap orders the seconds. Keyed by name, not by QueueStore, so that a queue
        #: dropped before its hides end is not kept alive by them.
        self._unhide: dict[int, dict[tuple[str, str], float]] = {}
        self._unhide_heap: list[int] = []
        self._queue_meta: dict[str, dict[str, bytes]] = {}

    # -- helpers ----------------------------------------------------------------
    @staticmethod
    def _names(container: Mapping[str, object], filter: Filter) -> list[str]:
        keys = iter(container)
        marker = filter.marker
        if marker is not None and marker in container:
            for key in keys:
                if key == marker:
                    break
        limit = filter.limit
        out: list[str] = []
        for key in keys:
            out.append(key)
            if limit is not None and len(out) >= limit:
                break
        return out

    def _queue(self, account: str, queue: str) -> QueueStore | None:
        queues = self._accounts.get(account)
        return None if queues is None else queues.get(queue)

    def _drop_if_empty(self, q: QueueStore) -> None:
        if q.live or q.dead:
            return
        queues = self._accounts[q.account]
        del queues[q.name]
        if not queues:
            del self._accounts[q.account]
        q.release()

    def _hidden_until(self, q: QueueStore, hidden: float, now: float) -> None:
        """Remember that a message of ``q`` becomes visible at ``hidden``, for the cleaner's report."""
        if hidden <= now or hidden >= FAR:
            return
        second = int(hidden)
        bucket = self._unhide.get(second)
        if bucket is None:
            bucket = self._unhide[second] = {}
            heapq.heappush(self._unhide_heap, second)
        key = (q.account, q.name)
        latest = bucket.get(key)
        if latest is None or hidden > latest:
            bucket[key] = hidden

    # -- accounts ---------------------------------------------------------------
    async def list_accounts(self, filter: Filter, now: float) -> list[str]:
        return self._names(self._accounts, filter)

    async def delete_accounts(self, filter: Filter, now: float) -> list[str]:
        names = self._names(self._accounts, filter)
        for account in names:
            for q in self._accounts.pop(account).values():
                q.release()
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
            queues.pop(queue).release()
        if not queues:
            del self._accounts[account]
        return names

    # -- message lists ----------------------------------------------------------
    async def get_messages(self, account: str, queue: str, filter: Filter, now: float) -> list[Message]:
        q = self._queue(account, queue)
        if q is None:
            return []
        snapshot = q.snapshot
        return [
            snapshot(seg, off) for seg, off in q.select(filter.marker, filter.limit, filter.match_hidden, now)
        ]

    async def update_messages(
        self, account: str, queue: str, filter: Filter, update: Update, now: float
    ) -> list[Message]:
        q = self._queue(account, queue)
        if q is None:
            return []
        out = []
        for seg, off in q.select(filter.marker, filter.limit, filter.match_hidden, now):
            q.update(seg, off, update)
            out.append(q.snapshot(seg, off))
        if out and update.hidden_until is not None:
            self._hidden_until(q, update.hidden_until, now)
        return out

    async def delete_messages(self, account: str, queue: str, filter: Filter, now: float) -> list[Message]:
        q = self._queue(account, queue)
        if q is None:
            return []
        selected = q.select(filter.marker, filter.limit, filter.match_hidden, now)
        out = [q.snapshot(seg, off) for seg, off in selected]
        touched: dict[Segment, None] = {}
        for seg, off in selected:
            q.kill(seg, off)
            touched[seg] = None
        for seg in touched:
            q.maintain(seg, now)
        self._drop_if_empty(q)
        return out

    # -- one message ------------------------------------------------------------
    async def get_message(self, account: str, queue: str, message: str, now: float) -> Message | None:
        queues = self._accounts.get(account)
        q = None if queues is None else queues.get(queue)
        if q is None:
            return None
        idb = message.encode("utf-8", "surrogatepass")
        loc = q.index.get(idb, hash(idb) & M64)
        if loc < 0:
            return None
        found = q.snapshot(q.slots[loc >> OFF_BITS], (loc & OFF_MASK) << 2, message)
        return None if 0 < found.expires <= now else found

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
        idb = message.encode("utf-8", "surrogatepass")
        if len(idb) > MAX_ID_BYTES:
            raise ValueError(f"message id longer than {MAX_ID_BYTES} bytes")
        queues = self._accounts.get(account)
        if queues is None:
            queues = self._accounts[account] = {}
        q = queues.get(queue)
        if q is None:
            q = queues[queue] = QueueStore(account, queue, self._schedule)
        created = q.put(idb, expires, hidden_until, meta, body, now)
        if hidden_until > now:
            self._hidden_until(q, hidden_until, now)
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
        if q is None:
            return None
        idb = message.encode("utf-8", "surrogatepass")
        loc = q.index.get(idb, hash(idb) & M64)
        if loc < 0:
            return None
        seg, off = q.at(loc)
        _, expires, hidden, _, _, _ = REC.unpack_from(seg.buf, off)
        if 0 < expires <= now or (expect_hidden_until is not None and hidden != expect_hidden_until):
            return None
        q.update(seg, off, update)
        if update.hidden_until is not None:
            self._hidden_until(q, update.hidden_until, now)
        return q.snapshot(seg, off, message)

    async def delete_message(
        self, account: str, queue: str, message: str, now: float, expect_hidden_until: float | None = None
    ) -> Message | None:
        queues = self._accounts.get(account)
        q = None if queues is None else queues.get(queue)
        if q is None:
            return None
        idb = message.encode("utf-8", "surrogatepass")
        h = hash(idb) & M64
        if expect_hidden_until is not None:
            loc = q.index.get(idb, h)
            if loc < 0 or F64.unpack_from(q.slots[loc >> OFF_BITS].buf, ((loc & OFF_MASK) << 2) + 9)[0] != (
                expect_hidden_until
            ):
                return None
        loc = q.index.pop(idb, h)
        if loc < 0:
            return None
        seg = q.slots[loc >> OFF_BITS]
        found = q.erase(seg, (loc & OFF_MASK) << 2, message)
        assert found is not None
        if seg.live == 0 or seg.waste * 4 > seg.used * 3:
            q.maintain(seg, now)
            if not q.live:
                self._drop_if_empty(q)
        return None if 0 < found.expires <= now else found

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
        now_second = int(now) if now < FAR else 1 << 52
        schedule = self._schedule
        touched: dict[QueueStore, None] = {}
        budget = CLEAN_BUDGET
        while budget > 0 and (due := schedule.pop(now_second)) is not None:
            second, segs = due
            for k, seg in enumerate(segs):
                if seg.due != second or seg.dead:
                    continue  # rescheduled, or gone, since this entry was made
                if budget <= 0:  # out of budget: the rest of this second waits for the next pass
                    schedule.deferred.extend(s for s in segs[k:] if s.due == second and not s.dead)
                    break
                q = seg.store
                budget -= q.fire(seg, now)
                q.maintain(seg, now)
                touched[q] = None
        schedule.finish(now_second)
        for q in touched:
            self._drop_if_empty(q)
        woken: dict[tuple[str, str], None] = {}
        heap, later = self._unhide_heap, []
        while heap and heap[0] <= now_second:
            second = heapq.heappop(heap)
            bucket = self._unhide.pop(second)
            # In the current second this may report a queue a little early: harmless.
            for key in bucket:
                if self._queue(*key) is not None:
                    woken[key] = None
            if second == now_second and any(latest > now for latest in bucket.values()):
                later.append((second, {key: latest for key, latest in bucket.items() if latest > now}))
        for second, bucket in later:  # later in this very second: report again next pass
            self._unhide[second] = bucket
            heapq.heappush(heap, second)
        return list(woken)

    async def count_messages(self) -> int:
        return sum(q.live for queues in self._accounts.values() for q in queues.values())
