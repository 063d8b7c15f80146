"""The storage contract (:mod:`burrow.backends.base`), run unchanged against every backend.

Time is a number passed in: ``T`` is "now" unless a test moves it, so expiry and
hiding are tested without sleeping.
"""

from __future__ import annotations

import asyncio

import pytest

from burrow.backends.base import Backend
from burrow.core.model import Counts, Filter, Message, Sent, Update
from burrow.quotas import Usage

T = 1_000_000.0
ALL = Filter()
HIDDEN_TOO = Filter(match_hidden=True)
FIFO = b"fifo queue"


async def put(
    b: Backend, a: str, q: str, m: str, body: bytes = b"x", ttl: float = 0, hide: float = 0
) -> bool:
    return await b.put_message(a, q, m, body, T + ttl if ttl else 0.0, T + hide if hide else 0.0, T)


async def ids(b: Backend, a: str, q: str, f: Filter = ALL, now: float = T) -> list[str]:
    return [m.id for m in await b.get_messages(a, q, f, now)]


async def wipe(b: Backend) -> None:
    await b.delete_accounts(ALL, T)


async def send(
    b: Backend,
    a: str,
    q: str,
    m: str,
    group: str = "",
    dedup: str | None = None,
    dedup_until: float = T + 300,
    now: float = T,
    body: bytes = b"x",
    ttl: float = 0,
    hide: float = 0,
    meta: bytes = b"",
) -> Sent:
    expires, hidden = now + ttl if ttl else 0.0, now + hide if hide else 0.0
    return await b.send_message(a, q, m, body, expires, hidden, now, meta, group, dedup, dedup_until)


async def claimed(
    b: Backend, a: str, q: str, limit: int, hide: float = 30, now: float = T, fifo: bool = False
) -> list[str]:
    return [m.id for m in await b.claim(a, q, limit, now + hide, now, fifo)]


async def drop_meta(b: Backend, *queues: tuple[str, str]) -> None:
    for a, q in queues:
        await b.set_queue_meta(a, q, None)


async def test_put_creates_then_replaces_in_place(backend: Backend) -> None:
    assert await put(backend, "a", "q", "m1", b"one")
    assert await put(backend, "a", "q", "m2", b"two")
    assert not await put(backend, "a", "q", "m1", b"uno", ttl=50, hide=5)
    msgs = await backend.get_messages("a", "q", HIDDEN_TOO, T)
    assert msgs == [Message("m1", b"uno", T + 50, T + 5), Message("m2", b"two", 0.0, 0.0)]
    await wipe(backend)


async def test_order_is_first_insertion_for_accounts_queues_messages(backend: Backend) -> None:
    for a in ("zeta", "alpha", "mid"):
        for q in ("q2", "q1"):
            for m in ("m3", "m1", "m2"):
                await put(backend, a, q, m)
    assert await backend.list_accounts(ALL, T) == ["zeta", "alpha", "mid"]
    assert await backend.list_queues("alpha", ALL, T) == ["q2", "q1"]
    assert await ids(backend, "mid", "q1") == ["m3", "m1", "m2"]
    await wipe(backend)


async def test_marker_and_limit_paging(backend: Backend) -> None:
    for m in ("a", "b", "c", "d"):
        await put(backend, "acc", "q", m)
    assert await ids(backend, "acc", "q", Filter(limit=2)) == ["a", "b"]
    assert await ids(backend, "acc", "q", Filter(marker="b")) == ["c", "d"]
    assert await ids(backend, "acc", "q", Filter(marker="b", limit=1)) == ["c"]
    assert await ids(backend, "acc", "q", Filter(marker="nope")) == ["a", "b", "c", "d"]
    assert await ids(backend, "acc", "q", Filter(marker="d")) == []
    assert await backend.list_queues("acc", Filter(marker="q"), T) == []
    assert await backend.list_queues("acc", Filter(marker="unknown"), T) == ["q"]
    assert await backend.list_accounts(Filter(limit=1), T) == ["acc"]
    await wipe(backend)


async def test_hidden_messages_skipped_by_lists_seen_by_single_operations(backend: Backend) -> None:
    await put(backend, "a", "q", "h", hide=30)
    await put(backend, "a", "q", "v")
    assert await ids(backend, "a", "q") == ["v"]
    assert await ids(backend, "a", "q", HIDDEN_TOO) == ["h", "v"]
    assert await ids(backend, "a", "q", now=T + 30) == ["h", "v"]
    found = await backend.get_message("a", "q", "h", T)
    assert found is not None and found.hidden_until == T + 30
    # a queue holding only hidden messages still exists
    assert await backend.delete_message("a", "q", "v", T) is not None
    assert await backend.list_queues("a", ALL, T) == ["q"]
    deleted = await backend.delete_message("a", "q", "h", T)
    assert deleted is not None and deleted.id == "h"
    assert await backend.list_accounts(ALL, T) == []


async def test_marker_counts_hidden_positions(backend: Backend) -> None:
    for m in ("a", "b", "c"):
        await put(backend, "acc", "q", m, hide=10 if m == "b" else 0)
    assert await ids(backend, "acc", "q", Filter(marker="b")) == ["c"]
    assert await ids(backend, "acc", "q", Filter(limit=1, marker="a")) == ["c"]
    await wipe(backend)


async def test_expired_messages_are_invisible_before_cleaning(backend: Backend) -> None:
    await put(backend, "a", "q", "m", body=b"old", ttl=10)
    await put(backend, "a", "q", "keep")
    later = T + 10
    assert await backend.get_message("a", "q", "m", later) is None
    assert await ids(backend, "a", "q", HIDDEN_TOO, now=later) == ["keep"]
    assert await backend.update_message("a", "q", "m", Update(hidden_until=0.0), later) is None
    # re-creating an expired message counts as a create and goes to the end
    assert await backend.put_message("a", "q", "m", b"new", 0.0, 0.0, later)
    assert await ids(backend, "a", "q", now=later) == ["keep", "m"]
    await wipe(backend)


