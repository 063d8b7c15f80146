"""The packed record layout of the memory backend, its segments and the expiry schedule.

Messages live as packed records in per-queue segments (``bytearray``), so a stored
message costs its bytes plus a 23-byte header, not a dozen Python objects. Records
are addressed by a 32-bit *location*::

    loc = slot << 14 | offset >> 2        (slot: the segment's number in its queue, < 2**18;
                                           offset: 4-byte aligned, < 64 KiB)

Record layout (little-endian, at a 4-byte aligned offset)::

    +0   u8   flags         LIVE | FORWARD | MONO | EXTRA; a dead record becomes a FILLER
    +1   f64  expires       absolute, 0 = never (floats are stored exactly)
    +9   f64  hidden_until  absolute, 0 = visible
    +17  u16  meta length   (0 when FORWARD)
    +19  u16  body length   (4 when FORWARD: a u32 key into the queue's out-of-line store)
    +21  u16  id length
    +23  id (UTF-8), meta, body; meta + body take at least 4 bytes so any record can be
         turned into a FORWARD record in place; then zero padding to a multiple of 4.

EXTRA marks a record whose meta (inline or out of line) starts with the per-message data
of :class:`~burrow.core.model.Message` beyond the deadlines, packed as :data:`XS`
(receives u32, first_received f64, sequence u64, group length u16) then the group
(UTF-8); a plain v1.0 record has no EXTRA and pays nothing for them.

A FILLER is a gap the walk skips: ``+0 u8 FILLER, +1 u16 extent`` (extent >= 4). Deleting
a record turns it into one; so does the tail of a record that a replacement shrank.

MONO marks a record appended with a deadline no earlier than the previous MONO record's
in its segment, and not re-dated since: a segment's MONO records expire in order, so
the cleaner walks them from the front and needs no wheel entry for them (the common
case: one ttl for all messages). Other deadlines get an entry in the segment's wheel.
"""

from __future__ import annotations

import heapq
import struct
from array import array
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from burrow.backends.memory_queue import QueueStore

LIVE = 1
FORWARD = 2
FILLER = 4
MONO = 8
EXTRA = 16

#: flags, expires, hidden_until, meta length, body length, id length.
REC = struct.Struct("<BddHHH")
HEADER = REC.size  # 23
ID_AT = HEADER  # the id bytes' offset in a record
LEN_AT = 21  # the u16 id length's offset in a record
DEADLINES = struct.Struct("<dd")
F64 = struct.Struct("<d")
U16 = struct.Struct("<H")
U32 = struct.Struct("<I")
FILL = struct.Struct("<BH")
#: The EXTRA prefix of a record's meta: receives, first_received, sequence, group length.
XS = struct.Struct("<IdQH")
#: The prefix of a record whose per-message data is all default (EXTRA reserved for claims).
NO_EXTRA = XS.pack(0, 0.0, 0, 0)

SEG_MAX = 1 << 16  # a segment never grows past 64 KiB: offsets fit in 16 bits
SEG_MIN = 256  # a new queue's first segment starts this small and doubles
OFF_BITS = 14  # offset >> 2 in the low bits of a location
OFF_MASK = (1 << OFF_BITS) - 1
MAX_SLOTS = 1 << 18  # segments per queue: 16 GiB of live records
#: Records whose inline size would pass this keep meta and body out of line (FORWARD).
INLINE_MAX = 8192
#: Longest id the backend stores (its record must fit in a segment whatever the body).
MAX_ID_BYTES = 16384

#: Expiry wheel entries are ``delta << 14 | offset >> 2`` in a u32, where ``delta`` is
#: whole seconds after the segment's ``base``; later deadlines are clamped to DELTA_MAX
#: and the segment is re-based when the clamp comes due.
DELTA_MAX = (1 << (32 - OFF_BITS)) - 1
#: Deadlines beyond this are "far" (no int conversion of huge floats).
FAR = float(1 << 52)
#: What ``--max-memory`` counts for a message beside its id, meta and body: its header (23),
#: padding (2 on average), its index slot and ledger entries (about 9); with them a 16-byte
#: id and a 100-byte body come to the ~150 bytes ``benchmarks/memory_footprint.py`` measures.
MESSAGE_COST = 34
#: What it counts for a queue (its QueueStore, index and first segment), while it exists.
QUEUE_COST = 2048


PACKERS: dict[tuple[int, int, int], struct.Struct] = {}


def packer(id_len: int, meta_len: int, body_len: int) -> struct.Struct:
    """A struct that writes a whole inline record (header, id, meta, body) in one call."""
    key = (id_len, meta_len, body_len)
    found = PACKERS.get(key)
    if found is None:
        if len(PACKERS) >= 1024:
            PACKERS.clear()
        found = PACKERS[key] = struct.Struct(f"<BddHHH{id_len}s{meta_len}s{body_len}s")
    return found


