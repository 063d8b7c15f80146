"""Fixtures for the SQS suites: a real server in a thread, and real boto3 clients pointed at it.

boto3 and the AWS CLI block, so the server runs on its own event loop in a background
thread (the same ``running_server`` the other suites use); clients talk to it over a
real socket. Tests use fresh queue names, so one server serves a whole module.

Every server fixture runs on each backend of :data:`SERVER_BACKENDS` (through the
module-scoped ``server_backend`` parameter), so each SQS test runs once per backend;
pytest orders the tests so that a module starts one server per backend, not per test.
One more value of the parameter, ``router``, runs each test through the router
(``burrow proxy``) over three in-process memory servers: a "server" is then that router
(``settings.workers`` servers behind it, as ``burrow serve --workers 3`` would run them).
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Coroutine, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

import pytest

from burrow.clock import Clock as EngineClock
from burrow.config import Settings
from burrow.testing.backends import SERVER_BACKENDS
from burrow.testing.router import SERVERS, RunningRouter, running_router
from burrow.testing.server import RunningServer, running_server
from tests.boto import sqs_client

T = TypeVar("T")

#: The ``server_backend`` value that runs the suite through a router over memory servers.
ROUTER = "router"
#: Test modules that look inside one server, which a router in front of it changes nothing
#: about, with why they do not run through the router.
ONE_SERVER_ONLY = {
    "tests.sqs.test_storage_calls": "counts the calls reaching one server's store: the router"
    " forwards each request to one server unchanged, whose store sees exactly these calls",
}

#: The suites' boto3 client (tests/boto.py), under the name they import.
client = sqs_client


class ThreadedServer:
    """``running_server`` on a private event loop in a daemon thread; with ``settings.workers``
    above 1, that many servers behind a router (``running_router``) instead."""

    def __init__(self, settings: Settings, clock: Clock | None = None) -> None:
        self.settings = settings
        self.clock = clock
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._server: RunningServer | RunningRouter | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, daemon=True)

    def _main(self) -> None:
        async def serve() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            workers = self.settings.workers
            async with (
                running_router(self.settings, self.clock, servers=workers)
                if workers > 1
                else running_server(self.settings, self.clock)
            ) as server:
                self._server = server
                self._ready.set()
                await self._stop.wait()

        try:
            asyncio.run(serve())
        except BaseException as error:  # surfaced to the test thread by __enter__
            self._error = error
            self._ready.set()

    def __enter__(self) -> ThreadedServer:
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None or self._server is None:
            raise RuntimeError("server did not start") from self._error
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    @property
    def server(self) -> RunningServer | RunningRouter:
        assert self._server is not None
        return self._server

    @property
    def url(self) -> str:
        return self.server.url

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the server's loop (e.g. a cleaner pass) and return its result."""
        assert self._loop is not None
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(30)


class Clock(EngineClock):
    """Real time plus an offset the test moves forward (retention, 60 s rules), thread-safe enough."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


def settings_for(backend: str, tmp: Path, **changes: Any) -> Settings:
    """Settings of a server on ``backend`` (a :data:`SERVER_BACKENDS` name, or :data:`ROUTER`)."""
    if backend == ROUTER:
        url, workers = "memory://", SERVERS
    else:
        url, workers = SERVER_BACKENDS[backend].replace("{tmp}", str(tmp)), 1
    # 4 MiB requests: a 1 MiB SQS message in JSON must reach the SQS size check.
    return Settings(backend=url, max_body_bytes=4 << 20, clean_interval=0.1, workers=workers).replace(
        **changes
    )


@pytest.fixture(scope="module", params=[*sorted(SERVER_BACKENDS), ROUTER])
def server_backend(request: pytest.FixtureRequest) -> str:
    """The backend (a :data:`SERVER_BACKENDS` name, or :data:`ROUTER`) the servers of this test run on."""
    return str(request.param)


@pytest.fixture(scope="module")
def server(
    server_backend: str, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[ThreadedServer]:
    if server_backend == ROUTER and request.module.__name__ in ONE_SERVER_ONLY:
        pytest.skip(ONE_SERVER_ONLY[request.module.__name__])
    with ThreadedServer(settings_for(server_backend, tmp_path_factory.mktemp("sqs"))) as running:
        yield running


@pytest.fixture(scope="module")
def sqs(server: ThreadedServer) -> Any:
    return client(server.url)


@pytest.fixture
def timed(server_backend: str, tmp_path: Path) -> Iterator[tuple[ThreadedServer, Clock, Any]]:
    """A private server whose clock the test advances, with a client for it."""
    clock = Clock()
    with ThreadedServer(settings_for(server_backend, tmp_path), clock) as running:
        yield running, clock, client(running.url)


@pytest.fixture
def name() -> str:
    """A fresh queue name for one test."""
    return "q-" + uuid.uuid4().hex[:12]


def together(name: str, server_backend: str) -> str:
    """``name`` with a hash tag through the router, so that it and every name made by appending
    to it (``name + "-dlq"``) live on one server; as it is otherwise.

    A dead-letter queue, and a message move task's source and destination, must be on the
    source queue's server (docs/api.md "Through the router"): tests of those use this.
    """
    return f"{name}--t" if server_backend == ROUTER else name