async def test_clean_expires_and_drops_empty_queues_and_accounts(backend: Backend) -> None:
    await put(backend, "a", "gone", "m1", ttl=5)
    await put(backend, "a", "gone", "m2", ttl=7, hide=3)
    await put(backend, "a", "stays", "m", ttl=100)
    await put(backend, "b", "gone", "m", ttl=1)
    await backend.clean(T + 6, T)
    assert await backend.list_accounts(ALL, T + 6) == ["a"]
    assert await backend.list_queues("a", ALL, T + 6) == ["gone", "stays"]
    await backend.clean(T + 7, T + 6)
    assert await backend.list_queues("a", ALL, T + 7) == ["stays"]
    await backend.clean(T + 100, T + 7)
    assert await backend.list_accounts(ALL, T + 100) == []
    assert await backend.count_messages() == 0


async def test_clean_reports_queues_whose_messages_became_visible(backend: Backend) -> None:
    await put(backend, "a", "q1", "m", hide=5)
    await put(backend, "a", "q2", "m", hide=50)
    await put(backend, "b", "q3", "m")
    assert await backend.clean(T + 1, T) == []
    assert await backend.clean(T + 5, T + 1) == [("a", "q1")]
    assert await backend.clean(T + 6, T + 5) == []
    await backend.update_message("b", "q3", "m", Update(hidden_until=T + 8), T + 6)
    woken = await backend.clean(T + 60, T + 6)
    assert sorted(woken) == [("a", "q2"), ("b", "q3")]
    await wipe(backend)


async def test_update_messages_sets_only_given_deadlines(backend: Backend) -> None:
    await put(backend, "a", "q", "m1", ttl=100)
    await put(backend, "a", "q", "m2", ttl=100)
    updated = await backend.update_messages("a", "q", Filter(limit=1), Update(hidden_until=T + 60), T)
    assert updated == [Message("m1", b"x", T + 100, T + 60)]
    # get-and-hide again takes the next visible message, never the hidden one
    updated = await backend.update_messages("a", "q", Filter(limit=1), Update(hidden_until=T + 60), T)
    assert [m.id for m in updated] == ["m2"]
    assert await backend.update_messages("a", "q", Filter(limit=1), Update(hidden_until=T + 60), T) == []
    both = await backend.update_messages("a", "q", HIDDEN_TOO, Update(expires=0.0, hidden_until=0.0), T)
    assert both == [Message("m1", b"x", 0.0, 0.0), Message("m2", b"x", 0.0, 0.0)]
    await wipe(backend)


async def test_update_message_returns_new_values(backend: Backend) -> None:
    await put(backend, "a", "q", "m", body=b"b", ttl=10, hide=10)
    got = await backend.update_message("a", "q", "m", Update(expires=T + 99), T)
    assert got == Message("m", b"b", T + 99, T + 10)
    assert await backend.update_message("a", "q", "nope", Update(expires=T + 1), T) is None
    assert await backend.update_message("a", "nope", "m", Update(expires=T + 1), T) is None
    await wipe(backend)


async def test_delete_messages_visible_only_unless_match_hidden(backend: Backend) -> None:
    await put(backend, "a", "q", "h", hide=10)
    await put(backend, "a", "q", "v1")
    await put(backend, "a", "q", "v2")
    deleted = await backend.delete_messages("a", "q", ALL, T)
    assert [m.id for m in deleted] == ["v1", "v2"]
    assert await ids(backend, "a", "q", HIDDEN_TOO) == ["h"]
    deleted = await backend.delete_messages("a", "q", HIDDEN_TOO, T)
    assert [m.id for m in deleted] == ["h"]
    assert await backend.list_accounts(ALL, T) == []


async def test_get_and_delete_takes_first_visible(backend: Backend) -> None:
    for m in ("m1", "m2", "m3"):
        await put(backend, "a", "q", m, body=m.encode())
    taken = await backend.delete_messages("a", "q", Filter(limit=1), T)
    assert taken == [Message("m1", b"m1", 0.0, 0.0)]
    taken = await backend.delete_messages("a", "q", Filter(limit=1, marker="m2"), T)
    assert [m.id for m in taken] == ["m3"]
    assert await ids(backend, "a", "q") == ["m2"]
    await wipe(backend)


async def test_delete_queues_and_accounts_with_filters(backend: Backend) -> None:
    for a in ("a1", "a2", "a3"):
        for q in ("q1", "q2", "q3"):
            await put(backend, a, q, "m", hide=10)
    assert await backend.delete_queues("a1", Filter(marker="q1", limit=1), T) == ["q2"]
    assert await backend.list_queues("a1", ALL, T) == ["q1", "q3"]
    assert await backend.delete_queues("nope", ALL, T) == []
    assert await backend.delete_accounts(Filter(limit=2), T) == ["a1", "a2"]
    assert await backend.list_accounts(ALL, T) == ["a3"]
    assert await backend.delete_queues("a3", ALL, T) == ["q1", "q2", "q3"]
    assert await backend.list_accounts(ALL, T) == []
    assert await backend.delete_accounts(ALL, T) == []


async def test_accounts_and_queues_are_independent_namespaces(backend: Backend) -> None:
    await put(backend, "a", "q", "m", body=b"in a")
    await put(backend, "b", "q", "m", body=b"in b")
    await put(backend, "a", "r", "m", body=b"in r")
    assert (await backend.get_message("a", "q", "m", T)) == Message("m", b"in a", 0.0, 0.0)
    await backend.delete_message("a", "q", "m", T)
    assert (await backend.get_message("b", "q", "m", T)) == Message("m", b"in b", 0.0, 0.0)
    assert (await backend.get_message("a", "r", "m", T)) == Message("m", b"in r", 0.0, 0.0)
    assert await backend.list_queues("a", ALL, T) == ["r"]
    await wipe(backend)


@pytest.mark.parametrize(
    "body",
    [b"", b"\x00\xff\xfe binary \x80", "ünïcødé ✓".encode(), bytes(range(256)) * 400],
    ids=["empty", "binary", "utf8", "100KiB"],
)
async def test_bodies_round_trip_exactly(backend: Backend, body: bytes) -> None:
    await put(backend, "a", "q", "m", body=body)
    found = await backend.get_message("a", "q", "m", T)
    assert found is not None and found.body == body
    await wipe(backend)


