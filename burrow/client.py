"""A small asyncio HTTP/1.1 client for Burrow (keep-alive, one request at a time).

It is what the test suites and tools use to talk to a real server over a real
socket. It speaks just enough HTTP for Burrow's responses, which always carry a
``content-length``; :class:`BurrowError` subclasses are raised by
:meth:`Connection.call` from the JSON error body, using the same status table as
the server (:mod:`burrow.core.errors`).
"""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType
from urllib.parse import quote, urlsplit

import orjson

from burrow.core.errors import ERRORS_BY_STATUS, BurrowError


class Reply:
    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> object:
        return orjson.loads(self.body)

    def __repr__(self) -> str:
        return f"Reply({self.status}, {self.body[:80]!r})"


class Connection:
    """One keep-alive connection to a server at ``http://host:port``."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def __aenter__(self) -> Connection:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()
            self._reader = self._writer = None

    async def request(
        self, method: str, target: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> Reply:
        """Send one request and read its response; reconnects if the server closed the connection."""
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        assert self._reader is not None
        head = [
            f"{method} {target} HTTP/1.1",
            f"host: {self.host}:{self.port}",
            f"content-length: {len(body)}",
        ]
        head += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self._writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
        reply = await read_reply(self._reader, head_only=method == "HEAD")
        if reply.headers.get("connection", "").lower() == "close":
            await self.close()
        return reply

    async def call(self, method: str, target: str, body: bytes = b"") -> Reply:
        """Like :meth:`request`, but raise the matching :class:`BurrowError` for an error status."""
        reply = await self.request(method, target, body)
        if reply.status >= 400:
            cls = ERRORS_BY_STATUS.get(reply.status, BurrowError)
            try:
                message = str(orjson.loads(reply.body).get("message", ""))
            except (orjson.JSONDecodeError, AttributeError):
                message = reply.body.decode("utf-8", "replace")
            raise cls(message)
        return reply


async def read_reply(reader: asyncio.StreamReader, head_only: bool = False) -> Reply:
    """Read one response with a content-length body (none follows the head of a HEAD reply)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    body = await reader.readexactly(length) if length and not head_only else b""
    return Reply(status, headers, body)


def path(*names: str) -> str:
    """``/v1.0/...`` with each name percent-encoded as one segment (``/`` becomes ``%2F``)."""
    return "/v1.0" + "".join("/" + quote(n, safe="") for n in names)
