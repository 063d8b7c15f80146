"""The in-memory backend: compact packed records, nothing on disk.

Accounts and queues are insertion-ordered dicts (``accounts[account][queue] ->
QueueStore``), which gives their order for free. Messages are not Python objects:
each queue packs them into segments of at most 64 KiB (:mod:`memory_arena` has the
record layout), finds them by id through a hash index of 32-bit locations
(:mod:`memory_index`) and expires them through per-segment in-order walks and wheels
driven by one shared schedule (:mod:`memory_queue`). A message of a 16-byte id and a 100-byte body costs
about 150 bytes of process memory instead of about 210 as dict entries (see
``benchmarks/memory_footprint.py``).

Per-message data beyond the deadlines (receives, first claim, FIFO group and sequence)
lives in a packed prefix of a record's meta, flagged EXTRA, only in records that have
it (or whose front end stored meta, to leave room for a claim). Each queue keeps a
sorted ledger of its records' hide deadlines (a count is two bisections, and the
cleaner's report is checked against it) and, once it holds grouped messages, a group
index (a FIFO claim looks only at the groups it takes); see :mod:`memory_index`. A
queue's FIFO state (sequence counter, deduplication records) lives beside its metadata.

Everything runs on the event loop with no awaits inside a method, so each method is
atomic (a move included). Housekeeping is incremental: a cleaner pass costs the
deadlines that come due, never a scan of a queue; a count reads its queue's expired
records that the cleaner has not deleted yet, without deleting them (a marker may still
name one).
"""

from __future__ import annotations

import heapq
import os
from bisect import bisect_right, insort
from collections.abc import Mapping

from burrow.backends.base import Backend
from burrow.backends.memory_arena import (
    EXTRA,
    F64,
    FAR,
    MAX_ID_BYTES,
    MESSAGE_COST,
    NO_EXTRA,
    OFF_BITS,
    OFF_MASK,
    REC,
    Schedule,
    Segment,
)
from burrow.backends.memory_index import M64
from burrow.backends.memory_queue import QueueStore
from burrow.core.errors import InsufficientStorage
from burrow.core.model import Counts, Filter, Message, Sent, Update
from burrow.quotas import Usage

#: At most about this many expired records are deleted per cleaner pass (well under
#: 0.1 s of work); the rest wait for the next pass. Expired records are invisible
#: meanwhile, so a burst of expiries (a million messages put in the same second) holds
#: memory a little longer instead of stalling the event loop.
CLEAN_BUDGET = 20_000
#: The cleaner's report keeps hide deadlines this many seconds past the start of its
#: window, so a caller looking back a little further than its last pass still sees them.
UNHIDE_KEEP = 120.0
#: What ``--max-memory`` counts for a queue's metadata beside its name and bytes, and for
#: one FIFO deduplication record (dict entries, the tuple, the key and the id).
META_COST = 256
DEDUP_COST = 256


