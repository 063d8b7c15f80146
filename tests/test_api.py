"""The burrow v1.0 API through the real HTTP server over a real socket, on every backend.

The server runs in-process on an ephemeral port with a hand-driven clock, so ttl
and hide are tested by moving time and running a cleaner pass, never by sleeping.
The whole suite also runs through the router (``burrow proxy``) over three servers
(parameter ``router``); the only differences it may show are those docs/api.md "Through
the router" documents, and the tests that meet them say so.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import orjson
import pytest

from burrow.client import Connection, Reply, encode_request, path
from burrow.config import Settings
from burrow.testing.backends import SERVER_BACKENDS
from burrow.testing.clock import ManualClock
from burrow.testing.router import RunningRouter, running_router
from burrow.testing.server import RunningServer, running_server

#: The parameter that runs the suite through a router over three in-process servers.
ROUTER = "router"


class Api:
    """A connection plus the server and clock behind it."""

    def __init__(self, server: RunningServer | RunningRouter, clock: ManualClock, conn: Connection) -> None:
        self.server = server
        self.clock = clock
        self.conn = conn
        #: Whether requests go through the router (to several servers).
        self.routed = isinstance(server, RunningRouter)

    async def __call__(self, method: str, target: str, body: bytes = b"") -> Reply:
        return await self.conn.request(method, target, body)

    async def json(self, method: str, target: str) -> object:
        reply = await self(method, target)
        assert reply.status == 200, reply
        assert reply.headers["content-type"] == "application/json"
        return reply.json()

    async def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        await self.server.engine.clean()


@pytest.fixture(params=[*sorted(SERVER_BACKENDS), ROUTER])
async def api(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Api]:
    clock = ManualClock()
    serving: AbstractAsyncContextManager[RunningServer | RunningRouter]
    if request.param == ROUTER:
        serving = running_router(Settings(backend="memory://", max_wait=5), clock)
    else:
        url = SERVER_BACKENDS[request.param].format(tmp=tmp_path)
        serving = running_server(Settings(backend=url, max_wait=5), clock)
    async with serving as server, Connection(server.url) as conn:
        api = Api(server, clock, conn)
        yield api
        # leave nothing behind
        await api("DELETE", "/v1.0")
        assert (await api("GET", "/v1.0")).status == 404


def across_servers(api: Api, names: object) -> object:
    """A list of accounts or queues as its order can be compared: through the router, which
    lists each server's names in turn, first-insertion order holds within a server only
    (docs/api.md "Through the router"), so there the comparison is of the sorted lists."""
    return sorted(names) if api.routed and isinstance(names, list) else names


def error_of(reply: Reply, status: int) -> str:
    assert reply.status == status, reply
    assert reply.headers["content-type"] == "application/json"
    data = orjson.loads(reply.body)
    assert set(data) == {"error", "message"} and data["message"]
    return str(data["message"])


# -- the method table --------------------------------------------------------------

METHOD_TABLE = {
    "/": {"GET": 200},
    "/v1.0": {"GET": 200, "DELETE": 204},
    "/v1.0/a": {"GET": 200, "DELETE": 204},
    "/v1.0/a/q": {"GET": 200, "POST": 204, "DELETE": 204},
    "/v1.0/a/q/m": {"GET": 200, "PUT": 204, "POST": 204, "DELETE": 204},
}


@pytest.mark.parametrize("target", list(METHOD_TABLE))
@pytest.mark.parametrize("method", ["GET", "PUT", "POST", "DELETE", "HEAD", "OPTIONS", "PATCH"])
async def test_method_table(api: Api, target: str, method: str) -> None:
    assert (await api("PUT", "/v1.0/a/q/m", b"x")).status == 201
    reply = await api(method, target, b"y" if method == "PUT" else b"")
    expected = METHOD_TABLE[target].get(method, 405)
    assert reply.status == expected, reply
    if expected == 405:
        assert reply.headers["allow"]
        if method != "HEAD":  # a HEAD reply carries no body
            error_of(reply, 405)
    await api("DELETE", "/v1.0")


async def test_versions_and_unknown_paths(api: Api) -> None:
    assert await api.json("GET", "/") == ["v1.0"]
    for target in ("/v2.0", "/x/y", "/v1.0/a/q/m/extra", "//v1.0"):
        error_of(await api("GET", target), 404)


# -- messages: create, replace, order, details ----------------------------------


async def test_put_create_replace_keeps_position(api: Api) -> None:
    assert (await api("PUT", "/v1.0/a/q/m1?ttl=100", b"one")).status == 201
    assert (await api("PUT", "/v1.0/a/q/m2", b"two")).status == 201
    assert (await api("PUT", "/v1.0/a/q/m1?hide=0&ttl=0", b"uno")).status == 204
    assert await api.json("GET", "/v1.0/a/q") == [
        {"id": "m1", "ttl": 0, "hide": 0, "body": "uno"},
        {"id": "m2", "ttl": 600, "hide": 0, "body": "two"},
    ]


async def test_detail_levels_for_lists_and_one_message(api: Api) -> None:
    await api("PUT", "/v1.0/a/q/m?ttl=50&hide=0", b"test")
    assert await api.json("GET", "/v1.0/a/q?detail=id") == ["m"]
    assert await api.json("GET", "/v1.0/a/q?detail=all") == [
        {"id": "m", "ttl": 50, "hide": 0, "body": "test"}
    ]
    assert await api.json("GET", "/v1.0/a/q?detail=attributes") == [{"id": "m", "ttl": 50, "hide": 0}]
    assert await api.json("GET", "/v1.0/a/q?detail=body") == ["test"]
    assert (await api("GET", "/v1.0/a/q?detail=none")).status == 204
    assert await api.json("GET", "/v1.0/a/q/m") == {"id": "m", "ttl": 50, "hide": 0, "body": "test"}
    assert await api.json("GET", "/v1.0/a/q/m?detail=attributes") == {"id": "m", "ttl": 50, "hide": 0}
    for detail, raw in (("id", b"m"), ("body", b"test")):
        reply = await api("GET", f"/v1.0/a/q/m?detail={detail}")
        assert (reply.status, reply.body, reply.headers["content-type"]) == (
            200,
            raw,
            "application/octet-stream",
        )
    assert (await api("GET", "/v1.0/a/q/m?detail=none")).status == 204
    assert await api.json("GET", "/v1.0?detail=all") == [{"id": "a"}]
    assert await api.json("GET", "/v1.0/a?detail=id") == ["q"]
    for target in ("/v1.0", "/v1.0/a"):
        for bad in ("attributes", "body"):
            error_of(await api("GET", f"{target}?detail={bad}"), 400)


async def test_invalid_detail_changes_nothing(api: Api) -> None:
    await api("PUT", "/v1.0/a/q/m", b"x")
    for target in ("/v1.0", "/v1.0/a", "/v1.0/a/q", "/v1.0/a/q/m"):
        error_of(await api("DELETE", f"{target}?detail=everything"), 400)
    error_of(await api("DELETE", "/v1.0/a?detail=body"), 400)
    error_of(await api("POST", "/v1.0/a/q?hide=60&detail=nope"), 400)
    assert await api.json("GET", "/v1.0/a/q?detail=attributes") == [{"id": "m", "ttl": 600, "hide": 0}]


async def test_update_operations_return_new_values(api: Api) -> None:
    await api("PUT", "/v1.0/a/q/m1", b"1")
    await api("PUT", "/v1.0/a/q/m2", b"2")
    assert await api.json("POST", "/v1.0/a/q/m1?ttl=30&detail=attributes") == {
        "id": "m1",
        "ttl": 30,
        "hide": 0,
    }
    assert await api.json("POST", "/v1.0/a/q?hide=20&detail=attributes") == [
        {"id": "m1", "ttl": 30, "hide": 20},
        {"id": "m2", "ttl": 600, "hide": 20},
    ]
    # POST with no attributes changes nothing, detail=none answers 204
    assert (await api("POST", "/v1.0/a/q/m1")).status == 204
    assert await api.json("GET", "/v1.0/a/q/m1?detail=attributes") == {"id": "m1", "ttl": 30, "hide": 20}


# -- 404, not an empty list ------------------------------------------------------


async def test_nothing_matched_is_404_with_a_reason(api: Api) -> None:
    assert "accounts" in error_of(await api("GET", "/v1.0"), 404)
    assert "nobody" in error_of(await api("GET", "/v1.0/nobody"), 404)
    error_of(await api("GET", "/v1.0/a/q"), 404)
    error_of(await api("GET", "/v1.0/a/q/m"), 404)
    error_of(await api("DELETE", "/v1.0/a/q/m"), 404)
    error_of(await api("POST", "/v1.0/a/q/m?hide=1"), 404)
    await api("PUT", "/v1.0/a/q/m?hide=10", b"x")
    error_of(await api("GET", "/v1.0/a/q"), 404)  # only a hidden message
    assert await api.json("GET", "/v1.0/a/q?detail=id&match_hidden=TRUE") == ["m"]
    error_of(await api("GET", "/v1.0/a/q?marker=m&match_hidden=true"), 404)  # marker at the end


async def test_implicit_accounts_and_queues(api: Api) -> None:
    await api("PUT", "/v1.0/acc2/q/m", b"x")
    await api("PUT", "/v1.0/acc1/q2/m", b"x")
    await api("PUT", "/v1.0/acc1/q1/m", b"x")
    assert across_servers(api, await api.json("GET", "/v1.0")) == across_servers(api, ["acc2", "acc1"])
    assert across_servers(api, await api.json("GET", "/v1.0/acc1")) == across_servers(api, ["q2", "q1"])
    assert (await api("DELETE", "/v1.0/acc1/q2/m")).status == 204
    assert await api.json("GET", "/v1.0/acc1") == ["q1"]
    assert await api.json("DELETE", "/v1.0/acc2?detail=id") == ["q"]
    assert await api.json("GET", "/v1.0") == ["acc1"]


async def test_markers_and_limits(api: Api) -> None:
    for i in range(5):
        await api("PUT", f"/v1.0/a/q/m{i}", b"x")
    assert await api.json("GET", "/v1.0/a/q?detail=id&limit=2") == ["m0", "m1"]
    assert await api.json("GET", "/v1.0/a/q?detail=id&marker=m1&limit=2") == ["m2", "m3"]
    assert await api.json("GET", "/v1.0/a/q?detail=id&marker=unknown&limit=1") == ["m0"]
    assert await api.json("DELETE", "/v1.0/a/q?detail=id&marker=m3") == ["m4"]


async def test_max_limit_caps_get(api: Api) -> None:
    async with (
        running_server(Settings(backend="memory://", max_limit=3)) as small,
        Connection(small.url) as c,
    ):
        for i in range(5):
            await c.request("PUT", f"/v1.0/a/q/m{i}", b"x")
        assert orjson.loads((await c.request("GET", "/v1.0/a/q?detail=id")).body) == ["m0", "m1", "m2"]
        assert orjson.loads((await c.request("GET", "/v1.0/a/q?detail=id&limit=100")).body) == [
            "m0",
            "m1",
            "m2",
        ]
        # deletes are not capped: DELETE without a limit empties the queue
        assert len(orjson.loads((await c.request("DELETE", "/v1.0/a/q?detail=id")).body)) == 5


# -- worker semantics --------------------------------------------------------------


async def test_get_and_hide_then_delete_worker_cycle(api: Api) -> None:
    for i in range(3):
        await api("PUT", f"/v1.0/jobs/q/j{i}", f"job {i}".encode())
    took = await api.json("POST", "/v1.0/jobs/q?limit=1&hide=60&detail=all")
    assert took == [{"id": "j0", "ttl": 600, "hide": 60, "body": "job 0"}]
    took = await api.json("POST", "/v1.0/jobs/q?limit=1&hide=60&detail=all")
    assert took == [{"id": "j1", "ttl": 600, "hide": 60, "body": "job 1"}]
    assert (await api("DELETE", "/v1.0/jobs/q/j0")).status == 204
    # j1's worker dies: the hide runs out and j1 comes back first
    await api.advance(60)
    assert await api.json("GET", "/v1.0/jobs/q?detail=id") == ["j1", "j2"]
    taken = await api.json("DELETE", "/v1.0/jobs/q?detail=all&limit=1")
    assert taken == [{"id": "j1", "ttl": 540, "hide": 0, "body": "job 1"}]


async def test_delete_queue_trap_keeps_hidden_messages(api: Api) -> None:
    await api("PUT", "/v1.0/a/q/hidden?hide=60", b"x")
    await api("PUT", "/v1.0/a/q/visible", b"x")
    assert await api.json("DELETE", "/v1.0/a/q?detail=id") == ["visible"]
    assert await api.json("GET", "/v1.0/a/q?detail=id&match_hidden=true") == ["hidden"]
    assert await api.json("DELETE", "/v1.0/a?detail=id") == ["q"]  # deletes everything beneath
    error_of(await api("GET", "/v1.0/a"), 404)


async def test_ttl_expiry_removes_messages_queues_accounts(api: Api) -> None:
    await api("PUT", "/v1.0/a/q/short?ttl=5", b"x")
    await api("PUT", "/v1.0/a/r/long?ttl=50", b"x")
    assert await api.json("GET", "/v1.0/a/q/short?detail=attributes") == {"id": "short", "ttl": 5, "hide": 0}
    await api.advance(2)
    assert await api.json("GET", "/v1.0/a/q/short?detail=attributes") == {"id": "short", "ttl": 3, "hide": 0}
    await api.advance(3)
    error_of(await api("GET", "/v1.0/a/q/short"), 404)
    assert await api.json("GET", "/v1.0/a") == ["r"]
    await api.advance(45)
    error_of(await api("GET", "/v1.0"), 404)


# -- long polling -------------------------------------------------------------------


async def _waiter(api: Api, method: str, target: str) -> tuple[Reply, float]:
    async with Connection(api.server.url) as conn:
        start = time.monotonic()
        reply = await conn.request(method, target)
        return reply, time.monotonic() - start


async def _until_parked(api: Api, count: int = 1) -> None:
    for _ in range(500):
        if api.server.engine.waiting >= count:
            return
        await asyncio.sleep(0.002)
    raise AssertionError("waiter never parked")


async def test_wait_is_woken_by_create(api: Api) -> None:
    task = asyncio.create_task(_waiter(api, "POST", "/v1.0/a/q?wait=5&limit=1&hide=30&detail=id"))
    await _until_parked(api)
    assert (await api("PUT", "/v1.0/a/q/m", b"x")).status == 201
    reply, elapsed = await task
    assert (reply.status, reply.json()) == (200, ["m"])
    assert elapsed < 2


async def test_wait_is_woken_by_unhide_update(api: Api) -> None:
    await api("PUT", "/v1.0/a/q/m?hide=100", b"x")
    task = asyncio.create_task(_waiter(api, "GET", "/v1.0/a/q?wait=5&detail=id"))
    await _until_parked(api)
    assert (await api("POST", "/v1.0/a/q/m?hide=0")).status == 204
    reply, elapsed = await task
    assert (reply.status, reply.json(), elapsed < 2) == (200, ["m"], True)


async def test_wait_is_woken_by_hide_expiry(api: Api) -> None:
    await api("PUT", "/v1.0/a/q/m?hide=3", b"x")
    task = asyncio.create_task(_waiter(api, "DELETE", "/v1.0/a/q?wait=5&detail=id&limit=1"))
    await _until_parked(api)
    await api.advance(3)  # the hide runs out before the wait does: the cleaner's event wakes it
    reply, elapsed = await task
    assert (reply.status, reply.json(), elapsed < 2) == (200, ["m"], True)


async def test_wait_times_out_with_404_on_the_engine_clock(api: Api) -> None:
    task = asyncio.create_task(_waiter(api, "GET", "/v1.0/a/q?wait=2"))
    await _until_parked(api)
    api.clock.advance(1.5)
    await asyncio.sleep(0.05)
    assert not task.done()  # the deadline is on the engine's clock, not the wall clock
    api.clock.advance(0.5)
    error_of((await task)[0], 404)
    assert api.server.engine.waiting == 0


async def test_wait_is_capped_at_max_wait(api: Api) -> None:
    # max_wait is 5 in this fixture: wait=1000 is accepted and capped, not rejected
    task = asyncio.create_task(_waiter(api, "GET", "/v1.0/a/q?wait=1000&detail=id"))
    await _until_parked(api)
    api.clock.advance(5)
    error_of((await task)[0], 404)
    task = asyncio.create_task(_waiter(api, "GET", "/v1.0/a/q?wait=1000&detail=id"))
    await _until_parked(api)
    await api("PUT", "/v1.0/a/q/m", b"x")
    assert (await task)[0].status == 200


async def test_many_waiters_one_take_each(api: Api) -> None:
    tasks = [
        asyncio.create_task(_waiter(api, "POST", "/v1.0/a/q?wait=5&limit=1&hide=60&detail=id"))
        for _ in range(20)
    ]
    await _until_parked(api, 20)
    for i in range(20):
        await api("PUT", f"/v1.0/a/q/m{i:02d}", b"x")
    replies = await asyncio.gather(*tasks)
    got = sorted(orjson.loads(reply.body)[0] for reply, _ in replies)
    assert got == [f"m{i:02d}" for i in range(20)]  # each message taken exactly once


# -- validation (Decision 1, 3, 5) -------------------------------------------------

BAD_QUERIES = [
    "limit=0",
    "limit=-1",
    "limit=abc",
    "limit=",
    "limit=1.5",
    "limit=99999999999999999999",
    "hide=-1",
    "ttl=1e3",
    "ttl=%201",
    "wait=x",
    "match_hidden=maybe",
    "detail=ALL",
    "bogus=1",
    "limit=1&limit=2",
    "marker=%FF",
]


@pytest.mark.parametrize("query", BAD_QUERIES)
async def test_bad_parameters_are_400_and_change_nothing(api: Api, query: str) -> None:
    await api("PUT", "/v1.0/a/q/m", b"keep")
    error_of(await api("POST", f"/v1.0/a/q?{query}&hide=99"), 400)
    error_of(await api("DELETE", f"/v1.0/a/q?{query}"), 400)
    assert await api.json("GET", "/v1.0/a/q") == [{"id": "m", "ttl": 600, "hide": 0, "body": "keep"}]


async def test_ttl_and_hide_bounds(api: Api) -> None:
    error_of(await api("PUT", "/v1.0/a/q/m?ttl=1000000001", b"x"), 400)
    error_of(await api("PUT", "/v1.0/a/q/m?wait=1", b"x"), 400)  # wait does not apply to PUT
    assert (await api("PUT", "/v1.0/a/q/m?ttl=1000000000&hide=0", b"x")).status == 201


@pytest.mark.parametrize(
    "segment",
    ["%FF", "a%00b", "%7F", "x" * 257, "%C3%28"],
    ids=["bad-utf8", "nul", "del", "too-long", "bad-utf8-seq"],
)
async def test_bad_names_are_400(api: Api, segment: str) -> None:
    for target in (f"/v1.0/{segment}", f"/v1.0/a/{segment}/m", f"/v1.0/a/q/{segment}"):
        error_of(await api("PUT" if target.count("/") == 4 else "GET", target, b"x"), 400)
    error_of(await api("GET", "/v1.0/a/"), 400)  # empty queue name


async def test_names_are_percent_decoded_after_splitting(api: Api) -> None:
    names = ("a/b", "ünï cøde", "x" * 256, "100%")
    await api("PUT", path(*names[:2], "m 1"), b"x")
    await api("PUT", path(names[2], names[3], "m"), b"y")
    assert across_servers(api, await api.json("GET", "/v1.0")) == across_servers(api, ["a/b", "x" * 256])
    assert await api.json("GET", path("a/b")) == ["ünï cøde"]
    assert await api.json("GET", path(*names[:2]) + "?detail=id") == ["m 1"]
    assert await api.json("GET", path(names[2]) + "?detail=id") == ["100%"]


# -- bodies (Decision 4) ------------------------------------------------------------


async def test_binary_bodies_survive_every_detail_level(api: Api) -> None:
    raw = bytes(range(256))
    await api("PUT", "/v1.0/a/q/bin", raw)
    await api("PUT", "/v1.0/a/q/txt", "ünï".encode())
    encoded = base64.b64encode(raw).decode()
    assert (await api("GET", "/v1.0/a/q/bin?detail=body")).body == raw
    assert await api.json("GET", "/v1.0/a/q/bin") == {
        "id": "bin",
        "ttl": 600,
        "hide": 0,
        "body": encoded,
        "body_encoding": "base64",
    }
    assert await api.json("GET", "/v1.0/a/q?detail=body") == [
        {"body": encoded, "body_encoding": "base64"},
        "ünï",
    ]
    assert (await api("PUT", "/v1.0/a/q/empty", b"")).status == 201
    assert (await api("GET", "/v1.0/a/q/empty?detail=body")).body == b""


async def test_body_size_limit_is_413_and_stores_nothing(api: Api) -> None:
    async with running_server(Settings(backend="memory://", max_body_bytes=1000)) as small:
        async with Connection(small.url) as c:
            assert (await c.request("PUT", "/v1.0/a/q/ok", b"x" * 1000)).status == 201
        async with Connection(small.url) as c:
            reply = await c.request("PUT", "/v1.0/a/q/big", b"x" * 1001)
            error_of(reply, 413)
        async with Connection(small.url) as c:
            assert orjson.loads((await c.request("GET", "/v1.0/a/q?detail=id")).body) == ["ok"]


async def test_pipelined_requests_answer_in_order(api: Api) -> None:
    requests = [encode_request("PUT", f"/v1.0/a/q/m{i}", str(i % 10).encode()) for i in range(50)]
    requests.append(encode_request("GET", "/v1.0/a/q?detail=id"))
    async with Connection(api.server.url) as conn:
        replies = await conn.pipeline(requests)  # one write, 51 responses
    assert [reply.status for reply in replies[:50]] == [201] * 50
    assert replies[50].json() == [f"m{i}" for i in range(50)]
