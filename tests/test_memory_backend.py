"""Internals of the compact memory backend that the contract suite cannot reach.

Segments (drop, compaction, merge), the id index under churn, out-of-line records,
expiry wheels across compaction, the cleaner's budget, the take cursor and marker seeks;
the per-message data prefix, the hide ledger and the FIFO group index (checked against
the records under churn), counts across hide expiry, the cleaner's report window and
plain records staying as small as before. Times are numbers passed in, as in the
contract suite.
"""

from __future__ import annotations

import random

import pytest

from burrow.backends import memory as memory_module
from burrow.backends.memory import MemoryBackend
from burrow.backends.memory_arena import (
    DELTA_MAX,
    EXTRA,
    FORWARD,
    HEADER,
    INLINE_MAX,
    LIVE,
    REC,
    SEG_MAX,
    XS,
    Segment,
    extent,
)
from burrow.backends.memory_index import SPILL, Deadlines, Index, block_until
from burrow.backends.memory_queue import QueueStore
from burrow.core.model import Counts, Filter, Message, Update

T = 1_000_000.0
ALL = Filter(match_hidden=True)
BODY = b"b" * 100


def store(b: MemoryBackend, account: str = "a", queue: str = "q") -> QueueStore:
    q = b._accounts[account][queue]
    assert not q.dead
    return q


def segments(q: QueueStore) -> list[Segment]:
    out = []
    seg = q.head
    while seg is not None:
        out.append(seg)
        seg = seg.next
    return out


def check_index(index: Index) -> None:
    """Robin Hood order holds (homes never decrease along a table) and counts agree."""
    for t in {id(t): t for t in index.dir}.values():
        homes = [j - d + 1 for j, d in enumerate(t.disp) if d]
        assert homes == sorted(homes)
        assert all(0 <= h <= t.mask for h in homes)
        assert len(homes) == t.live
        assert t.disp[-1] == 0 and len(t.disp) == t.mask + 1 + SPILL


async def fill(b: MemoryBackend, n: int, prefix: str = "m", body: bytes = BODY, ttl: float = 0) -> list[str]:
    names = [f"{prefix}{i:06d}" for i in range(n)]
    for name in names:
        await b.put_message("a", "q", name, body, T + ttl if ttl else 0.0, 0.0, T)
    return names


async def ids(b: MemoryBackend, f: Filter = ALL, now: float = T) -> list[str]:
    return [m.id for m in await b.get_messages("a", "q", f, now)]


async def test_index_and_order_survive_random_churn() -> None:
    """50k random puts, replacements and deletes against a dict model."""
    b = MemoryBackend()
    rng = random.Random(7)
    model: dict[str, bytes] = {}  # insertion-ordered, like the queue
    for step in range(50_000):
        name = f"id{rng.randrange(6000)}"
        roll = rng.random()
        if roll < 0.55:
            body = bytes([step & 0xFF]) * rng.choice((0, 3, 100, 300))
            created = await b.put_message("a", "q", name, body, 0.0, 0.0, T)
            assert created == (name not in model)
            model[name] = body
        elif roll < 0.85:
            got = await b.delete_message("a", "q", name, T)
            assert (got is not None) == (name in model)
            model.pop(name, None)
        else:
            got = await b.get_message("a", "q", name, T)
            assert (got.body if got else None) == model.get(name)
        if step % 10_000 == 0 and model:
            check_index(store(b).index)
    q = store(b)
    assert len(q.index) == q.live == len(model)
    check_index(q.index)
    assert [(m.id, m.body) for m in await b.get_messages("a", "q", ALL, T)] == list(model.items())
    for name in list(model):
        assert await b.delete_message("a", "q", name, T) is not None
    assert await b.list_accounts(ALL, T) == []


