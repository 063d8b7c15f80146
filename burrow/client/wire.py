"""Sans-I/O HTTP/1.1 for clients: request bytes out, responses framed and parsed from bytes in.

No sockets here. The asyncio and blocking connections (:mod:`burrow.client.aio`,
:mod:`burrow.client.sync`) and the benchmark load generators all build requests with
:func:`encode_request` and find responses in the bytes they read with :func:`scan`, so there is
one request encoding and one response parser.

Framing, which Burrow's responses, the echo baseline's and moto's all follow: a response is a
head ending in a blank line, then ``content-length`` bytes of body; responses to ``HEAD``, and
1xx, 204 and 304 responses, have no body, nor does a response without ``content-length``. A
``Transfer-Encoding`` response is refused (:class:`ProtocolError`): no server we talk to sends one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

import orjson

from burrow.core.errors import ERRORS_BY_CODE, ERRORS_BY_STATUS, BurrowError

__all__ = [
    "DEFAULT_HOST",
    "ProtocolError",
    "Reply",
    "ResponseParser",
    "Span",
    "encode_request",
    "parse_reply",
    "raise_for_status",
    "scan",
]

DEFAULT_HOST: Final = "127.0.0.1"
#: Methods whose requests carry ``Content-Length`` even with an empty body.
_BODY_METHODS: Final = frozenset(("PUT", "POST", "PATCH"))
#: Status codes whose responses never have a body, as they appear on the wire.
_NO_BODY: Final = frozenset([b"204", b"304", *(b"1%02d" % n for n in range(100))])

#: One framed response in a buffer: status code as on the wire (``b"200"``), where the response
#: starts, where its body starts, and where it ends.
Span = tuple[bytes, int, int, int]


class ProtocolError(Exception):
    """The peer sent something that is not an HTTP/1.x response this client can frame."""


def encode_request(
    method: str,
    target: str,
    body: bytes = b"",
    headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
    *,
    host: str | None = DEFAULT_HOST,
    version: str = "1.1",
) -> bytes:
    """One request's exact bytes: request line, ``Host``, ``headers`` in order, ``Content-Length``.

    ``Host`` is left out when ``host`` is None or ``headers`` name one. ``Content-Length`` is
    added for a non-empty body, and for an empty one on PUT, POST and PATCH, unless ``headers``
    give ``Content-Length`` or ``Transfer-Encoding`` (then ``body`` is sent as it is: a chunked
    body must already be encoded). The head is UTF-8 (Burrow reads header bytes as Latin-1).
    """
    if not headers and host is not None:  # the load generators' case, kept short
        if body or method in _BODY_METHODS:
            head = f"{method} {target} HTTP/{version}\r\nHost: {host}\r\nContent-Length: {len(body)}\r\n\r\n"
            return head.encode() + body
        return f"{method} {target} HTTP/{version}\r\nHost: {host}\r\n\r\n".encode()
    lines: list[str] = [f"{method} {target} HTTP/{version}\r\n", ""]
    framed = False
    if headers:
        for name, value in headers.items() if isinstance(headers, Mapping) else headers:
            lowered = name.lower()
            if lowered == "host":
                host = None
            elif lowered in ("content-length", "transfer-encoding"):
                framed = True
            lines.append(f"{name}: {value}\r\n")
    if host is not None:
        lines[1] = f"Host: {host}\r\n"
    if not framed and (body or method in _BODY_METHODS):
        lines.append(f"Content-Length: {len(body)}\r\n")
    lines.append("\r\n")
    return "".join(lines).encode() + body


def scan(
    buf: bytes,
    pos: int = 0,
    statuses: dict[bytes, int] | None = None,
    spans: list[Span] | None = None,
    head_only: bool = False,
    limit: int = -1,
) -> tuple[int, int, int]:
    """Frame the complete responses in ``buf`` from ``pos`` on, at most ``limit`` (-1: all).

    Each is counted in ``statuses`` by its code as on the wire (``b"200"``), and its :data:`Span`
    appended to ``spans``, for the dicts and lists given. ``head_only``: the responses answer
    HEAD requests (no body follows their head). Returns where the first incomplete response
    starts, how many were framed, and the length ``buf`` must reach for the next one to be
    complete (0 while its head is incomplete). This is the hot loop of the load generators: it parses
    nothing it need not (no header dict, no int status) and does not check the status line
    (:func:`parse_reply` does).
    """
    count = need = 0
    size = len(buf)
    while count != limit:
        head_end = buf.find(b"\r\n\r\n", pos)
        if head_end < 0:
            break
        end = head_end + 4
        code = buf[pos + 9 : pos + 12]
        if not head_only and code not in _NO_BODY:
            at = buf.find(b"\r\ncontent-length:", pos, head_end)
            if at >= 0:
                end += int(buf[at + 17 : buf.find(b"\r\n", at + 17, end)])
            else:
                end += _length(buf, pos, head_end)
            if end > size:
                need = end
                break
        if statuses is not None:
            statuses[code] = statuses.get(code, 0) + 1
        if spans is not None:
            spans.append((code, pos, head_end + 4, end))
        count += 1
        pos = end
    return pos, count, need


def _length(buf: bytes, start: int, head_end: int) -> int:
    """The body length of a head that has no lower-case ``content-length:`` line (any case then)."""
    head = buf[start:head_end].lower()
    if b"\r\ntransfer-encoding:" in head:
        raise ProtocolError("responses with Transfer-Encoding are not supported")
    at = head.find(b"\r\ncontent-length:")
    if at < 0:
        return 0
    stop = head.find(b"\r\n", at + 17)
    return int(head[at + 17 : stop if stop >= 0 else len(head)])


class Reply:
    """One response. ``headers`` (names lower-cased, repeated ones joined with ``", "``),
    ``fields`` (every header line in order), ``reason`` and ``version`` are parsed from the head
    on first use."""

    __slots__ = ("_fields", "_head", "_headers", "body", "status")

    def __init__(
        self, status: int, headers: dict[str, str] | None = None, body: bytes = b"", head: bytes = b""
    ) -> None:
        self.status = status
        self.body = body
        self._head = head
        self._headers = headers
        self._fields: list[tuple[str, str]] | None = None

    @property
    def headers(self) -> dict[str, str]:
        if self._headers is None:
            headers: dict[str, str] = {}
            for name, value in self.fields:
                headers[name] = f"{headers[name]}, {value}" if name in headers else value
            self._headers = headers
        return self._headers

    @property
    def fields(self) -> list[tuple[str, str]]:
        if self._fields is None:
            fields: list[tuple[str, str]] = []
            for line in self._head.decode("latin-1").split("\r\n")[1:]:
                if line:
                    name, colon, value = line.partition(":")
                    if not colon:
                        raise ProtocolError(f"malformed header line {line[:100]!r}")
                    fields.append((name.strip().lower(), value.strip()))
            self._fields = fields
        return self._fields

    @property
    def keep_alive(self) -> bool:
        """Whether the connection stays open after this response (HTTP/1.1 unless
        ``connection: close``; HTTP/1.0 only with ``connection: keep-alive``)."""
        if self._head.startswith(b"HTTP/1.1 ") and b"connection:" not in self._head.lower():
            return True  # the common case, decided without parsing the header lines
        tokens = {t.strip() for t in self.headers.get("connection", "").lower().split(",")}
        return "keep-alive" in tokens if self.version == "HTTP/1.0" else "close" not in tokens

    @property
    def version(self) -> str:
        return self._head[: self._head.find(b" ")].decode("latin-1")

    @property
    def reason(self) -> str:
        line = self._head.split(b"\r\n", 1)[0]
        return line[13:].decode("latin-1")

    def json(self) -> Any:
        return orjson.loads(self.body)

    def __repr__(self) -> str:
        return f"Reply({self.status}, {self.body[:80]!r})"


def parse_reply(buf: bytes, span: Span) -> Reply:
    """The :class:`Reply` for a span :func:`scan` found (the status line is checked here)."""
    code, start, body, end = span
    if buf[start : start + 9] not in (b"HTTP/1.1 ", b"HTTP/1.0 ") or not code.isdigit():
        line = buf[start : buf.find(b"\r\n", start)]
        raise ProtocolError(f"malformed status line {line[:100]!r}")
    return Reply(int(code), None, buf[body:end], buf[start : body - 4])


class ResponseParser:
    """Bytes in (:meth:`feed`), complete responses out (:meth:`next_reply`), one at a time.

    What has been fed and not yet returned as a response can be taken raw (:meth:`take`).
    """

    __slots__ = ("_buf", "_chunks", "_need", "_size")

    def __init__(self) -> None:
        self._buf = b""
        #: Reads not yet joined to ``_buf`` (a large body is joined once, not once per read).
        self._chunks: list[bytes] = []
        self._size = 0  # bytes in _buf and _chunks
        self._need = 0  # _size at which the next response is complete, once its head is here

    def feed(self, data: bytes) -> None:
        if self._size:
            self._chunks.append(data)
        else:
            self._buf = data
        self._size += len(data)

    def __len__(self) -> int:
        """Bytes fed and not yet consumed."""
        return self._size

    def _joined(self) -> bytes:
        if self._chunks:
            self._buf = b"".join([self._buf, *self._chunks])
            self._chunks.clear()
        return self._buf

    def next_reply(self, head_only: bool = False) -> Reply | None:
        """The next complete response (``head_only``: it answers a HEAD), or None for now."""
        if not self._size or self._size < self._need:
            return None
        buf = self._joined()
        spans: list[Span] = []
        end, _, self._need = scan(buf, 0, None, spans, head_only, 1)
        if not spans:
            return None
        self._buf = buf[end:] if end < len(buf) else b""
        self._size -= end
        return parse_reply(buf, spans[0])

    def take(self, n: int = -1) -> bytes:
        """Up to ``n`` (-1: all) unconsumed bytes, raw."""
        buf = self._joined()
        n = len(buf) if n < 0 else min(n, len(buf))
        self._buf = buf[n:]
        self._size -= n
        self._need = 0
        return buf[:n]

    def take_until(self, separator: bytes) -> bytes | None:
        """The unconsumed bytes up to and including ``separator``, or None if it has not arrived."""
        buf = self._joined()
        at = buf.find(separator)
        return None if at < 0 else self.take(at + len(separator))


def raise_for_status(reply: Reply) -> Reply:
    """``reply`` if it is not an error; else raise the :class:`BurrowError` its code (or else its
    status) maps to in the server's table (:mod:`burrow.core.errors`), with its message."""
    if reply.status < 400:
        return reply
    code, message = "", reply.body.decode("utf-8", "replace")
    try:
        data = orjson.loads(reply.body)
        if isinstance(data, dict):
            code, message = str(data.get("error", "")), str(data.get("message", ""))
    except orjson.JSONDecodeError:
        pass
    cls = ERRORS_BY_CODE.get(code) or ERRORS_BY_STATUS.get(reply.status, BurrowError)
    raise cls(message)