async def test_names_are_opaque_strings(backend: Backend) -> None:
    names = ["with/slash", "ünï", "sp ace", "%2F", "a" * 256, "."]
    for n in names:
        await put(backend, n, n, n)
    assert await backend.list_accounts(ALL, T) == names
    for n in names:
        assert await ids(backend, n, n) == [n]
    await wipe(backend)


async def test_missing_things_answer_empty(backend: Backend) -> None:
    assert await backend.list_queues("none", ALL, T) == []
    assert await backend.get_messages("none", "q", ALL, T) == []
    assert await backend.update_messages("none", "q", ALL, Update(hidden_until=0.0), T) == []
    assert await backend.delete_messages("none", "q", ALL, T) == []
    assert await backend.get_message("none", "q", "m", T) is None
    assert await backend.delete_message("none", "q", "m", T) is None


async def test_many_messages_keep_order_through_churn(backend: Backend) -> None:
    for i in range(500):
        await put(backend, "a", "q", f"m{i:04d}")
    for i in range(0, 500, 3):
        await backend.delete_message("a", "q", f"m{i:04d}", T)
    for i in range(1, 500, 3):
        await put(backend, "a", "q", f"m{i:04d}", body=b"replaced")
    expected = [f"m{i:04d}" for i in range(500) if i % 3]
    assert await ids(backend, "a", "q") == expected
    assert await ids(backend, "a", "q", Filter(marker="m0250", limit=3)) == ["m0251", "m0253", "m0254"]
    assert await backend.count_messages() == len(expected)
    await wipe(backend)


async def test_meta_is_stored_verbatim_and_replaced_by_put(backend: Backend) -> None:
    await backend.put_message("a", "q", "m", b"body", 0.0, 0.0, T, meta=b'{"receives": 0}')
    found = await backend.get_message("a", "q", "m", T)
    assert found is not None and found.meta == b'{"receives": 0}'
    updated = await backend.update_message("a", "q", "m", Update(meta=b"\x00\xff"), T)
    assert updated is not None and updated.meta == b"\x00\xff" and updated.body == b"body"
    listed = await backend.update_messages("a", "q", ALL, Update(meta=b"list"), T)
    assert [m.meta for m in listed] == [b"list"]
    await put(backend, "a", "q", "m", body=b"plain")
    found = await backend.get_message("a", "q", "m", T)
    assert found is not None and found.meta == b""
    await wipe(backend)


async def test_expect_hidden_until_is_a_compare_and_set(backend: Backend) -> None:
    await put(backend, "a", "q", "m", hide=10)
    claim = Update(hidden_until=T + 30)
    assert await backend.update_message("a", "q", "m", claim, T, expect_hidden_until=T + 11) is None
    got = await backend.update_message("a", "q", "m", claim, T, expect_hidden_until=T + 10)
    assert got is not None and got.hidden_until == T + 30
    assert await backend.delete_message("a", "q", "m", T, expect_hidden_until=T + 10) is None
    assert await backend.get_message("a", "q", "m", T) is not None
    assert await backend.delete_message("a", "q", "m", T, expect_hidden_until=T + 30) is not None
    assert await backend.list_accounts(ALL, T) == []


async def test_queue_meta_is_a_separate_namespace(backend: Backend) -> None:
    assert await backend.get_queue_meta("a", "q") is None
    await backend.set_queue_meta("a", "q2", b"two")
    await backend.set_queue_meta("a", "q1", b"one")
    await backend.set_queue_meta("b", "q1", b"other")
    await backend.set_queue_meta("a", "q2", b"two v2")
    assert await backend.get_queue_meta("a", "q2") == b"two v2"
    assert await backend.list_queue_meta("a") == [("q2", b"two v2"), ("q1", b"one")]
    # metadata alone does not make a queue exist for burrow listings
    assert await backend.list_queues("a", ALL, T) == []
    assert await backend.list_accounts(ALL, T) == []
    await put(backend, "a", "q1", "m")
    await backend.delete_accounts(ALL, T)
    assert await backend.get_queue_meta("a", "q1") == b"one"
    for account, queue in (("a", "q1"), ("a", "q2"), ("b", "q1")):
        await backend.set_queue_meta(account, queue, None)
    assert await backend.list_queue_meta("a") == []
    assert await backend.get_queue_meta("b", "q1") is None


# -- claim --------------------------------------------------------------------------


async def test_claim_takes_visible_messages_in_order_and_hides_them(backend: Backend) -> None:
    await put(backend, "a", "q", "m1", body=b"one", ttl=500)
    await put(backend, "a", "q", "m2", hide=10)
    await backend.put_message("a", "q", "m3", b"three", 0.0, 0.0, T, meta=b"attrs")
    await put(backend, "a", "q", "m4")
    got = await backend.claim("a", "q", 2, T + 30, T)
    assert got == [
        Message("m1", b"one", T + 500, T + 30, receives=1, first_received=T),
        Message("m3", b"three", 0.0, T + 30, meta=b"attrs", receives=1, first_received=T),
    ]
    # stored as returned, the others untouched
    assert await backend.get_messages("a", "q", HIDDEN_TOO, T) == [
        got[0],
        Message("m2", b"x", 0.0, T + 10),
        got[1],
        Message("m4", b"x", 0.0, 0.0),
    ]
    assert await ids(backend, "a", "q") == ["m4"]
    assert await claimed(backend, "a", "q", 2) == ["m4"]
    assert await backend.claim("a", "q", 2, T + 30, T) == []
    # the hides run out (no cleaner needed): all come back; receives go on, first_received stays
    later = T + 30
    again = await backend.claim("a", "q", 10, later + 30, later)
    assert [(m.id, m.receives, m.first_received, m.hidden_until) for m in again] == [
        ("m1", 2, T, later + 30),
        ("m2", 1, later, later + 30),
        ("m3", 2, T, later + 30),
        ("m4", 2, T, later + 30),
    ]
    await wipe(backend)


