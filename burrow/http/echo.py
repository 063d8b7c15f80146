"""The benchmark's "echo baseline": the fastest thing that still speaks HTTP/1.1 on the wire.

It answers every request with a fixed ``200 OK`` and body ``ok`` without parsing anything: it
only counts request terminators (``\\r\\n\\r\\n``) to know how many requests arrived, including
pipelined ones and a terminator split across reads. The Burrow server's throughput is judged
against it (the 2011 experiment: target >= 0.6x of this). Bodies are not understood, so it is
only for body-less requests.
"""

from __future__ import annotations

import asyncio
from typing import cast

__all__ = ["RESPONSE", "EchoProtocol", "start_echo_server"]

RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
_END = b"\r\n\r\n"


class EchoProtocol(asyncio.Protocol):
    """Count terminators, answer that many fixed responses in one write."""

    __slots__ = ("_tail", "_transport")

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._tail = b""  # last bytes of the previous read that may start a terminator

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses but have the same interface.
        self._transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None

    def data_received(self, data: bytes) -> None:
        if self._tail:
            data = self._tail + data
        n = data.count(_END)
        # Keep up to 3 trailing bytes that could be the start of a terminator; none if the data
        # ends exactly on one (those bytes are already counted).
        self._tail = b"" if data.endswith(_END) else data[-3:]
        if n and self._transport is not None:
            self._transport.write(RESPONSE * n)


async def start_echo_server(host: str, port: int) -> tuple[asyncio.AbstractServer, int]:
    """Listen on ``host:port`` (0 picks a port) on the running loop; return the server and port."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(EchoProtocol, host, port, backlog=1024, reuse_address=True)
    return server, int(server.sockets[0].getsockname()[1])