async def test_index_grows_splits_refreshes_and_shrinks() -> None:
    b = MemoryBackend()
    names = await fill(b, 40_000, body=b"")
    index = store(b).index
    tables = index.tables()
    assert len(tables) > 16 and all(cap <= 2048 for cap, _, _ in tables)
    assert all(bits >= 4 for _, _, bits in tables)
    check_index(index)
    for name in names[::7]:
        assert (await b.get_message("a", "q", name, T)) == Message(name, b"", 0.0, 0.0)
    for name in names[: len(names) - 100]:
        await b.delete_message("a", "q", name, T)
    check_index(index)
    assert sum(cap for cap, _, _ in index.tables()) < 20_000  # tables shrank with the queue
    assert await ids(b) == names[-100:]
    await b.delete_accounts(ALL, T)


async def test_dropped_and_compacted_segments_keep_order_and_data() -> None:
    b = MemoryBackend()
    names = await fill(b, 2000, body=BODY)  # 140-byte records: about 4.3 segments of 64 KiB
    q = store(b)
    assert len(segments(q)) == 5
    first = segments(q)[0]
    per_segment = first.live
    # empty the whole first segment: dropped
    for name in names[:per_segment]:
        await b.delete_message("a", "q", name, T)
    assert first.dead and len(segments(q)) == 4
    # thin out the next two segments past 3/4 filler: compacted, the second merged into the first
    kept = names[per_segment:]
    doomed = [name for i, name in enumerate(kept[: 2 * per_segment]) if i % 10]
    for name in doomed:
        await b.delete_message("a", "q", name, T)
    survivors = [name for name in kept if name not in set(doomed)]
    assert len(segments(q)) == 3
    assert all(seg.waste * 4 <= seg.used * 3 or seg is q.tail for seg in segments(q))
    got = await b.get_messages("a", "q", ALL, T)
    assert [m.id for m in got] == survivors
    assert all(m.body == BODY for m in got)
    # ids still resolve after their records moved
    for name in survivors[::13]:
        assert (await b.get_message("a", "q", name, T)) == Message(name, BODY, 0.0, 0.0)
    check_index(q.index)
    await b.delete_accounts(ALL, T)


async def test_replacement_in_place_and_out_of_line() -> None:
    b = MemoryBackend()
    await fill(b, 3, body=b"small")
    big = bytes(range(256)) * 100  # 25 KiB: over INLINE_MAX, kept out of line
    assert len(big) > INLINE_MAX
    assert not await b.put_message("a", "q", "m000001", big, 0.0, 0.0, T, meta=b"m1")
    q = store(b)
    assert len(q.big) == 1
    assert await ids(b) == ["m000000", "m000001", "m000002"]
    assert (await b.get_message("a", "q", "m000001", T)) == Message("m000001", big, 0.0, 0.0, b"m1")
    # back to a small body: inline again, in place
    assert not await b.put_message("a", "q", "m000001", b"xy", T + 50, T + 5, T)
    assert q.big == {}
    assert (await b.get_message("a", "q", "m000001", T)) == Message("m000001", b"xy", T + 50, T + 5)
    # a meta update that no longer fits the record's room forwards it, keeping its place
    updated = await b.update_message("a", "q", "m000000", Update(meta=b"M" * 500), T)
    assert updated == Message("m000000", b"small", 0.0, 0.0, b"M" * 500)
    assert len(q.big) == 1
    listed = await b.get_messages("a", "q", ALL, T)
    assert [m.id for m in listed] == ["m000000", "m000001", "m000002"]
    assert listed[0].meta == b"M" * 500 and listed[2].body == b"small"
    deleted = await b.delete_messages("a", "q", ALL, T)
    assert [m.meta for m in deleted] == [b"M" * 500, b"", b""]
    assert q.big == {} and q.dead


@pytest.mark.parametrize("size", [INLINE_MAX - 100, 100 * 1024, 2 * 1024 * 1024])
async def test_large_bodies_round_trip(size: int) -> None:
    b = MemoryBackend()
    body = random.Random(size).randbytes(size)
    await b.put_message("a", "q", "big", body, 0.0, 0.0, T)
    await fill(b, 50)
    assert (await b.get_message("a", "q", "big", T)) == Message("big", body, 0.0, 0.0)
    assert (await b.get_messages("a", "q", Filter(limit=1), T))[0].body == body
    assert (await b.delete_message("a", "q", "big", T)) == Message("big", body, 0.0, 0.0)
    await b.delete_accounts(ALL, T)