async def test_claim_skips_expired_and_hidden_messages(backend: Backend) -> None:
    await put(backend, "a", "q", "old", ttl=5)
    await put(backend, "a", "q", "hid", hide=50)
    await put(backend, "a", "q", "new")
    assert await claimed(backend, "a", "q", 10, now=T + 5) == ["new"]
    assert await backend.get_message("a", "q", "old", T + 5) is None
    assert await backend.get_message("a", "q", "hid", T + 5) == Message("hid", b"x", 0.0, T + 50)
    await wipe(backend)


async def test_claim_on_an_empty_or_unknown_queue_takes_nothing(backend: Backend) -> None:
    assert await backend.claim("none", "q", 5, T + 30, T) == []
    assert await backend.claim("none", "q", 5, T + 30, T, fifo=True) == []
    assert await backend.list_accounts(ALL, T) == []
    await put(backend, "a", "q", "h", hide=10)
    assert await backend.claim("a", "q", 5, T + 30, T) == []
    assert await backend.claim("a", "q", 5, T + 30, T, fifo=True) == []
    assert await backend.get_message("a", "q", "h", T) == Message("h", b"x", 0.0, T + 10)
    await wipe(backend)


async def test_claim_of_more_than_available_takes_what_there_is(backend: Backend) -> None:
    for m in ("m1", "m2", "m3"):
        await put(backend, "a", "q", m)
    assert await claimed(backend, "a", "q", 100) == ["m1", "m2", "m3"]
    assert await claimed(backend, "a", "q", 100) == []
    await wipe(backend)


async def test_claims_never_share_a_message(backend: Backend) -> None:
    names = [f"m{i:02d}" for i in range(20)]
    for m in names:
        await put(backend, "a", "q", m)
    assert await claimed(backend, "a", "q", 3) == names[:3]
    assert await claimed(backend, "a", "q", 3) == names[3:6]
    batches = await asyncio.gather(*(backend.claim("a", "q", 3, T + 30, T) for _ in range(8)))
    taken = [m.id for batch in batches for m in batch]
    assert sorted(taken) == names[6:]  # each remaining message exactly once
    for batch in batches:
        assert [m.id for m in batch] == sorted(m.id for m in batch)  # each batch in queue order
        assert all(m.receives == 1 for m in batch)
    await wipe(backend)


# -- FIFO claim ----------------------------------------------------------------------


async def test_fifo_claim_hidden_message_blocks_its_whole_group(backend: Backend) -> None:
    await backend.set_queue_meta("a", "q", FIFO)
    await send(backend, "a", "q", "a1", group="g1")
    await send(backend, "a", "q", "a2", group="g1", hide=10)  # delayed: blocks a1 before it
    await send(backend, "a", "q", "b1", group="g2")
    assert await claimed(backend, "a", "q", 10, fifo=True) == ["b1"]
    assert await claimed(backend, "a", "q", 10, fifo=True) == []
    a1 = Message("a1", b"x", 0.0, 0.0, group="g1", sequence=1)
    assert await backend.get_message("a", "q", "a1", T) == a1
    # a plain claim ignores groups
    assert await claimed(backend, "a", "q", 10) == ["a1"]
    await wipe(backend)
    await drop_meta(backend, ("a", "q"))


async def test_fifo_claim_takes_consecutive_messages_of_a_group_in_queue_order(backend: Backend) -> None:
    await backend.set_queue_meta("a", "q", FIFO)
    for m, g in (("a1", "g1"), ("b1", "g2"), ("a2", "g1"), ("a3", "g1"), ("b2", "g2")):
        await send(backend, "a", "q", m, group=g)
    got = await backend.claim("a", "q", 3, T + 30, T, fifo=True)
    assert [(m.id, m.group, m.sequence, m.receives) for m in got] == [
        ("a1", "g1", 1, 1),
        ("b1", "g2", 2, 1),
        ("a2", "g1", 3, 1),
    ]
    # both groups are now blocked although a3 and b2 are visible
    assert await ids(backend, "a", "q") == ["a3", "b2"]
    assert await claimed(backend, "a", "q", 10, fifo=True) == []
    await wipe(backend)
    await drop_meta(backend, ("a", "q"))


async def test_fifo_claims_never_share_a_group(backend: Backend) -> None:
    await backend.set_queue_meta("a", "q", FIFO)
    for i in range(8):
        await send(backend, "a", "q", f"m{i}", group=f"g{i % 4}")
    batches = await asyncio.gather(*(backend.claim("a", "q", 2, T + 30, T, fifo=True) for _ in range(4)))
    groups = [m.group for batch in batches for m in batch]
    assert sorted(groups) == ["g0", "g1", "g2", "g3"]  # one message of each, first of its group
    assert sorted(m.id for batch in batches for m in batch) == ["m0", "m1", "m2", "m3"]
    await wipe(backend)
    await drop_meta(backend, ("a", "q"))


async def test_fifo_empty_group_is_a_group_too(backend: Backend) -> None:
    await backend.set_queue_meta("a", "q", FIFO)
    await send(backend, "a", "q", "c1")
    await put(backend, "a", "q", "p1")  # a plain message is in group ""
    await send(backend, "a", "q", "d1", group="g")
    assert await claimed(backend, "a", "q", 1, fifo=True) == ["c1"]
    assert await claimed(backend, "a", "q", 10, fifo=True) == ["d1"]
    assert await claimed(backend, "a", "q", 10, fifo=True) == []
    # deleting the hidden message unblocks its group
    assert await backend.delete_message("a", "q", "c1", T) is not None
    assert await claimed(backend, "a", "q", 10, fifo=True) == ["p1"]
    await wipe(backend)
    await drop_meta(backend, ("a", "q"))


async def test_fifo_group_unblocks_when_the_hide_runs_out_without_a_cleaner(backend: Backend) -> None:
    await backend.set_queue_meta("a", "q", FIFO)
    await send(backend, "a", "q", "a1", group="g")
    await send(backend, "a", "q", "a2", group="g")
    assert await claimed(backend, "a", "q", 1, hide=30, fifo=True) == ["a1"]
    assert await claimed(backend, "a", "q", 10, now=T + 29, fifo=True) == []
    again = await backend.claim("a", "q", 10, T + 60, T + 30, fifo=True)
    assert [(m.id, m.receives, m.first_received) for m in again] == [("a1", 2, T), ("a2", 1, T + 30)]
    await wipe(backend)
    await drop_meta(backend, ("a", "q"))


