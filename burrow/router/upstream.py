"""One queue server as the router sees it: a bounded pool of keep-alive connections, and health.

Each connection carries one request at a time. A server handles the requests of one
connection strictly one after another, so pipelining unrelated requests on a connection
would queue each behind the one before it: behind a long poll for up to ``max_wait``
seconds, and behind a SQLite server's synced write, which would undo the server's group
commit (creates arriving on separate connections share one sync; on one connection each
waits for its own). So the pool opens a connection per request in flight, reuses idle ones
(most recently used first, so surplus ones age out), and is bounded: past ``limit``
connections a request is refused at once (:class:`Unavailable`, a 503), never queued without
bound. Requests and responses are framed with :mod:`burrow.client.wire`, the project's one
HTTP client code; the connection is a callback protocol rather than a stream reader because
it sits on the hot path of every request.

Health: a server is *up* until a connection to it fails or a health check (``GET /`` every
``health_interval`` seconds, answered within ``health_timeout``) does; while down, requests
for it fail at once instead of each waiting for a connect timeout, and the next check that
succeeds brings it back. Whether it is up is all the state a router keeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Final, cast
from urllib.parse import urlsplit

from burrow.client import Connection, ProtocolError, Span, scan
from burrow.http.types import Response

__all__ = ["Unavailable", "Upstream", "UpstreamConnection"]

log = logging.getLogger("burrow.router")

#: Response headers not passed on as they are: the router's HTTP layer writes its own framing
#: (``content-length``, ``date``, ``connection``), and ``content-type`` has a field of its own.
_NOT_PASSED: Final = frozenset(
    (b"content-length", b"date", b"connection", b"keep-alive", b"transfer-encoding", b"content-type")
)


class Unavailable(Exception):
    """A server cannot answer this request now: down, out of connections, or gone mid-request.

    ``message`` says which server and why; ``applied_maybe`` is True when the request reached
    the server, which may have acted on it before the connection was lost.
    """

    def __init__(self, message: str, applied_maybe: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.applied_maybe = applied_maybe


class _Lost(Exception):
    """The connection ended (or broke framing) before a whole response; ``partial``: some of it came."""

    def __init__(self, reason: str, partial: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.partial = partial


def _response(buf: bytes, span: Span) -> tuple[Response, bool]:
    """The :class:`Response` a framed upstream response becomes, and whether its connection stays open.

    Status, body and every header but the framing ones are kept as they are (names keep
    their case); the router's HTTP layer writes its own ``content-length``, ``date`` and
    ``connection``.
    """
    code, start, body_at, end = span
    if buf[start : start + 9] != b"HTTP/1.1 " or not code.isdigit():
        raise ProtocolError(f"malformed status line {buf[start : start + 40]!r}")
    content_type: str | None = None
    headers: list[tuple[str, str]] | None = None
    keep = True
    lines = buf[start : body_at - 4].split(b"\r\n")
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon:
            raise ProtocolError(f"malformed header line {line[:100]!r}")
        lowered = name.strip().lower()
        if lowered in _NOT_PASSED:
            if lowered == b"content-type":
                content_type = value.strip().decode("latin-1")
            elif lowered == b"connection" and b"close" in value.lower():
                keep = False
            continue
        if headers is None:
            headers = []
        headers.append((name.strip().decode("latin-1"), value.strip().decode("latin-1")))
    return Response(int(code), buf[body_at:end], content_type, headers), keep


class UpstreamConnection(asyncio.Protocol):
    """One keep-alive connection to a server, carrying one request at a time."""

    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream
        self.transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[Response] | None = None
        self._head_only = False
        #: loop.time() by which the response in flight must have come (checked once a second).
        self.deadline = 0.0
        #: loop.time() this connection last went idle.
        self.idle_since = 0.0
        self._buf = b""
        self._chunks: list[bytes] = []
        self._size = 0
        self._need = 0

    # -- asyncio callbacks ------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.upstream._forget(self)
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            reason = str(exc) if exc is not None else "the server closed the connection"
            waiter.set_exception(_Lost(reason, partial=self._size > 0))

    def data_received(self, data: bytes) -> None:
        if self._waiter is None:  # bytes nobody asked for: the server broke framing
            self.fail("unrequested bytes from the server")
            return
        if self._size:
            self._chunks.append(data)
            self._size += len(data)
            if self._size < self._need:
                return
            buf = self._buf = b"".join([self._buf, *self._chunks])
            self._chunks.clear()
        else:
            buf = self._buf = data
            self._size = len(data)
        spans: list[Span] = []
        try:
            end, count, self._need = scan(buf, 0, None, spans, self._head_only, 1)
            while count and spans[0][0][:1] == b"1":  # an interim 1xx response: skip it
                buf = self._buf = buf[end:]
                self._size = len(buf)
                spans.clear()
                end, count, self._need = scan(buf, 0, None, spans, self._head_only, 1)
            if not count:
                if max(self._size, self._need) > self.upstream.max_response:
                    self.fail(f"response over {self.upstream.max_response} bytes")
                return
            response, keep = _response(buf, spans[0])
        except (ProtocolError, ValueError) as error:
            self.fail(f"malformed response: {error}")
            return
        waiter, self._waiter = self._waiter, None
        self._buf = b""
        self._size = self._need = 0
        if end != len(buf):  # more than one response to one request
            keep = False
        if keep:
            self.upstream._release(self)
        elif self.transport is not None:
            self.transport.close()
        if not waiter.done():
            waiter.set_result(response)

    def eof_received(self) -> bool:
        return False  # close; connection_lost fails a request in flight

    # -- used by Upstream ----------------------------------------------------------------
    def exchange(self, data: bytes, head_only: bool, deadline: float) -> asyncio.Future[Response]:
        """Send one request's bytes; the future gets its response (or :class:`_Lost`)."""
        transport = self.transport
        waiter = self.upstream.loop.create_future()
        if transport is None or transport.is_closing():
            waiter.set_exception(_Lost("connection closed", partial=False))
            return waiter
        self._waiter = waiter
        self._head_only = head_only
        self.deadline = deadline
        transport.write(data)
        return waiter

    @property
    def busy(self) -> bool:
        return self._waiter is not None

    def fail(self, reason: str) -> None:
        """Fail the request in flight (framing broken, too large, too late) and drop the connection."""
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(_Lost(reason, partial=True))
        self.abort()

    def abort(self) -> None:
        """Drop the connection now (a request in flight fails)."""
        if self.transport is not None:
            self.transport.abort()


