"""The burrow v1.0 REST front end: parse parameters, call the engine, shape the reply.

It only translates. Each handler validates everything first (so a 400 changes
nothing), makes one engine call, and renders the result at the requested
``detail``. "Nothing matched" is a 404 with a reason, never an empty list.
"""

from __future__ import annotations

import base64
import operator
from collections.abc import Callable, Sequence
from typing import TypeVar
from urllib.parse import quote, unquote_plus

import orjson

from burrow.core import validation
from burrow.core.errors import BadRequest, NotFound, QuotaExceeded
from burrow.core.model import ALL, Detail, Filter, Message, remaining
from burrow.engine import Engine
from burrow.http.types import Request, Response

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

#: Headers of a list that a server limit, not the request's ``limit``, cut short (docs/api.md
#: "Response size"): more items may match; continue from the next marker (GET and POST).
TRUNCATED = "x-burrow-truncated"
NEXT_MARKER = "x-burrow-next-marker"
#: The response budget's allowance for each listed item that carries no body, when it caps
#: the ``limit`` of a POST or DELETE list: an id (at most 256 bytes) and its attributes
#: render in well under this.
ITEM_BYTES = 1024
#: An upper bound of one rendered list item apart from its body: an id of 256 characters
#: at 6 bytes each (a JSON ``\uXXXX`` escape), the keys, ``ttl``, ``hide``, ``body_encoding``,
#: and the separating comma. A body of n bytes renders in at most 6n more.
_ITEM_MAX = 6 * validation.MAX_NAME_BYTES + 96

