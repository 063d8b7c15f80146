"""The client library's one request/response layer, shared by :class:`~burrow.client.sync_client.Client`
and :class:`~burrow.client.async_client.AsyncClient`. Sans I/O.

Every operation is a generator: it yields a batch of :class:`Request` objects (one, or one per
server for a fan-out), is sent their :class:`~burrow.client.wire.Reply` objects in the same order,
and returns the typed result. The two clients only move bytes (the sync one sends a batch in
turn, the async one at once), so what a call means, which server it goes to, how a reply is
read, how truncated lists are continued and which errors are raised is written once, here.

Results are typed: :class:`Message` (``detail=all``), :class:`MessageAttributes` (``detail=attributes``),
names as ``str``. Errors are the server's own classes (:mod:`burrow.core.errors`), raised by
:func:`~burrow.client.wire.raise_for_status`. "Nothing matched" (404) on a list, a take or a
matched update or delete is an empty result (``[]`` or ``0``), as a user expects of a query;
on one message (``get``, ``update`` or ``delete`` of an id) it is :class:`~burrow.core.errors.NotFound`,
because the caller named something that is not there.
"""

from __future__ import annotations

import base64
import re
from collections import deque
from collections.abc import Generator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeVar
from urllib.parse import quote, unquote, urlsplit

import orjson

from burrow.client.wire import Reply, raise_for_status
from burrow.core.errors import BurrowError, ServerBusy, StorageUnavailable, TooManyConnections
from burrow.hashing import Placement, normalise

T = TypeVar("T")

__all__ = [
    "DEFAULT_URL",
    "TRANSIENT",
    "AccountCalls",
    "Backoff",
    "Message",
    "MessageAttributes",
    "Messages",
    "Operation",
    "QueueCalls",
    "Request",
    "Servers",
    "Watcher",
    "check_one",
    "check_update",
    "describe",
    "list_accounts",
    "segment",
]

#: The server a client talks to when given no URL (``burrow serve``'s default address).
DEFAULT_URL: Final = "http://127.0.0.1:8080"
#: Failures worth retrying later (a worker backs off and tries again): the server unreachable
#: or timing out, or answering 503.
TRANSIENT: Final = (OSError, EOFError, StorageUnavailable, ServerBusy, TooManyConnections)
#: Message ids a :class:`Watcher` remembers, to skip what it already yielded when the server
#: restarts a listing from the start (its marker message was deleted or expired).
WATCH_MEMORY: Final = 10_000

#: Names that need no percent-encoding (most ids): quote() is skipped for them.
_PLAIN = re.compile(r"[A-Za-z0-9_.~-]+").fullmatch
_TRUNCATED = "x-burrow-truncated"
_NEXT_MARKER = "x-burrow-next-marker"


@dataclass(frozen=True, slots=True)
class Message:
    """One message as the server returned it: ``ttl`` and ``hide`` are whole seconds remaining
    at that moment (0 = never expires / visible)."""

    id: str
    body: bytes
    ttl: int
    hide: int

    @property
    def text(self) -> str:
        """The body as UTF-8 text (raises UnicodeDecodeError for a binary body)."""
        return self.body.decode("utf-8")


#: What list operations return (an alias: ``list`` is also a method name of the queue classes).
Messages = list[Message]


@dataclass(frozen=True, slots=True)
class MessageAttributes:
    """A message's id and attributes without its body (what an update returns)."""

    id: str
    ttl: int
    hide: int


@dataclass(slots=True)
class Request:
    """One HTTP request of an operation, before it is bound to a connection.

    ``server`` is a base URL of :attr:`Servers.all`; ``target`` the path and query below it.
    ``retry``: the request may be sent again on a fresh connection when a reused keep-alive
    connection turns out to be dead (GET, PUT of an id, DELETE of an id; never a take).
    ``wait``: seconds the server may hold it (a long poll), added to the read timeout.
    """

    server: str
    method: str
    target: str
    body: bytes = b""
    retry: bool = False
    wait: int = 0


#: An operation: yields batches of requests, is sent their replies, returns its result.
Operation = Generator[list[Request], list[Reply], T]


def _one(request: Request) -> Generator[list[Request], list[Reply], Reply]:
    replies = yield [request]
    return replies[0]


