"""Bounded keep-alive connection pools, one per server: :class:`SyncPool` (threads) here, and
:class:`~burrow.client.async_pool.AsyncPool` (one event loop; a module of its own so that the
blocking client and the command line never import asyncio), over
:class:`~burrow.client.sync.SyncConnection` and :class:`~burrow.client.aio.Connection`.

Both do the same things in the same order:

* at most ``size`` connections per server; a caller that finds all in use waits up to
  ``connect_timeout`` for one;
* an idle connection is reused last-in first-out (the warmest); before a request that may not
  be sent twice goes out on one, it is checked for a close the server sent while it sat idle
  (``--idle-timeout``, a restart), and one that has become readable is discarded instead;
* the read timeout of a request is ``timeout`` plus the seconds the server may hold it (``wait``),
  so a long poll is never cut short by its own client;
* a request that fails on a *reused* connection before its response (the server closed it as
  the request went out) is sent once more on a fresh one, but only if :attr:`Request.retry`
  says that is safe; a take is never sent twice;
* a connection whose exchange failed or was cancelled is closed, never returned to the pool.

Transport failures come out as :class:`ConnectionError` (refused, reset, closed before the
response) or :class:`TimeoutError`.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
from collections import deque
from typing import Final
from urllib.parse import urlsplit

from burrow.client.api import Request
from burrow.client.sync import SyncConnection
from burrow.client.wire import Reply, encode_request

__all__ = ["DEFAULT_SIZE", "Server", "SyncPool", "readable"]

#: Connections kept per server unless a client asks otherwise.
DEFAULT_SIZE: Final = 10


class Server:
    """What both pools know of their server: address, ``Host`` header, path prefix, limits."""

    def __init__(
        self, url: str, size: int, timeout: float | None, connect_timeout: float, token: str | None = None
    ) -> None:
        if size < 1:
            raise ValueError(f"max_connections must be at least 1, got {size}")
        parts = urlsplit(url)
        self.url = url
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.prefix = parts.path.rstrip("/")
        self.authority = f"{self.host}:{self.port}" if ":" not in self.host else f"[{self.host}]:{self.port}"
        self.size, self.timeout, self.connect_timeout = size, timeout, connect_timeout
        #: Sent with every request: the v1.0 token (``Authorization: Bearer``), if any.
        self.headers = [("Authorization", f"Bearer {token}")] if token else None
        #: Connections opened so far (pooling keeps this low; tests and stats read it).
        self.opened = 0
        self.closed = False

    def encode(self, request: Request) -> bytes:
        return encode_request(
            request.method, self.prefix + request.target, request.body, self.headers, host=self.authority
        )

    def read_timeout(self, request: Request) -> float | None:
        return None if self.timeout is None else self.timeout + request.wait

    def busy(self) -> TimeoutError:
        return TimeoutError(
            f"{self.url}: all {self.size} connections stayed busy for {self.connect_timeout} s"
        )

    def lost(self, error: EOFError) -> ConnectionError:
        """A connection closed before its response, as a ConnectionError naming the server."""
        return ConnectionError(f"{self.url}: connection closed before the response ({error})")


def readable(sock: socket.socket) -> bool:
    """Whether an idle socket has something to read: a close (or stray bytes), so it is stale."""
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        return bool(poller.poll(0))
    return bool(select.select([sock], [], [], 0)[0])


class _Slots:
    """A counting semaphore whose uncontended path is one C lock (``threading.Semaphore`` takes
    a Python-level Condition on every acquire and release)."""

    def __init__(self, count: int) -> None:
        self._free = count
        self._waiting = 0
        self._lock = threading.Lock()
        self._freed = threading.Condition(self._lock)

    def acquire(self, timeout: float) -> bool:
        with self._lock:
            if self._free:
                self._free -= 1
                return True
            self._waiting += 1
            try:
                if not self._freed.wait_for(lambda: self._free > 0, timeout):
                    return False
            finally:
                self._waiting -= 1
            self._free -= 1
            return True

    def release(self) -> None:
        with self._lock:
            self._free += 1
            if self._waiting:
                self._freed.notify()

    @property
    def free(self) -> int:
        return self._free


class SyncPool(Server):
    """Keep-alive connections to one server, shared by any number of threads."""

    def __init__(
        self,
        url: str,
        size: int = DEFAULT_SIZE,
        timeout: float | None = 30.0,
        connect_timeout: float = 10.0,
        token: str | None = None,
    ) -> None:
        super().__init__(url, size, timeout, connect_timeout, token)
        self._slots = _Slots(size)
        self._idle: deque[SyncConnection] = deque()  # append and pop are atomic: no lock needed
        self._lock = threading.Lock()

    def exchange(self, request: Request) -> Reply:
        """Send one request, return its response (any status)."""
        if self.closed:
            raise ConnectionError(f"{self.url}: the client is closed")
        if not self._slots.acquire(timeout=self.connect_timeout):
            raise self.busy()
        try:
            conn = self._reuse(request.retry)
            if conn is not None:
                try:
                    return self._send(conn, request)
                except (OSError, EOFError) as error:
                    if not request.retry or isinstance(error, TimeoutError):
                        raise
            return self._send(self._open(), request)
        except EOFError as error:
            raise self.lost(error) from error
        finally:
            self._slots.release()

    def _reuse(self, retry: bool) -> SyncConnection | None:
        """An idle connection. For a request that may not be sent twice, one found closed by the
        server is discarded first (one poll); a request that may, finds out by sending."""
        while True:
            try:
                conn = self._idle.pop()
            except IndexError:
                return None
            if conn.sock is not None and (retry or not readable(conn.sock)):
                return conn
            conn.close()

    def _open(self) -> SyncConnection:
        conn = SyncConnection(host=self.host, port=self.port, timeout=self.connect_timeout).connect()
        with self._lock:
            self.opened += 1
        return conn

    def _send(self, conn: SyncConnection, request: Request) -> Reply:
        sock = conn.sock
        assert sock is not None
        try:
            timeout = self.read_timeout(request)
            if sock.gettimeout() != timeout:
                sock.settimeout(timeout)
            sock.sendall(self.encode(request))
            reply = conn.reply()
        except BaseException:
            conn.close()
            raise
        if reply.keep_alive and not self.closed:
            self._idle.append(conn)
        else:
            conn.close()
        return reply

    def idle(self) -> int:
        """Connections open and waiting in the pool."""
        return len(self._idle)

    def in_use(self) -> int:
        """Requests in flight (each holds one of the ``size`` connections)."""
        return self.size - self._slots.free

    def close(self) -> None:
        """Close the idle connections; those in use are closed when their request ends."""
        self.closed = True
        while self._idle:
            with contextlib.suppress(IndexError):
                self._idle.pop().close()
