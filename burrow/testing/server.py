"""Start a real Burrow server in-process on an ephemeral port, for tests and benchmarks."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from burrow.api.routes import App
from burrow.backends import open_backend
from burrow.clock import Clock
from burrow.config import Settings
from burrow.engine import Engine
from burrow.http.server import HttpServer, start_server


@dataclass
class RunningServer:
    engine: Engine
    http: HttpServer

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http.port}"

    @property
    def port(self) -> int:
        return self.http.port


@asynccontextmanager
async def running_server(
    settings: Settings | None = None, clock: Clock | None = None
) -> AsyncIterator[RunningServer]:
    """Serve until the block exits; readiness is the listening socket, never a sleep."""
    settings = (settings or Settings(backend="memory://")).replace(host="127.0.0.1", port=0)
    backend = open_backend(settings.backend_url(), settings)
    engine = Engine(backend, settings, clock)
    await engine.start()
    app = App(engine)
    http = await start_server(app, settings)
    app.serving(http)
    try:
        yield RunningServer(engine, http)
    finally:
        engine.drain()  # parked long polls get their answer before connections close
        await http.close()
        await engine.stop()
