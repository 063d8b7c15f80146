"""Health probes through a real server over a real socket: ``/health/live`` answers while the
process does; ``/health/ready`` makes a store round trip and is 503 while the store fails or
the server is stopping."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest

from burrow.backends.sqlite import SQLiteBackend
from burrow.client import Connection
from burrow.config import Settings
from burrow.testing.backends import SERVER_BACKENDS
from burrow.testing.server import RunningServer, running_server


@pytest.fixture(params=sorted(SERVER_BACKENDS))
async def server(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[RunningServer]:
    url = SERVER_BACKENDS[request.param].format(tmp=tmp_path)
    async with running_server(Settings(backend=url)) as running:
        yield running


async def test_live_and_ready_answer_ok(server: RunningServer) -> None:
    async with Connection(server.url) as conn:
        for check in ("live", "ready"):
            reply = await conn.request("GET", f"/health/{check}")
            assert reply.status == 200, reply.body
            assert reply.headers["content-type"] == "application/json"
            assert orjson.loads(reply.body) == {"status": "ok"}


async def test_ready_is_cheap_enough_to_probe_every_second(server: RunningServer) -> None:
    async with Connection(server.url) as conn:
        start = time.perf_counter()
        for _ in range(200):
            assert (await conn.request("GET", "/health/ready")).status == 200
        # A store round trip each: well under a millisecond here; generous for a loaded machine.
        assert (time.perf_counter() - start) / 200 < 0.05


async def test_bad_probe_requests_are_4xx(server: RunningServer) -> None:
    async with Connection(server.url) as conn:
        unknown = await conn.request("GET", "/health/deep")
        assert unknown.status == 404
        assert orjson.loads(unknown.body)["error"] == "not_found"
        stray = await conn.request("GET", "/health/ready?verbose=1")
        assert stray.status == 400
        assert "verbose" in orjson.loads(stray.body)["message"]
        post = await conn.request("POST", "/health/live")
        assert post.status == 405 and post.headers["allow"] == "GET"


async def test_sqs_requests_on_health_paths_still_reach_sqs(server: RunningServer) -> None:
    """``/health/{check}`` shadows the SQS queue URL ``/{account}/{queue}`` for plain GETs only:
    an SQS request there (account ``health``) is SQS's, as before the probes existed."""
    headers = {"X-Amz-Target": "AmazonSQS.ListQueues", "Content-Type": "application/x-amz-json-1.0"}
    async with Connection(server.url) as conn:
        reply = await conn.request("POST", "/health/ready", b"{}", headers)
        assert reply.status == 200, reply.body
        assert reply.headers["content-type"] == "application/x-amz-json-1.0"
        query = await conn.request("GET", "/health/live?Action=ListQueues")
        assert query.status == 200 and query.headers["content-type"] == "text/xml"


async def test_ready_fails_while_the_store_is_unavailable(tmp_path: Path) -> None:
    settings = Settings(backend=f"sqlite:///{tmp_path}/burrow.db")
    async with running_server(settings) as server, Connection(server.url) as conn:
        assert (await conn.request("GET", "/health/ready")).status == 200
        backend = server.engine.backend
        assert isinstance(backend, SQLiteBackend)
        await backend.close()  # the store goes away underneath the running server
        ready = await conn.request("GET", "/health/ready")
        assert ready.status == 503
        assert ready.headers["retry-after"] == "1"
        error = orjson.loads(ready.body)
        assert error["error"] == "storage_unavailable" and "not ready" in error["message"]
        live = await conn.request("GET", "/health/live")
        assert live.status == 200  # the process still answers: restarting it is not the cure
        assert (await conn.request("PUT", "/v1.0/a/q/m", b"x")).status == 503


async def test_ready_fails_on_an_unreachable_redis(tmp_path: Path) -> None:
    pytest.importorskip("burrow.backends.redis", reason="the Redis backend is not in this build")
    async with (
        running_server(Settings(backend="redis://127.0.0.1:1/0")) as server,
        Connection(server.url) as conn,
    ):
        start = time.monotonic()
        ready = await conn.request("GET", "/health/ready")
        assert ready.status == 503, ready.body
        assert orjson.loads(ready.body)["error"] == "storage_unavailable"
        assert time.monotonic() - start < 10
        assert (await conn.request("GET", "/health/live")).status == 200


async def test_ready_fails_while_shutting_down(server: RunningServer) -> None:
    async with Connection(server.url) as conn:
        server.engine.drain()  # the first step of a shutdown: load balancers must stop sending
        ready = await conn.request("GET", "/health/ready")
        assert ready.status == 503
        assert orjson.loads(ready.body)["error"] == "unavailable"
        assert (await conn.request("GET", "/health/live")).status == 200