def extent(id_len: int, payload: int) -> int:
    """Bytes a record with this id length and meta + body size occupies, padding included."""
    return (HEADER + id_len + (payload if payload > 4 else 4) + 3) & ~3


class Segment:
    """One packed run of records of a queue, in queue order; plus its expiry wheel.

    ``buf`` holds ``used`` bytes of records (the rest is room to append, in the tail
    segment only). ``live`` counts live records, ``waste`` the bytes of fillers. The
    segments of a queue form a doubly linked list in message order; ``seq`` grows along
    it, so positions compare as ``(seq, offset)``.

    Expiry: MONO records are walked from ``mono_pos`` (everything before it is dead or
    not MONO); ``mono_last`` is the latest MONO deadline appended, ``mono_due`` the
    second of the first pending MONO record (-1: none). ``wheel`` is a sorted
    ``array('I')`` of entries for the other records' deadlines (see DELTA_MAX),
    validated when they fire (the record may have died or got another deadline since).
    ``due`` is the second the segment is scheduled at in the :class:`Schedule` (-1: not
    scheduled).
    """

    __slots__ = (
        "base",
        "buf",
        "dead",
        "due",
        "live",
        "mono_due",
        "mono_last",
        "mono_pos",
        "next",
        "prev",
        "seq",
        "slot",
        "store",
        "used",
        "waste",
        "wheel",
    )

    def __init__(self, store: QueueStore, slot: int, seq: int, cap: int, base: int) -> None:
        self.store = store
        self.slot = slot
        self.seq = seq
        self.buf = bytearray(cap)
        self.used = 0
        self.live = 0
        self.waste = 0
        self.prev: Segment | None = None
        self.next: Segment | None = None
        self.mono_pos = 0
        self.mono_last = 0.0
        self.mono_due = -1
        self.base = base
        self.wheel = array("I")
        self.due = -1
        self.dead = False


class Schedule:
    """Which segments have expiry entries due in which second, across all queues.

    ``buckets[second]`` holds the segments scheduled then, as an insertion-ordered set; a
    heap orders the seconds. A segment is in at most one bucket, the one of its ``due``
    (:meth:`move` and :meth:`discard` keep it so), so a freed segment, and the queue it
    names, is not kept alive until a deadline it no longer has: a queue emptied and
    refilled over and over (an SQS worker's queue, whose messages carry days of
    retention) must not accumulate dead segments. While the cleaner fires second
    ``firing`` or earlier, new entries that are already due are deferred to the next
    pass, so one pass always ends. Scheduling also lowers the queue's ``exp_min`` (none
    of its segments is due before that second), so a count or a FIFO claim can expire
    that one queue's due records first, and skip it outright when nothing is due.
    """

    __slots__ = ("buckets", "deferred", "expired", "firing", "heap", "stored")

    def __init__(self) -> None:
        self.buckets: dict[int, dict[Segment, None]] = {}
        self.heap: list[int] = []
        self.firing = -1
        self.deferred: list[Segment] = []
        #: The one object every queue of a backend shares, so it also keeps the backend-wide
        #: tallies: bytes stored (what ``--max-memory`` counts: see QueueStore.cost) and
        #: records deleted because they expired.
        self.stored = 0
        self.expired = 0

    def move(self, seg: Segment, second: int) -> None:
        """Schedule ``seg`` at ``second``, instead of wherever it was scheduled."""
        if seg.due >= 0:
            self.discard(seg)
        seg.due = second
        store = seg.store
        if second < store.exp_min:
            store.exp_min = second
        if second <= self.firing:
            self.deferred.append(seg)
            return
        bucket = self.buckets.get(second)
        if bucket is None:
            self.buckets[second] = {seg: None}
            heapq.heappush(self.heap, second)
        else:
            bucket[seg] = None

    def discard(self, seg: Segment) -> None:
        """Unschedule ``seg`` (its due becomes -1). The second stays in the heap; :meth:`pop`
        skips it if its bucket is gone."""
        bucket = self.buckets.get(seg.due)
        if bucket is not None:
            bucket.pop(seg, None)
            if not bucket:
                del self.buckets[seg.due]
        seg.due = -1

    def pop(self, now_second: int) -> tuple[int, list[Segment]] | None:
        """The next second due at or before ``now_second`` with its segments (marked firing), or None.

        The caller fires a segment only if its ``due`` still equals the second (firing an
        earlier one may have rescheduled or freed it).
        """
        heap = self.heap
        while heap and heap[0] <= now_second:
            second = heapq.heappop(heap)
            bucket = self.buckets.pop(second, None)
            if bucket is None:
                continue  # every segment of it was discarded or moved
            self.firing = max(self.firing, second)
            return second, list(bucket)
        return None

    def finish(self, now_second: int) -> None:
        """End a cleaner pass: what was deferred comes due at the next pass."""
        self.firing = -1
        deferred, self.deferred = self.deferred, []
        for seg in deferred:
            if not seg.dead and seg.due >= 0:
                seg.due = -1  # not in a bucket (it was deferred)
                self.move(seg, now_second)