async def test_marker_seeks_into_the_middle_of_a_big_queue() -> None:
    b = MemoryBackend()
    names = await fill(b, 3000)
    for name in names[1000:1010]:
        await b.delete_message("a", "q", name, T)
    assert await ids(b, Filter(marker=names[1999], limit=3)) == names[2000:2003]
    assert await ids(b, Filter(marker=names[999], limit=2)) == names[1010:1012]
    assert await ids(b, Filter(marker=names[-1])) == []
    assert await ids(b, Filter(marker=names[1005], limit=1)) == names[:1]  # deleted: unknown marker
    await b.delete_accounts(ALL, T)


async def test_wheel_entries_follow_compaction_and_merge() -> None:
    """Deadlines out of order get wheel entries; they must still fire after records move."""
    b = MemoryBackend()
    names = [f"m{i:05d}" for i in range(1500)]
    rng = random.Random(3)
    ttls = {name: rng.choice((10, 20, 30, 40)) for name in names}
    for name in names:
        await b.put_message("a", "q", name, BODY, T + ttls[name], 0.0, T)
    q = store(b)
    assert any(seg.wheel for seg in segments(q))  # not all in deadline order: wheel entries
    # thin out everything but the tail so that segments compact and merge
    doomed = [name for i, name in enumerate(names[:1400]) if i % 8]
    for name in doomed:
        await b.delete_message("a", "q", name, T)
    left = [name for name in names if name not in set(doomed)]
    assert len(segments(q)) == 3  # the second segment's survivors merged into the first
    assert all(seg.waste * 4 <= seg.used * 3 for seg in segments(q))
    for ttl in (10, 20, 30, 40):
        await b.clean(T + ttl, T)
        assert await ids(b, now=T + ttl) == [name for name in left if ttls[name] > ttl]
        assert q.live == len([name for name in left if ttls[name] > ttl]) or ttl == 40
    assert await b.list_accounts(ALL, T + 40) == []


async def test_redated_records_expire_at_their_new_deadline() -> None:
    b = MemoryBackend()
    await fill(b, 300, ttl=10)  # all MONO: expired by the in-order walk
    q = store(b)
    assert not any(seg.wheel for seg in segments(q))
    await b.update_message("a", "q", "m000005", Update(expires=T + 30), T)
    await b.update_message("a", "q", "m000006", Update(expires=0.0), T)
    await b.update_message("a", "q", "m000007", Update(expires=T + 5), T)
    await b.put_message("a", "q", "m000008", b"new", T + 20, 0.0, T)
    await b.clean(T + 5, T)
    assert q.live == 299
    await b.clean(T + 10, T)
    assert await ids(b, now=T + 10) == ["m000005", "m000006", "m000008"]
    await b.clean(T + 20, T)
    assert await ids(b, now=T + 20) == ["m000005", "m000006"]
    await b.clean(T + 30, T)
    assert await ids(b, now=T + 30) == ["m000006"]
    await b.delete_accounts(ALL, T)


async def test_far_deadlines_are_clamped_then_rebased() -> None:
    b = MemoryBackend()
    far = T + DELTA_MAX + 1000.5
    await b.put_message("a", "q", "soon", BODY, T + 100, 0.0, T)
    await b.put_message("a", "q", "far", BODY, far, 0.0, T)  # earlier MONO deadline: wheel entry
    await b.put_message("a", "q", "never-ish", BODY, 1e300, 0.0, T)
    await b.clean(T + DELTA_MAX, T)  # the clamp comes due: nothing is deleted early
    assert await ids(b, now=T + DELTA_MAX) == ["far", "never-ish"]
    await b.clean(far - 1, T)
    assert await ids(b, now=far - 1) == ["far", "never-ish"]
    await b.clean(far, T)
    assert await ids(b, now=far) == ["never-ish"]
    await b.delete_accounts(ALL, T)


