"""One queue of the memory backend: its segments, id index, expiry wheels, take cursor,
hide ledger and FIFO group index.

Order is arena order: segments in their linked order, records by offset within one.
New messages are appended to the tail segment; a replacement keeps its offset (it is
rewritten in place, or as a FORWARD record whose meta and body live in ``big``). A
delete turns the record into a filler; afterwards :meth:`QueueStore.maintain` drops a
segment with no live record, resets the tail when it empties and compacts a sealed
segment that is more than 3/4 filler (into its predecessor when they fit together, else
in place), so memory follows the live messages and no step touches more than one
segment (64 KiB). The 3/4 threshold keeps compaction rare for a queue consumed in order
(its segments empty from the front and are dropped whole): about 1/3 of a record move
per delete at worst.

Expiry: a segment's MONO records (appended in deadline order, the usual case) are
expired by walking them from the front; other deadlines get entries in the segment's
sorted wheel. The shared :class:`~burrow.backends.memory_arena.Schedule` says which
segments have something due in which second, so a cleaner pass costs the records that
expire, not the queue size.

The take cursor ``(cur_seg, cur_off)`` skips the run of in-flight records at the head:
every live record before it is expired or hidden until at least ``cur_until``. A list
operation on visible messages without a marker starts there and moves it past the hidden
records it meets, so a get-and-hide costs O(1) amortised however many messages are in
flight. When ``cur_until`` passes (some skipped hide ran out), or a write un-hides a
record before the cursor, the next such operation rescans from the head: O(in flight)
once per such event.

Claims, sends and moves write the per-message data (see memory_arena's EXTRA); every
write keeps the queue's :class:`~burrow.backends.memory_index.Deadlines` (hide deadlines
of its hidden records, by claimed or not) and, once there is one, its
:class:`~burrow.backends.memory_index.Groups` in step with the records. A plain visible
record touches neither, so v1.0 puts and gets pay a flag test.
"""

from __future__ import annotations

import bisect
from array import array
from collections.abc import Iterator

from burrow.backends.memory_arena import (
    DELTA_MAX,
    EXTRA,
    F64,
    FAR,
    FILL,
    FILLER,
    FORWARD,
    HEADER,
    ID_AT,
    INLINE_MAX,
    LEN_AT,
    LIVE,
    MAX_SLOTS,
    MESSAGE_COST,
    MONO,
    NO_EXTRA,
    OFF_BITS,
    OFF_MASK,
    PACKERS,
    QUEUE_COST,
    REC,
    SEG_MAX,
    SEG_MIN,
    U32,
    XS,
    Schedule,
    Segment,
    extent,
    packer,
)
from burrow.backends.memory_index import M64, Deadlines, Groups, Index, block_until
from burrow.core.errors import StorageUnavailable
from burrow.core.model import Message, Update

INF = float("inf")
#: ``exp_min`` of a queue with nothing scheduled.
NEVER = 1 << 62
XS_SIZE = XS.size
#: A reset tail segment keeps at most this much buffer.
TAIL_KEEP = 1024

Position = tuple[Segment, int]


