"""Run the echo baseline server as its own process: ``python -m burrow.bench.echo --port 0``.

It uses :mod:`burrow.http.echo` (a fixed ``200 OK`` per request, no parsing) and falls back to an
identical local copy if that module is missing. Readiness is one line on stderr:
``echo listening on http://HOST:PORT loop=NAME``.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import cast

RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
_END = b"\r\n\r\n"


class _FallbackEcho(asyncio.Protocol):
    """Count request terminators and answer that many fixed responses."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._tail = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self._tail:
            data = self._tail + data
        n = data.count(_END)
        self._tail = b"" if data.endswith(_END) else data[-3:]
        if n and self._transport is not None:
            self._transport.write(RESPONSE * n)


async def _fallback_start(host: str, port: int) -> tuple[asyncio.AbstractServer, int]:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_FallbackEcho, host, port, backlog=1024, reuse_address=True)
    return server, int(server.sockets[0].getsockname()[1])


def _starter() -> tuple[Callable[[str, int], Awaitable[tuple[asyncio.AbstractServer, int]]], str]:
    try:
        from burrow.http.echo import start_echo_server
    except ImportError:
        return _fallback_start, "bench-fallback"
    return start_echo_server, "burrow.http.echo"


def install_loop() -> str:
    """Use uvloop when available; return the loop's name."""
    try:
        import uvloop
    except ImportError:
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"


async def _serve(host: str, port: int, loop_name: str) -> None:
    start, origin = _starter()
    server, bound = await start(host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(
        f"echo listening on http://{host}:{bound} loop={loop_name} impl={origin}", file=sys.stderr, flush=True
    )
    await stop.wait()
    server.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m burrow.bench.echo", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    asyncio.run(_serve(args.host, args.port, install_loop()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
