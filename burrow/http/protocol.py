"""The HTTP/1.1 server protocol: an ``asyncio.Protocol`` over ``httptools.HttpRequestParser``.

Why hand-written rather than a framework: this is the hot path of the whole server. The 2011
burrow measurement found framework overhead cost about 3x throughput, and it still does: on the
development machine an httptools+uvloop hand protocol served ~64k req/s where uvicorn served ~16k
and aiohttp ~11k. The protocol does only what HTTP/1.1 needs and hands a plain ``Request`` to the
handler (see ``burrow.http.types``).

Rules this module keeps:

* Requests on one connection are handled strictly one after another and answered in request
  order (pipelining). Parsed-but-unhandled requests wait in a queue; past ``_MAX_QUEUE`` requests
  (or ``max_body_bytes`` of their bodies) reading is paused until the queue drains. Reading can
  only pause between reads, so one read that queues more than ``_MAX_QUEUE_HARD`` requests gets
  a 503 for the first one over and a close.
* Output is bounded per connection. The transport's write buffer limits are both 0, so
  ``pause_writing`` says that some output waits (the kernel took less than was written) and
  ``resume_writing`` that all of it was sent: while nothing waits, a write costs no check at
  all. While output waits, each write is accounted (``_wrote``), and once the responses the
  transport holds are over ``max_unsent_bytes`` no queued request is handled and reading
  pauses, until everything is sent. Waiting output must drain, or the client take
  ``max_unsent_bytes`` of it, within ``write_timeout`` (or ``idle_timeout`` if shorter), or the
  connection is aborted: queued work a client does not read does not keep it open.
* One budget for all connections, ``max_inflight_bytes``: each connection charges the server
  (``ServerState.inflight``) with its request bodies received and not yet handled (partial,
  queued or running) and the responses its transport still holds (whole: a transport keeps a
  response object until its last byte is sent), recomputed at rest points (``_account``: the
  end of a read that ends inside a body, each write while output waits, resuming writing, a
  handler suspending, the tick). Over budget, a request head, a body in progress or a queued
  request is refused with 503 and ``Retry-After`` and the connection closed; a handler already
  running is not. ``MemoryError`` anywhere in parsing or handling is a 503 too, never a 4xx.
* Connections are bounded per server (``max_connections``) and per client IP address
  (``max_connections_per_client``): over either, 503 and close, logged at most once per
  ``_LOG_EVERY`` seconds per reason. At most ``_MAX_REFUSING`` connections are being refused at
  once (more are reset), so refusals cannot use up the descriptors ``burrow.http.server``
  reserved for them.
* Keep-alive is the HTTP/1.1 default; HTTP/1.0 keeps alive only with ``Connection: keep-alive``;
  ``Connection: close`` is honoured. ``Expect: 100-continue`` is answered with ``100 Continue``
  when no earlier response is pending. Responses always carry ``content-length`` (except 1xx, 204
  and 304), ``date``, ``content-type`` when set, and ``connection: close`` when closing.
* Limits from ``Settings`` are answered with their status and a JSON error body, then the
  connection is closed (``_fail``; status, code and message of each from the one error table,
  :mod:`burrow.core.errors`): 413 body too large (declared or streamed), 431 header section
  too large or too many headers, 414 URL too long, 408 headers or body late, 503 (with
  ``Retry-After``) over a connection limit or the in-flight budget. An idle keep-alive
  connection is closed silently after ``idle_timeout``.
* Trailer fields of a chunked body count against the header limits together with the head
  (each completed field in ``_Trailers``; whole reads spent inside the trailer section, which
  httptools buffers until a field ends, like the head's in ``_unfinished_head``), so an endless
  or huge trailer is a quick 431. They are then dropped: never merged into ``Request.headers``,
  so a trailer cannot route a request.
* Malformed or ambiguous framing is a 400 and a close. llhttp (inside httptools) already rejects
  Content-Length with Transfer-Encoding, duplicate Content-Length (even equal), a non-numeric or
  overflowing Content-Length, bad chunk sizes, a Transfer-Encoding whose last coding is not
  ``chunked``, repeated Transfer-Encoding, unknown methods, non-ASCII URLs, bare-LF line ends and
  obs-fold. This module adds: Transfer-Encoding other than exactly ``chunked`` (e.g. ``gzip,
  chunked``), Transfer-Encoding on HTTP/1.0, duplicate Host, an HTTP/1.1 request without Host,
  an absolute-form target naming another host than Host (RFC 9112 3.2), Upgrade/CONNECT (we do
  not switch protocols) and versions other than 1.0/1.1 (505).
* A server-side close after an error is a lingering close: the response is flushed, the write
  side shut down, and input discarded until the peer closes (or ``_LINGER`` seconds), so the
  peer reads the error instead of a TCP reset caused by its unread pipelined bytes.
* The handler's first step runs synchronously (see ``_handle``); a Task is created only if it
  suspends. A lost connection (or a FIN from the peer) cancels that Task, so a long poll does
  not outlive its client.
* One timer per connection, a periodic tick (``_on_tick``): requests set no deadlines at all, and
  a timeout fires between its value and a quarter of the shortest timeout later.

Performance notes (wrk -t1 -c32 against a handler returning a constant response, on the shared
2-core development VM, medians of noisy runs): uvloop echo baseline (``burrow.http.echo``) ~99k
req/s, this protocol ~47k (about 0.47x). Most of the gap is the handler interface, not this
module: a bare httptools protocol with the same Request/coroutine/serialize work reaches ~55k,
without it ~81k. Per request, each parser callback costs a C-to-Python call, so the callbacks
do as little as possible and limits are checked per request head, not per header.
"""

from __future__ import annotations

import asyncio
import contextvars
import email.utils
import logging
import struct
import types
from collections import deque
from collections.abc import Awaitable, Coroutine, Generator
from http import HTTPStatus
from typing import Any, Final, cast

import httptools
import orjson

try:
    import fcntl
    import termios

    _OUTQ: int | None = termios.TIOCOUTQ  # = SIOCOUTQ on Linux
