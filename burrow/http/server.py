"""Starting and stopping the HTTP server, and choosing the event loop.

``start_server`` returns once the socket is listening (so tests and the CLI never sleep and
hope), and ``HttpServer.close`` shuts down gracefully: stop accepting, close idle connections,
let running requests finish for a short grace, then abort whatever is left (which cancels their
handlers). The per-connection work lives in ``burrow.http.protocol``.

Before listening, ``start_server`` makes sure ``max_connections`` can be honoured: the process
needs a descriptor per connection plus ``FD_RESERVE`` of its own (listening sockets, the store's
files, the event loop, connections being refused). It raises the soft RLIMIT_NOFILE as far as
needed and refuses to start (:class:`ResourceLimitError`) past the hard limit: past it, uvloop
(libuv) would accept and reset extra clients silently, with nothing logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import resource
import socket
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from burrow.config import Settings
from burrow.http.protocol import HttpProtocol, ServerState, date_line
from burrow.http.types import Handler

__all__ = [
    "FD_RESERVE",
    "HttpServer",
    "ResourceLimitError",
    "ensure_open_files",
    "loop_factory",
    "run",
    "start_server",
]

T = TypeVar("T")

#: Listen backlog: bursts of new connections (benchmarks, reconnect storms) must not be refused.
_BACKLOG = 1024
#: Descriptors the server needs besides one per connection: stdio, the event loop, listening
#: sockets, the store's files, and up to 64 connections being refused with a 503.
FD_RESERVE = 128


class ResourceLimitError(Exception):
    """The process cannot get the resources its settings need (open files for max_connections)."""


def ensure_open_files(connections: int) -> int:
    """Make room for ``connections`` client sockets plus ``FD_RESERVE``: raise the soft
    RLIMIT_NOFILE as far as needed (never lower it); return the soft limit in force.

    Raises :class:`ResourceLimitError`, saying what to change, when the hard limit is too low."""
    needed = connections + FD_RESERVE
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return soft
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise ResourceLimitError(
            f"--max-connections {connections} needs {needed} open files ({FD_RESERVE} more for the"
            f" server itself), but the hard limit is {hard}: lower --max-connections to at most"
            f" {max(hard - FD_RESERVE, 0)} or raise the limit (ulimit -Hn, LimitNOFILE=)"
        )
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    except (OSError, ValueError) as error:
        raise ResourceLimitError(
            f"--max-connections {connections} needs {needed} open files, but raising the soft limit"
            f" from {soft} failed ({error}): lower --max-connections or raise the limit (ulimit -n)"
        ) from error
    return needed


def loop_factory() -> tuple[str, Callable[[], asyncio.AbstractEventLoop]]:
    """The event loop to run on, and its name: uvloop when installed (it roughly doubles
    throughput), else asyncio's default. A factory, not a global policy: event loop
    policies are deprecated from Python 3.14."""
    try:
        import uvloop
    except ImportError:
        return "asyncio", asyncio.new_event_loop
    return "uvloop", uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` on the loop of :func:`loop_factory`."""
    with asyncio.Runner(loop_factory=loop_factory()[1]) as runner:
        return runner.run(main)


class HttpServer:
    """A listening Burrow HTTP server: where it listens, how many clients, and how to stop it."""

    def __init__(self, server: asyncio.AbstractServer, state: ServerState, host: str, port: int) -> None:
        self._server = server
        self._state = state
        #: Address actually bound.
        self.host = host
        #: Port actually bound (useful with ``port=0``).
        self.port = port
        self._closed = False
        self._date_timer: asyncio.TimerHandle | None = None
        self._refresh_date()

    @property
    def connections(self) -> int:
        """Open client connections (not counting ones being refused with 503)."""
        return self._state.accepted

    @property
    def inflight_bytes(self) -> int:
        """Request and response bytes in flight, as counted against ``max_inflight_bytes``."""
        return self._state.inflight

    def _refresh_date(self) -> None:
        """Keep the shared ``date`` header current, once a second, just after the second turns."""
        self._state.date = date_line()
        delay = 1.0 - time.time() % 1.0 + 0.001
        self._date_timer = self._state.loop.call_later(delay, self._refresh_date)

    async def close(self, grace: float = 5.0) -> None:
        """Stop accepting; close idle connections; give running requests ``grace`` seconds."""
        if self._closed:
            return
        self._closed = True
        state = self._state
        state.closing = True
        self._server.close()
        if self._date_timer is not None:
            self._date_timer.cancel()
            self._date_timer = None
        for protocol in list(state.protocols):
            protocol.shutdown()
        if state.protocols:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(state.empty.wait(), grace)
        for protocol in list(state.protocols):
            protocol.abort()
        if state.protocols:  # connection_lost callbacks run on the next loop iterations
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(state.empty.wait(), 1.0)
        await self._server.wait_closed()

    async def __aenter__(self) -> HttpServer:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


async def start_server(
    handler: Handler, settings: Settings, *, sock: socket.socket | None = None, reuse_port: bool = False
) -> HttpServer:
    """Listen on ``settings.host:settings.port`` (or on ``sock``) and serve ``handler``.

    Returns once the socket is listening; ``.port`` is the port actually bound. Raises
    :class:`ResourceLimitError` if ``settings.max_connections`` cannot be honoured.
    ``reuse_port`` binds with SO_REUSEPORT, so several processes over one shared store
    (``burrow serve --workers N`` on Redis) listen on one port and the kernel spreads
    connections between them.
    """
    ensure_open_files(settings.max_connections)
    loop = asyncio.get_running_loop()
    state = ServerState(handler, settings, loop)
    factory = functools.partial(HttpProtocol, state)
    if sock is not None:
        server = await loop.create_server(factory, sock=sock, backlog=_BACKLOG)
    else:
        server = await loop.create_server(
            factory,
            settings.host,
            settings.port,
            backlog=_BACKLOG,
            reuse_address=True,
            reuse_port=reuse_port,
        )
    sockname = server.sockets[0].getsockname()
    return HttpServer(server, state, host=str(sockname[0]), port=int(sockname[1]))