async def test_expiry_within_a_second_is_exact() -> None:
    b = MemoryBackend()
    await b.put_message("a", "q", "early", BODY, T + 5.25, 0.0, T)
    await b.put_message("a", "q", "late", BODY, T + 5.75, 0.0, T)
    await b.put_message("a", "q", "out-of-order", BODY, T + 5.5, T + 5.4, T)
    await b.put_message("a", "r", "hidden", BODY, 0.0, T + 5.45, T)
    assert await b.clean(T + 5.3, T) == []
    assert store(b).live == 2
    woken = await b.clean(T + 5.6, T + 5.3)  # "out-of-order" expired before its queue's report
    assert woken == [("a", "r")]
    assert store(b).live == 1
    await b.clean(T + 5.75, T + 5.6)
    assert await b.list_queues("a", ALL, T + 6) == ["r"]
    await b.delete_accounts(ALL, T)


async def test_cleaner_spreads_a_burst_over_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory_module, "CLEAN_BUDGET", 1000)
    b = MemoryBackend()
    await fill(b, 5000, ttl=10)
    passes = 0
    while await b.list_accounts(ALL, T + 10):
        await b.clean(T + 10 + passes, T)
        passes += 1
        assert await ids(b, now=T + 10) == []  # expired ones are invisible meanwhile
    assert 4 <= passes <= 7
    assert await b.count_messages() == 0


async def test_take_cursor_skips_in_flight_messages_and_sees_them_return() -> None:
    b = MemoryBackend()
    names = await fill(b, 1000)
    take = Filter(limit=1)
    taken = []
    for i in range(600):
        got = await b.update_messages("a", "q", take, Update(hidden_until=T + 30 + i % 7), T)
        taken.append(got[0].id)
    assert taken == names[:600]
    q = store(b)
    assert q.cur_seg is not None and q.cur_seg.seq > 0  # the cursor moved past the in-flight head
    # un-hiding one behind the cursor makes it the next one taken
    await b.update_message("a", "q", names[250], Update(hidden_until=0.0), T)
    got = await b.update_messages("a", "q", take, Update(hidden_until=T + 30), T)
    assert [m.id for m in got] == [names[250]]
    assert await ids(b, Filter(limit=2)) == names[600:602]
    # hides running out bring the head back, in order (hidden until T + 30 + i % 7)
    assert await ids(b, Filter(limit=3), now=T + 31) == [names[0], names[1], names[7]]
    assert await ids(b, Filter(limit=1), now=T + 29) == names[600:601]  # a clock gone back
    # delete the in-flight ones: get-and-delete still finds the first visible one
    for name in taken:
        await b.delete_message("a", "q", name, T)
    assert [m.id for m in await b.delete_messages("a", "q", take, T)] == [names[600]]
    await b.delete_accounts(ALL, T)


async def test_emptied_tail_is_reused_and_queue_lifecycle() -> None:
    b = MemoryBackend()
    await fill(b, 10)
    q = store(b)
    for i in range(200):  # a queue consumed as fast as it is fed: the tail restarts in place
        await b.put_message("a", "q", f"x{i}", BODY, 0.0, 0.0, T)
        await b.delete_message("a", "q", f"x{i}", T)
    assert len(segments(q)) == 1 and q.tail is not None and len(q.tail.buf) <= SEG_MAX
    await b.delete_messages("a", "q", ALL, T)
    assert q.dead and await b.list_accounts(ALL, T) == []
    await fill(b, 2)
    assert store(b) is not q
    await b.delete_accounts(ALL, T)


async def test_overlong_ids_are_refused_before_anything_is_created() -> None:
    b = MemoryBackend()
    with pytest.raises(ValueError, match="longer than"):
        await b.put_message("a", "q", "x" * 20_000, BODY, 0.0, 0.0, T)
    assert await b.list_accounts(ALL, T) == []


