"""A router over in-process servers, and a real ``burrow proxy`` process, for tests.

:func:`running_router` starts several in-process servers (one store each, sharing the
test's clock) and an in-process router in front of them; what it yields has the ``url``
and ``engine`` a test of one server uses (``engine`` sees the servers' engines as one), so
a suite written against one server runs through the router unchanged.
:class:`ProxyProcess` is ``python -m burrow proxy`` for tests that kill and restart servers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any

from burrow.clock import Clock
from burrow.config import Settings
from burrow.engine import Engine
from burrow.http.server import HttpServer, start_server
from burrow.router.app import Router
from burrow.testing.process import ServeProcess
from burrow.testing.server import RunningServer, running_server

#: Servers behind a router in the suites that run through one.
SERVERS = 3


class Backends:
    """The servers' stores seen as one, for the few checks tests make on "the" store."""

    def __init__(self, engines: Sequence[Engine]) -> None:
        self._engines = engines

    async def count_messages(self) -> int:
        return sum([await engine.backend.count_messages() for engine in self._engines])


class Engines:
    """The servers' engines seen as one: parked long polls summed, a cleaner pass on each."""

    def __init__(self, engines: Sequence[Engine]) -> None:
        self.engines = engines
        self.backend = Backends(engines)

    @property
    def waiting(self) -> int:
        return sum(engine.waiting for engine in self.engines)

    async def clean(self) -> None:
        for engine in self.engines:
            await engine.clean()


@dataclass
class RunningRouter:
    """A router listening in this process, and the servers behind it."""

    router: Router
    http: HttpServer
    servers: list[RunningServer]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http.port}"

    @property
    def port(self) -> int:
        return self.http.port

    @property
    def engine(self) -> Engines:
        return Engines([server.engine for server in self.servers])

    def server_of(self, account: str, queue: str) -> RunningServer:
        """The server that holds (account, queue)."""
        url = self.router.placement.server_for(account, queue)
        return next(s for s in self.servers if s.url == url)


@asynccontextmanager
async def running_proxy(settings: Settings, **options: Any) -> AsyncIterator[tuple[Router, HttpServer]]:
    """A router over ``settings.servers`` on an ephemeral port (``options`` go to :class:`Router`)."""
    settings = settings.replace(host="127.0.0.1", port=0)
    router = Router(settings, **options)
    http = await start_server(router, settings)
    await router.start(http.host, http.port)
    try:
        yield router, http
    finally:
        await http.close()
        await router.close()


@asynccontextmanager
async def running_router(
    settings: Settings | None = None, clock: Clock | None = None, servers: int = SERVERS, **options: Any
) -> AsyncIterator[RunningRouter]:
    """``servers`` in-process servers (``settings``, each its own store, all on ``clock``) behind
    an in-process router (``options`` go to :class:`Router`), until the block exits."""
    settings = (settings or Settings(backend="memory://")).replace(workers=1)
    async with AsyncExitStack() as stack:
        started = [await stack.enter_async_context(running_server(settings, clock)) for _ in range(servers)]
        routed = settings.replace(servers=",".join(s.url for s in started))
        router, http = await stack.enter_async_context(running_proxy(routed, **options))
        yield RunningRouter(router, http, started)


class ProxyProcess(ServeProcess):
    """``python -m burrow proxy ARGS`` (give ``--port 0`` for a free port), read like a server's."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        super().__init__(*args, env=env, command="proxy")
