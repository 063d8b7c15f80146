"""The one HTTP client of Burrow's tests, benchmarks and tools.

* :mod:`.wire` is sans-I/O: :func:`encode_request` builds a request's bytes, :func:`scan` frames
  responses in bytes read, :class:`ResponseParser` turns them into :class:`Reply` objects.
* :class:`Connection` (asyncio) and :class:`SyncConnection` (blocking socket) are the same
  keep-alive client over that code: ``request``/``call`` for plain use (``call`` raises the
  :class:`~burrow.core.errors.BurrowError` of an error status, from the server's own table),
  ``pipeline`` for several requests in one write, and ``send``/``reply``/``read_until``/
  ``read_to_eof`` for raw bytes (framing and robustness tests).
* :class:`PipelineProtocol` and :func:`connect_many` are for load generators: callback-driven
  connections that keep many requests in flight and count responses without a coroutine each.
"""

from __future__ import annotations

from urllib.parse import quote

from burrow.client.aio import Connection, PipelineProtocol, connect_many
from burrow.client.sync import SyncConnection
from burrow.client.wire import (
    DEFAULT_HOST,
    ProtocolError,
    Reply,
    ResponseParser,
    Span,
    encode_request,
    parse_reply,
    raise_for_status,
    scan,
)

__all__ = [
    "DEFAULT_HOST",
    "Connection",
    "PipelineProtocol",
    "ProtocolError",
    "Reply",
    "ResponseParser",
    "Span",
    "SyncConnection",
    "connect_many",
    "encode_request",
    "parse_reply",
    "path",
    "raise_for_status",
    "scan",
]


def path(*names: str) -> str:
    """``/v1.0/...`` with each name percent-encoded as one segment (``/`` becomes ``%2F``)."""
    return "/v1.0" + "".join("/" + quote(n, safe="") for n in names)