async def test_fifo_group_unblocks_when_the_hidden_message_is_deleted(backend: Backend) -> None:
    await backend.set_queue_meta("a", "q", FIFO)
    for m in ("a1", "a2", "a3"):
        await send(backend, "a", "q", m, group="g")
    assert await claimed(backend, "a", "q", 1, fifo=True) == ["a1"]
    assert await claimed(backend, "a", "q", 1, fifo=True) == []
    assert await backend.delete_message("a", "q", "a1", T, expect_receives=1) is not None
    assert await claimed(backend, "a", "q", 1, fifo=True) == ["a2"]
    await wipe(backend)
    await drop_meta(backend, ("a", "q"))


async def test_fifo_expired_hidden_message_blocks_nothing(backend: Backend) -> None:
    await backend.set_queue_meta("a", "q", FIFO)
    await send(backend, "a", "q", "a1", group="g", ttl=5, hide=10)
    await send(backend, "a", "q", "a2", group="g")
    assert await claimed(backend, "a", "q", 10, fifo=True) == []
    assert await claimed(backend, "a", "q", 10, now=T + 5, fifo=True) == ["a2"]
    await wipe(backend)
    await drop_meta(backend, ("a", "q"))


# -- send_message -------------------------------------------------------------------


async def test_send_numbers_messages_per_queue(backend: Backend) -> None:
    queues = (("a", "q1"), ("a", "q2"), ("b", "q1"))
    for a, q in queues:
        await backend.set_queue_meta(a, q, FIFO)
    await put(backend, "a", "q1", "p0")
    assert await send(backend, "a", "q1", "m1", group="g") == Sent("m1", 1, True)
    assert await send(backend, "a", "q1", "m2", group="h") == Sent("m2", 2, True)
    assert await send(backend, "a", "q2", "m3") == Sent("m3", 1, True)
    assert await send(backend, "b", "q1", "m4") == Sent("m4", 1, True)
    five = await send(backend, "a", "q1", "m5", group="g", body=b"five", ttl=100, hide=5, meta=b"attrs")
    assert five == Sent("m5", 3, True)
    stored = Message("m5", b"five", T + 100, T + 5, b"attrs", group="g", sequence=3)
    assert await backend.get_messages("a", "q1", HIDDEN_TOO, T) == [
        Message("p0", b"x", 0.0, 0.0),
        Message("m1", b"x", 0.0, 0.0, group="g", sequence=1),
        Message("m2", b"x", 0.0, 0.0, group="h", sequence=2),
        stored,
    ]
    assert await backend.get_message("a", "q1", "m5", T) == stored
    # the counter never goes back while the metadata exists: emptying the queue keeps it ...
    await wipe(backend)
    assert await send(backend, "a", "q1", "m6") == Sent("m6", 4, True)
    # ... and so does replacing the metadata
    await backend.set_queue_meta("a", "q1", b"fifo v2")
    assert await send(backend, "a", "q1", "m7") == Sent("m7", 5, True)
    await wipe(backend)
    await drop_meta(backend, *queues)


async def test_send_dedup_hit_returns_the_earlier_send_and_stores_nothing(backend: Backend) -> None:
    await backend.set_queue_meta("a", "q", FIFO)
    await backend.set_queue_meta("a", "r", FIFO)
    assert await send(backend, "a", "q", "m1", dedup="d1") == Sent("m1", 1, True)
    hit = await send(backend, "a", "q", "m2", body=b"other", group="g", dedup="d1", now=T + 10)
    assert hit == Sent("m1", 1, False)
    assert await ids(backend, "a", "q", HIDDEN_TOO) == ["m1"]
    assert await backend.get_message("a", "q", "m2", T + 10) is None
    assert await backend.count_messages() == 1
    # the refused send used no sequence number; sends without a key are never deduplicated
    assert await send(backend, "a", "q", "m3", dedup="d2") == Sent("m3", 2, True)
    assert await send(backend, "a", "q", "m4") == Sent("m4", 3, True)
    assert await send(backend, "a", "q", "m5") == Sent("m5", 4, True)
    # the record outlives the message it names
    assert await backend.delete_message("a", "q", "m1", T) is not None
    assert await send(backend, "a", "q", "m6", dedup="d1", now=T + 299) == Sent("m1", 1, False)
    assert await ids(backend, "a", "q") == ["m3", "m4", "m5"]
    # keys belong to one queue
    assert await send(backend, "a", "r", "m7", dedup="d1") == Sent("m7", 1, True)
    await wipe(backend)
    await drop_meta(backend, ("a", "q"), ("a", "r"))


async def test_send_dedup_expires_at_dedup_until(backend: Backend) -> None:
    await backend.set_queue_meta("a", "q", FIFO)
    assert await send(backend, "a", "q", "m1", dedup="d", dedup_until=T + 300) == Sent("m1", 1, True)
    # a hit does not extend the record
    hit = await send(backend, "a", "q", "m2", dedup="d", dedup_until=T + 900, now=T + 299.5)
    assert hit == Sent("m1", 1, False)
    fresh = await send(backend, "a", "q", "m3", dedup="d", dedup_until=T + 600, now=T + 300)
    assert fresh == Sent("m3", 2, True)
    assert await send(backend, "a", "q", "m4", dedup="d", now=T + 599) == Sent("m3", 2, False)
    assert await ids(backend, "a", "q", now=T + 599) == ["m1", "m3"]
    await wipe(backend)
    await drop_meta(backend, ("a", "q"))


async def test_fifo_state_is_removed_with_the_queue_metadata(backend: Backend) -> None:
    await backend.set_queue_meta("a", "q", FIFO)
    assert await send(backend, "a", "q", "m1", dedup="d") == Sent("m1", 1, True)
    assert await send(backend, "a", "q", "m2") == Sent("m2", 2, True)
    await wipe(backend)
    await backend.set_queue_meta("a", "q", None)
    await backend.set_queue_meta("a", "q", FIFO)
    # the counter restarts and the deduplication records are forgotten
    assert await send(backend, "a", "q", "m3", dedup="d") == Sent("m3", 1, True)
    await wipe(backend)
    # a compare-and-set removal removes it too
    assert await backend.swap_queue_meta("a", "q", FIFO, None)
    assert await backend.swap_queue_meta("a", "q", None, FIFO)
    assert await send(backend, "a", "q", "m4", dedup="d") == Sent("m4", 1, True)
    await wipe(backend)
    await drop_meta(backend, ("a", "q"))


