"""The asyncio side: a keep-alive :class:`Connection`, and :class:`PipelineProtocol` for load.

Both frame responses with :func:`burrow.client.wire.scan`; they differ only in how bytes move.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Self, TypeVar, cast
from urllib.parse import urlsplit

from burrow.client.wire import Reply, ResponseParser, Span, encode_request, raise_for_status, scan

__all__ = ["Connection", "PipelineProtocol", "connect_many"]

_READ: int = 65536
_T = TypeVar("_T")


class Connection:
    """One keep-alive HTTP/1.1 connection to ``http://host:port``, one response read at a time.

    :meth:`request` and :meth:`call` are the plain client: they connect on first use, reconnect
    after a response that closes the connection, and read the response. For tests of the HTTP
    layer itself, :meth:`send` writes any bytes, :meth:`reply` reads one response, and
    :meth:`read_until` / :meth:`read_to_eof` read raw bytes; those never reconnect. ``timeout``
    (seconds, None = none) bounds each read.
    """

    def __init__(
        self, url: str = "", *, host: str = "127.0.0.1", port: int = 80, timeout: float | None = None
    ) -> None:
        if url:
            parts = urlsplit(url)
            host, port = parts.hostname or host, parts.port or port
        self.host, self.port, self.timeout = host, port, timeout
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self._parser = ResponseParser()

    async def connect(self, sock: socket.socket | None = None) -> Self:
        """Open the connection (on ``sock`` if given, e.g. one with small buffers); returns self."""
        await self.close()
        if sock is not None:
            self.reader, self.writer = await asyncio.open_connection(sock=sock)
        else:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        return self

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        writer = self.writer
        self.reader = self.writer = None
        self._parser = ResponseParser()
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def request(
        self,
        method: str,
        target: str,
        body: bytes = b"",
        headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
    ) -> Reply:
        """Send one request and read its response (see the class docstring)."""
        data = encode_request(method, target, body, headers, host=f"{self.host}:{self.port}")
        return await self.exchange(data, head_only=method == "HEAD", reconnect=True)

    async def call(
        self,
        method: str,
        target: str,
        body: bytes = b"",
        headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
    ) -> Reply:
        """Like :meth:`request`, but raise the matching :class:`~burrow.core.errors.BurrowError`
        for an error status."""
        return raise_for_status(await self.request(method, target, body, headers))

    async def exchange(self, data: bytes, head_only: bool = False, reconnect: bool = False) -> Reply:
        """Send one request's bytes, read its response. With ``reconnect``, connect if needed and
        close after a ``connection: close`` response (as :meth:`request` does)."""
        if reconnect and self.writer is None:
            await self.connect()
        # No drain: nothing more is written before the response, which proves it all arrived.
        self._connected()[1].write(data)
        reply = await self.reply(head_only)
        if reconnect and not reply.keep_alive:
            await self.close()
        return reply

    async def pipeline(self, requests: Sequence[bytes], head_only: bool = False) -> list[Reply]:
        """Write all ``requests`` at once (connecting first if need be), then read as many
        responses, in order."""
        if self.writer is None:
            await self.connect()
        await self.send(b"".join(requests))
        return [await self.reply(head_only) for _ in requests]

    async def send(self, data: bytes, drain: bool = True) -> None:
        """Write raw bytes (anything at all: framing tests send malformed requests); without
        ``drain``, do not wait for them to be taken (a peer that stops reading cannot block)."""
        writer = self._connected()[1]
        writer.write(data)
        if drain:
            await writer.drain()

    def write_eof(self) -> None:
        """Close the sending side (half-close); responses can still be read."""
        self._connected()[1].write_eof()

    @property
    def sockname(self) -> tuple[str, int]:
        """This end's address: host and port."""
        host, port = self._connected()[1].get_extra_info("sockname")[:2]
        return str(host), int(port)

    async def reply(self, head_only: bool = False, timeout: float | None = None) -> Reply:
        """Read one response (``head_only``: it answers a HEAD, so no body follows)."""
        if timeout is None and self.timeout is None:
            return await self._reply(head_only)  # one coroutine less: load generators use this
        return await self._bounded(self._reply(head_only), timeout)

    async def _reply(self, head_only: bool) -> Reply:
        parser = self._parser
        reader = self._connected()[0]
        while (reply := parser.next_reply(head_only)) is None:
            data = await reader.read(_READ)
            if not data:
                raise EOFError("connection closed before a complete response")
            parser.feed(data)
        return reply

    async def read_until(self, separator: bytes, timeout: float | None = None) -> bytes:
        """Raw bytes up to and including ``separator`` (e.g. one ``100 Continue`` head)."""
        return await self._bounded(self._read_until(separator), timeout)

    async def _read_until(self, separator: bytes) -> bytes:
        parser = self._parser
        reader = self._connected()[0]
        while (data := parser.take_until(separator)) is None:
            more = await reader.read(_READ)
            if not more:
                raise EOFError(f"connection closed before {separator!r}")
            parser.feed(more)
        return data

    async def read_to_eof(self, timeout: float | None = None) -> bytes:
        """Every byte until the server closes the connection (a reset raises ConnectionResetError)."""
        return await self._bounded(self._read_to_eof(), timeout)

    async def _read_to_eof(self) -> bytes:
        reader = self._connected()[0]
        return self._parser.take() + await reader.read()

    async def _bounded(self, aw: Awaitable[_T], timeout: float | None) -> _T:
        timeout = self.timeout if timeout is None else timeout
        return await (aw if timeout is None else asyncio.wait_for(aw, timeout))

    def _connected(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.reader is None or self.writer is None:
            raise ConnectionError("not connected (call connect() first)")
        return self.reader, self.writer


class PipelineProtocol(asyncio.Protocol):
    """A callback-driven connection for load generators: no coroutine per request.

    Write requests with ``transport.write`` (pipelined as deep as you like); each read's complete
    responses are framed by :func:`~burrow.client.wire.scan`, counted in ``statuses`` (by code as
    on the wire, ``b"200"``; pass one dict to several connections to count them together) and
    handed to :meth:`responses` as one batch, with their spans when ``wants_spans`` is set.
    """

    wants_spans = False

    def __init__(self, statuses: dict[bytes, int] | None = None) -> None:
        self.statuses: dict[bytes, int] = {} if statuses is None else statuses
        self.transport: asyncio.Transport | None = None
        self._buf = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses

    def data_received(self, data: bytes) -> None:
        buf = self._buf + data if self._buf else data
        spans: list[Span] | None = [] if self.wants_spans else None
        pos, count, _ = scan(buf, 0, self.statuses, spans)
        self._buf = buf[pos:] if pos < len(buf) else b""
        if count:
            self.responses(count, buf, spans)

    def responses(self, count: int, buf: bytes, spans: list[Span] | None) -> None:
        """``count`` more responses arrived; ``spans`` locate them in ``buf`` (if ``wants_spans``)."""


_P = TypeVar("_P", bound=asyncio.BaseProtocol)


async def connect_many(
    host: str, port: int, factory: Callable[[], _P], count: int, chunk: int = 500
) -> list[_P]:
    """Open ``count`` connections with protocols from ``factory``, ``chunk`` at a time (so a
    listen backlog never overflows); return the protocols in order."""
    loop = asyncio.get_running_loop()
    protocols: list[_P] = []
    for first in range(0, count, chunk):
        pairs = await asyncio.gather(
            *(loop.create_connection(factory, host, port) for _ in range(min(chunk, count - first)))
        )
        protocols.extend(protocol for _, protocol in pairs)
    return protocols