T = TypeVar("T")


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
        return Filter(
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


def _names(
    names: list[str], detail: Detail, what: str, budget: int | None = None, cut: bool = False
) -> Response:
    """Accounts or queues at ``detail``; with ``budget`` (a GET), only as many as fit in it.

    ``cut``: a server limit already cut the list short. A list cut short says so in its
    headers, with the marker to continue from when it is a GET (``budget`` given).
    """
    if not names:
        raise NotFound(f"no {what} found")
    if detail is Detail.NONE:
        return NO_CONTENT
    render: Callable[[str], object] = _same if detail is Detail.ID else _id_object
    if budget is None or len(names) == 1 or 2 + len(names) * _ITEM_MAX <= budget:
        body, count = orjson.dumps([render(n) for n in names]), len(names)
    else:
        body, count = _bounded_list(names, render, budget, None)
    if cut or count < len(names):
        return Response(200, body, JSON, _truncated(None if budget is None else names[count - 1]))
    return Response(200, body, JSON)


def _same(name: str) -> object:
    return name


def _id_object(name: str) -> object:
    return {"id": name}


def _bounded_list(
    items: Sequence[T], render: Callable[[T], object], budget: int, least: Callable[[T], int] | None
) -> tuple[bytes, int]:
    """A JSON array of the first ``items`` whose rendering fits in ``budget`` bytes (at least one).

    Items are rendered one at a time, so no more than the budget is ever built; ``least``
    (a lower bound of an item's rendered size) saves rendering one that cannot fit.
    Returns the array and how many items it holds.
    """
    parts: list[bytes] = []
    size = 1  # "[", then each item with the "," or "]" after it
    for item in items:
        if parts and least is not None and size + least(item) + 1 > budget:
            break
        part = orjson.dumps(render(item))
        if parts and size + len(part) + 1 > budget:
            break
        parts.append(part)
        size += len(part) + 1
    return b"[" + b",".join(parts) + b"]", len(parts)


def _truncated(last: str | None) -> list[tuple[str, str]]:
    """The headers of a list cut short; ``last`` (the marker to continue from) is percent-encoded."""
    if last is None:
        return [(TRUNCATED, "true")]
    return [(TRUNCATED, "true"), (NEXT_MARKER, quote(last, safe=""))]


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


def _messages(
    messages: list[Message], detail: Detail, now: float, headers: list[tuple[str, str]] | None = None
) -> Response:
    if detail is Detail.ALL:  # the common case (takes): no per-message dispatch
        return Response(200, orjson.dumps([_all(m, now) for m in messages]), JSON, headers)
    if detail is Detail.NONE:
        return NO_CONTENT
    render = _LIST_RENDER[detail]
    return Response(200, orjson.dumps([render(m, now) for m in messages]), JSON, headers)


def _with_body(detail: Detail) -> bool:
    return detail is Detail.ALL or detail is Detail.BODY


def _body_size(m: Message) -> int:
    return len(m.body)


_BODY = operator.attrgetter("body")


def _bounded_messages(
    messages: list[Message], detail: Detail, now: float, budget: int, cut: bool
) -> Response:
    """A GET list at ``detail``, holding only the messages that fit in ``budget`` bytes (at least one).

    ``cut``: the list was already cut short by ``max_limit``. A list cut either way carries
    the :data:`TRUNCATED` and :data:`NEXT_MARKER` headers.
    """
    if detail is Detail.NONE:
        return NO_CONTENT
    count = len(messages)
    bound = 2 + count * _ITEM_MAX
    if count > 1 and _with_body(detail):
        bound += 6 * sum(map(len, map(_BODY, messages)))  # no Python frame per message
    if count == 1 or bound <= budget:  # surely fits (the usual case): render it whole
        return _messages(messages, detail, now, _truncated(messages[-1].id) if cut else None)
    render = _LIST_RENDER[detail]
    body, count = _bounded_list(
        messages, lambda m: render(m, now), budget, _body_size if _with_body(detail) else None
    )
    cut = cut or count < len(messages)
    return Response(200, body, JSON, _truncated(messages[count - 1].id) if cut else None)


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


def _over_quota(error: QuotaExceeded) -> Response:
    """A quota refusal: the error body of every error, plus ``Retry-After``."""
    body = orjson.dumps({"error": error.code, "message": error.message})
    return Response(error.status, body, JSON, [("retry-after", str(error.retry_after))])


def _where(account: str, queue: str) -> str:
    return f"queue {queue!r} of account {account!r}"


# -- handlers --------------------------------------------------------------------


class V1Api:
    """Handlers for ``/v1.0`` paths; :mod:`burrow.api.routes` maps paths and methods to them."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        settings = engine.settings
        self.max_seconds = settings.max_seconds
        self.max_limit = settings.max_limit
        #: The byte budget of a list response (docs/api.md "Response size"): GET lists are
        #: rendered within it; POST and DELETE lists, which cannot leave out what they already
        #: hid or deleted, have their ``limit`` capped instead, at these many messages with
        #: bodies (``detail`` all or body) or without.
        self.budget = settings.max_response_bytes
        self.body_cap = max(1, self.budget // settings.max_body_bytes)
        self.item_cap = max(1, self.budget // ITEM_BYTES)
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
        detail, filter = _check_names_detail(p.detail(Detail.ID)), p.filter()
        names = await self.engine.list_accounts(filter)
        return _names(names, detail, "accounts", self.budget, self._cut(filter, len(names)))

    async def delete_accounts(self, request: Request) -> Response:
        p = self._params(request, LIST_NAMES)
        detail = _check_names_detail(p.detail(Detail.NONE))
        filter, cap = self._capped(p.filter(), detail, names=True)
        names = await self.engine.delete_accounts(filter)
        return _names(names, detail, "accounts", cut=0 < cap <= len(names))

    # queues
    async def list_queues(self, request: Request, account: str) -> Response:
        p = self._params(request, LIST_NAMES)
        detail, filter = _check_names_detail(p.detail(Detail.ID)), p.filter()
        names = await self.engine.list_queues(account, filter)
        what = f"queues in account {account!r}"
        return _names(names, detail, what, self.budget, self._cut(filter, len(names)))

    async def delete_queues(self, request: Request, account: str) -> Response:
        p = self._params(request, LIST_NAMES)
        detail = _check_names_detail(p.detail(Detail.NONE))
        filter, cap = self._capped(p.filter(), detail, names=True)
        names = await self.engine.delete_queues(account, filter)
        return _names(names, detail, f"queues in account {account!r}", cut=0 < cap <= len(names))

    # message lists
    async def get_messages(self, request: Request, account: str, queue: str) -> Response:
        p = self._params(request, LIST_MESSAGES)
        detail, filter, wait = p.detail(Detail.ALL), p.filter(), p.seconds("wait") or 0
        try:
            found = await self.engine.get_messages(account, queue, filter, wait)
        except QuotaExceeded as error:  # the waiters quota
            return _over_quota(error)
        if not found:
            raise NotFound(f"no matching messages in {_where(account, queue)}")
        cut = self._cut(filter, len(found))
        return _bounded_messages(found, detail, self.engine.now(), self.budget, cut)

    async def update_messages(self, request: Request, account: str, queue: str) -> Response:
        p = self._params(request, UPDATE_MESSAGES)
        detail, wait = p.detail(Detail.NONE), p.seconds("wait") or 0
        filter, cap = self._capped(p.filter(), detail)
        ttl, hide = p.seconds("ttl"), p.seconds("hide")
        try:
            found = await self.engine.update_messages(account, queue, filter, ttl, hide, wait)
        except QuotaExceeded as error:  # the waiters quota
            return _over_quota(error)
        if 0 < cap <= len(found):  # the budget may have left matches out: continue after the last
            return self._found(found, detail, account, queue, _truncated(found[-1].id))
        return self._found(found, detail, account, queue)

    async def delete_messages(self, request: Request, account: str, queue: str) -> Response:
        p = self._params(request, LIST_MESSAGES)
        detail, wait = p.detail(Detail.NONE), p.seconds("wait") or 0
        filter, cap = self._capped(p.filter(), detail)
        try:
            found = await self.engine.delete_messages(account, queue, filter, wait)
        except QuotaExceeded as error:  # the waiters quota
            return _over_quota(error)
        if 0 < cap <= len(found):  # the budget may have left matches out: repeat the request
            return self._found(found, detail, account, queue, _truncated(None))
        return self._found(found, detail, account, queue)

    def _found(
        self,
        found: list[Message],
        detail: Detail,
        account: str,
        queue: str,
        headers: list[tuple[str, str]] | None = None,
    ) -> Response:
        if not found:
            raise NotFound(f"no matching messages in {_where(account, queue)}")
        return _messages(found, detail, self.engine.now(), headers)

    def _cut(self, filter: Filter, found: int) -> bool:
        """Whether ``max_limit``, rather than the request's own ``limit``, may have cut a GET list."""
        return found >= self.max_limit and (filter.limit is None or filter.limit > self.max_limit)

    def _capped(self, filter: Filter, detail: Detail, names: bool = False) -> tuple[Filter, int]:
        """A POST or DELETE list's filter with ``limit`` capped to fit the response budget.

        Returns the filter and the cap it got, or 0 when the request's own limit fits
        (always at ``detail=none``: nothing is rendered). ``names``: accounts or queues,
        whose items never carry a body.
        """
        if detail is Detail.NONE:
            return filter, 0
        cap = self.body_cap if not names and _with_body(detail) else self.item_cap
        limit = filter.limit
        if limit is not None and limit <= cap:
            return filter, 0
        return filter.with_limit(cap), cap

    # one message
    async def get_message(self, request: Request, account: str, queue: str, message: str) -> Response:
        detail = self._params(request, ONE_MESSAGE).detail(Detail.ALL)
        found = await self.engine.get_message(account, queue, message)
        return self._one(found, detail, account, queue, message)

    async def put_message(self, request: Request, account: str, queue: str, message: str) -> Response:
        p = self._params(request, PUT_MESSAGE)
        ttl, hide = p.seconds("ttl"), p.seconds("hide")
        try:
            created = await self.engine.put_message(account, queue, message, request.body, ttl, hide)
        except QuotaExceeded as error:
            return _over_quota(error)
        return CREATED if created else NO_CONTENT

    async def update_message(self, request: Request, account: str, queue: str, message: str) -> Response:
        p = self._params(request, UPDATE_MESSAGE)
        detail, ttl, hide = p.detail(Detail.NONE), p.seconds("ttl"), p.seconds("hide")
        found = await self.engine.update_message(account, queue, message, ttl, hide)
        return self._one(found, detail, account, queue, message)

    async def delete_message(self, request: Request, account: str, queue: str, message: str) -> Response:
        detail = self._params(request, ONE_MESSAGE).detail(Detail.NONE)
        found = await self.engine.delete_message(account, queue, message)
        return self._one(found, detail, account, queue, message)

    def _one(self, found: Message | None, detail: Detail, account: str, queue: str, message: str) -> Response:
        if found is None:
            raise NotFound(f"message {message!r} not found in {_where(account, queue)}")
        return _message(found, detail, self.engine.now())