async def test_clean_keeps_live_fifo_state_and_drops_spent_dedup_records(backend: Backend) -> None:
    await backend.set_queue_meta("a", "q", FIFO)
    assert await send(backend, "a", "q", "m1", dedup="d1", dedup_until=T + 100, ttl=5) == Sent("m1", 1, True)
    assert await send(backend, "a", "q", "m2", dedup="d2", dedup_until=T + 10, ttl=5) == Sent("m2", 2, True)
    await backend.clean(T + 20, T)
    assert await backend.list_accounts(ALL, T + 20) == []
    assert await backend.count_messages() == 0
    # the queue is gone but its FIFO state lives on with its metadata
    assert await send(backend, "a", "q", "m3", dedup="d1", now=T + 20) == Sent("m1", 1, False)
    assert await send(backend, "a", "q", "m4", dedup="d2", now=T + 20) == Sent("m4", 3, True)
    await backend.clean(T + 200, T + 20)
    assert await send(backend, "a", "q", "m5", dedup="d1", now=T + 200) == Sent("m5", 4, True)
    await wipe(backend)
    await drop_meta(backend, ("a", "q"))


# -- per-message data -----------------------------------------------------------------


async def test_per_message_data_is_kept_by_writes_and_reset_by_a_replacing_put(backend: Backend) -> None:
    await backend.set_queue_meta("a", "q", FIFO)
    await send(backend, "a", "q", "m1", group="g", meta=b"attrs")
    [c] = await backend.claim("a", "q", 1, T + 30, T)
    assert c == Message("m1", b"x", 0.0, T + 30, b"attrs", 1, T, "g", 1)
    u = await backend.update_message("a", "q", "m1", Update(hidden_until=T + 40, meta=b"new"), T)
    assert u == c.replace(hidden_until=T + 40, meta=b"new")
    [u2] = await backend.update_messages("a", "q", HIDDEN_TOO, Update(expires=T + 500, hidden_until=0.0), T)
    assert u2 == u.replace(expires=T + 500, hidden_until=0.0)
    [c2] = await backend.claim("a", "q", 1, T + 31, T + 1)
    assert c2 == u2.replace(hidden_until=T + 31, receives=2)
    assert await backend.get_message("a", "q", "m1", T + 1) == c2
    assert await backend.get_messages("a", "q", HIDDEN_TOO, T + 1) == [c2]
    assert await send(backend, "a", "q", "m2", group="h") == Sent("m2", 2, True)
    # a replacing put is a new message in the old position
    assert not await put(backend, "a", "q", "m1", body=b"fresh")
    m2 = Message("m2", b"x", 0.0, 0.0, group="h", sequence=2)
    assert await backend.get_messages("a", "q", HIDDEN_TOO, T + 1) == [Message("m1", b"fresh", 0.0, 0.0), m2]
    assert await backend.delete_message("a", "q", "m2", T + 1) == m2
    assert await backend.delete_messages("a", "q", ALL, T + 1) == [Message("m1", b"fresh", 0.0, 0.0)]
    await drop_meta(backend, ("a", "q"))


async def test_delete_message_expect_receives_is_a_compare_and_set(backend: Backend) -> None:
    await put(backend, "a", "q", "m")
    assert await backend.delete_message("a", "q", "m", T, expect_receives=1) is None
    [c] = await backend.claim("a", "q", 1, T + 30, T)
    assert await backend.delete_message("a", "q", "m", T, expect_receives=0) is None
    assert await backend.delete_message("a", "q", "m", T, expect_receives=2) is None
    assert await backend.get_message("a", "q", "m", T) == c
    # both expectations must hold
    b = backend
    assert await b.delete_message("a", "q", "m", T, expect_hidden_until=T + 31, expect_receives=1) is None
    assert await backend.get_message("a", "q", "m", T) == c
    assert await b.delete_message("a", "q", "m", T, expect_hidden_until=T + 30, expect_receives=1) == c
    assert await backend.list_accounts(ALL, T) == []
    await put(backend, "a", "q", "n")
    assert await backend.delete_message("a", "q", "n", T, expect_receives=0) == Message("n", b"x", 0.0, 0.0)
    assert await backend.list_accounts(ALL, T) == []


# -- move_message -----------------------------------------------------------------------


async def test_move_message_resets_receives_and_keeps_meta_group_and_sequence(backend: Backend) -> None:
    await backend.set_queue_meta("a", "q", FIFO)
    await send(backend, "a", "q", "m1", group="g", body=b"one", meta=b"old", ttl=100)
    await put(backend, "a", "q", "m2")
    await put(backend, "b", "dlq", "x")
    assert await claimed(backend, "a", "q", 1) == ["m1"]
    moved = await backend.move_message("a", "q", "m1", "b", "dlq", T + 500, T + 1)
    assert moved is not None and moved.hidden_until <= T + 1  # visible
    assert moved == Message("m1", b"one", T + 500, moved.hidden_until, b"old", 0, 0.0, "g", 1)
    assert await backend.get_message("b", "dlq", "m1", T + 1) == moved
    assert await ids(backend, "b", "dlq", now=T + 1) == ["x", "m1"]
    assert await ids(backend, "a", "q", HIDDEN_TOO, now=T + 1) == ["m2"]
    assert await backend.get_message("a", "q", "m1", T + 1) is None
    await wipe(backend)
    await drop_meta(backend, ("a", "q"))