def segment(name: str, what: str) -> str:
    """``name`` percent-encoded as one path segment; an empty name is refused here, because
    ``/v1.0/`` + nothing would name the level above (``DELETE /v1.0/`` is not "delete account ''")."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"{what} must be a non-empty string, got {name!r}")
    return name if _PLAIN(name) else quote(name, safe="")


def _query(params: Iterable[tuple[str, object]]) -> str:
    """``?k=v&...`` of the parameters that are not None (booleans as ``true``/``false``)."""
    parts: list[str] = []
    for key, value in params:
        if value is None:
            continue
        if value is True or value is False:
            parts.append(f"{key}={'true' if value else 'false'}")
        elif isinstance(value, str):
            parts.append(f"{key}={quote(value, safe='')}")
        elif isinstance(value, int):
            parts.append(f"{key}={value}")
        else:
            raise TypeError(f"{key} must be an int, got {value!r}")
    return "?" + "&".join(parts) if parts else ""


def _filters(
    limit: int | None, marker: str | None, match_hidden: bool, wait: int
) -> list[tuple[str, object]]:
    return [
        ("limit", limit),
        ("marker", marker),
        ("match_hidden", match_hidden or None),
        ("wait", wait or None),
    ]


def _message(item: Any) -> Message:
    body = item["body"]
    raw = base64.b64decode(body) if item.get("body_encoding") == "base64" else body.encode("utf-8")
    return Message(item["id"], raw, item["ttl"], item["hide"])


def _messages(reply: Reply) -> Messages:
    return [_message(item) for item in orjson.loads(reply.body)]


def _ids(reply: Reply) -> int:
    """How many items a ``detail=id`` list reply holds."""
    return len(orjson.loads(reply.body)) if reply.status == 200 else 0


def _next_marker(reply: Reply) -> str | None:
    """Where a list that a server limit cut short continues (docs/api.md "Response size")."""
    marker = reply.headers.get(_NEXT_MARKER)
    return None if marker is None else unquote(marker)


def _truncated(reply: Reply) -> bool:
    return reply.headers.get(_TRUNCATED) == "true"


def _left(limit: int | None, done: int) -> int | None:
    return None if limit is None else limit - done


class Servers:
    """The servers of one client and where each queue lives on them.

    One URL: everything goes there. Several: queues are placed by :class:`burrow.hashing.Placement`,
    the same code ``burrow proxy`` routes with, so a hashing client and a router agree.
    """

    def __init__(self, urls: str | Sequence[str] = DEFAULT_URL, subset_size: int = 3) -> None:
        listed = [u for u in (urls.split(",") if isinstance(urls, str) else urls) if u.strip()]
        if not listed:
            raise ValueError("at least one server URL is needed")
        for url in listed:
            _check_url(url)
        self.placement = Placement(listed, subset_size)
        #: The servers' base URLs, normalised, in the order given.
        self.all: tuple[str, ...] = self.placement.servers

    def for_queue(self, account: str, queue: str) -> str:
        return self.all[0] if len(self.all) == 1 else self.placement.server_for(account, queue)

    def for_account(self, account: str) -> list[str]:
        """The servers that may hold the account's queues, in the order listings merge them."""
        return [self.all[0]] if len(self.all) == 1 else self.placement.account_servers(account)


def _check_url(url: str) -> None:
    parts = urlsplit(normalise(url))
    if parts.scheme != "http":
        raise ValueError(f"server URL must be http://host[:port][/prefix], got {url!r}")
    if not parts.hostname or parts.query or parts.fragment or parts.username:
        raise ValueError(f"server URL must be http://host[:port][/prefix], got {url!r}")
    parts.port  # noqa: B018 - raises ValueError for a port that is not a number 0-65535


