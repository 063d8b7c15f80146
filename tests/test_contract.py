"""The storage contract (:mod:`burrow.backends.base`), run unchanged against every backend.

Time is a number passed in: ``T`` is "now" unless a test moves it, so expiry and
hiding are tested without sleeping.
"""

from __future__ import annotations

import pytest

from burrow.backends.base import Backend
from burrow.core.model import Filter, Message, Update

T = 1_000_000.0
ALL = Filter()
HIDDEN_TOO = Filter(match_hidden=True)


async def put(
    b: Backend, a: str, q: str, m: str, body: bytes = b"x", ttl: float = 0, hide: float = 0
) -> bool:
    return await b.put_message(a, q, m, body, T + ttl if ttl else 0.0, T + hide if hide else 0.0, T)


async def ids(b: Backend, a: str, q: str, f: Filter = ALL, now: float = T) -> list[str]:
    return [m.id for m in await b.get_messages(a, q, f, now)]


async def wipe(b: Backend) -> None:
    await b.delete_accounts(ALL, T)


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
    await backend.clean(T + 6)
    assert await backend.list_accounts(ALL, T + 6) == ["a"]
    assert await backend.list_queues("a", ALL, T + 6) == ["gone", "stays"]
    await backend.clean(T + 7)
    assert await backend.list_queues("a", ALL, T + 7) == ["stays"]
    await backend.clean(T + 100)
    assert await backend.list_accounts(ALL, T + 100) == []
    assert await backend.count_messages() == 0


async def test_clean_reports_queues_whose_messages_became_visible(backend: Backend) -> None:
    await put(backend, "a", "q1", "m", hide=5)
    await put(backend, "a", "q2", "m", hide=50)
    await put(backend, "b", "q3", "m")
    assert await backend.clean(T + 1) == []
    assert await backend.clean(T + 5) == [("a", "q1")]
    assert await backend.clean(T + 6) == []
    await backend.update_message("b", "q3", "m", Update(hidden_until=T + 8), T + 6)
    woken = await backend.clean(T + 60)
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
