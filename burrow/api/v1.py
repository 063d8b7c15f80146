"""The burrow v1.0 REST front end: parse parameters, call the service, shape the reply.

It only translates. Each handler validates everything first (so a 400 changes
nothing), makes one service call, and renders the result at the requested
``detail``. "Nothing matched" is a 404 with a reason, never an empty list.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from urllib.parse import unquote_plus

import orjson

from burrow.core import validation
from burrow.core.errors import BadRequest, NotFound
from burrow.core.model import ALL, Detail, Filter, Message, new_filter, remaining
from burrow.http.types import Request, Response
from burrow.service import Service

JSON = "application/json"
OCTETS = "application/octet-stream"
NO_CONTENT = Response(204)
CREATED = Response(201)
#: The answer to ``GET /``, built once (responses are never changed once built, as above).
VERSIONS = Response(200, orjson.dumps(["v1.0"]), JSON)

#: Parameters each kind of request accepts; anything else is a 400 naming the allowed ones.
LIST_NAMES = frozenset({"limit", "marker", "detail"})
LIST_MESSAGES = frozenset({"limit", "marker", "match_hidden", "detail", "wait"})
UPDATE_MESSAGES = LIST_MESSAGES | {"ttl", "hide"}
ONE_MESSAGE = frozenset({"detail"})
PUT_MESSAGE = frozenset({"ttl", "hide"})
UPDATE_MESSAGE = frozenset({"detail", "ttl", "hide"})
NO_PARAMS: frozenset[str] = frozenset()
#: Bounds of V1Api's cache of parsed query strings: entries, and length of a cached query.
_PARSED_MAX = 256
_PARSED_QUERY_MAX = 200


class Params:
    """The query string of one request, decoded and checked against what the route allows."""

    __slots__ = ("_filter", "_seconds", "_settings_max_seconds", "_values")

    def __init__(self, query: str, allowed: frozenset[str], max_seconds: int) -> None:
        values: dict[str, str] = {}
        if query:
            for part in query.split("&"):
                if not part:
                    continue
                key, _, value = part.partition("=")
                if "%" in key or "+" in key:
                    key = unquote_plus(key)
                if key not in allowed:
                    expected = ", ".join(sorted(allowed)) or "none"
                    raise BadRequest(f"unknown parameter {key[:40]!r} here; allowed: {expected}")
                if key in values:
                    raise BadRequest(f"parameter {key!r} given more than once")
                if "%" in value or "+" in value:
                    try:
                        value = unquote_plus(value, errors="strict")
                    except UnicodeDecodeError:
                        raise BadRequest(f"parameter {key!r} is not valid UTF-8") from None
                values[key] = value
        self._values = values
        self._settings_max_seconds = max_seconds
        self._filter: Filter | None = None
        self._seconds: dict[str, int] = {}

    def filter(self) -> Filter:
        # Params may be shared (see V1Api._params), so the (immutable) Filter is kept.
        if self._filter is None:
            self._filter = self._make_filter()
        return self._filter

    def _make_filter(self) -> Filter:
        values = self._values
        if not values:
            return ALL  # equal to Filter(), and immutable: shared
        limit = values.get("limit")
        marker = values.get("marker")
        hidden = values.get("match_hidden")
        return new_filter(
            None if limit is None else validation.integer(limit, "limit", 1, 1 << 31),
            marker,
            False if hidden is None else validation.boolean(hidden, "match_hidden"),
        )

    def seconds(self, key: str) -> int | None:
        """``ttl``, ``hide`` or ``wait``: integer seconds >= 0, or None when absent."""
        value = self._values.get(key)
        if value is None:
            return None
        # Params may be shared (see V1Api._params): a value once checked is kept.
        checked = self._seconds.get(key)
        if checked is None:
            checked = self._seconds[key] = validation.integer(value, key, 0, self._settings_max_seconds)
        return checked

    def detail(self, default: Detail) -> Detail:
        value = self._values.get("detail")
        return default if value is None else validation.detail(value)


# -- rendering -------------------------------------------------------------------


def _json(data: object) -> Response:
    return Response(200, orjson.dumps(data), JSON)


def _names(names: list[str], detail: Detail, what: str) -> Response:
    if not names:
        raise NotFound(f"no {what} found")
    if detail is Detail.NONE:
        return NO_CONTENT
    if detail is Detail.ID:
        return _json(names)
    return _json([{"id": n} for n in names])


def _check_names_detail(detail: Detail) -> Detail:
    if detail is Detail.ATTRIBUTES or detail is Detail.BODY:
        raise BadRequest(f"detail={detail.value} is not available for accounts or queues")
    return detail


def _body_fields(body: bytes, out: dict[str, object]) -> dict[str, object]:
    """Put ``body`` into a JSON object: text when it is UTF-8, else base64 with ``body_encoding``."""
    try:
        out["body"] = body.decode("utf-8")
    except UnicodeDecodeError:
        out["body"] = base64.b64encode(body).decode("ascii")
        out["body_encoding"] = "base64"
    return out


def _attributes(m: Message, now: float) -> dict[str, object]:
    return {"id": m.id, "ttl": remaining(m.expires, now), "hide": remaining(m.hidden_until, now)}


def _body_item(m: Message) -> object:
    try:
        return m.body.decode("utf-8")
    except UnicodeDecodeError:
        return _body_fields(m.body, {})


def _all(m: Message, now: float) -> dict[str, object]:
    """One message at ``detail=all`` (what a take returns)."""
    return _body_fields(m.body, _attributes(m, now))


_LIST_RENDER: dict[Detail, Callable[[Message, float], object]] = {
    Detail.ID: lambda m, now: m.id,
    Detail.ALL: _all,
    Detail.ATTRIBUTES: _attributes,
    Detail.BODY: lambda m, now: _body_item(m),
}


def _messages(messages: list[Message], detail: Detail, now: float) -> Response:
    if detail is Detail.ALL:  # the common case (takes): no per-message dispatch
        return Response(200, orjson.dumps([_all(m, now) for m in messages]), JSON)
    if detail is Detail.NONE:
        return NO_CONTENT
    render = _LIST_RENDER[detail]
    return _json([render(m, now) for m in messages])


def _message(m: Message, detail: Detail, now: float) -> Response:
    if detail is Detail.ALL:
        return _json(_all(m, now))
    if detail is Detail.ATTRIBUTES:
        return _json(_attributes(m, now))
    if detail is Detail.BODY:
        return Response(200, m.body, OCTETS)
    if detail is Detail.ID:
        return Response(200, m.id.encode("utf-8"), OCTETS)
    return NO_CONTENT


def _where(account: str, queue: str) -> str:
    return f"queue {queue!r} of account {account!r}"


# -- handlers --------------------------------------------------------------------


class V1Api:
    """Handlers for ``/v1.0`` paths; :mod:`burrow.api.routes` maps paths and methods to them."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.max_seconds = service.settings.max_seconds
        #: The Params of every request without a query string (most of them): nothing to parse
        #: or check. A Params never changes after parsing (its filter is computed once), so
        #: one instance can serve many requests.
        self._no_query = Params("", NO_PARAMS, self.max_seconds)
        #: Parsed Params of recent short query strings, by (query, allowed): clients repeat
        #: the same few (a worker's take) and parsing one costs more than the lookup.
        #: Only successfully parsed ones are kept; the cache is bounded and simply reset.
        self._parsed: dict[tuple[str, frozenset[str]], Params] = {}

    def _params(self, request: Request, allowed: frozenset[str]) -> Params:
        query = request.query
        if not query:
            return self._no_query
        key = (query, allowed)
        params = self._parsed.get(key)
        if params is None:
            params = Params(query, allowed, self.max_seconds)
            if len(query) <= _PARSED_QUERY_MAX:
                if len(self._parsed) >= _PARSED_MAX:
                    self._parsed.clear()
                self._parsed[key] = params
        return params

    async def versions(self, request: Request) -> Response:
        self._params(request, NO_PARAMS)
        return VERSIONS

    # accounts
    async def list_accounts(self, request: Request) -> Response:
        p = self._params(request, LIST_NAMES)
        detail = _check_names_detail(p.detail(Detail.ID))
        return _names(await self.service.list_accounts(p.filter()), detail, "accounts")

    async def delete_accounts(self, request: Request) -> Response:
        p = self._params(request, LIST_NAMES)
        detail = _check_names_detail(p.detail(Detail.NONE))
        return _names(await self.service.delete_accounts(p.filter()), detail, "accounts")

    # queues
    async def list_queues(self, request: Request, account: str) -> Response:
        p = self._params(request, LIST_NAMES)
        detail = _check_names_detail(p.detail(Detail.ID))
        names = await self.service.list_queues(account, p.filter())
        return _names(names, detail, f"queues in account {account!r}")

    async def delete_queues(self, request: Request, account: str) -> Response:
        p = self._params(request, LIST_NAMES)
        detail = _check_names_detail(p.detail(Detail.NONE))
        names = await self.service.delete_queues(account, p.filter())
        return _names(names, detail, f"queues in account {account!r}")

    # message lists
    async def get_messages(self, request: Request, account: str, queue: str) -> Response:
        p = self._params(request, LIST_MESSAGES)
        detail, filter, wait = p.detail(Detail.ALL), p.filter(), p.seconds("wait") or 0
        found = await self.service.get_messages(account, queue, filter, wait)
        return self._found(found, detail, account, queue)

    async def update_messages(self, request: Request, account: str, queue: str) -> Response:
        p = self._params(request, UPDATE_MESSAGES)
        detail, filter, wait = p.detail(Detail.NONE), p.filter(), p.seconds("wait") or 0
        ttl, hide = p.seconds("ttl"), p.seconds("hide")
        found = await self.service.update_messages(account, queue, filter, ttl, hide, wait)
        return self._found(found, detail, account, queue)

    async def delete_messages(self, request: Request, account: str, queue: str) -> Response:
        p = self._params(request, LIST_MESSAGES)
        detail, filter, wait = p.detail(Detail.NONE), p.filter(), p.seconds("wait") or 0
        found = await self.service.delete_messages(account, queue, filter, wait)
        return self._found(found, detail, account, queue)

    def _found(self, found: list[Message], detail: Detail, account: str, queue: str) -> Response:
        if not found:
            raise NotFound(f"no matching messages in {_where(account, queue)}")
        return _messages(found, detail, self.service.clock())

    # one message
    async def get_message(self, request: Request, account: str, queue: str, message: str) -> Response:
        detail = self._params(request, ONE_MESSAGE).detail(Detail.ALL)
        found = await self.service.get_message(account, queue, message)
        return self._one(found, detail, account, queue, message)

    async def put_message(self, request: Request, account: str, queue: str, message: str) -> Response:
        p = self._params(request, PUT_MESSAGE)
        ttl, hide = p.seconds("ttl"), p.seconds("hide")
        created = await self.service.put_message(account, queue, message, request.body, ttl, hide)
        return CREATED if created else NO_CONTENT

    async def update_message(self, request: Request, account: str, queue: str, message: str) -> Response:
        p = self._params(request, UPDATE_MESSAGE)
        detail, ttl, hide = p.detail(Detail.NONE), p.seconds("ttl"), p.seconds("hide")
        found = await self.service.update_message(account, queue, message, ttl, hide)
        return self._one(found, detail, account, queue, message)

    async def delete_message(self, request: Request, account: str, queue: str, message: str) -> Response:
        detail = self._params(request, ONE_MESSAGE).detail(Detail.NONE)
        found = await self.service.delete_message(account, queue, message)
        return self._one(found, detail, account, queue, message)

    def _one(self, found: Message | None, detail: Detail, account: str, queue: str, message: str) -> Response:
        if found is None:
            raise NotFound(f"message {message!r} not found in {_where(account, queue)}")
        return _message(found, detail, self.service.clock())
