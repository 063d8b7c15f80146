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

The client library users import as ``burrow.Client`` / ``burrow.AsyncClient`` is built on these
(docs/client.md): :mod:`.api` (the operations, sans I/O, shared by both), :mod:`.pool` (bounded
keep-alive pools), :mod:`.sync_client`, :mod:`.async_client`, and :mod:`.cli` (``burrow get`` ...).
None of these, nor :mod:`.aio` and :mod:`.sync`, is imported by ``import burrow.client``:
the names above are loaded on first use, so the blocking side never pays for asyncio.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING
from urllib.parse import quote

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

if TYPE_CHECKING:
    from burrow.client.aio import Connection, PipelineProtocol, connect_many
    from burrow.client.sync import SyncConnection

#: Imported on first use (module ``__getattr__``), so that what needs only the blocking side
#: (``burrow.Client``, the command line) does not import asyncio.
_LAZY = {
    "Connection": "burrow.client.aio",
    "PipelineProtocol": "burrow.client.aio",
    "connect_many": "burrow.client.aio",
    "SyncConnection": "burrow.client.sync",
}

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


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'burrow.client' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def path(*names: str) -> str:
    """``/v1.0/...`` with each name percent-encoded as one segment (``/`` becomes ``%2F``)."""
    return "/v1.0" + "".join("/" + quote(n, safe="") for n in names)