class QueueCalls:
    """The operations on one queue, as :data:`Operation` generators."""

    __slots__ = ("account", "name", "path", "server")

    def __init__(self, servers: Servers, account: str, name: str) -> None:
        self.account, self.name = account, name
        self.path = f"/v1.0/{segment(account, 'account')}/{segment(name, 'queue')}"
        self.server = servers.for_queue(account, name)

    def _message_path(self, id: str) -> str:
        return f"{self.path}/{segment(id, 'message id')}"

    def put(self, id: str, body: bytes | str, ttl: int | None, hide: int | None) -> Operation[bool]:
        data = body.encode("utf-8") if isinstance(body, str) else bytes(body)
        target = self._message_path(id) + _query((("ttl", ttl), ("hide", hide)))
        reply = yield from _one(Request(self.server, "PUT", target, data, retry=True))
        return raise_for_status(reply).status == 201

    def get(self, id: str) -> Operation[Message]:
        reply = yield from _one(Request(self.server, "GET", self._message_path(id), retry=True))
        return _message(raise_for_status(reply).json())

    def list(
        self, limit: int | None, marker: str | None, match_hidden: bool, wait: int
    ) -> Operation[Messages]:
        """GET pages until ``limit`` messages or the end; without ``limit``, one server page."""
        found: Messages = []
        while True:
            query = _query(_filters(_left(limit, len(found)), marker, match_hidden, wait))
            reply = yield from _one(Request(self.server, "GET", self.path + query, retry=True, wait=wait))
            if reply.status == 404:
                return found
            found.extend(_messages(raise_for_status(reply)))
            marker = _next_marker(reply)
            if limit is None or len(found) >= limit or marker is None:
                return found
            wait = 0  # only the first request waits: the rest continue what it found

    def take(self, limit: int, hide: int, wait: int, delete: bool = False) -> Operation[Messages]:
        """Get-and-hide (POST) or, with ``delete``, get-and-delete (DELETE), ``detail=all``.

        The server caps how many messages with bodies one response may carry; the rest of
        ``limit`` is asked for again (a DELETE repeats itself, a POST continues from its next
        marker), without waiting once something was found.
        """
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        taken: Messages = []
        marker: str | None = None
        while len(taken) < limit:
            params = [("limit", limit - len(taken)), ("marker", marker), ("wait", wait or None)]
            if not delete:
                params.append(("hide", hide))
            query = _query([*params, ("detail", "all")])
            method = "DELETE" if delete else "POST"
            reply = yield from _one(Request(self.server, method, self.path + query, wait=wait))
            if reply.status == 404:
                break
            taken.extend(_messages(raise_for_status(reply)))
            if not _truncated(reply):
                break
            marker, wait = (None if delete else _next_marker(reply)), 0
        return taken

    def update_one(self, id: str, ttl: int | None, hide: int | None) -> Operation[MessageAttributes]:
        query = _query((("ttl", ttl), ("hide", hide), ("detail", "attributes")))
        reply = yield from _one(Request(self.server, "POST", self._message_path(id) + query))
        item = raise_for_status(reply).json()
        return MessageAttributes(item["id"], item["ttl"], item["hide"])

    def update_many(
        self,
        ttl: int | None,
        hide: int | None,
        limit: int | None,
        marker: str | None,
        match_hidden: bool,
        wait: int,
    ) -> Operation[int]:
        """Update the matched messages; how many were changed. A list the server cut short
        continues from its next marker."""
        changed = 0
        while True:
            params = [
                *_filters(_left(limit, changed), marker, match_hidden, wait),
                ("ttl", ttl),
                ("hide", hide),
            ]
            query = _query([*params, ("detail", "id")])
            reply = yield from _one(Request(self.server, "POST", self.path + query, wait=wait))
            if reply.status == 404:
                return changed
            changed += _ids(raise_for_status(reply))
            marker = _next_marker(reply)
            if marker is None or not _truncated(reply) or (limit is not None and changed >= limit):
                return changed
            wait = 0

    def delete_one(self, id: str) -> Operation[None]:
        reply = yield from _one(Request(self.server, "DELETE", self._message_path(id), retry=True))
        raise_for_status(reply)

    def delete_many(
        self, limit: int | None, marker: str | None, match_hidden: bool, wait: int
    ) -> Operation[int]:
        """Delete the matched messages; how many were deleted. A delete the server cut short is
        repeated unchanged (what it returned is gone)."""
        deleted = 0
        while True:
            query = _query([*_filters(_left(limit, deleted), marker, match_hidden, wait), ("detail", "id")])
            reply = yield from _one(Request(self.server, "DELETE", self.path + query, wait=wait))
            if reply.status == 404:
                return deleted
            deleted += _ids(raise_for_status(reply))
            if not _truncated(reply) or (limit is not None and deleted >= limit):
                return deleted
            wait = 0


class AccountCalls:
    """The operations on one account: its queues, listed and merged over its servers."""

    __slots__ = ("name", "path", "servers")

    def __init__(self, servers: Servers, name: str) -> None:
        self.name, self.servers = name, servers
        self.path = f"/v1.0/{segment(name, 'account')}"

    def queues(self, limit: int | None, marker: str | None) -> Operation[list[str]]:
        """The account's queues: each server's queues in its (insertion) order, servers in the
        order of :meth:`Servers.for_account`. A queue lives on one server, so a marker names the
        server to continue on, and the servers before it are skipped."""
        servers = self.servers.for_account(self.name)
        start: int | None = None
        if marker is not None:
            holder = self.servers.for_queue(self.name, marker)
            start = servers.index(holder) if holder in servers else None
        return (yield from _merged_names(servers, self.path, limit, marker, start))

    def delete(self) -> Operation[int]:
        """Delete every queue of the account (hidden messages too) on each of its servers;
        how many queues were deleted."""
        servers = self.servers.for_account(self.name)
        query = "?detail=id"
        replies = yield [Request(s, "DELETE", self.path + query) for s in servers]
        deleted = 0
        for server, reply in zip(servers, replies, strict=True):
            while True:
                if reply.status == 404:
                    break
                deleted += _ids(raise_for_status(reply))
                if not _truncated(reply):
                    break
                reply = yield from _one(Request(server, "DELETE", self.path + query))
        return deleted