async def test_a_queue_emptied_and_refilled_is_not_kept_alive_by_old_deadlines() -> None:
    """An SQS worker's queue empties after every message, whose retention is days away:
    neither the expiry schedule nor the unhide report may keep the dropped stores."""
    import gc

    b = MemoryBackend()
    far = T + 4 * 86_400
    for i in range(300):
        now = T + i / 100
        await b.put_message("a", "q", f"m{i}", BODY, far + i, 0.0, now)  # wheel and MONO deadlines
        await b.put_message("a", "q", f"n{i}", BODY, far - i, 0.0, now)
        taken = await b.update_messages("a", "q", Filter(limit=2), Update(hidden_until=now + 30), now)
        assert len(taken) == 2
        for m in taken:
            assert await b.delete_message("a", "q", m.id, now) is not None
        assert "a" not in b._accounts  # the queue was dropped when it emptied
    assert [seg for bucket in b._schedule.buckets.values() for seg in bucket] == []
    gc.collect()
    assert not any(isinstance(o, QueueStore) for o in gc.get_objects())
    # The cleaner still runs past those seconds without trouble.
    assert await b.clean(far + 400, far) == []
    assert await b.count_messages() == 0


# -- per-message data, hide ledger, FIFO group index ------------------------------------------


def values(d: Deadlines) -> list[float]:
    return list(d.a[d.start :])


def check_tracking(q: QueueStore) -> None:
    """The ledger and the group index agree with the records (rebuilt from them here)."""
    ledger: tuple[list[float], list[float]] = ([], [])
    members: dict[str, list[tuple[str, float]]] = {}
    order = []
    seg = q.head
    while seg is not None:
        buf, off = seg.buf, 0
        while off < seg.used:
            if not buf[off] & LIVE:  # a filler
                off += buf[off + 1] | buf[off + 2] << 8
                continue
            flags, expires, hidden, mlen, blen, ilen = REC.unpack_from(buf, off)
            receives, _, _, group = q.extra(buf, off, flags, ilen)
            mid = bytes(buf[off + HEADER : off + HEADER + ilen]).decode()
            if hidden > 0:
                ledger[receives > 0].append(hidden)
            members.setdefault(group, []).append((mid, block_until(hidden, expires)))
            order.append(mid)
            off += extent(ilen, mlen + blen)
        seg = seg.next
    assert values(q.hidden[0]) == sorted(ledger[0])
    assert values(q.hidden[1]) == sorted(ledger[1])
    groups = q.groups
    if groups is None:
        assert set(members) <= {""}
        return
    assert sorted(groups.order) == sorted(order)
    numbers = [groups.order[mid] for mid in order]
    assert numbers == sorted(numbers)
    assert set(groups.groups) == set(members)
    for name, mine in members.items():
        g = groups.groups[name]
        assert g.ids[g.start :] == [mid for mid, _ in mine]
        assert list(g.ords[g.start :]) == [groups.order[mid] for mid, _ in mine]
        assert values(g.until) == sorted(until for _, until in mine if until > 0)
    assert len(groups.ready) <= 2 * len(groups.groups) + 65
    assert len(groups.blocked) <= 2 * len(groups.groups) + 65


async def expected_fifo_claim(b: MemoryBackend, limit: int, now: float) -> list[str]:
    """A FIFO claim by brute force: visible messages of the groups with nothing hidden."""
    live = await b.get_messages("a", "q", ALL, now)
    blocked = {m.group for m in live if m.hidden_until > now}
    return [m.id for m in live if m.hidden_until <= now and m.group not in blocked][:limit]


def test_deadlines_keep_a_sorted_multiset() -> None:
    rng = random.Random(5)
    d = Deadlines([3.0, 1.0])
    model = [1.0, 3.0]
    for _ in range(20_000):
        if model and rng.random() < 0.5:
            x = rng.choice(model) if rng.random() < 0.7 else (model[0] if rng.random() < 0.5 else model[-1])
            d.remove(x)
            model.remove(x)
        else:
            x = float(rng.randrange(50)) if rng.random() < 0.5 else 100.0 + len(model)
            d.add(x)
            model.append(x)
        model.sort()
        if rng.random() < 0.05:
            assert values(d) == model
            assert d.last() == (model[-1] if model else 0.0)
            t = rng.randrange(60)
            assert d.above(t) == sum(v > t for v in model)
    assert values(d) == model


