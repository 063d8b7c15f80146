"""The blocking side: :class:`SyncConnection`, the same client as :class:`~burrow.client.aio.Connection`
over a plain socket (for threads, tools, and tests that drive a server from outside its loop)."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterable, Mapping, Sequence
from types import TracebackType
from typing import Self
from urllib.parse import urlsplit

from burrow.client.wire import Reply, ResponseParser, encode_request, raise_for_status

__all__ = ["SyncConnection"]

_READ = 65536


class SyncConnection:
    """One blocking keep-alive HTTP/1.1 connection; the methods of
    :class:`~burrow.client.aio.Connection`, without ``await``. ``timeout`` (seconds, None =
    block) applies to connecting and to each socket operation."""

    def __init__(
        self, url: str = "", *, host: str = "127.0.0.1", port: int = 80, timeout: float | None = 60.0
    ) -> None:
        if url:
            parts = urlsplit(url)
            host, port = parts.hostname or host, parts.port or port
        self.host, self.port, self.timeout = host, port, timeout
        self.sock: socket.socket | None = None
        self._parser = ResponseParser()

    def connect(self) -> Self:
        self.close()
        self.sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        return self

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        sock, self.sock = self.sock, None
        self._parser = ResponseParser()
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()

    def request(
        self,
        method: str,
        target: str,
        body: bytes = b"",
        headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
    ) -> Reply:
        data = encode_request(method, target, body, headers, host=f"{self.host}:{self.port}")
        return self.exchange(data, head_only=method == "HEAD", reconnect=True)

    def call(
        self,
        method: str,
        target: str,
        body: bytes = b"",
        headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
    ) -> Reply:
        return raise_for_status(self.request(method, target, body, headers))

    def exchange(self, data: bytes, head_only: bool = False, reconnect: bool = False) -> Reply:
        if reconnect and self.sock is None:
            self.connect()
        self.send(data)
        reply = self.reply(head_only)
        if reconnect and not reply.keep_alive:
            self.close()
        return reply

    def pipeline(self, requests: Sequence[bytes], head_only: bool = False) -> list[Reply]:
        if self.sock is None:
            self.connect()
        self.send(b"".join(requests))
        return [self.reply(head_only) for _ in requests]

    def send(self, data: bytes) -> None:
        self._connected().sendall(data)

    def write_eof(self) -> None:
        self._connected().shutdown(socket.SHUT_WR)

    @property
    def sockname(self) -> tuple[str, int]:
        host, port = self._connected().getsockname()[:2]
        return str(host), int(port)

    def reply(self, head_only: bool = False) -> Reply:
        parser = self._parser
        sock = self._connected()
        while (reply := parser.next_reply(head_only)) is None:
            data = sock.recv(_READ)
            if not data:
                raise EOFError("connection closed before a complete response")
            parser.feed(data)
        return reply

    def read_until(self, separator: bytes) -> bytes:
        parser = self._parser
        sock = self._connected()
        while (data := parser.take_until(separator)) is None:
            more = sock.recv(_READ)
            if not more:
                raise EOFError(f"connection closed before {separator!r}")
            parser.feed(more)
        return data

    def read_to_eof(self) -> bytes:
        """Every byte until the server closes (a reset raises ConnectionResetError; a socket
        timeout raises TimeoutError)."""
        sock = self._connected()
        chunks = [self._parser.take()]
        while data := sock.recv(_READ):
            chunks.append(data)
        return b"".join(chunks)

    def _connected(self) -> socket.socket:
        if self.sock is None:
            raise ConnectionError("not connected (call connect() first)")
        return self.sock