def list_accounts(servers: Servers, limit: int | None, marker: str | None) -> Operation[list[str]]:
    """Every server's accounts, merged: servers in the order given, each in its own (insertion)
    order, an account listed by several servers kept at its first place. A marker is found in
    that merged order (an unknown one means "from the start", as on one server)."""
    start = 0 if len(servers.all) == 1 and marker is not None else None
    return (yield from _merged_names(list(servers.all), "/v1.0", limit, marker, start))


def _merged_names(
    servers: Sequence[str], path: str, limit: int | None, marker: str | None, start: int | None
) -> Operation[list[str]]:
    """Names listed by ``servers`` (one GET each, at once, then continuations), merged in
    server order without duplicates, after ``marker`` and at most ``limit`` of them.

    ``start``: the index of the server that knows ``marker`` (it gets the marker, those before
    it are skipped); None with a marker: look for it in the merged order here. Without ``limit``
    the listing ends where the first page a server limit cut short ends (like a GET on one
    server: continue with the last name as marker), so nothing here is unbounded but the
    search for a marker.
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    searching = marker is not None and start is None
    if start is not None:
        servers = servers[start:]
    ask = None if searching else limit
    first_marker = None if searching else marker
    first = yield [
        Request(
            s,
            "GET",
            path + _query((("limit", ask), ("marker", first_marker if i == 0 else None))),
            retry=True,
        )
        for i, s in enumerate(servers)
    ]
    names: list[str] = []
    seen: set[str] = set()
    for server, reply in zip(servers, first, strict=True):
        asked = ask  # the limit the reply in hand was asked with
        while reply.status != 404:
            page = raise_for_status(reply).json()
            for name in page:
                if name in seen:
                    continue
                seen.add(name)
                if searching:
                    searching = name != marker
                    continue
                names.append(name)
                if limit is not None and len(names) >= limit:
                    return names
            follow = _next_marker(reply)
            if follow is None and asked is not None and len(page) >= asked:
                follow = page[-1]  # our own limit ended the page: there may be more
            if follow is None:
                break
            if limit is None and names:  # an unlimited listing ends with a page a server cut short
                return names
            asked = None if searching else _left(limit, len(names))
            query = _query((("limit", asked), ("marker", follow)))
            reply = yield from _one(Request(server, "GET", path + query, retry=True))
    if searching:  # the marker is nowhere: from the start, as a server does with an unknown marker
        return (yield from _merged_names(servers, path, limit, None, None))
    return names


class Watcher:
    """A marker-following reader's state (``queue.watch()``): the marker, and the ids it yielded.

    A listing after a marker that was deleted or expired starts again from the beginning
    (the API's rule for an unknown marker), so the ids of the last :data:`WATCH_MEMORY`
    messages yielded are remembered and skipped.
    """

    __slots__ = ("_order", "_seen", "calls", "marker", "match_hidden", "wait")

    def __init__(self, calls: QueueCalls, marker: str | None, match_hidden: bool, wait: int) -> None:
        self.calls, self.marker, self.match_hidden, self.wait = calls, marker, match_hidden, wait
        self._seen: set[str] = set()
        self._order: deque[str] = deque()

    def poll(self) -> Operation[Messages]:
        """The next long poll: one page after the marker."""
        return self.calls.list(None, self.marker, self.match_hidden, self.wait)

    def new(self, messages: Messages) -> Messages:
        """The messages of a poll not yielded before; moves the marker past them."""
        fresh: Messages = []
        for message in messages:
            if message.id in self._seen:
                continue
            fresh.append(message)
            self._seen.add(message.id)
            self._order.append(message.id)
            if len(self._order) > WATCH_MEMORY:
                self._seen.discard(self._order.popleft())
        if messages:
            self.marker = messages[-1].id
        return fresh


class Backoff:
    """Delays between a worker's retries after a transient failure: 0.5 s doubling to 10 s."""

    __slots__ = ("_next",)
    FIRST, LAST = 0.5, 10.0

    def __init__(self) -> None:
        self._next = self.FIRST

    def delay(self) -> float:
        delay, self._next = self._next, min(self._next * 2, self.LAST)
        return delay

    def reset(self) -> None:
        self._next = self.FIRST


def check_update(ttl: int | None, hide: int | None) -> None:
    if ttl is None and hide is None:
        raise ValueError("update needs ttl or hide (or both)")


def check_one(id: str | None, **filters: object) -> None:
    """Filters apply to matched messages; with one id, none may be given."""
    given = [name for name, value in filters.items() if value not in (None, False, 0)]
    if id is not None and given:
        raise ValueError(f"{', '.join(given)} apply to matched messages, not to one id")


def describe(error: BaseException) -> str:
    """One line for a failure: the server's message for its errors, else the exception."""
    if isinstance(error, BurrowError):
        return error.message or type(error).__name__
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