class Upstream:
    """One server: its pooled connections, whether it is up, and its health checks."""

    def __init__(
        self,
        url: str,
        *,
        limit: int,
        timeout: float,
        connect_timeout: float,
        idle_timeout: float,
        max_response: int,
        health_interval: float = 1.0,
        health_timeout: float = 2.0,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname or parts.path not in ("", "/"):
            raise ValueError(f"server must be http://host:port, got {url!r}")
        self.url = url
        self.host = parts.hostname
        self.port = parts.port or 80
        #: Most connections open (or opening) at once.
        self.limit = limit
        #: Seconds a request may wait for its response (the longest long poll, and a margin).
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        #: Largest response accepted (bytes); a larger one fails the request.
        self.max_response = max_response
        self.health_interval = health_interval
        self.health_timeout = health_timeout
        self.up = True
        #: Why the server is down (while it is).
        self.reason = ""
        self.loop = asyncio.get_running_loop()
        self._idle: list[UpstreamConnection] = []
        self._open: set[UpstreamConnection] = set()
        self._connecting = 0
        self._watcher: asyncio.Task[None] | None = None
        #: Resolved to run the next health check before its time.
        self._wake: asyncio.Future[None] = self.loop.create_future()

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        """Start the health checks (the first one at once)."""
        self.check_soon()
        self._watcher = self.loop.create_task(self._watch())

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None
        for conn in list(self._open):
            conn.abort()
        self._idle.clear()

    @property
    def connections(self) -> int:
        """Connections open or being opened."""
        return len(self._open) + self._connecting

    # -- requests ----------------------------------------------------------------------
    async def send(self, data: bytes, head_only: bool = False) -> Response:
        """Send one request's bytes and return the response, or raise :class:`Unavailable`.

        A request sent on a reused connection that the server had closed meanwhile (its
        idle timeout, a restart) is sent once more on a new connection, as long as none of a
        response came back: a server closes a connection only between requests, so it never
        started on it.
        """
        if not self.up:
            raise Unavailable(f"server {self.url} is down ({self.reason})")
        idle = self._idle
        conn = idle.pop() if idle else None
        reused = conn is not None
        if conn is None:
            conn = await self._connect()
        deadline = self.loop.time() + self.timeout
        try:
            try:
                return await conn.exchange(data, head_only, deadline)
            except _Lost as lost:
                if not reused or lost.partial:
                    raise
            conn = await self._connect()
            return await conn.exchange(data, head_only, deadline)
        except _Lost as lost:
            self.check_soon()  # is the server still there? ask now rather than in a second
            raise Unavailable(
                f"server {self.url} did not answer: {lost.reason}; the request may have been applied",
                applied_maybe=True,
            ) from None
        except asyncio.CancelledError:
            conn.abort()  # the client went away: stop the server's work on it (a long poll) too
            raise

    async def _connect(self) -> UpstreamConnection:
        if self.connections >= self.limit:
            raise Unavailable(f"server {self.url}: all {self.limit} connections to it are busy")
        self._connecting += 1
        try:
            _, conn = await asyncio.wait_for(
                self.loop.create_connection(lambda: UpstreamConnection(self), self.host, self.port),
                self.connect_timeout,
            )
        except (OSError, TimeoutError) as error:
            self.mark_down(f"cannot connect: {error or 'timed out'}")
            raise Unavailable(f"server {self.url} is down ({self.reason})") from None
        finally:
            self._connecting -= 1
        self._open.add(conn)
        return conn

    def _release(self, conn: UpstreamConnection) -> None:
        """A connection finished its request and stays open: keep it for the next one."""
        if conn.transport is None or not self.up:
            conn.abort()
            return
        conn.idle_since = self.loop.time()
        self._idle.append(conn)

    def _forget(self, conn: UpstreamConnection) -> None:
        """A connection closed."""
        self._open.discard(conn)
        with contextlib.suppress(ValueError):
            self._idle.remove(conn)

    # -- health ------------------------------------------------------------------------
    def mark_down(self, reason: str) -> None:
        if self.up:
            log.warning("server %s is down: %s", self.url, reason)
        self.up = False
        self.reason = reason
        for conn in self._idle:
            conn.abort()
        self._idle.clear()

    def mark_up(self) -> None:
        if not self.up:
            log.warning("server %s is back", self.url)
        self.up = True
        self.reason = ""

    def check_soon(self) -> None:
        """Run the next health check now rather than at its time."""
        if not self._wake.done():
            self._wake.set_result(None)

    async def check(self, conn: Connection) -> None:
        """One health check: ``GET /`` answered 200 within ``health_timeout`` seconds."""
        try:
            async with asyncio.timeout(self.health_timeout):
                reply = await conn.request("GET", "/")
        except (OSError, EOFError, TimeoutError, ProtocolError, ValueError) as error:
            await conn.close()
            self.mark_down(f"health check failed: {type(error).__name__} {error}".rstrip())
            return
        if reply.status == 200:
            self.mark_up()
        else:
            self.mark_down(f"health check answered {reply.status}")

    async def _watch(self) -> None:
        conn = Connection(self.url)
        try:
            while True:
                # A plain future and a timer, not wait_for() on an Event: on Python 3.11
                # wait_for() can swallow a cancellation that lands as its wait ends.
                timer = self.loop.call_later(self.health_interval, self.check_soon)
                try:
                    await self._wake
                finally:
                    timer.cancel()
                self._wake = self.loop.create_future()
                self._sweep()
                await self.check(conn)
        finally:
            await conn.close()

    def _sweep(self) -> None:
        """Abort requests past their deadline, and close connections idle past ``idle_timeout``."""
        now = self.loop.time()
        for conn in list(self._open):
            if conn.busy and now > conn.deadline:
                conn.fail(f"no response within {self.timeout:g} s")
        stale = [c for c in self._idle if now - c.idle_since > self.idle_timeout]
        for conn in stale:
            conn.abort()
