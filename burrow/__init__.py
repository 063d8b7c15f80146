"""Burrow: a fast, durable, multi-tenant HTTP message-queue service.

Layers, inside out: ``core`` (pure queue semantics, no I/O, time passed in),
``backends`` (one storage contract, several implementations), ``engine`` (the one
owner of every queue operation: clock, defaults, long polling, events, the cleaner),
``sqs`` (SQS semantics over engine operations), ``api`` (protocol front ends that
only translate), ``http`` (the thin HTTP layer) and ``cli``.

The Python client library is here too: ``burrow.Client`` (blocking) and
``burrow.AsyncClient`` (asyncio), with their results ``burrow.Message`` and
``burrow.MessageAttributes`` (docs/client.md). They are imported on first use, so
``import burrow`` stays cheap for the server.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from burrow import _build

__version__ = "0.1.0"

#: "compiled" when the hot path runs the mypyc-compiled modules, "pure" when it runs their
#: Python source (no compiled build, BURROW_PURE_PYTHON=1, or a build older than the source).
#: Decided here, once, before any other burrow module is imported (burrow/_build.py).
BUILD: str = _build.select()

if TYPE_CHECKING:
    from burrow.client.api import Message, MessageAttributes
    from burrow.client.async_client import AsyncAccount, AsyncClient, AsyncQueue
    from burrow.client.sync_client import Account, Client, Queue

#: The client library's public names, and the module each lives in.
_LAZY = {
    "Client": "burrow.client.sync_client",
    "Account": "burrow.client.sync_client",
    "Queue": "burrow.client.sync_client",
    "AsyncClient": "burrow.client.async_client",
    "AsyncAccount": "burrow.client.async_client",
    "AsyncQueue": "burrow.client.async_client",
    "Message": "burrow.client.api",
    "MessageAttributes": "burrow.client.api",
}

__all__ = [
    "BUILD",
    "Account",
    "AsyncAccount",
    "AsyncClient",
    "AsyncQueue",
    "Client",
    "Message",
    "MessageAttributes",
    "Queue",
    "__version__",
]


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'burrow' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value
