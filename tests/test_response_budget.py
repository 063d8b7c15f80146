"""List responses are bounded by ``max_response_bytes`` (docs/api.md "Response size").

GET lists stop before the item that would pass the budget (at least one is returned) and
say so in ``X-Burrow-Truncated`` / ``X-Burrow-Next-Marker``; POST and DELETE lists, which
must return everything they hid or deleted, have their ``limit`` capped before the
operation, so nothing they leave out is touched.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from burrow.api.v1 import _bounded_list
from burrow.client import Connection, Reply, path
from burrow.config import Settings
from burrow.testing.backends import SERVER_BACKENDS
from burrow.testing.server import running_server

#: A small budget: POST/DELETE lists with bodies are capped at 8192 // 2048 = 4 messages,
#: those without at 8192 // 1024 = 8 items.
BUDGET = 8192
BODY = 1500


@pytest.fixture(params=sorted(SERVER_BACKENDS))
async def conn(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Connection]:
    url = SERVER_BACKENDS[request.param].format(tmp=tmp_path)
    settings = Settings(backend=url, max_response_bytes=BUDGET, max_body_bytes=2048)
    async with running_server(settings) as server, Connection(server.url) as c:
        yield c
        await c.request("DELETE", "/v1.0")


async def fill(conn: Connection, count: int, size: int = BODY, queue: str = "q") -> list[str]:
    ids = [f"m{i:02}" for i in range(count)]
    for i, mid in enumerate(ids):
        await conn.call("PUT", path("a", queue, mid), bytes([ord("a") + i % 26]) * size)
    return ids


def truncated(reply: Reply) -> bool:
    value = reply.headers.get("x-burrow-truncated")
    assert value in (None, "true")
    return value == "true"


def listed(reply: Reply) -> list[Any]:
    assert reply.status == 200, reply
    data = orjson.loads(reply.body)
    assert isinstance(data, list)
    return data


async def page_all(conn: Connection, query: str) -> tuple[list[Any], int]:
    """Every item of a GET list, paging by the next marker; and how many pages it took."""
    items: list[Any] = []
    pages = 0
    marker = ""
    while True:
        reply = await conn.request("GET", path("a", "q") + "?" + query + marker)
        if reply.status == 404:
            return items, pages
        page = listed(reply)
        pages += 1
        assert page, "a 200 list is never empty"
        items += page
        if not truncated(reply):
            return items, pages
        assert len(page) == 1 or len(reply.body) <= BUDGET
        marker = "&marker=" + reply.headers["x-burrow-next-marker"]


# -- GET: rendered within the budget --------------------------------------------------


@pytest.mark.parametrize("detail", ["all", "body", "id", "attributes"])
async def test_get_list_stops_within_the_budget_and_pages_on(conn: Connection, detail: str) -> None:
    ids = await fill(conn, 12)
    first = await conn.call("GET", path("a", "q") + f"?detail={detail}")
    if detail in ("all", "body"):
        assert truncated(first) and len(first.body) <= BUDGET
        assert len(listed(first)) == 5  # 5 rendered bodies of 1500 bytes fit in 8192, 6 do not
        assert first.headers["x-burrow-next-marker"] == "m04"
    else:
        assert not truncated(first) and "x-burrow-next-marker" not in first.headers
    items, pages = await page_all(conn, f"detail={detail}")
    assert pages == (3 if detail in ("all", "body") else 1)
    if detail == "id":
        assert items == ids
    elif detail == "body":
        assert items == [chr(ord("a") + i) * BODY for i in range(12)]
    else:
        assert [item["id"] for item in items] == ids
    # Nothing was hidden or taken by reading.
    assert len(listed(await conn.call("GET", path("a", "q") + "?detail=id"))) == 12


async def test_a_message_larger_than_the_budget_is_still_returned_alone(conn: Connection) -> None:
    # 2048 NULs render as 12 KiB of \u0000 escapes: more than the budget on their own.
    await conn.call("PUT", path("a", "q", "big"), b"\x00" * 2048)
    await conn.call("PUT", path("a", "q", "small"), b"x")
    first = await conn.call("GET", path("a", "q"))
    assert [m["id"] for m in listed(first)] == ["big"] and len(first.body) > BUDGET
    assert listed(first)[0]["body"] == "\x00" * 2048
    assert truncated(first) and first.headers["x-burrow-next-marker"] == "big"
    rest = await conn.call("GET", path("a", "q") + "?marker=big")
    assert [m["id"] for m in listed(rest)] == ["small"] and not truncated(rest)
    only = await conn.call("GET", path("a", "q") + "?limit=1")  # its own limit: not truncated
    assert [m["id"] for m in listed(only)] == ["big"] and not truncated(only)


async def test_binary_bodies_are_rendered_the_same_when_bounded(conn: Connection) -> None:
    raw = bytes(range(256)) * 5  # not UTF-8: base64
    for i in range(8):
        await conn.call("PUT", path("a", "q", f"b{i}"), raw)
    reply = await conn.call("GET", path("a", "q"))
    page = listed(reply)
    assert truncated(reply) and len(reply.body) <= BUDGET and 1 < len(page) < 8
    encoded = base64.b64encode(raw).decode()
    assert page == [
        {"id": f"b{i}", "ttl": 600, "hide": 0, "body": encoded, "body_encoding": "base64"}
        for i in range(len(page))
    ]
    assert reply.headers["x-burrow-next-marker"] == f"b{len(page) - 1}"


async def test_next_marker_is_percent_encoded(conn: Connection) -> None:
    # The odd id ends the first page (five 1500-byte bodies fit): its marker must round-trip.
    for name in ["m0", "m1", "m2", "m3", "a/b c+ü", "m5"]:
        await conn.call("PUT", path("a", "q", name), b"y" * BODY)
    reply = await conn.call("GET", path("a", "q") + "?detail=id")
    assert not truncated(reply)
    reply = await conn.call("GET", path("a", "q") + "?detail=body")
    assert truncated(reply) and reply.headers["x-burrow-next-marker"] == "a%2Fb%20c%2B%C3%BC"
    marker = reply.headers["x-burrow-next-marker"]
    assert listed(await conn.call("GET", path("a", "q") + "?detail=id&marker=" + marker)) == ["m5"]


async def test_small_lists_carry_no_truncation_headers(conn: Connection) -> None:
    await fill(conn, 3, size=10)
    for query in ("", "?detail=id", "?limit=2", "?detail=body&limit=100"):
        reply = await conn.call("GET", path("a", "q") + query)
        assert not truncated(reply) and "x-burrow-next-marker" not in reply.headers
    for method in ("POST", "DELETE"):
        reply = await conn.call(method, path("a", "q") + "?limit=3&detail=all")
        assert len(listed(reply)) == 3 and not truncated(reply)


async def test_max_limit_cut_is_reported_too() -> None:
    async with (
        running_server(Settings(backend="memory://", max_limit=3)) as server,
        Connection(server.url) as c,
    ):
        await fill(c, 5, size=10)
        for i in range(5):
            await c.call("PUT", path(f"acct{i}", "q", "m"), b"x")
        reply = await c.call("GET", path("a", "q") + "?detail=id")
        assert listed(reply) == ["m00", "m01", "m02"]
        assert truncated(reply) and reply.headers["x-burrow-next-marker"] == "m02"
        assert not truncated(await c.call("GET", path("a", "q") + "?detail=id&limit=3"))
        rest = await c.call("GET", path("a", "q") + "?detail=id&marker=m02")
        assert listed(rest) == ["m03", "m04"] and not truncated(rest)
        accounts = await c.call("GET", "/v1.0")
        assert listed(accounts) == ["a", "acct0", "acct1"] and truncated(accounts)
        assert accounts.headers["x-burrow-next-marker"] == "acct1"
        await c.call("DELETE", "/v1.0")


async def test_get_of_accounts_and_queues_stays_within_the_budget(conn: Connection) -> None:
    names = [f"{i:03}" + "n" * 200 for i in range(60)]  # 60 names of 203 bytes: about 12.5 KB
    for name in names:
        await conn.call("PUT", path(name, name, "m"), b"x")
    seen: list[str] = []
    marker = ""
    while True:
        reply = await conn.call("GET", "/v1.0" + marker)
        assert len(reply.body) <= BUDGET
        seen += listed(reply)
        if not truncated(reply):
            break
        marker = "?marker=" + reply.headers["x-burrow-next-marker"]
    assert seen == names
    queues = await conn.call("GET", path(names[0]) + "?detail=all")
    assert listed(queues) == [{"id": names[0]}] and not truncated(queues)


# -- POST and DELETE: limit capped before anything is touched --------------------------


async def test_take_is_capped_and_leaves_the_rest_visible(conn: Connection) -> None:
    ids = await fill(conn, 10)
    taken = await conn.call("POST", path("a", "q") + "?limit=10&hide=60&detail=all")
    got = listed(taken)
    assert [m["id"] for m in got] == ids[:4] and all(m["hide"] == 60 for m in got)
    assert truncated(taken) and taken.headers["x-burrow-next-marker"] == "m03"
    # The six not returned were not hidden.
    visible = listed(await conn.call("GET", path("a", "q") + "?detail=id"))
    assert visible == ids[4:]
    # Repeating the take continues; detail=none is never capped.
    again = await conn.call("POST", path("a", "q") + "?limit=10&hide=60&detail=body")
    assert len(listed(again)) == 4 and truncated(again)
    assert (await conn.call("POST", path("a", "q") + "?hide=60")).status == 204
    assert (await conn.request("GET", path("a", "q"))).status == 404  # all hidden now


async def test_the_usual_take_of_one_is_never_marked(conn: Connection) -> None:
    await fill(conn, 3, size=2048)
    reply = await conn.call("POST", path("a", "q") + "?limit=1&hide=60&detail=all")
    assert len(listed(reply)) == 1 and not truncated(reply)
    assert "x-burrow-next-marker" not in reply.headers


async def test_update_without_hide_continues_from_the_next_marker(conn: Connection) -> None:
    ids = await fill(conn, 10)
    seen: list[str] = []
    marker = ""
    while True:
        reply = await conn.call("POST", path("a", "q") + "?ttl=100&detail=all" + marker)
        page = listed(reply)
        assert all(m["ttl"] == 100 for m in page)
        seen += [m["id"] for m in page]
        if not truncated(reply):
            break
        marker = "&marker=" + reply.headers["x-burrow-next-marker"]
    assert seen == ids


async def test_get_and_delete_is_capped_and_deletes_only_what_it_returns(conn: Connection) -> None:
    ids = await fill(conn, 10)
    reply = await conn.call("DELETE", path("a", "q") + "?detail=all")
    assert [m["id"] for m in listed(reply)] == ids[:4]
    assert truncated(reply) and "x-burrow-next-marker" not in reply.headers  # repeat it instead
    assert listed(await conn.call("GET", path("a", "q") + "?detail=id")) == ids[4:]
    reply = await conn.call("DELETE", path("a", "q") + "?detail=id")  # no bodies: 8 allowed
    assert listed(reply) == ids[4:] and not truncated(reply)
    assert (await conn.request("GET", path("a", "q"))).status == 404


async def test_deletes_without_bodies_are_capped_at_one_item_per_kib(conn: Connection) -> None:
    ids = await fill(conn, 12, size=10)
    reply = await conn.call("DELETE", path("a", "q") + "?detail=attributes&limit=100")
    assert [m["id"] for m in listed(reply)] == ids[:8] and truncated(reply)
    assert (await conn.call("DELETE", path("a", "q"))).status == 204  # detail=none: everything
    for i in range(10):
        await conn.call("PUT", path("a", f"q{i}", "m"), b"x")
    reply = await conn.call("DELETE", path("a") + "?detail=all")
    assert listed(reply) == [{"id": f"q{i}"} for i in range(8)] and truncated(reply)
    assert "x-burrow-next-marker" not in reply.headers
    assert listed(await conn.call("GET", path("a"))) == ["q8", "q9"]
    reply = await conn.call("DELETE", "/v1.0?detail=id")
    assert listed(reply) == ["a"] and not truncated(reply)


async def test_default_budget_bounds_a_list_of_4_mib_messages() -> None:
    """The case of issue 12: a list of 4 MiB messages is no longer built whole."""
    async with running_server(Settings(backend="memory://")) as server, Connection(server.url) as c:
        body = b"z" * (4 << 20)
        for i in range(6):
            await c.call("PUT", path("a", "q", f"big{i}"), body)
        reply = await c.call("GET", path("a", "q"))
        assert len(reply.body) <= 16 << 20 and truncated(reply)
        assert [m["id"] for m in listed(reply)] == ["big0", "big1", "big2"]
        taken = await c.call("DELETE", path("a", "q") + "?detail=all")
        assert len(listed(taken)) == 4 and truncated(taken)  # 16 MiB / 4 MiB
        assert listed(await c.call("GET", path("a", "q") + "?detail=id")) == ["big4", "big5"]
        await c.call("DELETE", "/v1.0")


def test_settings_need_a_positive_budget() -> None:
    with pytest.raises(ValueError, match="max_response_bytes"):
        Settings(max_response_bytes=0).validate()


def test_bounded_list_renders_an_exact_prefix() -> None:
    items = ["x" * n for n in (10, 20, 30, 40)]
    for budget in range(1, 120):
        body, count = _bounded_list(items, lambda s: s, budget, len)
        assert count >= 1 and orjson.loads(body) == items[:count]
        assert count == 1 or len(body) <= budget
        if count < len(items):  # the next one would not have fit
            assert len(orjson.dumps(items[: count + 1])) > budget
