"""Message id -> record location for one queue, with no Python object per message.

An extendible hash over the 64-bit hash ``h`` of the id's UTF-8 bytes. A directory of
``2**depth`` sub-tables is indexed by the low bits of ``h``; a sub-table of depth ``d``
and capacity ``2**c`` serves the hashes whose low ``d`` bits are its ``prefix``, and
keeps Robin Hood linear probing over three parallel arrays::

    disp: bytearray    0 = empty, k = the entry sits k - 1 slots after its home slot
    tags: bytearray    the ``tbits`` hash bits just above the home bits, to filter probes
    locs: array('I')   the record location (see memory_arena)

    h = ... | tag (tbits) | home (c bits) | directory prefix (d bits)

The arrays have SPILL slots past the capacity so a probe run never wraps (the last slot
stays empty). Robin Hood order keeps entries sorted by home along the array, so a
lookup stops as soon as it meets an entry nearer its home than the lookup is to its
own, and an insert or delete shifts the rest of a run by one with slice moves (C).
A stored id costs 6 bytes / load factor (load 0.4 to 0.8). The id itself is not kept:
a hit on the home and tag is confirmed against the id bytes in the record.

Every entry's home is ``slot - disp + 1`` and its next hash bits are in its tag, so a
sub-table doubles, splits in two (by the lowest home bit) or halves without reading any
record: each step moves one bit between the tag and the home. Tags lose a bit per
growth step; a table whose tags are down to TAG_MIN bits is rebuilt from the records
(ids hashed again), once per 16-fold growth. Sub-tables stop doubling at MAX_CAP slots
and split instead, so no rebuild touches more than MAX_CAP entries (about a
millisecond) however big the queue is.

Beside it each queue keeps its records' hide deadlines in sorted :class:`Deadlines`
(for counts and the cleaner's report) and, once it holds grouped messages, a
:class:`Groups` index that finds the claimable FIFO groups without reading the queue.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Callable
from heapq import heapify, heappop, heappush

from burrow.backends.memory_arena import ID_AT, LEN_AT, OFF_BITS, OFF_MASK, Segment

M64 = (1 << 64) - 1
MIN_CAP = 8
MAX_CAP = 2048
MAX_DEPTH = 16
TAG_BITS = 8
TAG_MIN = 4
SPILL = 32
#: Largest displacement (+1) kept in a disp byte; a longer run makes the table grow.
MAX_DISP = 250
_INC = bytes(min(b + 1, 255) if b else 0 for b in range(256))
_DEC = bytes(max(b - 1, 0) for b in range(256))

Entry = tuple[int, int, int]  # (home, tag, location)


class _Table:
    __slots__ = ("depth", "disp", "limit", "live", "locs", "mask", "prefix", "tags", "tmask", "tshift")

    def __init__(self, cap: int, depth: int, prefix: int, tbits: int) -> None:
        #: This table serves the hashes whose low ``depth`` bits equal ``prefix``.
        self.depth = depth
        self.prefix = prefix
        self.reset(cap, tbits)

    def reset(self, cap: int, tbits: int) -> None:
        """Empty the table with a new capacity and tag width."""
        self.disp = bytearray(cap + SPILL)
        self.tags = bytearray(cap + SPILL)
        self.locs = array("I", [0]) * (cap + SPILL)
        self.live = 0
        #: Grow when ``live`` reaches this (load 0.8).
        self.limit = cap * 4 // 5
        #: home = h >> depth & mask
        self.mask = cap - 1
        #: tag = h >> tshift & tmask
        self.tshift = self.depth + cap.bit_length() - 1
        self.tmask = (1 << tbits) - 1

    @property
    def tbits(self) -> int:
        return self.tmask.bit_length()

    def entries(self) -> list[Entry]:
        """(home, tag, location) of every entry, in slot order (so sorted by home)."""
        disp, tags, locs = self.disp, self.tags, self.locs
        # (indexing, not enumerate(): mypyc cannot iterate a bytearray in a comprehension)
        return [(j - disp[j] + 1, tags[j], locs[j]) for j in range(len(disp)) if disp[j]]

    def fill(self, entries: list[Entry]) -> bool:
        """Place entries sorted by home into this empty table; False if a run got too long."""
        disp, tags, locs = self.disp, self.tags, self.locs
        last = len(disp) - 1  # stays empty
        pos = -1
        for home, tag, loc in entries:
            pos = home if home > pos else pos + 1
            if pos >= last or pos - home >= MAX_DISP:
                return False
            disp[pos] = pos - home + 1
            tags[pos] = tag
            locs[pos] = loc
        self.live = len(entries)
        return True


def _match(slots: list[Segment], loc: int, idb: bytes) -> bool:
    buf = slots[loc >> OFF_BITS].buf
    off = (loc & OFF_MASK) << 2
    return buf.startswith(idb, off + ID_AT) and buf[off + LEN_AT] | buf[off + LEN_AT + 1] << 8 == len(idb)


class Index:
    """The id index of one queue; ``slots`` is the queue's slot -> segment list (shared)."""

    __slots__ = ("dir", "dmask", "slots")

    def __init__(self, slots: list[Segment]) -> None:
        self.slots = slots
        self.dir = [_Table(MIN_CAP, 0, 0, TAG_BITS)]
        self.dmask = 0

    def _find(self, t: _Table, idb: bytes, h: int) -> int:
        """The slot of ``idb`` in ``t``, or ``-1 - slot`` of where it would be inserted."""
        disp, tags = t.disp, t.tags
        tag = h >> t.tshift & t.tmask
        j = h >> t.depth & t.mask
        k = 1
        while True:
            d = disp[j]
            if d < k:  # an empty slot, or an entry nearer its home: the id is not here
                return -1 - j
            if d == k and tags[j] == tag and _match(self.slots, t.locs[j], idb):
                return j
            j += 1
            k += 1

    def get(self, idb: bytes, h: int) -> int:
        """The location of the record with id ``idb``, or -1."""
        t = self.dir[h & self.dmask]
        j = h >> t.depth & t.mask
        d = t.disp[j]
        if d == 0:
            return -1
        if d == 1 and t.tags[j] == h >> t.tshift & t.tmask:
            # The common case: at its home slot. _match inlined (this runs on every lookup).
            loc = t.locs[j]
            buf = self.slots[loc >> OFF_BITS].buf
            off = (loc & OFF_MASK) << 2
            if buf.startswith(idb, off + ID_AT) and buf[off + LEN_AT] | buf[off + LEN_AT + 1] << 8 == len(
                idb
            ):
                return loc
        j = self._find(t, idb, h)
        return -1 if j < 0 else t.locs[j]

    def claim(self, idb: bytes, h: int, loc: int) -> int:
        """The location of ``idb`` if present; else insert it at ``loc`` and return -1.

        One probe for the put path's "replace or create".
        """
        t = self.dir[h & self.dmask]
        if t.live >= t.limit:
            t = self._grow(t, h)
        j = h >> t.depth & t.mask
        if t.disp[j] == 0:  # the common case for a new id: its home slot is free
            t.disp[j] = 1
            t.tags[j] = h >> t.tshift & t.tmask
            t.locs[j] = loc
            t.live += 1
            return -1
        j = self._find(t, idb, h)
        if j >= 0:
            return t.locs[j]
        while not self._insert(t, -1 - j, h, loc):
            t = self._grow(t, h)
            j = self._find(t, idb, h)
        return -1

    def _insert(self, t: _Table, p: int, h: int, loc: int) -> bool:
        """Insert at slot ``p`` (from :meth:`_find`), shifting the rest of the run right."""
        disp = t.disp
        k = p - (h >> t.depth & t.mask) + 1
        if disp[p]:
            end = disp.find(0, p)
            if end == len(disp) - 1 or k > MAX_DISP or disp.find(MAX_DISP, p, end) >= 0:
                return False
            disp[p + 1 : end + 1] = disp[p:end].translate(_INC)
            t.tags[p + 1 : end + 1] = t.tags[p:end]
            t.locs[p + 1 : end + 1] = t.locs[p:end]
        elif k > MAX_DISP or p == len(disp) - 1:
            return False
        disp[p] = k
        t.tags[p] = h >> t.tshift & t.tmask
        t.locs[p] = loc
        t.live += 1
        return True

    def set(self, idb: bytes, h: int, loc: int) -> None:
        """Point a present id at its record's new location (after a move)."""
        t = self.dir[h & self.dmask]
        j = self._find(t, idb, h)
        assert j >= 0, "moved record missing from the index"
        t.locs[j] = loc

    def pop(self, idb: bytes, h: int) -> int:
        """Remove the id; return the location it had, or -1 if absent."""
        t = self.dir[h & self.dmask]
        disp, tags, locs = t.disp, t.tags, t.locs
        j = h >> t.depth & t.mask
        loc = locs[j]
        if disp[j] == 1 and tags[j] == h >> t.tshift & t.tmask and _match(self.slots, loc, idb):
            pass  # the common case: at its home slot (checked here, without _find's loop)
        else:
            j = self._find(t, idb, h)
            if j < 0:
                return -1
            loc = locs[j]
        t.live -= 1
        if disp[j + 1] <= 1:  # the common case: nothing displaced follows
            disp[j] = 0
        else:  # the displaced entries that follow move back one slot
            end = disp.find(0, j + 1)
            home = disp.find(1, j + 1, end)
            if home >= 0:
                end = home
            disp[j : end - 1] = disp[j + 1 : end].translate(_DEC)
            tags[j : end - 1] = tags[j + 1 : end]
            locs[j : end - 1] = locs[j + 1 : end]
            disp[end - 1] = 0
        if t.live * 8 < t.mask and t.mask >= MIN_CAP:
            self._resize(t, (t.mask + 1) // 2)
        return loc

    # -- growth -------------------------------------------------------------------
    def _grow(self, t: _Table, h: int) -> _Table:
        """Make room in the table serving ``h``; return the table that now serves it."""
        cap = t.mask + 1
        if t.tbits <= TAG_MIN:
            self._rebuild(t, [loc for _, _, loc in t.entries()], cap)  # refresh the tags
            if t.live < t.limit:
                return t
        if cap < MAX_CAP or t.depth >= MAX_DEPTH:
            self._resize(t, cap * 2)
        else:
            self._split(t)
        return self.dir[h & self.dmask]

    def _resize(self, t: _Table, cap: int) -> None:
        """Double or halve a table in place, moving one bit between tag and home."""
        entries = t.entries()
        old = t.mask + 1
        tbits = t.tbits
        if cap > old:  # the tag's low bit becomes the home's new top bit
            t.reset(cap, tbits - 1)
            moved = [(home, tag >> 1, loc) for home, tag, loc in entries if not tag & 1]
            moved += [(home | old, tag >> 1, loc) for home, tag, loc in entries if tag & 1]
        else:  # the home's top bit becomes the tag's new low bit
            t.reset(cap, min(TAG_BITS, tbits + 1))
            mask, top = cap - 1, cap.bit_length() - 1
            moved = sorted((home & mask, (tag << 1 | home >> top) & 0xFF, loc) for home, tag, loc in entries)
        if not t.fill(moved):
            self._rebuild(t, [loc for _, _, loc in entries], cap * 2)

    def _split(self, t: _Table) -> None:
        """Split a table in two by the lowest home bit (the next directory bit)."""
        entries = t.entries()
        if t.depth == self.dmask.bit_length():  # double the directory: each table now has two entries
            self.dir = self.dir + self.dir
            self.dmask = self.dmask << 1 | 1
        cap = t.mask + 1
        depth = t.depth + 1
        tbits = t.tbits - 1
        halves = (_Table(cap, depth, t.prefix, tbits), _Table(cap, depth, t.prefix | 1 << t.depth, tbits))
        high = cap >> 1
        stride = 1 << depth
        for bit, half in enumerate(halves):
            part = [
                (home >> 1, tag >> 1, loc) for home, tag, loc in entries if home & 1 == bit and not tag & 1
            ]
            part += [
                (home >> 1 | high, tag >> 1, loc) for home, tag, loc in entries if home & 1 == bit and tag & 1
            ]
            if not half.fill(part):
                self._rebuild(half, [loc for _, _, loc in part], cap * 2)
            self.dir[half.prefix :: stride] = [half] * (len(self.dir) // stride)

    def _rebuild(self, t: _Table, locs: list[int], cap: int) -> None:
        """Fill ``t`` afresh with the entries at ``locs``, hashing their ids again from the records."""
        slots = self.slots
        hashes = []
        for loc in locs:
            buf = slots[loc >> OFF_BITS].buf
            off = ((loc & OFF_MASK) << 2) + LEN_AT
            end = off + 2 + (buf[off] | buf[off + 1] << 8)
            hashes.append((hash(bytes(buf[off + 2 : end])) & M64, loc))
        while True:
            t.reset(cap, TAG_BITS)
            hshift, mask, tshift, tmask = t.depth, t.mask, t.tshift, t.tmask
            if t.fill(sorted((h >> hshift & mask, h >> tshift & tmask, loc) for h, loc in hashes)):
                return
            cap *= 2  # a pathological probe run: spread the table further

    def __len__(self) -> int:
        return sum(t.live for t in self._tables())

    def _tables(self) -> list[_Table]:
        return list({id(t): t for t in self.dir}.values())

    def tables(self) -> list[tuple[int, int, int]]:
        """(capacity, live entries, tag bits) of each sub-table, for tests and statistics."""
        return [(t.mask + 1, t.live, t.tbits) for t in self._tables()]


# -- hide deadlines and FIFO groups ---------------------------------------------------------


class Deadlines:
    """A sorted multiset of floats (hide deadlines) in one ``array('d')`` with a movable front.

    The live values are ``a[start:]``. An add or a remove shifts whichever side of its
    position is shorter (one C memmove), so the usual patterns, deadlines added near the
    end and removed near either end, cost O(log n).
    """

    __slots__ = ("a", "start")

    def __init__(self, values: list[float] | None = None) -> None:
        self.a = array("d", sorted(values) if values else ())
        self.start = 0

    def __len__(self) -> int:
        return len(self.a) - self.start

    def last(self) -> float:
        """The largest value, or 0.0 when empty."""
        a = self.a
        return a[-1] if len(a) > self.start else 0.0

    def above(self, x: float) -> int:
        """How many values are greater than ``x``."""
        a = self.a
        return len(a) - bisect_right(a, x, self.start)

    def add(self, x: float) -> None:
        a, start = self.a, self.start
        if len(a) == start or x >= a[-1]:  # the usual case: a deadline later than all others
            a.append(x)
            return
        i = bisect_right(a, x, start)
        if start and i - start < len(a) - i:  # shift the front left by one
            a[start - 1 : i - 1] = a[start:i]
            a[i - 1] = x
            self.start = start - 1
        else:
            a.insert(i, x)

    def remove(self, x: float) -> None:
        """Remove one copy of ``x`` (which must be present)."""
        a, start = self.a, self.start
        if a[start] == x:  # the earliest (or all equal): move the front
            start += 1
            if start == len(a):
                del a[:]
                start = 0
            elif start > 64 and start * 2 > len(a):
                del a[:start]
                start = 0
            self.start = start
            return
        if a[-1] == x:
            del a[-1]
            return
        i = bisect_left(a, x, start)
        j = bisect_right(a, x, i)
        assert j > i, "deadline missing from its ledger"
        if i - start < len(a) - j:  # shift the front right over the copy at i
            a[start + 1 : i + 1] = a[start:i]
            start += 1
            if start > 64 and start * 2 > len(a):
                del a[:start]
                start = 0
            self.start = start
        else:
            del a[j - 1]


def block_until(hidden: float, expires: float) -> float:
    """Until when a message with these deadlines blocks its FIFO group (0: it does not).

    A hidden message blocks until its hide runs out, or until it expires if that is earlier.
    """
    return expires if 0 < expires < hidden else hidden


class Group:
    """The messages of one FIFO group in queue order: order numbers and ids from ``start``.

    ``until`` holds the :func:`block_until` times (> 0) of its messages: the group is
    blocked at ``now`` while ``until.last() > now``.
    """

    __slots__ = ("ords", "ids", "start", "until")

    def __init__(self) -> None:
        self.ords = array("q")
        self.ids: list[str | None] = []
        self.start = 0
        self.until = Deadlines()

    def head(self) -> int:
        return self.ords[self.start]


class Groups:
    """The group index of a queue that holds grouped messages, for FIFO claims.

    Every message of the queue (group "" included) has an order number, growing with queue
    order (``order``: id -> number), and sits in its :class:`Group`. Two lazy heaps find
    the claimable groups without looking at the others: ``ready`` holds ``(head order
    number, group)`` and ``blocked`` holds ``(time it stops blocking, group)``. An entry is
    checked when it comes up: a ``ready`` entry whose head has changed is dropped, one
    whose group turned out blocked moves to ``blocked``, and a ``blocked`` entry whose
    deadline passed goes back to ``ready``. Every change that can make a group claimable
    earlier than its entries say (a new head, a block shortened or removed) pushes a fresh
    ``ready`` entry; the heaps are rebuilt when stale entries outnumber the groups. The
    methods take :func:`block_until` times where they say ``until``.
    """

    __slots__ = ("next", "order", "groups", "ready", "blocked")

    def __init__(self) -> None:
        self.next = 0
        self.order: dict[str, int] = {}
        self.groups: dict[str, Group] = {}
        self.ready: list[tuple[int, str]] = []
        self.blocked: list[tuple[float, str]] = []

    def add(self, mid: str, group: str, until: float) -> None:
        """A message appended last to the queue."""
        n = self.next
        self.next = n + 1
        self.insert(mid, group, until, n)

    def insert(self, mid: str, group: str, until: float, n: int) -> None:
        """Put a message with order number ``n`` into its group."""
        self.order[mid] = n
        g = self.groups.get(group)
        if g is None:
            g = self.groups[group] = Group()
        ords = g.ords
        if not ords or n > ords[-1]:
            i = len(ords)
            ords.append(n)
            g.ids.append(mid)
        else:
            i = bisect_left(ords, n, g.start)
            ords.insert(i, n)
            g.ids.insert(i, mid)
        if until > 0:
            g.until.add(until)
        if i == g.start:
            self._push_ready(g, group)

    def remove(self, mid: str, group: str, until: float) -> int:
        """Take a message out of its group; return its order number."""
        n = self.order.pop(mid)
        g = self.groups[group]
        ords, start = g.ords, g.start
        head = ords[start] == n
        if head:
            g.ids[start] = None
            start += 1
            if start == len(ords):
                del self.groups[group]
                return n
            if start > 16 and start * 2 > len(ords):
                del ords[:start]
                del g.ids[:start]
                start = 0
            g.start = start
        else:
            i = bisect_left(ords, n, start)
            del ords[i]
            del g.ids[i]
        was = g.until.last()
        if until > 0:
            g.until.remove(until)
        if head or g.until.last() < was:
            self._push_ready(g, group)
        return n

    def reblock(self, group: str, old: float, new: float) -> None:
        """A message of ``group`` blocks until ``new`` instead of ``old``."""
        if old == new:
            return
        g = self.groups[group]
        until = g.until
        was = until.last()
        if old > 0:
            until.remove(old)
        if new > 0:
            until.add(new)
        if until.last() < was:
            self._push_ready(g, group)

    def _push_ready(self, g: Group, group: str) -> None:
        heappush(self.ready, (g.head(), group))
        if len(self.ready) > 2 * len(self.groups) + 64:
            self._rebuild()

    def _rebuild(self) -> None:
        self.ready = [(g.head(), name) for name, g in self.groups.items()]
        heapify(self.ready)
        self.blocked = []

    def select(self, limit: int, now: float, take: Callable[[str], bool]) -> list[str]:
        """Offer a FIFO claim at ``now`` the messages of the unblocked groups in queue order.

        ``take(id)`` says whether it took the message (False: it has expired); offers stop
        after ``limit`` were taken. An unblocked group's unexpired messages are all visible.
        Returns the groups that gave messages (see :meth:`settle`).
        """
        groups, ready, blocked = self.groups, self.ready, self.blocked
        while blocked and blocked[0][0] <= now:
            name = heappop(blocked)[1]
            g = groups.get(name)
            if g is not None:
                heappush(ready, (g.head(), name))
        taking: dict[str, int] = {}  # group -> index of its next message
        merge: list[tuple[int, str]] = []  # (order number, group) of the groups being taken
        taken = 0
        while taken < limit:
            while ready:
                n, name = ready[0]
                g = groups.get(name)
                if g is None or name in taking or g.ords[g.start] != n:
                    heappop(ready)
                    continue
                latest = g.until.last()
                if latest > now:
                    heappop(ready)
                    heappush(blocked, (latest, name))
                    continue
                break
            if ready and (not merge or ready[0][0] < merge[0][0]):
                name = heappop(ready)[1]
                g = groups[name]
                i = g.start
            elif merge:
                name = heappop(merge)[1]
                g = groups[name]
                i = taking[name]
            else:
                break
            mid = g.ids[i]
            assert mid is not None
            taken += take(mid)
            i += 1
            taking[name] = i
            if i < len(g.ords):
                heappush(merge, (g.ords[i], name))
        return list(taking)

    def settle(self, names: list[str], now: float) -> None:
        """After a claim took messages of ``names``: give each group its heap entry again."""
        for name in names:
            g = self.groups.get(name)
            if g is None:
                continue
            latest = g.until.last()
            if latest > now:
                heappush(self.blocked, (latest, name))
                if len(self.blocked) > 2 * len(self.groups) + 64:
                    self._rebuild()
            else:
                self._push_ready(g, name)