except (ImportError, AttributeError):  # then only the process's own buffer is seen
    _OUTQ = None

from burrow.config import Settings
from burrow.core import errors
from burrow.core.errors import BadRequest, BurrowError
from burrow.http.types import Handler, Request, Response

__all__ = ["HttpProtocol", "ServerState", "error_response"]

log = logging.getLogger("burrow.http")

#: Parsed requests waiting behind a busy handler before reading is paused.
_MAX_QUEUE: Final = 64
#: Parsed requests waiting on one connection past which the next is refused (503) and the
#: connection closed: reading pauses only between reads, and one read can hold thousands.
_MAX_QUEUE_HARD: Final = 1024
#: Bytes a queued request is charged besides its body (its Request, headers and strings).
_REQUEST_COST: Final = 512
#: Connections being refused (503, then a lingering close) at once; more are reset at once.
_MAX_REFUSING: Final = 64
#: Seconds between two log lines about the same kind of refusal.
_LOG_EVERY: Final = 10.0
#: ``Retry-After`` of every 503 the layer answers (seconds).
_RETRY_AFTER: Final = "1"
#: Seconds a lingering close waits for the peer to close before aborting.
_LINGER: Final = 2.0
#: Bytes of responses gathered before writing, within one pass over pipelined requests.
_BATCH: Final = 65536
#: Content-length header lines are precomputed for bodies shorter than this.
_CL_CACHE: Final = 4096

_STATUS_LINES: dict[int, bytes] = {
    int(s): f"HTTP/1.1 {int(s)} {s.phrase}\r\n".encode("ascii") for s in HTTPStatus
}
#: ``content-length`` line plus the blank line ending the head, for small bodies.
_CL_END: list[bytes] = [b"content-length: %d\r\n\r\n" % n for n in range(_CL_CACHE)]
_CT_LINES: dict[str, bytes] = {}
#: content type -> status -> status line plus content-type line (filled as responses are seen).
_HEADS: dict[str | None, dict[int, bytes]] = {}
_CONN_CLOSE: Final = b"connection: close\r\n"
_CONN_KEEP: Final = b"connection: keep-alive\r\n"
_METHODS: dict[bytes, str] = {
    m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT")
}
_NAMES: dict[bytes, str] = {}
_NAMES_MAX: Final = 512

#: ``keep`` values carried with each queued request.
_CLOSE: Final = 0  # answer with ``connection: close`` and close
_KEEP: Final = 1  # HTTP/1.1 keep-alive: nothing to say
_KEEP_10: Final = 2  # HTTP/1.0 keep-alive: must say ``connection: keep-alive``


def _status_line(status: int) -> bytes:
    if not 100 <= status <= 999:
        raise ValueError(f"invalid HTTP status {status}")
    return b"HTTP/1.1 %d Unknown\r\n" % status


def _header_line(name: str, value: str) -> bytes:
    line = f"{name}: {value}".encode("latin1")
    if b"\r" in line or b"\n" in line:
        raise ValueError(f"response header {name!r} contains a line break")
    return line + b"\r\n"


def _ct_line(content_type: str) -> bytes:
    line = _header_line("content-type", content_type)
    if len(_CT_LINES) < 256:
        _CT_LINES[content_type] = line
    return line


def _header_name(name: bytes) -> str:
    """A request header name, lower-cased; common ones are cached (bytes hash is cheap)."""
    key = name.decode("latin1").lower()
    if len(_NAMES) < _NAMES_MAX:
        _NAMES[name] = key
    return key


def date_line() -> bytes:
    """The ``date`` header line for now (callers cache it per second)."""
    return b"date: " + email.utils.formatdate(usegmt=True).encode("ascii") + b"\r\n"


def serialize(resp: Response, keep: int, head: bool, date: bytes) -> bytes:
    """One response as one bytes object: status line, framing headers, extra headers, body.

    The layer owns ``content-length``, ``connection`` and ``date``; handlers set the rest.
    """
    status = resp.status
    ct = resp.content_type
    body = resp.body
    if keep == _KEEP and not head and not resp.headers and len(body) < _CL_CACHE:
        # The common case: a cached status-line-plus-content-type, no per-response formatting.
        by_status = _HEADS.get(ct)
        if by_status is not None:
            start = by_status.get(status)
            if start is not None:
                return b"".join((start, date, _CL_END[len(body)], body))
    line = _STATUS_LINES.get(status) or _status_line(status)
    ct_line = b"" if ct is None else (_CT_LINES.get(ct) or _ct_line(ct))
    if status == 204 or status == 304 or status < 200:  # no body, no content-length (RFC 9110)
        body = b""
        cl_line = b"\r\n"
    else:
        n = len(body)
        cl_line = _CL_END[n] if n < _CL_CACHE else b"content-length: %d\r\n\r\n" % n
        if status in _STATUS_LINES and len(_HEADS) < 64:
            _HEADS.setdefault(ct, {})[status] = line + ct_line
    extra = b"".join([_header_line(k, v) for k, v in resp.headers]) if resp.headers else b""
    conn = b"" if keep == _KEEP else (_CONN_CLOSE if keep == _CLOSE else _CONN_KEEP)
    return b"".join((line, ct_line, extra, conn, date, cl_line, b"" if head else body))


def error_response(status: int, code: str, message: str) -> Response:
    """The JSON error the layer itself answers with: ``{"error": code, "message": message}``
    (a 503 says ``Retry-After``)."""
    headers = [("retry-after", _RETRY_AFTER)] if status == 503 else None
    return Response(status, orjson.dumps({"error": code, "message": message}), "application/json", headers)


def _error_of(error: BurrowError) -> Response:
    return error_response(error.status, error.code, error.message)


_INTERNAL: Final = _error_of(errors.INTERNAL)
#: Built in advance: answering it must not need memory.
_OUT_OF_MEMORY: Final = _error_of(errors.OUT_OF_MEMORY)