def default_max_memory(workers: int = 1) -> int:
    """``--max-memory`` when it is not set: a quarter of physical memory, shared by the
    ``workers`` processes that each own a memory store, and at least 64 MiB each (a machine
    whose size cannot be read counts as 1 GiB)."""
    try:
        physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        physical = -1
    if physical <= 0:
        physical = 1 << 30
    return max(64 << 20, physical // 4 // max(1, workers))


class FifoState:
    """A queue's FIFO send state: the last sequence number and the deduplication records."""

    __slots__ = ("counter", "dedup")

    def __init__(self) -> None:
        self.counter = 0
        #: key -> (message id, sequence, dedup_until)
        self.dedup: dict[str, tuple[str, int, float]] = {}


class MemoryBackend(Backend):
    """Fast, compact, non-durable storage; the reference implementation of the contract."""

    url = "memory://"

    def __init__(self, max_bytes: int = 0) -> None:
        #: ``--max-memory``: a create that would take the stored bytes (``stored``) past it is
        #: refused with 507; 0 = no limit.
        self.max_bytes = max_bytes
        self._accounts: dict[str, dict[str, QueueStore]] = {}
        self._schedule = Schedule()
        #: Candidates for the cleaner's report: second -> the (account, queue) pairs that got
        #: a hide deadline in that second (not one entry per message), checked against the
        #: queue's ledger when reported; ``_unhide_seconds`` lists the seconds in order. Keyed
        #: by name, not by QueueStore, so that a dropped queue is not kept alive by them.
        self._unhide: dict[int, dict[tuple[str, str], None]] = {}
        self._unhide_seconds: list[int] = []
        self._queue_meta: dict[str, dict[str, bytes]] = {}
        self._fifo: dict[tuple[str, str], FifoState] = {}
        #: When deduplication records run out: second -> (account, queue, key), heap-ordered.
        self._dedup_due: dict[int, list[tuple[str, str, str]]] = {}
        self._dedup_heap: list[int] = []

    @property
    def stored(self) -> int:
        """Bytes stored as ``--max-memory`` counts them: every message's id, meta and body
        plus MESSAGE_COST, every queue's QUEUE_COST, queue metadata and dedup records."""
        return self._schedule.stored

    def _full(self, needed: int) -> InsufficientStorage:
        return InsufficientStorage(
            f"insufficient storage: the memory store holds {self._schedule.stored} bytes and this"
            f" write needs {needed} more, over its --max-memory budget of {self.max_bytes} bytes;"
            " reads, takes, deletes and expiry still work and make room"
        )

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

    def _store(self, account: str, queue: str) -> QueueStore:
        """The queue, created (last in order) if absent."""
        queues = self._accounts.get(account)
        if queues is None:
            queues = self._accounts[account] = {}
        q = queues.get(queue)
        if q is None:
            q = queues[queue] = QueueStore(account, queue, self._schedule)
        return q

    def _drop_if_empty(self, q: QueueStore) -> None:
        if q.live or q.dead:
            return
        queues = self._accounts[q.account]
        del queues[q.name]
        if not queues:
            del self._accounts[q.account]
        q.release()

    def _hidden_until(self, q: QueueStore, hidden: float) -> None:
        """Note that a message of ``q`` has the hide deadline ``hidden``, for the cleaner's report."""
        if hidden >= FAR:
            return
        second = int(hidden)
        bucket = self._unhide.get(second)
        if bucket is None:
            bucket = self._unhide[second] = {}
            seconds = self._unhide_seconds
            if not seconds or second > seconds[-1]:
                seconds.append(second)
            else:
                insort(seconds, second)
        bucket[q.account, q.name] = None

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
        if out and update.hidden_until:
            self._hidden_until(q, update.hidden_until)
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
        if self.max_bytes:
            needed = len(idb) + len(meta) + len(body) + MESSAGE_COST
            if self._schedule.stored + needed > self.max_bytes:
                raise self._full(needed)
        queues = self._accounts.get(account)
        if queues is None:
            queues = self._accounts[account] = {}
        q = queues.get(queue)
        if q is None:
            q = queues[queue] = QueueStore(account, queue, self._schedule)
        if meta:  # a front end's message: room for its receive count
            created = q.put(idb, expires, hidden_until, NO_EXTRA + meta, body, now, EXTRA)
        else:
            created = q.put(idb, expires, hidden_until, meta, body, now)
        if hidden_until > 0:
            self._hidden_until(q, hidden_until)
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
        if update.hidden_until:
            self._hidden_until(q, update.hidden_until)
        return q.snapshot(seg, off, message)

    async def delete_message(
        self,
        account: str,
        queue: str,
        message: str,
        now: float,
        expect_hidden_until: float | None = None,
        expect_receives: int | None = None,
    ) -> Message | None:
        queues = self._accounts.get(account)
        q = None if queues is None else queues.get(queue)
        if q is None:
            return None
        idb = message.encode("utf-8", "surrogatepass")
        h = hash(idb) & M64
        if expect_hidden_until is not None or expect_receives is not None:
            loc = q.index.get(idb, h)
            if loc < 0:
                return None
            seg, off = q.at(loc)
            if (
                expect_hidden_until is not None
                and F64.unpack_from(seg.buf, off + 9)[0] != expect_hidden_until
            ):
                return None
            if expect_receives is not None and q.receives(seg, off) != expect_receives:
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

    # -- worker operations ------------------------------------------------------
    async def claim(
        self, account: str, queue: str, limit: int, hidden_until: float, now: float, fifo: bool = False
    ) -> list[Message]:
        q = self._queue(account, queue)
        if q is None or limit <= 0:
            return []
        names: list[str] = []
        if not fifo:
            positions = q.select(None, limit, False, now)
        elif q.groups is None:  # one group, "": blocked while any unexpired message is hidden
            hidden = q.hidden[0].above(now) + q.hidden[1].above(now)
            if hidden:
                _, claimed, never = q.expired(now)
                if hidden > claimed + never:
                    return []
            positions = q.select(None, limit, False, now)
        else:
            positions, names = q.fifo_select(limit, now)
        out = [q.claim_at(seg, off, hidden_until, now) for seg, off in positions]
        if names and q.groups is not None:
            q.groups.settle(names, now)
        if out and hidden_until > 0:
            self._hidden_until(q, hidden_until)
        return out

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
        key = (account, queue)
        state = self._fifo.get(key)
        if state is None:
            state = self._fifo[key] = FifoState()
        if dedup is not None:
            earlier = state.dedup.get(dedup)
            if earlier is not None and earlier[2] > now:
                return Sent(earlier[0], earlier[1], False)
        idb = message.encode("utf-8", "surrogatepass")
        if len(idb) > MAX_ID_BYTES:
            raise ValueError(f"message id longer than {MAX_ID_BYTES} bytes")
        if len(group.encode("utf-8", "surrogatepass")) > 0xFFFF:
            raise ValueError("message group longer than 65535 bytes")
        if self.max_bytes:
            needed = len(idb) + len(meta) + len(body) + len(group) + MESSAGE_COST + DEDUP_COST
            if self._schedule.stored + needed > self.max_bytes:
                raise self._full(needed)
        q = self._store(account, queue)
        sequence = state.counter + 1
        q.append(idb, expires, hidden_until, meta, body, now, 0, 0.0, group, sequence)
        state.counter = sequence
        if dedup is not None and dedup_until > now:
            if dedup not in state.dedup:
                self._schedule.stored += DEDUP_COST
            state.dedup[dedup] = (message, sequence, dedup_until)
            self._dedup_at(int(dedup_until) if dedup_until < FAR else 1 << 52, account, queue, dedup)
        if hidden_until > 0:
            self._hidden_until(q, hidden_until)
        return Sent(message, sequence, True)

    def _dedup_at(self, second: int, account: str, queue: str, key: str) -> None:
        due = self._dedup_due.get(second)
        if due is None:
            due = self._dedup_due[second] = []
            heapq.heappush(self._dedup_heap, second)
        due.append((account, queue, key))

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
        src = self._queue(account, queue)
        if src is None:
            return None
        idb = message.encode("utf-8", "surrogatepass")
        h = hash(idb) & M64
        loc = src.index.get(idb, h)
        if loc < 0:
            return None
        seg, off = src.at(loc)
        old = src.snapshot(seg, off, message)
        if 0 < old.expires <= now or (expect_receives is not None and old.receives != expect_receives):
            return None
        src.index.pop(idb, h)
        src.erase(seg, off)
        src.maintain(seg, now)
        self._drop_if_empty(src)
        dst = self._store(to_account, to_queue)
        first = old.first_received if receives else 0.0
        receives = receives or 0
        meta = old.meta if meta is None else meta
        seg, off = dst.append(
            idb, expires, 0.0, meta, old.body, now, receives, first, old.group, old.sequence
        )
        return dst.snapshot(seg, off, message)

    async def count(self, account: str, queue: str, now: float) -> Counts:
        q = self._queue(account, queue)
        if q is None:
            return Counts()
        visible, claimed, never = q.expired(now)  # still in the ledger and in ``live``
        in_flight = q.hidden[1].above(now) - claimed
        delayed = q.hidden[0].above(now) - never
        return Counts(q.live - visible - claimed - never - in_flight - delayed, in_flight, delayed)

    # -- queue metadata ---------------------------------------------------------
    async def get_queue_meta(self, account: str, queue: str) -> bytes | None:
        metas = self._queue_meta.get(account)
        return None if metas is None else metas.get(queue)

    async def set_queue_meta(self, account: str, queue: str, meta: bytes | None) -> None:
        self._check_meta(account, queue, meta)
        self._set_meta(account, queue, meta)

    async def swap_queue_meta(
        self, account: str, queue: str, expect: bytes | None, meta: bytes | None
    ) -> bool:
        metas = self._queue_meta.get(account)
        if (None if metas is None else metas.get(queue)) != expect:
            return False
        self._check_meta(account, queue, meta)
        self._set_meta(account, queue, meta)
        return True

    @staticmethod
    def _meta_cost(queue: str, meta: bytes | None) -> int:
        return 0 if meta is None else len(queue) + len(meta) + META_COST

    def _check_meta(self, account: str, queue: str, meta: bytes | None) -> None:
        """Refuse metadata that grows the store past ``max_bytes`` (removing and shrinking pass)."""
        if not self.max_bytes or meta is None:
            return
        metas = self._queue_meta.get(account)
        grown = self._meta_cost(queue, meta) - self._meta_cost(
            queue, None if metas is None else metas.get(queue)
        )
        if grown > 0 and self._schedule.stored + grown > self.max_bytes:
            raise self._full(grown)

    def _set_meta(self, account: str, queue: str, meta: bytes | None) -> None:
        metas = self._queue_meta.get(account)
        self._schedule.stored -= self._meta_cost(queue, None if metas is None else metas.get(queue))
        if meta is None:
            state = self._fifo.pop((account, queue), None)  # the FIFO state goes with the metadata
            if state is not None:
                self._schedule.stored -= DEDUP_COST * len(state.dedup)
            if metas is not None:
                metas.pop(queue, None)
                if not metas:
                    del self._queue_meta[account]
        else:
            self._queue_meta.setdefault(account, {})[queue] = meta
            self._schedule.stored += self._meta_cost(queue, meta)

    async def list_queue_meta(self, account: str) -> list[tuple[str, bytes]]:
        return list(self._queue_meta.get(account, {}).items())

    # -- housekeeping -----------------------------------------------------------
    async def clean(self, now: float, since: float) -> list[tuple[str, str]]:
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
        self._clean_dedup(now, now_second)
        self.expired = schedule.expired  # counted where records die (fire, and compaction)
        return self._woken(now, since)

    def _clean_dedup(self, now: float, now_second: int) -> None:
        """Drop the deduplication records whose ``dedup_until`` has passed (only those due)."""
        heap, due_at, fifo = self._dedup_heap, self._dedup_due, self._fifo
        budget = CLEAN_BUDGET
        while heap and heap[0] <= now_second:
            second = heap[0]
            entries = due_at[second]
            later = []
            while entries and budget > 0:
                entry = entries.pop()
                budget -= 1
                state = fifo.get(entry[:2])
                record = None if state is None else state.dedup.get(entry[2])
                if state is None or record is None:
                    continue  # the FIFO state went with its metadata, or the key was renewed
                if record[2] <= now:
                    del state.dedup[entry[2]]
                    self._schedule.stored -= DEDUP_COST
                elif int(record[2]) == second:  # later in this very second: the next pass
                    later.append(entry)
            if entries or later:  # out of budget, or only later records left in this second
                entries += later
                return
            heapq.heappop(heap)
            del due_at[second]

    def _woken(self, now: float, since: float) -> list[tuple[str, str]]:
        """The queues holding a record whose hide deadline is in ``(since, now]``.

        The candidates are the queues noted in the seconds the window covers, each checked
        against its ledger (a bisection); a candidate with no deadline left in its second is
        forgotten. Seconds more than UNHIDE_KEEP before ``since`` are dropped.
        """
        seconds, buckets = self._unhide_seconds, self._unhide
        drop = bisect_right(seconds, since - UNHIDE_KEEP - 1)
        if drop:
            for second in seconds[:drop]:
                del buckets[second]
            del seconds[:drop]
        woken: dict[tuple[str, str], None] = {}
        for second in seconds[bisect_right(seconds, since - 1) : bisect_right(seconds, now)]:
            bucket = buckets[second]
            for key in list(bucket):
                q = self._queue(*key)
                if q is None or not q.hidden_in(second, second + 1):
                    del bucket[key]  # gone, or its deadlines in this second have all changed
                elif key not in woken and q.hidden_between(since, now):
                    woken[key] = None
        return list(woken)

    async def usage(self, account: str, now: float, with_bytes: bool = False) -> Usage:
        """From the queues' own tallies: O(queues), whatever they hold."""
        queues = self._accounts.get(account) or {}
        found = Usage(set(queues) | set(self._queue_meta.get(account) or ()))
        for q in queues.values():
            found.messages += q.live
            found.bytes += q.bodies
        return found

    async def count_messages(self) -> int:
        return sum(q.live for queues in self._accounts.values() for q in queues.values())