async def test_plain_records_carry_no_per_message_data() -> None:
    """v1.0 messages keep their size: no prefix, no flag; a front end's meta reserves one."""
    b = MemoryBackend()
    names = await fill(b, 100, body=BODY)
    q = store(b)
    assert q.head is not None and q.head.used == 100 * extent(7, len(BODY))
    assert not any(q.head.buf[off] & EXTRA for off in range(0, q.head.used, extent(7, len(BODY))))
    await b.put_message("a", "q", "sqs", BODY, 0.0, 0.0, T, meta=b"attrs")
    seg = q.tail
    assert seg is not None
    off = seg.used - extent(3, XS.size + 5 + len(BODY))
    assert seg.buf[off] & EXTRA  # room for the receive count a claim will write in place
    [claimed] = await b.claim("a", "q", 1, T + 30, T, fifo=False)
    assert claimed.id == names[0] and claimed.receives == 1 and claimed.first_received == T
    # a plain record has no room for the data: it is rewritten out of line, in place
    assert q.head.buf[0] & (EXTRA | FORWARD) == EXTRA | FORWARD and len(q.big) == 1
    assert await b.get_message("a", "q", names[0], T) == claimed
    assert [m.id for m in await b.get_messages("a", "q", ALL, T)] == [*names, "sqs"]
    # and a replacing put makes it a plain message again (still out of line: no room inline)
    assert not await b.put_message("a", "q", names[0], BODY, 0.0, 0.0, T)
    assert q.head.buf[0] & (EXTRA | FORWARD) == FORWARD and list(q.big.values()) == [(b"", BODY)]
    assert await b.get_message("a", "q", names[0], T) == Message(names[0], BODY, 0.0, 0.0)
    check_tracking(q)
    await b.delete_accounts(ALL, T)


async def test_claim_keeps_the_prefix_through_updates_moves_and_compaction() -> None:
    b = MemoryBackend()
    await b.set_queue_meta("a", "q", b"fifo")
    for i in range(600):  # several segments
        await b.send_message("a", "q", f"s{i:04d}", BODY, 0.0, 0.0, T, b"m", f"g{i % 7}", None, 0.0)
    got = await b.claim("a", "q", 600, T + 30, T)
    assert [m.sequence for m in got] == list(range(1, 601))
    q = store(b)
    for i in range(0, 500):  # thin out the first segments: compaction moves the rest
        if i % 9:
            await b.delete_message("a", "q", f"s{i:04d}", T, expect_receives=1)
    check_tracking(q)
    big = await b.update_message("a", "q", "s0000", Update(meta=b"M" * 9000), T)  # goes out of line
    assert big is not None and (big.group, big.sequence, big.receives) == ("g0", 1, 1)
    [again] = await b.claim("a", "q", 1, T + 60, T + 30)
    assert again.id == "s0000" and again.receives == 2 and again.meta == b"M" * 9000
    moved = await b.move_message("a", "q", "s0009", "a", "r", 0.0, T + 30, receives=1)
    assert moved is not None and (moved.group, moved.sequence, moved.receives) == ("g2", 10, 1)
    check_tracking(q)
    check_tracking(store(b, "a", "r"))
    await b.delete_accounts(ALL, T)
    await b.set_queue_meta("a", "q", None)


async def test_group_index_starts_with_the_first_grouped_message() -> None:
    b = MemoryBackend()
    await fill(b, 5)
    await b.update_message("a", "q", "m000001", Update(hidden_until=T + 10), T)
    q = store(b)
    assert store(b).groups is None and values(q.hidden[0]) == [T + 10]
    await b.send_message("a", "q", "s", BODY, 0.0, 0.0, T, b"", "g", None, 0.0)
    groups = q.groups
    assert groups is not None and set(groups.groups) == {"", "g"}
    check_tracking(q)
    # "" is blocked by m000001, "g" is not
    assert [m.id for m in await b.claim("a", "q", 10, T + 30, T, fifo=True)] == ["s"]
    # a replacing put is a new message in group "" at the old position
    assert not await b.put_message("a", "q", "s", BODY, 0.0, 0.0, T)
    check_tracking(q)
    assert set(groups.groups) == {""}
    assert [m.id for m in await b.claim("a", "q", 10, T + 30, T + 10, fifo=True)] == [
        "m000000",
        "m000001",
        "m000002",
        "m000003",
        "m000004",
        "s",
    ]
    await b.delete_accounts(ALL, T)