class RefusalLog:
    """Log lines about refusals (connection limits, the in-flight budget, unread output, memory),
    at most one per kind every ``_LOG_EVERY`` seconds, each saying how many were not logged."""

    __slots__ = ("_last", "_missed")

    def __init__(self) -> None:
        self._last: dict[str, float] = {}
        self._missed: dict[str, int] = {}

    def note(self, kind: str, peer: str, now: float) -> None:
        last = self._last.get(kind)
        if last is not None and now - last < _LOG_EVERY:
            self._missed[kind] = self._missed.get(kind, 0) + 1
            return
        self._last[kind] = now
        missed = self._missed.pop(kind, 0)
        more = f"; {missed} more since the last report" if missed else ""
        log.warning("%s (client %s)%s", kind, peer or "unknown", more)


class ServerState:
    """What all connections of one server share: handler, limits, the connection set, the
    in-flight bytes, the date."""

    __slots__ = (
        "accepted",
        "clients",
        "closing",
        "date",
        "empty",
        "handler",
        "inflight",
        "loop",
        "protocols",
        "refusals",
        "refusing",
        "settings",
    )

    def __init__(self, handler: Handler, settings: Settings, loop: asyncio.AbstractEventLoop) -> None:
        self.handler = handler
        self.settings = settings
        self.loop = loop
        #: Every live connection, rejected (503) ones included, so close() can reach them all.
        self.protocols: set[HttpProtocol] = set()
        #: Live connections that count against ``max_connections``.
        self.accepted = 0
        #: Client IP address -> its accepted connections (``max_connections_per_client``).
        self.clients: dict[str, int] = {}
        #: Connections being refused with a 503 right now (at most ``_MAX_REFUSING``).
        self.refusing = 0
        #: Bytes in flight over all connections (``max_inflight_bytes``; see ``_account``).
        self.inflight = 0
        self.refusals = RefusalLog()
        self.closing = False
        #: Set whenever ``protocols`` becomes empty; close() waits on it.
        self.empty = asyncio.Event()
        #: ``date`` header line, refreshed once a second by the server (not per request).
        self.date = date_line()


class _Abort(Exception):
    """Raised from a parser callback to stop parsing; the reason is already in ``_error``."""


class _Trailers(dict[str, str]):
    """Where a chunked request's trailer fields go (``on_header`` writes to it as to the head's
    dict): each is counted with the head against the header limits, then dropped. ``head`` is
    the request's own header dict."""

    __slots__ = ("count", "head", "protocol", "size")

    def __init__(self, head: dict[str, str], protocol: HttpProtocol, size: int, count: int) -> None:
        super().__init__()
        self.head = head
        self.protocol: HttpProtocol | None = protocol
        self.size = size
        self.count = count

    def __setitem__(self, key: str, value: str) -> None:
        protocol = self.protocol
        if protocol is None:
            return
        self.count += 1
        self.size += len(key) + len(value) + 4
        if self.count > protocol._max_hcount:
            raise protocol._reject(errors.TOO_MANY_HEADERS)
        if self.size > protocol._max_hbytes:
            raise protocol._reject(errors.HEAD_TOO_LARGE)


def _socket_fd(transport: asyncio.BaseTransport) -> int:
    sock = transport.get_extra_info("socket")
    try:
        return int(sock.fileno()) if sock is not None else -1
    except (AttributeError, OSError, TypeError, ValueError):
        return -1


def _kernel_unsent(fd: int) -> int:
    """Bytes of a TCP socket's output its peer has not yet taken (Linux SIOCOUTQ: queued in the
    kernel or not yet acknowledged); 0 where that cannot be asked."""
    if fd < 0 or _OUTQ is None:
        return 0
    try:
        return int(struct.unpack("i", fcntl.ioctl(fd, _OUTQ, b"\0\0\0\0"))[0])
    except OSError:
        return 0


def _names_host(parsed: Any, host: str | None) -> bool:
    """Whether the Host header names the authority of an absolute-form target (scheme-default
    port, case-insensitive); no Host at all (HTTP/1.0) defers to the target."""
    if host is None:
        return True
    default = 443 if parsed.schema == b"https" else 80
    value = host.strip().lower()
    if value.startswith("["):  # IPv6 literal
        name, _, rest = value[1:].partition("]")
        if rest and not rest.startswith(":"):
            return False
        port_text = rest[1:]
    else:
        name, _, port_text = value.partition(":")
    if port_text and not port_text.isdigit():
        return False
    port = int(port_text) if port_text else default
    return name == parsed.host.decode("latin1").lower() and port == (parsed.port or default)


class _Resume:
    """Awaitable that continues a coroutine whose first step already ran and yielded ``first``.

    ``asyncio.create_task`` cannot take a started coroutine's remainder, so the Task runs a
    small wrapper that awaits this: it hands ``first`` (normally a Future) to the Task, then
    forwards every later ``send``/``throw`` (cancellation included) to the coroutine, which is
    what ``yield from`` would do.
    """

    __slots__ = ("_coro", "_first")

    def __init__(self, coro: Coroutine[Any, Any, Response], first: Any) -> None:
        self._coro = coro
        self._first = first

    def __await__(self) -> Generator[Any, None, Response]:
        coro = self._coro
        value = self._first
        self._first = None
        while True:
            try:
                yield value
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:
                try:
                    value = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value  # type: ignore[no-any-return]
            else:
                try:
                    value = coro.send(None)
                except StopIteration as stop:
                    return stop.value  # type: ignore[no-any-return]


_CoroutineType: Final = types.CoroutineType


async def _await(aw: Awaitable[Response]) -> Response:
    """Make a coroutine of any awaitable a handler returns, so it can be driven by ``send``."""
    return await aw