async def test_move_message_keeps_receives_and_replaces_meta_when_asked(backend: Backend) -> None:
    await backend.put_message("a", "q", "m", b"body", 0.0, 0.0, T, meta=b"old")
    await claimed(backend, "a", "q", 1)
    moved = await backend.move_message("a", "q", "m", "a", "q2", 0.0, T + 1, meta=b"new", receives=1)
    assert moved is not None and moved.hidden_until <= T + 1
    assert moved == Message("m", b"body", 0.0, moved.hidden_until, b"new", 1, T)
    # the emptied source queue is gone
    assert await backend.list_queues("a", ALL, T + 1) == ["q2"]
    [again] = await backend.claim("a", "q2", 1, T + 40, T + 1)
    assert (again.receives, again.first_received) == (2, T)
    await wipe(backend)


async def test_move_message_replaces_the_same_id_at_the_destination_and_goes_last(backend: Backend) -> None:
    await put(backend, "b", "dlq", "m", body=b"older")
    await put(backend, "b", "dlq", "y")
    await put(backend, "a", "q", "m", body=b"newer")
    moved = await backend.move_message("a", "q", "m", "b", "dlq", 0.0, T)
    assert moved is not None and moved.body == b"newer"
    assert await ids(backend, "b", "dlq") == ["y", "m"]
    found = await backend.get_message("b", "dlq", "m", T)
    assert found is not None and found.body == b"newer"
    # the emptied source account is gone
    assert await backend.list_accounts(ALL, T) == ["b"]
    await wipe(backend)


async def test_move_message_moves_nothing_when_the_source_fails(backend: Backend) -> None:
    await put(backend, "a", "q", "m")
    await put(backend, "a", "q", "e", ttl=5)
    [c] = await backend.claim("a", "q", 1, T + 30, T)
    for expect in (0, 2):
        assert await backend.move_message("a", "q", "m", "b", "dlq", 0.0, T, expect_receives=expect) is None
    assert await backend.get_message("a", "q", "m", T) == c
    assert await backend.move_message("a", "q", "nope", "b", "dlq", 0.0, T) is None
    assert await backend.move_message("a", "nope", "m", "b", "dlq", 0.0, T) is None
    assert await backend.move_message("nope", "q", "m", "b", "dlq", 0.0, T) is None
    assert await backend.move_message("a", "q", "e", "b", "dlq", 0.0, T + 5) is None
    assert await backend.list_accounts(ALL, T + 5) == ["a"]
    assert await backend.get_messages("b", "dlq", HIDDEN_TOO, T + 5) == []
    moved = await backend.move_message("a", "q", "m", "b", "dlq", 0.0, T + 5, expect_receives=1)
    assert moved is not None and moved.receives == 0
    assert await ids(backend, "b", "dlq", now=T + 5) == ["m"]
    await wipe(backend)


# -- count --------------------------------------------------------------------------------


async def test_count_by_state_follows_the_clock_without_a_cleaner(backend: Backend) -> None:
    await put(backend, "a", "q", "c1")
    await put(backend, "a", "q", "v1")
    await put(backend, "a", "q", "e1", ttl=5)
    await put(backend, "a", "q", "d1", hide=10)
    await put(backend, "a", "q", "e2", ttl=5, hide=100)
    assert await claimed(backend, "a", "q", 1, hide=20) == ["c1"]
    assert await backend.count("a", "q", T) == Counts(visible=2, in_flight=1, delayed=2)
    assert await backend.count("a", "q", T + 5) == Counts(visible=1, in_flight=1, delayed=1)
    assert await backend.count("a", "q", T + 10) == Counts(visible=2, in_flight=1, delayed=0)
    assert await backend.count("a", "q", T + 20) == Counts(visible=3, in_flight=0, delayed=0)
    # a claimed message hidden again stays in flight; made visible it counts as visible
    await backend.update_message("a", "q", "c1", Update(hidden_until=T + 50), T + 20)
    assert await backend.count("a", "q", T + 20) == Counts(visible=2, in_flight=1, delayed=0)
    await backend.update_message("a", "q", "c1", Update(hidden_until=0.0), T + 20)
    assert await backend.count("a", "q", T + 20) == Counts(visible=3, in_flight=0, delayed=0)
    assert await backend.count("a", "nope", T) == Counts()
    assert await backend.count("nope", "q", T) == Counts()
    assert await backend.list_accounts(ALL, T) == ["a"]
    await wipe(backend)


# -- queue metadata compare-and-set ------------------------------------------------------


async def test_swap_queue_meta_is_a_compare_and_set(backend: Backend) -> None:
    assert await backend.swap_queue_meta("a", "q1", None, b"one")
    assert not await backend.swap_queue_meta("a", "q1", None, b"other")
    assert not await backend.swap_queue_meta("a", "q1", b"wrong", b"other")
    assert not await backend.swap_queue_meta("a", "q1", b"wrong", None)
    assert await backend.get_queue_meta("a", "q1") == b"one"
    assert not await backend.swap_queue_meta("a", "q2", b"one", b"two")
    assert await backend.get_queue_meta("a", "q2") is None
    assert await backend.swap_queue_meta("a", "q2", None, b"two")
    assert await backend.swap_queue_meta("a", "q1", b"one", b"one v2")
    # a replaced entry keeps its place
    assert await backend.list_queue_meta("a") == [("q1", b"one v2"), ("q2", b"two")]
    assert await backend.swap_queue_meta("a", "q1", b"one v2", None)
    assert await backend.get_queue_meta("a", "q1") is None
    assert not await backend.swap_queue_meta("a", "q1", b"one v2", None)
    # a new entry goes last
    assert await backend.swap_queue_meta("a", "q1", None, b"back")
    assert await backend.list_queue_meta("a") == [("q2", b"two"), ("q1", b"back")]
    # plain writes and swaps see each other
    await backend.set_queue_meta("a", "q2", b"set")
    assert not await backend.swap_queue_meta("a", "q2", b"two", b"x")
    assert await backend.swap_queue_meta("a", "q2", b"set", b"swapped")
    assert await backend.get_queue_meta("a", "q2") == b"swapped"
    # metadata alone makes no queue or account appear
    assert await backend.list_accounts(ALL, T) == []
    await drop_meta(backend, ("a", "q1"), ("a", "q2"))
    assert await backend.list_queue_meta("a") == []