class QueueStore:
    """The messages of one queue (see the module docstring for the layout)."""

    __slots__ = (
        "account",
        "big",
        "big_next",
        "bodies",
        "cost",
        "cur_off",
        "cur_seg",
        "cur_until",
        "dead",
        "exp_min",
        "free",
        "groups",
        "head",
        "hidden",
        "cur_now",
        "index",
        "live",
        "name",
        "schedule",
        "seq",
        "slots",
        "tail",
    )

    def __init__(self, account: str, name: str, schedule: Schedule) -> None:
        self.account = account
        self.name = name
        self.schedule = schedule
        self.head: Segment | None = None
        self.tail: Segment | None = None
        #: slot number -> segment; a free slot keeps its retired (empty) segment until reused.
        self.slots: list[Segment] = []
        self.free: list[int] = []
        self.seq = 0
        self.index = Index(self.slots)
        #: Out-of-line (meta, body) of FORWARD records, by the u32 key in the record.
        self.big: dict[int, tuple[bytes, bytes]] = {}
        self.big_next = 0
        #: Stored records, expired but not yet cleaned included.
        self.live = 0
        self.cur_seg: Segment | None = None
        self.cur_off = 0
        self.cur_until = INF
        #: The latest ``now`` the cursor was used at: a clock that goes back resets it.
        self.cur_now = 0.0
        self.dead = False
        #: No segment is due before this second (a lower bound kept by the Schedule).
        self.exp_min = NEVER
        #: The hide deadlines (> 0) of the records, ``hidden[1]`` of those claimed at least
        #: once: a count is two bisections. Plain visible records are not in it.
        self.hidden = (Deadlines(), Deadlines())
        #: The group index, built when the first grouped message arrives.
        self.groups: Groups | None = None
        #: What the queue costs towards ``--max-memory``: QUEUE_COST, plus each live record's
        #: id, meta and body (in line or out) and MESSAGE_COST; kept by every write that adds,
        #: removes or resizes a record, and added to the backend-wide ``schedule.stored``.
        #: ``bodies``: the live records' body bytes (an account's usage, for its quotas).
        self.cost = QUEUE_COST
        self.bodies = 0
        schedule.stored += QUEUE_COST

    # -- reading ------------------------------------------------------------------
    def at(self, loc: int) -> Position:
        return self.slots[loc >> OFF_BITS], (loc & OFF_MASK) << 2

    def snapshot(self, seg: Segment, off: int, mid: str | None = None) -> Message:
        """The record at ``off`` as a Message (``mid`` saves decoding the id when known)."""
        buf = seg.buf
        flags, expires, hidden, mlen, blen, ilen = REC.unpack_from(buf, off)
        return self._message(buf, off, flags, expires, hidden, mlen, blen, ilen, mid)

    def _message(
        self,
        buf: bytearray,
        off: int,
        flags: int,
        expires: float,
        hidden: float,
        mlen: int,
        blen: int,
        ilen: int,
        mid: str | None,
    ) -> Message:
        """:meth:`snapshot` for a record whose header the caller has already unpacked."""
        if flags & FORWARD:
            meta, body = self.big[U32.unpack_from(buf, off + HEADER + ilen)[0]]
            idb = bytes(buf[off + HEADER : off + HEADER + ilen])
        else:
            fields = (PACKERS.get((ilen, mlen, blen)) or packer(ilen, mlen, blen)).unpack_from(buf, off)
            idb, meta, body = fields[6], fields[7], fields[8]
        if flags & EXTRA:
            receives, first, sequence, glen = XS.unpack_from(meta)
            p = XS_SIZE + glen
            return Message(
                idb.decode("utf-8", "surrogatepass") if mid is None else mid,
                body,
                expires,
                hidden,
                meta[p:],
                receives,
                first,
                meta[XS_SIZE:p].decode("utf-8", "surrogatepass"),
                sequence,
            )
        return Message(
            idb.decode("utf-8", "surrogatepass") if mid is None else mid, body, expires, hidden, meta
        )

    def extra(self, buf: bytearray, off: int, flags: int, ilen: int) -> tuple[int, float, int, str]:
        """(receives, first_received, sequence, group) of the record at ``off``."""
        if not flags & EXTRA:
            return 0, 0.0, 0, ""
        raw: bytes | bytearray
        if flags & FORWARD:
            raw, p = self.big[U32.unpack_from(buf, off + HEADER + ilen)[0]][0], 0
        else:
            raw, p = buf, off + HEADER + ilen
        receives, first, sequence, glen = XS.unpack_from(raw, p)
        p += XS_SIZE
        return receives, first, sequence, raw[p : p + glen].decode("utf-8", "surrogatepass") if glen else ""

    # -- writes -------------------------------------------------------------------
    def put(
        self, idb: bytes, expires: float, hidden: float, meta: bytes, body: bytes, now: float, extra: int = 0
    ) -> bool:
        """Create (append) or replace (in place) the message; True when created.

        With ``extra`` (EXTRA) ``meta`` starts with the packed per-message data. The hot
        path of the backend, so written out in one piece: the record's room is made at
        the tail first, then one index probe either finds the id or claims it for that
        room.
        """
        h = hash(idb) & M64
        ilen, mlen, blen = len(idb), len(meta), len(body)
        payload = mlen + blen
        inline = HEADER + ilen + payload <= INLINE_MAX
        size = (HEADER + ilen + (payload if payload > 4 else 4) + 3) & ~3 if inline else extent(ilen, 4)
        seg = self.tail
        if seg is None or seg.used + size > len(seg.buf):
            seg = self._room(size, now)
        off = seg.used
        loc = seg.slot << OFF_BITS | off >> 2
        found = self.index.claim(idb, h, loc)
        old: Segment | None = None
        if found >= 0:
            old = self.slots[found >> OFF_BITS]
            old_off = (found & OFF_MASK) << 2
            old_expires = F64.unpack_from(old.buf, old_off + 1)[0]
            if not 0 < old_expires <= now:
                self._replace(old, old_off, old_expires, idb, expires, hidden, meta, body, extra)
                return False
            # an expired message is replaced as a new one, at the end
            self.erase(old, old_off)
            self.index.set(idb, h, loc)
        flags = LIVE | extra
        if expires > 0 and expires >= seg.mono_last:  # in deadline order: the MONO walk expires it
            flags |= MONO
            seg.mono_last = expires
            if seg.mono_due < 0:
                seg.mono_due = _second(expires)
                self._schedule(seg)
        if inline:
            pack = PACKERS.get((ilen, mlen, blen)) or packer(ilen, mlen, blen)
            pack.pack_into(seg.buf, off, flags, expires, hidden, mlen, blen, ilen, idb, meta, body)
        else:
            self._write(seg.buf, off, size, flags, idb, expires, hidden, meta, body)
        seg.used = off + size
        seg.live += 1
        self.live += 1
        n = ilen + payload + MESSAGE_COST
        self.cost += n
        self.bodies += blen
        self.schedule.stored += n
        if not flags & MONO and expires > 0:
            self._register(seg, off, expires)
        if hidden > 0 or extra or self.groups is not None:
            self._track_new(seg.buf, off, idb)
        if old is not None:
            self.maintain(old, now)
        return True

    def _replace(
        self,
        seg: Segment,
        off: int,
        old_expires: float,
        idb: bytes,
        expires: float,
        hidden: float,
        meta: bytes,
        body: bytes,
        extra: int,
    ) -> None:
        """Rewrite a live record in place with a new body, meta and deadlines (a new message:
        its per-message data is reset, its group is "")."""
        buf = seg.buf
        flags, _, old_hidden, mlen, blen, ilen = REC.unpack_from(buf, off)
        groups = self.groups
        mid = idb.decode("utf-8", "surrogatepass") if groups is not None else ""
        n = -1
        if old_hidden > 0 or flags & EXTRA or groups is not None:
            n = self._track_gone(buf, off, flags, old_expires, old_hidden, ilen, mid)
        old_mlen, old_blen = mlen, blen
        if flags & FORWARD:
            old_meta, old_body = self.big.pop(U32.unpack_from(buf, off + HEADER + ilen)[0])
            old_mlen, old_blen = len(old_meta), len(old_body)
        grown = len(meta) + len(body) - old_mlen - old_blen
        self.cost += grown
        self.bodies += len(body) - old_blen
        self.schedule.stored += grown
        flags = self._redated(seg, off, flags & ~(FORWARD | EXTRA) | extra, old_expires, expires)
        seg.waste += self._write(buf, off, extent(ilen, mlen + blen), flags, idb, expires, hidden, meta, body)
        self._unhidden(seg, off, hidden)
        if hidden > 0:
            self.hidden[0].add(hidden)
        if groups is not None:
            groups.insert(mid, "", block_until(hidden, expires), n)

    def update(self, seg: Segment, off: int, update: Update) -> None:
        """Apply new deadlines and meta to the (live) record at ``off``."""
        buf = seg.buf
        expires = update.expires
        if expires is not None:
            old = F64.unpack_from(buf, off + 1)[0]
            if expires != old:
                buf[off] = self._redated(seg, off, buf[off], old, expires)
                F64.pack_into(buf, off + 1, expires)
                if self.groups is not None:  # a hidden message that expires earlier blocks less
                    self._reblocked(buf, off, old, F64.unpack_from(buf, off + 9)[0])
        hidden = update.hidden_until
        if hidden is not None:
            old = F64.unpack_from(buf, off + 9)[0]
            if old != hidden:
                if buf[off] & EXTRA or self.groups is not None:
                    self._rehidden(buf, off, old, hidden)
                else:  # a plain record (a v1.0 take): the never-claimed ledger
                    deadlines = self.hidden[0]
                    if old > 0:
                        deadlines.remove(old)
                    if hidden > 0:
                        a = deadlines.a
                        if len(a) == deadlines.start or hidden >= a[-1]:  # Deadlines.add inlined
                            a.append(hidden)
                        else:
                            deadlines.add(hidden)
            F64.pack_into(buf, off + 9, hidden)
            if hidden < self.cur_until:
                self._unhidden(seg, off, hidden)
        meta = update.meta
        if meta is not None:
            flags, expires_now, hidden_now, mlen, blen, ilen = REC.unpack_from(buf, off)
            p = off + HEADER
            idb = bytes(buf[p : p + ilen])
            if flags & FORWARD:
                raw, body = self.big.pop(U32.unpack_from(buf, p + ilen)[0])
                old_mlen = len(raw)
            else:
                raw = bytes(buf[p + ilen : p + ilen + mlen]) if flags & EXTRA else b""
                body = bytes(buf[p + ilen + mlen : p + ilen + mlen + blen])
                old_mlen = mlen
            if flags & EXTRA:  # keep the per-message data in front of the new meta
                meta = raw[: XS_SIZE + XS.unpack_from(raw)[3]] + meta
            self.cost += len(meta) - old_mlen
            self.schedule.stored += len(meta) - old_mlen
            room = extent(ilen, mlen + blen)
            flags &= ~FORWARD
            seg.waste += self._write(buf, off, room, flags, idb, expires_now, hidden_now, meta, body)

    def kill(self, seg: Segment, off: int) -> None:
        """Delete the live record at ``off``, index entry included; call :meth:`maintain` afterwards."""
        buf = seg.buf
        start = off + ID_AT
        idb = bytes(buf[start : start + (buf[off + LEN_AT] | buf[off + LEN_AT + 1] << 8)])
        self.index.pop(idb, hash(idb) & M64)
        self.erase(seg, off)

    def erase(self, seg: Segment, off: int, mid: str | None = None) -> Message | None:
        """Turn the live record at ``off`` into a filler (its index entry is the caller's business).

        With ``mid`` (the id, known to the caller), return the record as it was.
        """
        buf = seg.buf
        flags, expires, hidden, mlen, blen, ilen = REC.unpack_from(buf, off)
        # The header is unpacked once, for the snapshot and for the erase.
        found = (
            None if mid is None else self._message(buf, off, flags, expires, hidden, mlen, blen, ilen, mid)
        )
        if flags & EXTRA or self.groups is not None:
            self._track_gone(buf, off, flags, expires, hidden, ilen, mid)
        elif hidden > 0:  # a plain record: never claimed
            self.hidden[0].remove(hidden)
        payload = mlen + blen
        size = (HEADER + ilen + (payload if payload > 4 else 4) + 3) & ~3
        if flags & FORWARD:
            old_meta, old_body = self.big.pop(U32.unpack_from(buf, off + HEADER + ilen)[0])
            mlen, blen = len(old_meta), len(old_body)
        n = ilen + mlen + blen + MESSAGE_COST
        self.cost -= n
        self.bodies -= blen
        self.schedule.stored -= n
        FILL.pack_into(buf, off, FILLER, size)
        seg.live -= 1
        seg.waste += size
        self.live -= 1
        return found

    def _write(
        self,
        buf: bytearray,
        off: int,
        room: int,
        flags: int,
        idb: bytes,
        expires: float,
        hidden: float,
        meta: bytes,
        body: bytes,
    ) -> int:
        """Write a record into ``room`` bytes at ``off`` (out of line if it must); return the bytes left over.

        What is left over becomes a filler.
        """
        ilen, mlen, blen = len(idb), len(meta), len(body)
        size = extent(ilen, mlen + blen)
        if size <= room and HEADER + ilen + mlen + blen <= INLINE_MAX:
            packer(ilen, mlen, blen).pack_into(
                buf, off, flags, expires, hidden, mlen, blen, ilen, idb, meta, body
            )
        else:
            size = extent(ilen, 4)
            REC.pack_into(buf, off, flags | FORWARD, expires, hidden, 0, 4, ilen)
            p = off + HEADER + ilen
            buf[off + HEADER : p] = idb
            U32.pack_into(buf, p, self._stash(meta, body))
        left = room - size
        if left:
            FILL.pack_into(buf, off + size, FILLER, left)
        return left

    def _stash(self, meta: bytes, body: bytes) -> int:
        big = self.big
        key = self.big_next
        while key in big:
            key = (key + 1) & 0xFFFFFFFF
        self.big_next = (key + 1) & 0xFFFFFFFF
        big[key] = (meta, body)
        return key

    # -- claims, sends and moves (the SQS-style operations) -------------------------
    def claim_at(self, seg: Segment, off: int, hidden: float, now: float) -> Message:
        """Hide the (live) record at ``off`` until ``hidden`` and count a receive; return it."""
        buf = seg.buf
        flags, expires, old, mlen, blen, ilen = REC.unpack_from(buf, off)
        p = off + HEADER + ilen
        if flags & EXTRA and not flags & FORWARD:  # the usual case: update the prefix in place
            receives, first, sequence, glen = XS.unpack_from(buf, p)
            XS.pack_into(buf, p, receives + 1, first if receives else now, sequence, glen)
            group = buf[p + XS_SIZE : p + XS_SIZE + glen].decode("utf-8", "surrogatepass") if glen else ""
        else:  # no prefix yet, or out of line: rewrite the record (it may go out of line)
            if flags & FORWARD:
                raw, body = self.big.pop(U32.unpack_from(buf, p)[0])
            else:
                raw, body = bytes(buf[p : p + mlen]), bytes(buf[p + mlen : p + mlen + blen])
            if flags & EXTRA:
                receives, first, sequence, glen = XS.unpack_from(raw)
                rest = raw[XS_SIZE:]
            else:
                receives, first, sequence, glen, rest = 0, 0.0, 0, 0, raw
            group = rest[:glen].decode("utf-8", "surrogatepass")
            meta = XS.pack(receives + 1, first if receives else now, sequence, glen) + rest
            self.cost += len(meta) - len(raw)
            self.schedule.stored += len(meta) - len(raw)
            idb = bytes(buf[off + HEADER : p])
            room = extent(ilen, mlen + blen)
            flags = flags & ~FORWARD | EXTRA
            seg.waste += self._write(buf, off, room, flags, idb, expires, old, meta, body)
        F64.pack_into(buf, off + 9, hidden)
        if hidden < self.cur_until:
            self._unhidden(seg, off, hidden)
        if old > 0:
            self.hidden[receives > 0].remove(old)
        if hidden > 0:
            self.hidden[1].add(hidden)
        if self.groups is not None:
            self.groups.reblock(group, block_until(old, expires), block_until(hidden, expires))
        return self.snapshot(seg, off)

    def append(
        self,
        idb: bytes,
        expires: float,
        hidden: float,
        meta: bytes,
        body: bytes,
        now: float,
        receives: int,
        first: float,
        group: str,
        sequence: int,
    ) -> Position:
        """Create a message last in order with its per-message data, deleting any record of that
        id first; return its position."""
        h = hash(idb) & M64
        loc = self.index.get(idb, h)
        if loc >= 0:
            seg, off = self.at(loc)
            self.index.pop(idb, h)
            self.erase(seg, off)
            self.maintain(seg, now)
        gb = group.encode("utf-8", "surrogatepass")
        if receives or first or sequence or gb:
            self.put(
                idb,
                expires,
                hidden,
                XS.pack(receives, first, sequence, len(gb)) + gb + meta,
                body,
                now,
                EXTRA,
            )
        elif meta:
            self.put(idb, expires, hidden, NO_EXTRA + meta, body, now, EXTRA)
        else:
            self.put(idb, expires, hidden, meta, body, now)
        return self.at(self.index.get(idb, h))

    def receives(self, seg: Segment, off: int) -> int:
        """The receive count of the record at ``off``."""
        buf = seg.buf
        flags = buf[off]
        return self.extra(buf, off, flags, buf[off + LEN_AT] | buf[off + LEN_AT + 1] << 8)[0]

    def expired(self, now: float) -> tuple[int, int, int]:
        """How many stored records have expired at ``now``: (visible, hidden and claimed, hidden
        and never claimed) at ``now``. They are still in the ledger; counts take them out.

        Reads only the segments due by ``now`` (an expired record's deadline is scheduled
        until the cleaner deletes it), and none while ``exp_min`` says nothing is due.
        """
        second = _second(now)
        if self.exp_min > second:
            return 0, 0, 0
        counts = [0, 0, 0]
        low = NEVER
        seg = self.head
        while seg is not None:
            due = seg.due
            if 0 <= due <= second:
                self._tally_expired(seg, now, counts)
            if 0 <= due < low:
                low = due
            seg = seg.next
        self.exp_min = low
        return counts[0], counts[1], counts[2]

    def _tally_expired(self, seg: Segment, now: float, counts: list[int]) -> None:
        buf, second = seg.buf, _second(now)
        found: list[int] = []
        if 0 <= seg.mono_due <= second:  # MONO records expire in order: walk until one has not
            off, used = seg.mono_pos, seg.used
            while off < used:
                flags = buf[off]
                if flags & LIVE:
                    _, expires, _, mlen, blen, ilen = REC.unpack_from(buf, off)
                    if flags & MONO:
                        if expires > now:
                            break
                        found.append(off)
                    off += extent(ilen, mlen + blen)
                else:
                    off += buf[off + 1] | buf[off + 2] << 8
        wheel, limit = seg.wheel, second - seg.base
        if wheel and wheel[0] >> OFF_BITS <= limit:
            seen: set[int] = set()  # a record may have stale entries beside its current one
            for entry in wheel:
                if entry >> OFF_BITS > limit:
                    break
                off = (entry & OFF_MASK) << 2
                flags = buf[off]
                if flags & LIVE and not flags & MONO and off not in seen:
                    expires = F64.unpack_from(buf, off + 1)[0]
                    if 0 < expires <= now:
                        seen.add(off)
                        found.append(off)
        for off in found:
            flags, _, hidden, _, _, ilen = REC.unpack_from(buf, off)
            if hidden <= now:
                counts[0] += 1
            else:
                counts[2 if self.extra(buf, off, flags, ilen)[0] == 0 else 1] += 1

    def fifo_select(self, limit: int, now: float) -> tuple[list[Position], list[str]]:
        """The records a FIFO claim takes (the queue has a group index) and their groups."""
        groups = self.groups
        assert groups is not None
        index, slots = self.index, self.slots
        out: list[Position] = []

        def take(mid: str) -> bool:
            idb = mid.encode("utf-8", "surrogatepass")
            loc = index.get(idb, hash(idb) & M64)
            seg, off = slots[loc >> OFF_BITS], (loc & OFF_MASK) << 2
            expires = F64.unpack_from(seg.buf, off + 1)[0]
            if 0 < expires <= now:
                return False
            out.append((seg, off))
            return True

        names = groups.select(limit, now, take)
        return out, names

    # -- hide ledger and group index ------------------------------------------------
    def hidden_between(self, since: float, now: float) -> bool:
        """Whether a record's hide deadline lies in ``(since, now]``."""
        for deadlines in self.hidden:
            a = deadlines.a
            i = bisect.bisect_right(a, since, deadlines.start)
            if i < len(a) and a[i] <= now:
                return True
        return False

    def hidden_in(self, start: float, end: float) -> bool:
        """Whether a record's hide deadline lies in ``[start, end)``."""
        for deadlines in self.hidden:
            a = deadlines.a
            i = bisect.bisect_left(a, start, deadlines.start)
            if i < len(a) and a[i] < end:
                return True
        return False

    def _build_groups(self) -> Groups:
        groups = Groups()
        for seg, off in self._walk():
            buf = seg.buf
            flags = buf[off]
            ilen = buf[off + LEN_AT] | buf[off + LEN_AT + 1] << 8
            mid = bytes(buf[off + HEADER : off + HEADER + ilen]).decode("utf-8", "surrogatepass")
            _, expires, hidden, _, _, ilen = REC.unpack_from(buf, off)
            groups.add(mid, self.extra(buf, off, flags, ilen)[3], block_until(hidden, expires))
        return groups

    def _walk(self) -> Iterator[Position]:
        """The positions of all live records, in order."""
        seg = self.head
        while seg is not None:
            buf, off, used = seg.buf, 0, seg.used
            while off < used:
                if buf[off] & LIVE:
                    _, _, _, mlen, blen, ilen = REC.unpack_from(buf, off)
                    yield seg, off
                    off += extent(ilen, mlen + blen)
                else:
                    off += buf[off + 1] | buf[off + 2] << 8
            seg = seg.next

    def _track_new(self, buf: bytearray, off: int, idb: bytes) -> None:
        """Enter the record just written at ``off`` in the ledger and the group index."""
        flags, expires, hidden, _, _, ilen = REC.unpack_from(buf, off)
        receives, _, _, group = self.extra(buf, off, flags, ilen)
        if hidden > 0:
            self.hidden[receives > 0].add(hidden)
        if self.groups is not None:
            self.groups.add(idb.decode("utf-8", "surrogatepass"), group, block_until(hidden, expires))
        elif group:  # the first grouped message: index the queue (this record included)
            self.groups = self._build_groups()

    def _track_gone(
        self, buf: bytearray, off: int, flags: int, expires: float, hidden: float, ilen: int, mid: str | None
    ) -> int:
        """Take the record at ``off`` (still intact) out of the ledger and the group index;
        return its group order number (-1 without a group index)."""
        receives, _, _, group = self.extra(buf, off, flags, ilen)
        if hidden > 0:
            self.hidden[receives > 0].remove(hidden)
        if self.groups is None:
            return -1
        if not mid:
            mid = bytes(buf[off + HEADER : off + HEADER + ilen]).decode("utf-8", "surrogatepass")
        return self.groups.remove(mid, group, block_until(hidden, expires))

    def _rehidden(self, buf: bytearray, off: int, old: float, hidden: float) -> None:
        """The record at ``off`` goes from hide deadline ``old`` to ``hidden``: update the ledger."""
        flags = buf[off]
        if flags & EXTRA:
            ilen = buf[off + LEN_AT] | buf[off + LEN_AT + 1] << 8
            receives, _, _, group = self.extra(buf, off, flags, ilen)
        else:
            receives, group = 0, ""
        deadlines = self.hidden[receives > 0]
        if old > 0:
            deadlines.remove(old)
        if hidden > 0:
            deadlines.add(hidden)
        if self.groups is not None:
            expires = F64.unpack_from(buf, off + 1)[0]
            self.groups.reblock(group, block_until(old, expires), block_until(hidden, expires))

    def _reblocked(self, buf: bytearray, off: int, old_expires: float, hidden: float) -> None:
        """The record at ``off`` (hidden until ``hidden``) expired at ``old_expires`` before."""
        assert self.groups is not None
        if hidden > 0:
            flags = buf[off]
            group = self.extra(buf, off, flags, buf[off + LEN_AT] | buf[off + LEN_AT + 1] << 8)[3]
            expires = F64.unpack_from(buf, off + 1)[0]
            self.groups.reblock(group, block_until(hidden, old_expires), block_until(hidden, expires))

    # -- segments -----------------------------------------------------------------
    def _room(self, size: int, now: float) -> Segment:
        """A tail segment with ``size`` bytes free at its end, grown or newly linked."""
        tail = self.tail
        if tail is not None and tail.used + size <= SEG_MAX:
            cap = len(tail.buf)
            while cap < tail.used + size:
                cap *= 2
            tail.buf += bytes(cap - len(tail.buf))
            return tail
        cap = SEG_MIN if tail is None else SEG_MAX  # a queue past one segment is a big one
        while cap < size:
            cap *= 2
        if self.free:
            slot = self.free.pop()
        else:
            slot = len(self.slots)
            if slot >= MAX_SLOTS:
                raise StorageUnavailable(f"queue {self.account}/{self.name} is full (16 GiB of records)")
        seg = Segment(self, slot, self.seq, cap, _second(now))
        self.seq += 1
        if slot == len(self.slots):
            self.slots.append(seg)
        else:
            self.slots[slot] = seg
        if tail is None:
            self.head = seg
        else:
            tail.next = seg
            seg.prev = tail
            if tail.used < len(tail.buf):
                del tail.buf[tail.used :]  # sealed: give back the room it will never use
        self.tail = seg
        if tail is not None and tail.live == 0:
            self._drop(tail)
        return seg

    def maintain(self, seg: Segment, now: float) -> None:
        """After deletes in ``seg``: drop it, reset it or compact it as its waste warrants."""
        if seg.live == 0:
            if seg.dead:
                return
            if seg is self.tail:
                self._reset_tail(seg, now)
            else:
                self._drop(seg)
        elif seg.waste * 4 > seg.used * 3 and seg is not self.tail and not seg.dead:
            self._compact(seg, now)

    def _reset_tail(self, seg: Segment, now: float) -> None:
        """Start the emptied tail over (nothing refers to its offsets any more)."""
        seg.used = seg.waste = seg.mono_pos = 0
        if len(seg.buf) > TAIL_KEEP:
            del seg.buf[TAIL_KEEP:]
        seg.mono_last = 0.0
        seg.mono_due = -1
        self.schedule.discard(seg)
        seg.wheel = array("I")
        seg.base = _second(now)
        if self.cur_seg is seg:
            self.cur_off = 0

    def _drop(self, seg: Segment) -> None:
        """Unlink a segment that holds no live record (never the tail)."""
        prev, nxt = seg.prev, seg.next
        if prev is None:
            self.head = nxt
        else:
            prev.next = nxt
        if nxt is None:
            self.tail = prev
        else:
            nxt.prev = prev
        if self.cur_seg is seg:
            self.cur_seg, self.cur_off = nxt, 0
        self.free.append(seg.slot)
        _retire(seg)

    def _compact(self, seg: Segment, now: float) -> None:
        """Squeeze the fillers out of a sealed segment, keeping record order.

        Expired records are deleted on the way. The survivors go to the end of the
        previous segment when they fit there (so sparse leftovers do not keep a segment
        each), else they stay in this one, packed from offset 0. Their index entries and
        wheel entries are rewritten.
        """
        buf = seg.buf
        packed = bytearray()
        moved: list[tuple[bytes, int, float]] = []
        off, used = 0, seg.used
        while off < used:
            if buf[off] & LIVE:
                _, expires, _, mlen, blen, ilen = REC.unpack_from(buf, off)
                size = extent(ilen, mlen + blen)
                if 0 < expires <= now:
                    self.kill(seg, off)
                    self.schedule.expired += 1
                else:
                    moved.append((bytes(buf[off + ID_AT : off + ID_AT + ilen]), len(packed), expires))
                    packed += buf[off : off + size]
                off += size
            else:
                off += buf[off + 1] | buf[off + 2] << 8
        if seg.live == 0:
            self._drop(seg)
            return
        prev = seg.prev
        target = prev if prev is not None and prev.used + len(packed) <= SEG_MAX else seg
        start = target.used if target is prev else 0
        index, slot = self.index, target.slot << OFF_BITS
        for idb, rel, _ in moved:  # while the old copies are still in place to compare ids against
            index.set(idb, hash(idb) & M64, slot | (start + rel) >> 2)
        if target is not seg:
            for _, rel, expires in moved:  # MONO survives only in deadline order after the target's own
                if packed[rel] & MONO:
                    if expires >= target.mono_last:
                        target.mono_last = expires
                    else:
                        packed[rel] &= ~MONO
            del target.buf[start:]
            target.buf += packed
            target.used += len(packed)
            target.live += seg.live
            seg.live = 0
            if self.cur_seg is seg:
                self.cur_seg, self.cur_off = target, start
            self._drop(seg)
        else:
            seg.buf = packed
            seg.used = len(packed)
            seg.waste = seg.mono_pos = 0
            seg.mono_due = -1
            self.schedule.discard(seg)
            seg.wheel = array("I")
            seg.base = _second(now)
            if self.cur_seg is seg:
                self.cur_off = 0
        buf = target.buf
        for _, rel, expires in moved:
            if buf[start + rel] & MONO:
                if target.mono_due < 0:
                    target.mono_due = _second(expires)
            elif expires > 0:
                self._register(target, start + rel, expires)
        self._schedule(target)

    def release(self) -> None:
        """Forget everything (the queue was deleted or emptied)."""
        self.dead = True
        seg = self.head
        while seg is not None:
            nxt = seg.next
            _retire(seg)
            seg = nxt
        self.head = self.tail = self.cur_seg = None
        self.slots.clear()
        self.free.clear()
        self.big.clear()
        self.groups = None
        self.schedule.stored -= self.cost
        self.cost = self.bodies = 0

    # -- expiry -------------------------------------------------------------------
    def _register(self, seg: Segment, off: int, expires: float) -> None:
        d = _delta(seg, expires)
        entry = d << OFF_BITS | off >> 2
        wheel = seg.wheel
        if not wheel or entry >= wheel[-1]:
            wheel.append(entry)
        else:
            bisect.insort(wheel, entry)
        second = seg.base + d
        if seg.due < 0 or second < seg.due:
            self.schedule.move(seg, second)

    def _redated(self, seg: Segment, off: int, flags: int, old: float, new: float) -> int:
        """A record's deadline changes from ``old`` to ``new``: see that the cleaner fires for ``new``.

        Returns the record's flags, MONO cleared if the deadline moved (the MONO walk no
        longer covers it). A non-MONO record's pending entry for ``old`` (it had not
        expired) serves when both fall in the same wheel second; else it goes stale.
        """
        if flags & MONO:
            if new == old:
                return flags
            flags &= ~MONO
        elif old > 0 and new > 0 and _delta(seg, old) == _delta(seg, new):
            return flags
        if new > 0:
            self._register(seg, off, new)
        return flags

    def fire(self, seg: Segment, now: float) -> int:
        """Delete the records of ``seg`` whose deadline passed and reschedule it; return how many."""
        now_second = _second(now)
        killed = 0
        if 0 <= seg.mono_due <= now_second:
            killed += self._fire_mono(seg, now)
        if seg.wheel and seg.base + (seg.wheel[0] >> OFF_BITS) <= now_second:
            killed += self._fire_wheel(seg, now)
        seg.due = -1
        self._schedule(seg)
        self.schedule.expired += killed
        return killed

    def _fire_mono(self, seg: Segment, now: float) -> int:
        """Walk the MONO records from ``mono_pos`` until one has not expired."""
        buf, off, used = seg.buf, seg.mono_pos, seg.used
        killed = 0
        due = -1
        while off < used:
            flags = buf[off]
            if flags & LIVE:
                _, expires, _, mlen, blen, ilen = REC.unpack_from(buf, off)
                payload = mlen + blen
                size = (HEADER + ilen + (payload if payload > 4 else 4) + 3) & ~3
                if flags & MONO:
                    if expires > now:
                        due = _second(expires)
                        break
                    idb = bytes(buf[off + ID_AT : off + ID_AT + ilen])
                    self.index.pop(idb, hash(idb) & M64)
                    self.erase(seg, off)
                    killed += 1
                off += size
            else:
                off += buf[off + 1] | buf[off + 2] << 8
        seg.mono_pos = off
        seg.mono_due = due
        return killed

    def _fire_wheel(self, seg: Segment, now: float) -> int:
        """Process the wheel entries due by now; keep those of deadlines later this second."""
        wheel, base, buf = seg.wheel, seg.base, seg.buf
        limit = _second(now) - base
        keep: list[int] = []
        rebase = False
        killed = 0
        i, n = 0, len(wheel)
        while i < n:
            entry = wheel[i]
            d = entry >> OFF_BITS
            if d > limit:
                break
            i += 1
            off = (entry & OFF_MASK) << 2
            flags = buf[off]
            if not flags & LIVE or flags & MONO:
                continue
            expires = F64.unpack_from(buf, off + 1)[0]
            if 0 < expires <= now:
                self.kill(seg, off)
                killed += 1
            elif expires > 0 and _delta(seg, expires) == d:  # its current deadline, later this second
                keep.append(entry)
                rebase = rebase or d == DELTA_MAX
        del wheel[:i]
        if rebase:  # a far deadline reached the clamp: re-base on now
            self._rebuild_wheel(seg, now)
        elif keep:
            wheel[0:0] = array("I", keep)
        return killed

    def _rebuild_wheel(self, seg: Segment, now: float) -> None:
        """Re-base the wheel on ``now`` and rebuild it from the records (not scheduled here)."""
        seg.base = _second(now)
        entries = []
        buf, off, used = seg.buf, 0, seg.used
        while off < used:
            flags = buf[off]
            if flags & LIVE:
                _, expires, _, mlen, blen, ilen = REC.unpack_from(buf, off)
                if expires > 0 and not flags & MONO:
                    entries.append(_delta(seg, expires) << OFF_BITS | off >> 2)
                off += extent(ilen, mlen + blen)
            else:
                off += buf[off + 1] | buf[off + 2] << 8
        entries.sort()
        seg.wheel = array("I", entries)

    def _schedule(self, seg: Segment) -> None:
        """Schedule the segment at its earliest pending second, if that is before its current one."""
        second = seg.mono_due
        if seg.wheel:
            first = seg.base + (seg.wheel[0] >> OFF_BITS)
            if second < 0 or first < second:
                second = first
        if second >= 0 and (seg.due < 0 or second < seg.due):
            self.schedule.move(seg, second)

    # -- walking ------------------------------------------------------------------
    def _unhidden(self, seg: Segment, off: int, hidden: float) -> None:
        """A record got a new hide deadline: keep the cursor's promise about what lies before it."""
        cur = self.cur_seg
        if (
            hidden < self.cur_until
            and cur is not None
            and (seg.seq < cur.seq or (seg is cur and off < self.cur_off))
        ):
            self.cur_until = hidden

    def select(self, marker: str | None, limit: int | None, match_hidden: bool, now: float) -> list[Position]:
        """The positions of the records a list operation matches, in order."""
        seg: Segment | None = self.head
        off = 0
        advancing = False
        until = INF
        if marker is not None:
            idb = marker.encode("utf-8", "surrogatepass")
            loc = self.index.get(idb, hash(idb) & M64)
            if loc >= 0:
                seg, off = self.at(loc)
                _, _, _, mlen, blen, ilen = REC.unpack_from(seg.buf, off)
                off += extent(ilen, mlen + blen)
        if seg is self.head and off == 0 and not match_hidden:
            if self.cur_seg is None or now >= self.cur_until or now < self.cur_now:
                self.cur_seg, self.cur_off, self.cur_until = self.head, 0, INF
            self.cur_now = now
            seg, off, until = self.cur_seg, self.cur_off, self.cur_until
            advancing = True
        out: list[Position] = []
        last = seg
        while seg is not None:
            buf, used = seg.buf, seg.used
            while off < used:
                if buf[off] & LIVE:
                    _, expires, hidden, mlen, blen, ilen = REC.unpack_from(buf, off)
                    if 0 < expires <= now:
                        pass
                    elif hidden > now and not match_hidden:
                        if advancing and hidden < until:
                            until = hidden
                    else:
                        if advancing:
                            self.cur_seg, self.cur_off, self.cur_until = seg, off, until
                            advancing = False
                        out.append((seg, off))
                        if limit is not None and len(out) >= limit:
                            return out
                    payload = mlen + blen
                    off += (HEADER + ilen + (payload if payload > 4 else 4) + 3) & ~3
                else:
                    off += buf[off + 1] | buf[off + 2] << 8
            last, seg, off = seg, seg.next, 0
        if advancing and last is not None:
            self.cur_seg, self.cur_off, self.cur_until = last, last.used, until
        return out


def _second(t: float) -> int:
    return int(t) if t < FAR else 1 << 52


def _delta(seg: Segment, expires: float) -> int:
    """The wheel second of a deadline, relative to the segment's base and clamped."""
    d = (int(expires) if expires < FAR else 1 << 52) - seg.base
    return 0 if d < 0 else DELTA_MAX if d > DELTA_MAX else d


def _retire(seg: Segment) -> None:
    """Free a segment's memory and unschedule it; stale locations that still name it find it empty."""
    seg.dead = True
    seg.buf = bytearray()
    seg.wheel = array("I")
    seg.prev = seg.next = None
    seg.store.schedule.discard(seg)
