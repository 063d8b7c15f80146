"""Internals of the compact memory backend that the contract suite cannot reach.

Segments (drop, compaction, merge), the id index under churn, out-of-line records,
expiry wheels across compaction, the cleaner's budget, the take cursor and marker seeks.
Times are numbers passed in, as in the contract suite.
"""

from __future__ import annotations

import random

import pytest

from burrow.backends import memory as memory_module
from burrow.backends.memory import MemoryBackend
from burrow.backends.memory_arena import DELTA_MAX, INLINE_MAX, SEG_MAX, Segment
from burrow.backends.memory_index import SPILL, Index
from burrow.backends.memory_queue import QueueStore
from burrow.core.model import Filter, Message, Update

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
        await b.clean(T + ttl)
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
    await b.clean(T + 5)
    assert q.live == 299
    await b.clean(T + 10)
    assert await ids(b, now=T + 10) == ["m000005", "m000006", "m000008"]
    await b.clean(T + 20)
    assert await ids(b, now=T + 20) == ["m000005", "m000006"]
    await b.clean(T + 30)
    assert await ids(b, now=T + 30) == ["m000006"]
    await b.delete_accounts(ALL, T)


async def test_far_deadlines_are_clamped_then_rebased() -> None:
    b = MemoryBackend()
    far = T + DELTA_MAX + 1000.5
    await b.put_message("a", "q", "soon", BODY, T + 100, 0.0, T)
    await b.put_message("a", "q", "far", BODY, far, 0.0, T)  # earlier MONO deadline: wheel entry
    await b.put_message("a", "q", "never-ish", BODY, 1e300, 0.0, T)
    await b.clean(T + DELTA_MAX)  # the clamp comes due: nothing is deleted early
    assert await ids(b, now=T + DELTA_MAX) == ["far", "never-ish"]
    await b.clean(far - 1)
    assert await ids(b, now=far - 1) == ["far", "never-ish"]
    await b.clean(far)
    assert await ids(b, now=far) == ["never-ish"]
    await b.delete_accounts(ALL, T)


async def test_expiry_within_a_second_is_exact() -> None:
    b = MemoryBackend()
    await b.put_message("a", "q", "early", BODY, T + 5.25, 0.0, T)
    await b.put_message("a", "q", "late", BODY, T + 5.75, 0.0, T)
    await b.put_message("a", "q", "out-of-order", BODY, T + 5.5, T + 5.4, T)
    await b.clean(T + 5.3)
    assert store(b).live == 2
    woken = await b.clean(T + 5.6)
    assert woken == [("a", "q")]
    assert store(b).live == 1
    await b.clean(T + 5.75)
    assert await b.list_accounts(ALL, T + 6) == []


async def test_cleaner_spreads_a_burst_over_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory_module, "CLEAN_BUDGET", 1000)
    b = MemoryBackend()
    await fill(b, 5000, ttl=10)
    passes = 0
    while await b.list_accounts(ALL, T + 10):
        await b.clean(T + 10 + passes)
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
    assert await b.clean(far + 400) == []
    assert await b.count_messages() == 0