async def test_concurrent_swaps_of_one_value_let_exactly_one_win(backend: Backend) -> None:
    await backend.set_queue_meta("a", "q", b"v0")
    results = await asyncio.gather(
        *(backend.swap_queue_meta("a", "q", b"v0", f"w{i}".encode()) for i in range(8))
    )
    assert results.count(True) == 1
    assert await backend.get_queue_meta("a", "q") == f"w{results.index(True)}".encode()
    await drop_meta(backend, ("a", "q"))


# -- order and housekeeping ---------------------------------------------------------------


async def test_accounts_and_queues_recreated_after_emptying_go_last(backend: Backend) -> None:
    for a in ("a1", "a2", "a3"):
        await put(backend, a, "q", "m")
    await backend.delete_message("a1", "q", "m", T)
    assert await backend.list_accounts(ALL, T) == ["a2", "a3"]
    await put(backend, "a1", "q", "m")
    assert await backend.list_accounts(ALL, T) == ["a2", "a3", "a1"]
    await put(backend, "a2", "q2", "m")
    await backend.delete_message("a2", "q", "m", T)
    await put(backend, "a2", "q", "m")
    assert await backend.list_queues("a2", ALL, T) == ["q2", "q"]
    # moves and sends create and empty accounts by the same rule
    assert await backend.move_message("a3", "q", "m", "a1", "q", 0.0, T) is not None
    assert await backend.list_accounts(ALL, T) == ["a2", "a1"]
    await backend.set_queue_meta("a3", "q", FIFO)
    await send(backend, "a3", "q", "s")
    assert await backend.list_accounts(ALL, T) == ["a2", "a1", "a3"]
    # and so does an account emptied by the cleaner
    await put(backend, "a2", "q", "m", ttl=5)
    await put(backend, "a2", "q2", "m", ttl=5)
    await backend.clean(T + 5, T)
    assert await backend.list_accounts(ALL, T + 5) == ["a1", "a3"]
    await put(backend, "a2", "q", "m")
    assert await backend.list_accounts(ALL, T + 5) == ["a1", "a3", "a2"]
    await wipe(backend)
    await drop_meta(backend, ("a3", "q"))


async def test_clean_reports_exactly_the_window_and_not_from_earlier_calls(backend: Backend) -> None:
    await put(backend, "a", "q1", "m", hide=5)
    await put(backend, "a", "q2", "m", hide=50)
    await put(backend, "b", "q3", "m", hide=20)
    await put(backend, "b", "q4", "m")

    async def woken(now: float, since: float) -> list[tuple[str, str]]:
        return sorted(await backend.clean(now, since))

    assert await woken(T + 4, T) == []
    assert await woken(T + 5, T) == [("a", "q1")]
    assert await woken(T + 5, T) == [("a", "q1")]  # the same window, the same answer
    assert await woken(T + 20, T + 5) == [("b", "q3")]  # the window's start is not in it
    assert await woken(T + 20, T) == [("a", "q1"), ("b", "q3")]
    assert await woken(T + 60, T + 20) == [("a", "q2")]
    assert await woken(T + 60, T) == [("a", "q1"), ("a", "q2"), ("b", "q3")]
    assert await woken(T + 60, T + 60) == []
    # a claim's hide runs out like any other
    assert await claimed(backend, "b", "q4", 1, hide=10, now=T + 60) == ["m"]
    assert await woken(T + 70, T + 60) == [("b", "q4")]
    await wipe(backend)


async def test_usage_counts_an_accounts_queues_messages_and_body_bytes(backend: Backend) -> None:
    """``Backend.usage`` (per-account quotas): queues with messages or metadata, messages, bytes."""
    assert await backend.usage("a", T, True) == Usage(set(), 0, 0)
    await put(backend, "a", "q1", "m1", b"abc")
    await put(backend, "a", "q1", "m2", b"hello", hide=30)  # hidden ones count
    await send(backend, "a", "q2", "m3", group="g", body=b"x" * 100, meta=b"attrs")
    await backend.set_queue_meta("a", "q3", b"an empty SQS queue")
    await put(backend, "b", "q1", "m1", b"other tenant")
    assert await backend.usage("a", T, True) == Usage({"q1", "q2", "q3"}, 3, 108)
    found = await backend.usage("a", T)  # without bytes: names and messages are still exact
    assert (found.queues, found.messages) == ({"q1", "q2", "q3"}, 3)
    # a replacement and a claim change the bytes by the new body only
    assert not await put(backend, "a", "q1", "m1", b"abcdefgh")
    assert await claimed(backend, "a", "q2", 1, fifo=True) == ["m3"]
    assert await backend.usage("a", T, True) == Usage({"q1", "q2", "q3"}, 3, 113)
    # a move within the account keeps it; deletes take away
    moved = await backend.move_message("a", "q2", "m3", "a", "q1", 0.0, T)
    assert moved is not None
    assert await backend.usage("a", T, True) == Usage({"q1", "q3"}, 3, 113)
    await backend.delete_message("a", "q1", "m2", T)
    assert await backend.usage("a", T, True) == Usage({"q1", "q3"}, 2, 108)
    await backend.set_queue_meta("a", "q3", None)
    await backend.delete_queues("a", ALL, T)
    assert await backend.usage("a", T, True) == Usage(set(), 0, 0)
    assert await backend.usage("b", T, True) == Usage({"q1"}, 1, 12)
    await wipe(backend)


async def test_clean_counts_the_messages_it_expires(backend: Backend) -> None:
    """``Backend.expired`` (the burrow_messages_expired metric): what the cleaner removed for
    their ttl, and nothing else."""
    before = backend.expired
    await put(backend, "a", "q", "m1", ttl=10)
    await put(backend, "a", "q", "m2", ttl=10, hide=5)
    await put(backend, "a", "q", "m3", ttl=100)
    await put(backend, "a", "q", "gone", ttl=10)
    await backend.delete_message("a", "q", "gone", T)  # deleted: not expired
    await backend.clean(T + 5, T)
    assert backend.expired == before
    await backend.clean(T + 10, T + 5)
    assert backend.expired == before + 2
    await backend.clean(T + 200, T + 10)
    assert backend.expired == before + 3
    assert await backend.list_accounts(ALL, T + 200) == []