@pytest.mark.interpreted  # patches QueueStore/Index methods
async def test_fifo_claims_read_only_the_groups_they_take(monkeypatch: pytest.MonkeyPatch) -> None:
    b = MemoryBackend()
    await b.set_queue_meta("a", "q", b"fifo")
    for i in range(20_000):
        await b.send_message("a", "q", f"s{i:05d}", b"", T + 86_400, 0.0, T, b"", f"g{i % 200}", None, 0.0)
    q = store(b)

    def walked(*args: object) -> None:
        raise AssertionError("the queue was read")

    monkeypatch.setattr(QueueStore, "select", walked)
    monkeypatch.setattr(QueueStore, "_walk", walked)
    monkeypatch.setattr(QueueStore, "_tally_expired", walked)
    lookups = 0
    get = Index.get

    def counting_get(self: Index, idb: bytes, h: int) -> int:
        nonlocal lookups
        lookups += 1
        return get(self, idb, h)

    monkeypatch.setattr(Index, "get", counting_get)
    taken = []
    for step in range(30):  # within the hides; 5 more groups stay blocked after each step
        got = await b.claim("a", "q", 10, T + 30, T + step / 2, fifo=True)
        assert len(got) == 10
        taken += got
        for m in got[:5]:
            assert await b.delete_message("a", "q", m.id, T + step / 2, expect_receives=1) is not None
    assert lookups <= 30 * 20
    assert len({m.group for m in taken}) == 200  # every group once blocked ...
    assert [m.id for m in taken[:3]] == ["s00000", "s00001", "s00002"]
    # ... and as hides run out, the groups come back in queue order
    got = await b.claim("a", "q", 3, T + 100, T + 40, fifo=True)
    assert [m.id for m in got] == ["s00005", "s00006", "s00007"]
    assert await b.count("a", "q", T + 40) == Counts(20_000 - 150 - 3, 3, 0)
    monkeypatch.undo()
    check_tracking(q)
    await b.delete_accounts(ALL, T)
    await b.set_queue_meta("a", "q", None)


async def test_fifo_group_index_under_random_churn() -> None:
    """Sends, puts, claims, deletes, updates, moves and cleaner passes on a grouped queue:
    FIFO claims match a brute-force reading and the index matches the records."""
    b = MemoryBackend()
    rng = random.Random(11)
    await b.set_queue_meta("a", "q", b"fifo")
    now = T
    pool = [f"id{i}" for i in range(60)]
    for step in range(4000):
        roll = rng.random()
        mid = rng.choice(pool)
        ttl = rng.choice((0, 0, 2, 5, 30))
        expires = now + ttl if ttl else 0.0
        if roll < 0.25:
            hide = rng.choice((0, 0, 0, 1, 4))
            group = rng.choice(("", "g1", "g2", "g3", "g4"))
            await b.send_message(
                "a",
                "q",
                mid,
                BODY[: rng.randrange(20)],
                expires,
                now + hide if hide else 0.0,
                now,
                b"",
                group,
                None,
                0.0,
            )
        elif roll < 0.33:
            await b.put_message("a", "q", mid, b"p", expires, 0.0, now, meta=rng.choice((b"", b"x")))
        elif roll < 0.55:
            limit = rng.randrange(1, 6)
            fifo = rng.random() < 0.8
            expected = await expected_fifo_claim(b, limit, now) if fifo else None
            got = await b.claim("a", "q", limit, now + rng.choice((0, 2, 6)), now, fifo)
            if expected is not None:
                assert [m.id for m in got] == expected
        elif roll < 0.7:
            await b.delete_message("a", "q", mid, now, expect_receives=rng.choice((None, None, 1)))
        elif roll < 0.8:
            hide2 = rng.choice((None, 0, 3))
            ttl2 = rng.choice((None, None, 0, 1, 8))
            update = Update(
                expires=None if ttl2 is None else (now + ttl2 if ttl2 else 0.0),
                hidden_until=None if hide2 is None else (now + hide2 if hide2 else 0.0),
                meta=rng.choice((None, b"meta")),
            )
            if rng.random() < 0.5:
                await b.update_message("a", "q", mid, update, now)
            else:
                await b.update_messages("a", "q", Filter(limit=2, match_hidden=True), update, now)
        elif roll < 0.85:
            await b.move_message("a", "q", mid, "a", "r", expires, now, receives=rng.choice((None, 0, 1, 3)))
            await b.move_message("a", "r", rng.choice(pool), "a", "q", 0.0, now)
        elif roll < 0.93:
            now += rng.choice((0.5, 1, 2))
        else:
            now += 1
            await b.clean(now, now - 1)
        for queue in ("q", "r"):
            q = b._queue("a", queue)
            if q is not None and step % 5 == 0:
                check_tracking(q)
    await b.delete_accounts(ALL, T)
    await b.set_queue_meta("a", "q", None)