class HttpProtocol(asyncio.Protocol):
    """One client connection: parse, handle in order, write, enforce the limits."""

    __slots__ = (
        "_body",
        "_body_len",
        "_body_timeout",
        "_budget",
        "_busy",
        "_charged",
        "_chunk_mark",
        "_chunk_read",
        "_client",
        "_close_after",
        "_closing",
        "_ctx",
        "_draining",
        "_fd",
        "_error",
        "_error_head",
        "_handler",
        "_held_out",
        "_hread",
        "_hcount",
        "_header_timeout",
        "_headers",
        "_hraw",
        "_idle_timeout",
        "_keep",
        "_lingering",
        "_loop",
        "_max_body",
        "_max_hbytes",
        "_max_hcount",
        "_max_queued",
        "_max_unsent",
        "_max_url",
        "_method",
        "_out",
        "_over_cap",
        "_parser",
        "_peer",
        "_pending",
        "_phase",
        "_queue",
        "_queued_bytes",
        "_read_len",
        "_read_paused",
        "_reads",
        "_refusing",
        "_rejected",
        "_running",
        "_seen_phase",
        "_seen_seq",
        "_seq",
        "_since",
        "_slow",
        "_state",
        "_task",
        "_tick",
        "_timer",
        "_trailer_raw",
        "_trailers",
        "_transport",
        "_unread_limit",
        "_url",
        "_wmark",
        "_write_paused",
    )

    def __init__(self, state: ServerState) -> None:
        s = state.settings
        self._state = state
        self._loop = state.loop
        self._handler = state.handler
        self._max_body = s.max_body_bytes
        self._max_hbytes = s.max_header_bytes
        self._max_hcount = s.max_header_count
        self._max_url = s.max_url_bytes
        self._header_timeout = s.header_timeout
        self._body_timeout = s.body_timeout
        self._idle_timeout = s.idle_timeout
        #: Seconds unsent output may go unread (see ``_on_tick``).
        self._unread_limit = min(s.write_timeout, s.idle_timeout)
        self._max_unsent = s.max_unsent_bytes
        self._max_queued = s.max_body_bytes
        self._budget = s.max_inflight_bytes
        # Timeouts are checked by one periodic tick per connection, so requests set no deadlines:
        # a timeout fires between its value and a quarter of the shortest timeout later, and at
        # most one second late (a tick per connection per second at most, for long timeouts).
        self._tick = min(s.header_timeout, s.body_timeout, s.idle_timeout, s.write_timeout, 4.0) / 4
        self._parser: Any = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        #: Where a Task continuing a handler runs ``_run_queue`` (not inside that Task).
        self._ctx = contextvars.copy_context()
        self._peer = ""
        #: Requests parsed while an earlier one is still being handled (pipelining).
        self._queue: deque[tuple[Request, int]] = deque()
        self._queued_bytes = 0  # what the queued requests are charged (bodies + _REQUEST_COST each)
        self._running = 0  # body bytes of the request whose handler Task runs
        self._charged = 0  # bytes this connection adds to ``ServerState.inflight``
        self._held_out = 0  # bytes of the responses the transport holds while output is unsent
        self._wmark = 0  # output the client had yet to take when the write clock last moved
        self._fd = -2  # the socket's descriptor, looked up when first needed (-1: none)
        self._client = ""  # the IP address this connection counts against ("" = none)
        #: Serialized responses not yet written, and their size.
        self._out: list[bytes] = []
        self._pending = 0
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        # What the last tick saw (phase, request number) and since when it has not changed.
        self._seen_phase = 0
        self._seen_seq = 0
        self._since = 0.0
        self._busy = False  # a handler Task is running
        self._write_paused = False  # some output waits (pause_writing)
        self._over_cap = False  # ... more than max_unsent_bytes of it: handle and read nothing
        self._read_paused = False
        #: Any unusual state (error, close, paused, draining): take the general path.
        self._slow = False
        self._closing = False  # no further request will be read
        self._close_after = False  # close once everything before is answered
        self._error: Response | None = None  # answered after everything before, then close
        self._error_head = False  # the request that failed is a HEAD: its error has no body
        self._lingering = False
        self._draining = False
        self._rejected = False  # refused (503 or reset): not counted against max_connections
        self._refusing = False  # counted in ServerState.refusing
        # The request being parsed.
        self._phase = 0  # 0 between requests, 1 in the request line or headers, 2 in the body
        self._seq = 0  # requests begun
        self._url = b""
        self._method = ""
        self._keep = _KEEP
        self._headers: dict[str, str] = {}
        self._hcount = 0  # repeated headers (distinct ones are len(_headers))
        self._hraw = 0  # bytes of whole reads spent inside one unfinished request head
        self._reads = 0  # data_received calls so far
        self._read_len = 0  # size of the current read
        self._hread = 0  # the read in which the current request began
        self._body: list[bytes] = []
        self._body_len = 0
        #: A chunked request's trailer sink (also ``_headers`` then), else None.
        self._trailers: _Trailers | None = None
        self._chunk_mark = -1  # body length at the latest chunk header
        self._chunk_read = 0  # the read in which that chunk header came
        self._trailer_raw = 0  # bytes of whole reads spent inside the trailer section

    # -- connection events -------------------------------------------------------------------

    def connection_made(self, base: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses but have the same interface.
        self._transport = transport = cast(asyncio.Transport, base)
        state = self._state
        state.protocols.add(self)
        state.empty.clear()
        peer = transport.get_extra_info("peername")
        host = ""
        if isinstance(peer, tuple) and len(peer) >= 2:
            host = str(peer[0])
            self._peer = f"[{host}]:{peer[1]}" if ":" in host else f"{host}:{peer[1]}"
        # pause_writing as soon as any output waits, resume_writing once all of it is sent.
        transport.set_write_buffer_limits(high=0, low=0)
        self._since = self._loop.time()
        self._timer = self._loop.call_at(self._since + self._tick, self._on_tick)
        if state.closing:
            transport.abort()
            return
        settings = state.settings
        if state.accepted >= settings.max_connections:
            self._refuse(errors.TOO_MANY_CONNECTIONS, f"--max-connections {settings.max_connections}")
            return
        if host:
            count = state.clients.get(host, 0)
            if count >= settings.max_connections_per_client:
                limit = f"--max-connections-per-client {settings.max_connections_per_client}"
                self._refuse(errors.TOO_MANY_CLIENT_CONNECTIONS, limit)
                return
            state.clients[host] = count + 1
            self._client = host
        state.accepted += 1

    def _refuse(self, error: BurrowError, limit: str) -> None:
        """A new connection over a connection limit: answer 503 and close, or reset it if too
        many are being refused already; log it (rate-limited)."""
        state = self._state
        self._rejected = True
        if state.refusing >= _MAX_REFUSING:
            state.refusals.note(
                f"reset a connection over {limit} (too many being refused)", self._peer, self._since
            )
            if self._transport is not None:
                self._transport.abort()
            return
        state.refusals.note(f"refused a connection over {limit}", self._peer, self._since)
        state.refusing += 1
        self._refusing = True
        self._fail(error)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._closing = self._slow = True
        self._queue.clear()
        self._out.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        task = self._task
        if task is not None:
            task.cancel()  # the handler sees CancelledError: a disconnected long poll stops waiting
        self._body = []
        self._queued_bytes = self._running = 0
        state = self._state
        state.inflight -= self._charged
        self._charged = 0
        if self in state.protocols:
            state.protocols.discard(self)
            if not self._rejected:
                state.accepted -= 1
            if self._refusing:
                state.refusing -= 1
            host = self._client
            if host:
                count = state.clients[host] - 1
                if count:
                    state.clients[host] = count
                else:
                    del state.clients[host]
            if not state.protocols:
                state.empty.set()

    def eof_received(self) -> bool:
        """The peer closed its side: treat it as gone (the transport closes, handlers are cancelled).

        A FIN is how a vanished client looks; keeping a long poll waiting for a half-closed peer
        would keep a waiter for nothing. Responses already written are still flushed.
        """
        return False

    def pause_writing(self) -> None:
        """Some output waits (the high-water mark is 0): from now on each write is accounted
        (by its caller, through ``_wrote``), which stops handling over ``max_unsent_bytes``."""
        self._write_paused = self._slow = True

    def resume_writing(self) -> None:
        """Everything written has been sent (the low-water mark is 0)."""
        self._write_paused = self._over_cap = False
        self._wmark = 0
        self._since = self._loop.time()  # the client is reading: not idle, not stalled
        self._update_slow()
        self._account()
        self._update_reading()
        if not self._busy:
            self._run_queue()

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return  # after an error or a close: discard (lingering close)
        self._reads += 1
        self._read_len = len(data)
        phase = self._phase
        headers = self._headers
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(errors.UPGRADE_REFUSED, run=False)
        except httptools.HttpParserError as exc:
            if not self._closing:  # our own _Abort has set _error already
                if isinstance(exc.__context__, MemoryError):
                    self._out_of_memory()
                    self._fail(errors.OUT_OF_MEMORY, run=False)
                else:
                    if isinstance(exc, httptools.HttpParserCallbackError):
                        log.error("HTTP parser callback failed", exc_info=exc.__context__ or exc)
                    self._fail(BadRequest(f"malformed request: {exc}"), run=False)
        except MemoryError:
            self._out_of_memory()
            self._fail(errors.OUT_OF_MEMORY, run=False)
        else:
            ended = self._phase
            if ended:
                if ended == 1:  # this read ended inside a request head
                    self._unfinished_head(len(data), phase == 1 and self._headers is headers)
                else:  # ... or inside a body (or its trailers)
                    self._unfinished_body(len(data))
        if not self._busy and (self._slow or self._queue):
            self._run_queue()
            return
        # Fast path of _flush: write what the handlers answered (also the answers before a
        # request that is still running: they need not wait for it).
        out = self._out
        transport = self._transport
        if out and transport is not None:
            data = out[0] if len(out) == 1 else b"".join(out)
            transport.write(data)
            out.clear()
            self._pending = 0
            if self._write_paused or self._charged:
                self._wrote(len(data))  # output waits (or a charge to release)
        elif self._charged:
            self._account()

    def _unfinished_head(self, size: int, whole: bool) -> None:
        """A read ended inside a request head, which httptools buffers: keep that bounded."""
        if whole:  # the whole read was head bytes of the same request
            self._hraw += size
        else:
            self._hraw = 0
        if self._hraw > self._max_hbytes:
            self._fail(errors.HEAD_TOO_LARGE, run=False)
        elif len(self._headers) + self._hcount > self._max_hcount:
            self._fail(errors.TOO_MANY_HEADERS, run=False)

    def _unfinished_body(self, size: int) -> None:
        """A read ended inside a request body: charge it to the budget (refused if over), and
        keep the trailer section, which httptools buffers until a field ends, bounded."""
        if (
            self._trailers is not None
            and self._body_len == self._chunk_mark
            and self._chunk_read != self._reads
        ):
            # No body data since a chunk header that came in an earlier read: that was the last
            # chunk's, so this whole read was trailer bytes.
            self._trailer_raw += size
            if self._trailer_raw > self._max_hbytes:
                self._fail(errors.HEAD_TOO_LARGE, run=False)
                return
        self._account()
        if self._state.inflight > self._budget:
            self._over_budget()

    # -- parser callbacks (called by httptools from feed_data) -------------------------------

    def on_message_begin(self) -> None:
        self._phase = 1
        self._seq += 1
        self._headers = {}
        self._hcount = 0
        self._hread = self._reads

    def on_url(self, url: bytes) -> None:
        if self._url:
            url = self._url + url  # the URL arrived in several reads
        self._url = url
        if len(url) > self._max_url:
            raise self._reject(errors.URL_TOO_LONG)

    def on_header(self, name: bytes, value: bytes) -> None:
        # Kept minimal (it runs for every header); the limits are checked per request head in
        # on_headers_complete, and per read in _unfinished_head.
        key = _NAMES.get(name)
        if key is None:
            key = _header_name(name)
        headers = self._headers
        if key in headers:
            self._repeated(key, value.decode("latin1"))
        else:
            headers[key] = value.decode("latin1")

    def _repeated(self, key: str, value: str) -> None:
        """A header seen again: join the values with ", " (bounded by the header count limit)."""
        self._hcount += 1
        if len(self._headers) + self._hcount > self._max_hcount:
            raise self._reject(errors.TOO_MANY_HEADERS)
        if key == "host":
            raise self._reject(errors.DUPLICATE_HOST)
        self._headers[key] += ", " + value

    def on_headers_complete(self) -> None:
        headers = self._headers
        if len(headers) + self._hcount > self._max_hcount:
            raise self._reject(errors.TOO_MANY_HEADERS)
        if self._hread != self._reads or self._read_len > self._max_hbytes:
            # The head may be larger than this read; within one small read it cannot be too large.
            size = len(self._url) + 16 + sum(map(len, headers)) + sum(map(len, headers.values()))
            if size + 4 * len(headers) > self._max_hbytes:
                raise self._reject(errors.HEAD_TOO_LARGE)
        if self._state.inflight > self._budget:
            self._over_budget()
            raise _Abort()
        parser = self._parser
        method = parser.get_method()
        self._method = method = _METHODS.get(method) or method.decode("ascii")
        if method == "CONNECT" or ("upgrade" in headers and parser.should_upgrade()):
            raise self._reject(errors.CONNECT_REFUSED)
        if "host" not in headers and parser.get_http_version() == "1.1":
            raise self._reject(errors.MISSING_HOST)
        keep = _KEEP if parser.should_keep_alive() else _CLOSE
        te = headers.get("transfer-encoding")
        if keep == _CLOSE or te is not None or "connection" in headers:
            # Not the plain HTTP/1.1 keep-alive case: the version matters (a 0.6 us call).
            version = parser.get_http_version()
            if version != "1.1":
                if version != "1.0":
                    raise self._reject(errors.VERSION_NOT_SUPPORTED)
                if te is not None:
                    raise self._reject(errors.CHUNKED_ON_HTTP10)
                if keep == _KEEP:
                    keep = _KEEP_10
        self._keep = keep
        self._phase = 2
        if te is not None:
            if te.lower() != "chunked":
                raise self._reject(errors.UNSUPPORTED_TRANSFER_ENCODING)
            self._body_len = 0
            # Trailer fields will go to a sink that counts them with this head, then drops them.
            size = len(self._url) + 16 + sum(map(len, headers)) + sum(map(len, headers.values()))
            count = len(headers) + self._hcount
            self._headers = self._trailers = _Trailers(headers, self, size + 4 * len(headers), count)
            self._chunk_mark = -1
            self._trailer_raw = 0
        elif "content-length" in headers:
            declared = int(headers["content-length"])  # llhttp has checked it is digits
            if declared > self._max_body:
                raise self._reject(errors.BODY_TOO_LARGE)
            self._body_len = 0
        else:
            return
        # curl and others wait (about a second) for this before sending a body. Only when no
        # earlier response is still to come, or it would be out of order; otherwise the client
        # sends the body after its wait.
        if (
            "expect" in headers
            and headers["expect"].lower() == "100-continue"
            and not self._busy
            and not self._queue
        ):
            self._out.append(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        n = self._body_len + len(body)
        if n > self._max_body:
            raise self._reject(errors.BODY_TOO_LARGE)
        self._body_len = n
        self._body.append(body)

    def on_chunk_header(self) -> None:
        # Only chunked bodies call this; see _unfinished_body for what it tells.
        self._chunk_mark = self._body_len
        self._chunk_read = self._reads

    def on_message_complete(self) -> None:
        url = self._url
        self._url = b""
        trailers = self._trailers
        if trailers is None:
            headers = self._headers
        else:  # a chunked request: its trailers were counted and dropped
            headers = self._headers = trailers.head
            trailers.protocol = self._trailers = None
        if url[:1] == b"/" and url.find(b"#") < 0:
            raw_path, _, raw_query = url.partition(b"?")
        else:  # absolute-form, asterisk-form or a fragment: let httptools split it
            try:
                # Any: httptools' stubs say bytes, but an absent part is None (and compiled
                # code checks the declared type)
                parsed: Any = httptools.parse_url(url)
            except httptools.HttpParserInvalidURLError:
                raise self._reject(errors.INVALID_URL) from None
            if parsed.host is not None and not _names_host(parsed, headers.get("host")):
                raise self._reject(errors.WRONG_HOST)
            raw_path = parsed.path or b"/"
            raw_query = parsed.query or b""
        body = b""
        if self._body:
            body = b"".join(self._body)
            self._body = []
        request = Request(
            self._method,
            raw_path.decode("ascii"),  # llhttp admits only ASCII in URLs
            raw_query.decode("ascii") if raw_query else "",
            headers,
            body,
            self._peer,
        )
        self._phase = 0
        keep = self._keep
        if keep == _CLOSE:
            self._closing = True  # nothing after this request is read
        if self._busy or self._queue or self._slow:
            self._enqueue(request, keep)
        else:
            self._handle(request, keep)

    def _enqueue(self, request: Request, keep: int) -> None:
        """Queue a request behind a busy handler or a paused writer; pause reading past the
        bounds, and refuse it (503, close) past the hard one."""
        queue = self._queue
        if len(queue) >= _MAX_QUEUE_HARD:
            raise self._reject(errors.TOO_MANY_PIPELINED, head=request.method == "HEAD")
        queue.append((request, keep))
        self._queued_bytes += len(request.body) + _REQUEST_COST
        if len(queue) > _MAX_QUEUE or self._queued_bytes > self._max_queued:
            self._update_reading()

    # -- handling and writing ----------------------------------------------------------------

    def _handle(self, request: Request, keep: int) -> None:
        """Run one handler; queue its response for writing, or give it a Task if it suspends.

        Fast path: the handler's coroutine is driven by hand (``send(None)``). If it finishes
        without suspending, as in-memory queue operations do, the response is serialized at
        once: no Task, no extra event-loop iteration. Only a handler that suspends gets a Task
        (``_finish``) for the rest, and later requests on the connection wait for it. Measured
        with wrk against a handler returning a constant response: ~31k req/s with this fast
        path, ~26.7k when every request gets a Task (+16%).

        Caveats of running the first step outside a Task, which handlers must respect: until
        its first suspension a handler runs with ``asyncio.current_task()`` None, so it must
        not enter ``asyncio.timeout()`` or a TaskGroup before it has awaited something that
        suspends (``asyncio.wait_for`` works on 3.11); and that first step runs in the
        connection's context, so a context variable it sets is seen by later requests on the
        same connection (copying the context per request cost ~0.5 us, 5% of a request).
        """
        if self._draining:
            keep = _CLOSE
        try:
            coro = self._handler(request)
            if type(coro) is not _CoroutineType:
                coro = _await(coro)
            try:
                first = coro.send(None)
            except StopIteration as stop:
                data = serialize(stop.value, keep, request.method == "HEAD", self._state.date)
            else:
                self._busy = True
                self._task = self._loop.create_task(self._finish(coro, first, keep, request.method == "HEAD"))
                if request.body:
                    self._running = len(request.body)
                    self._account()
                return
        except MemoryError:
            self._out_of_memory()
            keep = _CLOSE
            data = serialize(_OUT_OF_MEMORY, keep, request.method == "HEAD", self._state.date)
        except Exception:
            log.exception("handler failed for %s %s", request.method, request.path)
            data = serialize(_INTERNAL, keep, request.method == "HEAD", self._state.date)
        self._out.append(data)
        if keep == _CLOSE:
            self._close_after = self._slow = True
            self._drop_queue()
            return
        self._pending += len(data)
        if self._pending > _BATCH and self._transport is not None:
            # Write now rather than gather more: this may call pause_writing (flow control).
            self._transport.write(b"".join(self._out))
            self._out.clear()
            self._wrote(self._pending)
            self._pending = 0

    def _run_queue(self) -> None:
        """Handle queued requests in order, then write what is pending."""
        if self._transport is None or self._busy:
            return
        queue = self._queue
        while queue and not self._busy and not self._over_cap:
            if self._state.inflight > self._budget:
                # Refuse what waits rather than add to it: none of it has been handled.
                head = queue[0][0].method == "HEAD"
                self._drop_queue()
                self._over_budget(head)
                break
            request, keep = queue.popleft()
            self._queued_bytes -= len(request.body) + _REQUEST_COST
            self._handle(request, keep)
        self._flush()

    def _drop_queue(self) -> None:
        self._queue.clear()
        self._queued_bytes = 0

    async def _finish(self, coro: Coroutine[Any, Any, Response], first: Any, keep: int, head: bool) -> None:
        """The rest of a handler that suspended: await it, then write its response."""
        try:
            response = await _Resume(coro, first)
        except asyncio.CancelledError:
            raise  # connection lost or server closing: nothing to write
        except Exception as exc:
            if self._transport is None:
                return  # the client is gone; whatever the handler raised is moot
            if isinstance(exc, MemoryError):
                self._out_of_memory()
                response, keep = _OUT_OF_MEMORY, _CLOSE
            else:
                log.exception("handler failed")
                response = _INTERNAL
        self._task = None
        self._busy = False
        self._running = 0
        if self._transport is None:
            return
        if self._draining:
            keep = _CLOSE
        try:
            data = serialize(response, keep, head, self._state.date)
        except MemoryError:
            self._out_of_memory()
            keep = _CLOSE
            data = serialize(_OUT_OF_MEMORY, keep, head, self._state.date)
        except Exception:
            log.exception("handler returned an invalid response")
            data = serialize(_INTERNAL, keep, head, self._state.date)
        if keep == _CLOSE:
            self._close_after = self._slow = True
            self._drop_queue()
        self._out.append(data)
        if self._queue:
            # The next handler's first step must not run inside this (finished) Task: schedule it.
            self._loop.call_soon(self._run_queue, context=self._ctx)
        else:
            self._flush()

    def _flush(self) -> None:
        """Write pending output; once nothing is queued or running, close or go idle."""
        transport = self._transport
        if transport is None or self._lingering:
            return
        out = self._out
        idle = not self._busy and not self._queue
        if idle and self._error is not None:
            out.append(serialize(self._error, _CLOSE, self._error_head, self._state.date))
        if out:
            data = out[0] if len(out) == 1 else b"".join(out)
            transport.write(data)
            out.clear()
            self._pending = 0
            self._wrote(len(data))
        else:
            self._account()
        if not idle:
            return
        if self._error is not None or self._close_after:
            self._linger()
        elif self._draining:
            transport.close()
        elif self._read_paused:
            self._update_reading()

    # -- limits, timers and closing ----------------------------------------------------------

    def _reject(self, error: BurrowError, head: bool | None = None) -> _Abort:
        """From a parser callback: record the error to answer and return what to raise."""
        self._fail(error, run=False, head=head)
        return _Abort()

    def _fail(self, error: BurrowError, *, run: bool = True, head: bool | None = None) -> None:
        """Stop reading; answer earlier requests, then this error, then close.

        ``head``: whether the refused request is a HEAD (its answer has no body); by default,
        the one being parsed, if any."""
        if self._error is not None or self._transport is None:
            return
        self._error = _OUT_OF_MEMORY if error is errors.OUT_OF_MEMORY else _error_of(error)
        # A request that fails while being parsed may be a HEAD, whose answer has no body.
        # (llhttp knows the method once the request line's first token is parsed.)
        if head is None:
            head = self._phase != 0 and self._parser.get_method() == b"HEAD"
        self._error_head = head
        self._closing = self._slow = True
        self._phase = 0
        self._body = []
        trailers = self._trailers
        if trailers is not None:
            trailers.protocol = self._trailers = None
        if run and not self._busy:
            self._run_queue()

    def _over_budget(self, head: bool | None = None) -> None:
        """The server is over ``max_inflight_bytes``: refuse (503) what is being read or waits."""
        state = self._state
        limit = state.settings.max_inflight_bytes
        state.refusals.note(
            f"refused a request over --max-inflight-bytes {limit}", self._peer, self._loop.time()
        )
        self._fail(errors.OVERLOADED, run=False, head=head)

    def _out_of_memory(self) -> None:
        self._state.refusals.note("out of memory: answered 503", self._peer, self._loop.time())

    def _account(self) -> None:
        """Recompute what this connection has in flight, and the server's total: request body
        bytes received and not yet handled (partial, queued or running) and unsent output (all
        of each response the transport still holds a part of: it keeps the whole object)."""
        transport = self._transport
        if transport is None:  # connection lost: it holds nothing any more
            n = 0
        else:
            n = self._queued_bytes + self._running
            unsent = transport.get_write_buffer_size()
            if unsent:
                n += max(unsent, self._held_out)
            else:
                self._held_out = 0
            if self._phase == 2:
                n += self._body_len
        self._state.inflight += n - self._charged
        self._charged = n

    def _wrote(self, size: int) -> None:
        """After writing ``size`` bytes: note what the transport holds, and account for it."""
        transport = self._transport
        unsent = transport.get_write_buffer_size() if transport is not None else 0
        if unsent == 0:
            self._held_out = 0
        elif unsent <= size:  # all that waits is of this write: everything before was sent
            self._held_out = size
        else:
            self._held_out += size
        self._account()
        if unsent and not self._over_cap and max(unsent, self._held_out) > self._max_unsent:
            self._over_cap = self._slow = True  # until everything is sent (resume_writing)
            self._update_reading()

    def _update_reading(self) -> None:
        """Pause reading while output is over the cap or too much waits in the queue; resume
        once neither holds (never while lingering: then input is read and discarded)."""
        transport = self._transport
        if transport is None or self._lingering:
            return
        pause = self._over_cap or len(self._queue) > _MAX_QUEUE or self._queued_bytes > self._max_queued
        if pause == self._read_paused:
            return
        self._read_paused = pause
        if pause:
            self._slow = True
            transport.pause_reading()
        else:
            self._update_slow()
            transport.resume_reading()

    def _update_slow(self) -> None:
        self._slow = (
            self._write_paused
            or self._read_paused
            or self._close_after
            or self._draining
            or self._lingering
            or self._error is not None
        )

    def _on_tick(self) -> None:
        """Every ``_tick`` seconds: time out a request head, body or idle connection that has
        not moved on since an earlier tick, by comparing what the last tick saw; and a
        connection whose unsent output the client does not read.

        While output waits in our buffer, the client must take ``max_unsent_bytes`` of it (or
        of what the kernel holds for it) within ``write_timeout`` (or ``idle_timeout`` if
        shorter), or get it all sent, whatever else is going on: requests queued behind it or
        a handler running do not count as activity, so a client that sends and never reads is
        closed, and its output with it."""
        transport = self._transport
        if transport is None:
            return
        now = self._loop.time()
        if self._lingering:
            transport.abort()  # the lingering close waited long enough
            return
        unsent = transport.get_write_buffer_size()
        if unsent or self._charged:
            self._account()
        phase = self._phase
        moved = phase != self._seen_phase or self._seq != self._seen_seq
        self._seen_phase = phase
        self._seen_seq = self._seq
        if unsent:
            # What the client has yet to take: our buffer, and what the kernel holds (which
            # takes from our buffer only in large steps, when a third of its own is free).
            if self._fd == -2:
                self._fd = _socket_fd(transport)
            pending = unsent + _kernel_unsent(self._fd)
            mark = self._wmark
            if mark == 0 or pending <= mark - self._max_unsent:
                self._wmark = pending  # new output, or the client took a cap's worth: moving
                self._since = now
            else:
                if pending > mark:
                    self._wmark = pending
                if now - self._since >= self._unread_limit:
                    settings = self._state.settings
                    if settings.write_timeout <= settings.idle_timeout:
                        limit = f"--write-timeout {settings.write_timeout:g}"
                    else:
                        limit = f"--idle-timeout {settings.idle_timeout:g}"
                    self._state.refusals.note(
                        f"closed a connection not reading its responses ({limit})", self._peer, now
                    )
                    transport.abort()
                    return
        elif self._wmark or moved or self._busy or self._queue or self._read_paused:
            # Output drained, a new request or phase, a handler running, or our own back-pressure:
            # not the client's delay.
            self._wmark = 0
            self._since = now
        else:
            waited = now - self._since
            if phase == 1:
                if waited >= self._header_timeout:
                    self._fail(errors.HEAD_TIMEOUT)
            elif phase == 2:
                if waited >= self._body_timeout:
                    self._fail(errors.BODY_TIMEOUT)
            elif waited >= self._idle_timeout and self._error is None:
                transport.close()  # idle keep-alive (nothing unsent): close silently
                return
        if self._timer is not None and not self._lingering:
            self._timer = self._loop.call_at(now + self._tick, self._on_tick)

    def _linger(self) -> None:
        """Flush, shut down our write side, and discard input until the peer closes."""
        transport = self._transport
        if transport is None or self._lingering:
            return
        self._lingering = self._closing = self._slow = True
        if self._draining or not transport.can_write_eof():
            transport.close()  # shutting down: no time to linger
            return
        transport.write_eof()
        if self._read_paused:
            self._read_paused = False
            transport.resume_reading()
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_later(_LINGER, self._on_tick)

    def shutdown(self) -> None:
        """Server closing: close if idle, else finish what is running and close after it."""
        transport = self._transport
        if transport is None:
            return
        self._draining = self._closing = self._slow = True
        if self._lingering:
            transport.abort()
        elif not self._busy and not self._queue:
            transport.close()

    def abort(self) -> None:
        """Close now, whatever is in flight (cancels a running handler via connection_lost)."""
        if self._transport is not None:
            self._transport.abort()
