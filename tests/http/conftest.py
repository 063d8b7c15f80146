"""Fixtures for the HTTP layer tests: a server on port 0 with a small test app, raw-bytes clients
(:class:`burrow.client.Connection`, with checks on every response).

Every test here runs on both the plain asyncio loop and uvloop (production uses uvloop when it
is installed; the fallback must behave the same).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
import pytest
import uvloop

from burrow.client import Connection, Reply, encode_request
from burrow.config import Settings
from burrow.http.server import HttpServer, start_server
from burrow.http.types import Handler, Request, Response


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


class App:
    """The test handler: echoes the request as JSON, plus a few paths that misbehave on purpose.

    ``/slow?d=SECONDS`` sleeps first (out-of-order completion), ``/boom`` raises, ``/hang``
    waits "forever" and records whether it was cancelled, ``/big?n=BYTES`` answers a large body,
    ``/status?s=CODE`` answers that status.
    """

    def __init__(self) -> None:
        self.calls = 0
        self.hang_started = asyncio.Event()
        self.hang_cancelled = asyncio.Event()
        self.in_task: list[bool] = []

    async def __call__(self, req: Request) -> Response:
        self.calls += 1
        params = dict(p.split("=", 1) for p in req.query.split("&") if "=" in p)
        if req.path == "/slow":
            await asyncio.sleep(float(params.get("d", "0.05")))
        elif req.path == "/boom":
            raise RuntimeError("boom")
        elif req.path == "/hang":
            self.hang_started.set()
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                self.hang_cancelled.set()
                raise
        elif req.path == "/big":
            return Response(200, b"x" * int(params["n"]), "application/octet-stream")
        elif req.path == "/status":
            return Response(int(params["s"]), b"", None)
        elif req.path == "/task":
            self.in_task.append(asyncio.current_task() is not None)
            await asyncio.sleep(0)
            self.in_task.append(asyncio.current_task() is not None)
        body = orjson.dumps(
            {
                "method": req.method,
                "path": req.path,
                "query": req.query,
                "headers": req.headers,
                "body": req.body.decode("latin-1"),
                "peer": req.peer,
            }
        )
        return Response(200, body, "application/json", [("x-test", "yes")])


class Client(Connection):
    """A raw client over one TCP connection: exact bytes out (``send``, ``exchange``), one
    response at a time in, each checked: HTTP/1.1, no header twice. Reads time out after 5 s."""

    async def reply(self, head_only: bool = False, timeout: float | None = None) -> Reply:
        reply = await super().reply(head_only, timeout)
        assert reply.version == "HTTP/1.1", reply
        names = [name for name, _ in reply.fields]
        assert len(names) == len(set(names)), f"duplicate response header in {names}"
        return reply

    async def at_eof(self, timeout: float | None = None) -> bool:
        """True if the server closes the connection (without sending anything more)."""
        try:
            rest = await self.read_to_eof(timeout)
        except ConnectionResetError:
            return True
        assert rest == b"", f"unexpected bytes before close: {rest[:200]!r}"
        return True


def get(path: str, *headers: str, version: str = "1.1") -> bytes:
    """A GET request's exact bytes (``headers`` as ``"Name: value"`` lines)."""
    fields = [(name, value) for name, _, value in (h.partition(": ") for h in headers)]
    return encode_request("GET", path, headers=fields, host="test", version=version)


Serve = Callable[..., Awaitable[HttpServer]]


@pytest.fixture
def app() -> App:
    return App()


@pytest.fixture
async def serve(app: App) -> AsyncIterator[Serve]:
    """Start servers on port 0 with small timeouts (overridable per call); close them after."""
    servers: list[HttpServer] = []

    async def start(handler: Handler | None = None, **settings: Any) -> HttpServer:
        values: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": 0,
            "header_timeout": 2.0,
            "body_timeout": 2.0,
            "idle_timeout": 5.0,
        }
        values.update(settings)
        server = await start_server(handler or app, Settings(**values))
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.close(grace=0.5)


@pytest.fixture
async def clients() -> AsyncIterator[Callable[[int], Awaitable[Client]]]:
    """Open raw clients; all are closed at the end of the test."""
    opened: list[Client] = []

    async def connect(port: int) -> Client:
        client = await Client(port=port, timeout=5.0).connect()
        opened.append(client)
        return client

    yield connect
    for client in opened:
        await client.close()