@pytest.mark.interpreted  # patches QueueStore/Index methods
async def test_count_follows_hides_and_expiry_without_the_cleaner(monkeypatch: pytest.MonkeyPatch) -> None:
    b = MemoryBackend()
    names = await fill(b, 3000, ttl=100)  # one deadline second: nothing due before T + 100
    await b.update_messages("a", "q", Filter(limit=500), Update(hidden_until=T + 10), T)
    await b.claim("a", "q", 300, T + 20, T)
    q = store(b)
    tally = QueueStore._tally_expired
    walks = 0

    def counting(self: QueueStore, seg: Segment, now: float, counts: list[int]) -> None:
        nonlocal walks
        walks += 1
        tally(self, seg, now, counts)

    monkeypatch.setattr(QueueStore, "_tally_expired", counting)
    assert await b.count("a", "q", T) == Counts(2200, 300, 500)
    assert await b.count("a", "q", T + 10) == Counts(2700, 300, 0)
    assert await b.count("a", "q", T + 20) == Counts(3000, 0, 0)
    assert walks == 0  # nothing due: no segment was read
    await b.update_messages("a", "q", Filter(limit=100), Update(expires=T + 50, hidden_until=T + 60), T + 20)
    assert await b.count("a", "q", T + 49) == Counts(2900, 0, 100)
    assert await b.count("a", "q", T + 50) == Counts(2900, 0, 0)  # expired, not yet cleaned
    assert walks > 0 and q.live == 3000
    assert await b.get_messages("a", "q", Filter(marker=names[50], limit=1), T + 50) == [
        await b.get_message("a", "q", names[100], T + 50)
    ]  # the expired marker still works: counting deleted nothing
    await b.clean(T + 50, T)
    assert q.live == 2900 and await b.count("a", "q", T + 50) == Counts(2900, 0, 0)
    assert await b.count("a", "q", T + 100) == Counts()
    await b.delete_accounts(ALL, T)


async def test_clean_report_is_checked_against_the_stored_deadlines() -> None:
    b = MemoryBackend()
    await b.put_message("a", "q", "m", BODY, 0.0, T + 5, T)
    await b.put_message("a", "r", "m", BODY, 0.0, T + 5.5, T)
    await b.put_message("a", "s", "m", BODY, 0.0, T + 7, T)
    await b.update_message("a", "r", "m", Update(hidden_until=T + 50), T)  # no longer due at T + 5.5
    await b.delete_message("a", "s", "m", T)  # its queue is gone
    assert await b.clean(T + 10, T) == [("a", "q")]
    assert await b.clean(T + 10, T) == [("a", "q")]  # the same window, the same answer
    assert await b.clean(T + 10, T + 5) == []
    assert await b.clean(T + 60, T + 10) == [("a", "r")]
    # the candidates that proved stale are forgotten
    assert ("a", "r") not in b._unhide[int(T + 5.5)] and ("a", "s") not in b._unhide[int(T + 7)]
    # windows reaching back UNHIDE_KEEP past their start still see the deadlines, older ones go
    assert sorted(await b.clean(T + 60, T)) == [("a", "q"), ("a", "r")]
    far = T + 10 + memory_module.UNHIDE_KEEP + 2
    assert await b.clean(far, far) == []
    assert int(T + 5) not in b._unhide
    await b.delete_accounts(ALL, T)
