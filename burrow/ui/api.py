"""Handlers of the dashboard's routes: the page and its assets (public, they carry no data) and
the JSON the page reads (``/ui-api``: behind the same auth as the v1.0 API).

The page writes (send, delete, release, purge) through the ordinary v1.0 API, so the JSON here
is read-only. Everything it returns is bounded (:data:`ACCOUNTS_PAGE`, :data:`OVERVIEW_COUNTED`,
:data:`QUEUES_PAGE_MAX`, :data:`QUEUE_NAMES_MAX`, :data:`MESSAGES_PAGE_MAX`,
:data:`PREVIEW_CHARS`; docs/operations.md "Dashboard"), so a page left open on a big server
costs the store a fixed amount of work per refresh.
"""

from __future__ import annotations

import asyncio
import base64
import codecs
import hashlib
import time
from importlib import resources
from typing import Any
from urllib.parse import unquote_plus

import orjson

from burrow.core import validation
from burrow.core.errors import BadRequest, Forbidden, NotFound
from burrow.core.model import Counts, Filter, Message, remaining
from burrow.engine import Engine
from burrow.http.types import Request, Response
from burrow.sqs.params import Caller
from burrow.sqs.queue_actions import queue_attributes
from burrow.sqs.service import SqsService

#: Accounts the overview lists per page (continue with ``marker``).
ACCOUNTS_PAGE = 50
#: Queues one overview counts in all, shared out evenly among the accounts it lists, and at
#: most this many of one account: totals are of each account's first queues, and an account
#: with more says so (``more_queues``).
OVERVIEW_COUNTED, ACCOUNT_QUEUES_COUNTED = 500, 100
#: Queues an account page lists (``limit``, default :data:`QUEUES_PAGE`).
QUEUES_PAGE, QUEUES_PAGE_MAX = 50, 100
#: Queue names an account page sorts and pages through; an account with more is truncated.
QUEUE_NAMES_MAX = 1000
#: Messages a queue page lists (``limit``, default :data:`MESSAGES_PAGE`; 0 = counts only).
MESSAGES_PAGE, MESSAGES_PAGE_MAX = 20, 100
#: Characters of a body's preview; a body that is not UTF-8 is previewed as base64 of its
#: first :data:`PREVIEW_BINARY_BYTES` bytes.
PREVIEW_CHARS = 200
PREVIEW_BINARY_BYTES = 150
_PREVIEW_BYTES = 4 * PREVIEW_CHARS  # enough UTF-8 for PREVIEW_CHARS characters

JSON = "application/json"
#: What every dashboard response says about itself: no sniffing, no referrer.
_COMMON_HEADERS = [("x-content-type-options", "nosniff"), ("referrer-policy", "no-referrer")]
#: The page runs only its own scripts and styles and talks only to this server; nothing may
#: frame it. No inline script or style is allowed, so injected markup cannot run.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
#: Content types of the assets, by file extension.
CONTENT_TYPES = {
    "html": "text/html; charset=utf-8",
    "js": "text/javascript; charset=utf-8",
    "css": "text/css; charset=utf-8",
    "svg": "image/svg+xml",
}
_JSON_HEADERS = [("cache-control", "no-store"), *_COMMON_HEADERS]


class Asset:
    """One static file, served as is: its response, and the 304 for a matching ``If-None-Match``."""

    __slots__ = ("etag", "not_modified", "ok")

    def __init__(self, body: bytes, content_type: str) -> None:
        self.etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
        # no-cache: the browser revalidates each time (one 304), so an upgrade shows at once.
        headers = [
            ("etag", self.etag),
            ("cache-control", "no-cache"),
            ("content-security-policy", CSP),
            *_COMMON_HEADERS,
        ]
        self.ok = Response(200, body, content_type, headers)
        self.not_modified = Response(304, b"", None, headers)

    def answer(self, request: Request) -> Response:
        match = request.headers.get("if-none-match")
        if match is not None and (match.strip() == "*" or self.etag in match.split(",")):
            return self.not_modified
        return self.ok


def load_assets() -> dict[str, Asset]:
    """The files of ``burrow/ui/static`` (package data), by name."""
    assets: dict[str, Asset] = {}
    for entry in resources.files("burrow.ui").joinpath("static").iterdir():
        kind = CONTENT_TYPES.get(entry.name.rsplit(".", 1)[-1])
        if kind is not None and entry.is_file():
            assets[entry.name] = Asset(entry.read_bytes(), kind)
    if "index.html" not in assets:
        raise RuntimeError("burrow/ui/static/index.html is missing: burrow was installed without its data")
    return assets


def _json(data: object) -> Response:
    return Response(200, orjson.dumps(data), JSON, _JSON_HEADERS)


def _query(request: Request, allowed: frozenset[str]) -> dict[str, str]:
    """The query string, decoded; an unknown or repeated parameter is a 400 naming it."""
    values: dict[str, str] = {}
    for part in request.query.split("&") if request.query else ():
        if not part:
            continue
        key, _, value = part.partition("=")
        try:
            key, value = unquote_plus(key, errors="strict"), unquote_plus(value, errors="strict")
        except UnicodeDecodeError:
            raise BadRequest("the query string is not valid UTF-8") from None
        if key not in allowed:
            raise BadRequest(f"unknown parameter {key[:40]!r} here; allowed: {', '.join(sorted(allowed))}")
        if key in values:
            raise BadRequest(f"parameter {key!r} given more than once")
        values[key] = value
    return values


def _marker(values: dict[str, str]) -> str | None:
    marker = values.get("marker") or None
    if marker is not None and len(marker.encode("utf-8")) > validation.MAX_NAME_BYTES:
        raise BadRequest(f"marker is longer than {validation.MAX_NAME_BYTES} bytes")
    return marker


def _limit(values: dict[str, str], default: int, minimum: int, maximum: int) -> int:
    raw = values.get("limit")
    return default if raw is None else validation.integer(raw, "limit", minimum, maximum)


def _counts(c: Counts) -> dict[str, int]:
    return {"visible": c.visible, "in_flight": c.in_flight, "delayed": c.delayed}


def _preview(body: bytes) -> dict[str, object]:
    """The first :data:`PREVIEW_CHARS` characters of a UTF-8 body, or base64 of a binary one's start."""
    head = body[:_PREVIEW_BYTES]
    try:
        # Not final unless the whole body is here: a character cut at the end is not an error.
        text = codecs.getincrementaldecoder("utf-8")().decode(head, final=len(head) == len(body))
    except UnicodeDecodeError:
        shown = body[:PREVIEW_BINARY_BYTES]
        return {
            "body": base64.b64encode(shown).decode("ascii"),
            "body_encoding": "base64",
            "body_cut": len(shown) < len(body),
        }
    return {"body": text[:PREVIEW_CHARS], "body_cut": len(text) > PREVIEW_CHARS or len(head) < len(body)}


def _message(m: Message, now: float) -> dict[str, object]:
    return {
        "id": m.id,
        "ttl": remaining(m.expires, now),
        "hide": remaining(m.hidden_until, now),
        "receives": m.receives,
        "bytes": len(m.body),
        **_preview(m.body),
    }


class UiApi:
    """Handlers of the ``ui`` routes of :mod:`burrow.api.routes`."""

    def __init__(self, engine: Engine, sqs: SqsService) -> None:
        self.engine = engine
        self.sqs = sqs
        self.assets = load_assets()
        self._page = self.assets["index.html"]

    # -- the page and its files (public: they carry no data) --------------------------
    async def dashboard(self, request: Request) -> Response:
        return self._page.answer(request)

    async def dashboard_asset(self, request: Request, asset: str) -> Response:
        found = self.assets.get(asset)
        if found is None:
            raise NotFound(f"no dashboard file {asset[:60]!r}")
        return found.answer(request)

    # -- JSON for the page --------------------------------------------------------------
    async def dashboard_overview(self, request: Request) -> Response:
        """Accounts the caller may see with their queue totals; server-wide message counters
        (the page turns them into rates) only for an admin, or with auth off."""
        values = _query(request, frozenset({"marker"}))
        grant = request.grant
        engine = self.engine
        if grant is None or grant.account is None:
            accounts = await engine.list_accounts(Filter(ACCOUNTS_PAGE + 1, _marker(values), False))
            more = len(accounts) > ACCOUNTS_PAGE
            accounts = accounts[:ACCOUNTS_PAGE]
        else:
            accounts, more = [grant.account], False
        # Each account's first queues, OVERVIEW_COUNTED shared out (ACCOUNT_QUEUES_COUNTED at most).
        share = min(ACCOUNT_QUEUES_COUNTED, OVERVIEW_COUNTED // max(1, len(accounts)))
        rows = await asyncio.gather(*(self._account_totals(a, share) for a in accounts))
        messages: dict[str, int] | None = None
        counters = engine.counts
        if counters is not None and (grant is None or grant.account is None):
            messages = {
                "sent": counters.sent,
                "delivered": counters.delivered,
                "deleted": counters.deleted,
                "dead_lettered": counters.dead_lettered,
            }
        return _json(
            {
                "who": _who(request),
                "accounts": rows,
                "next_marker": accounts[-1] if more else None,
                "messages": messages,
                # Monotonic seconds: the page divides counter changes by its changes.
                "sampled_at": time.monotonic(),
            }
        )

    async def _account_totals(self, account: str, counted: int) -> dict[str, Any]:
        """One overview row: the account's first ``counted`` queues counted and summed."""
        engine = self.engine
        queues = await engine.list_queues(account, Filter(counted + 1, None, False))
        counts = await asyncio.gather(*(engine.count(account, q) for q in queues[:counted]))
        return {
            "name": account,
            "queues": min(len(queues), counted),
            # More queues than were counted: the totals are of the first ``queues`` only.
            "more_queues": len(queues) > counted,
            "visible": sum(c.visible for c in counts),
            "in_flight": sum(c.in_flight for c in counts),
            "delayed": sum(c.delayed for c in counts),
        }

    async def dashboard_account(self, request: Request, account: str) -> Response:
        """A page of the account's queues (v1.0 queues and SQS queues, empty ones too), by name,
        with their counts."""
        _check_account(request, account)
        values = _query(request, frozenset({"marker", "limit"}))
        marker, limit = _marker(values), _limit(values, QUEUES_PAGE, 1, QUEUES_PAGE_MAX)
        names, truncated = await self._queue_names(account)
        sqs = {q.name: q for q in await self.sqs.queues.all(account)}
        ordered = sorted(names | sqs.keys())
        if marker is not None:
            ordered = [n for n in ordered if n > marker]
        page = ordered[:limit]
        counts = await asyncio.gather(*(self.engine.count(account, q) for q in page))
        queues = []
        for name, c in zip(page, counts, strict=True):
            found = sqs.get(name)
            row: dict[str, object] = {"name": name, **_counts(c), "sqs": found is not None}
            if found is not None:
                row["fifo"] = found.fifo
            queues.append(row)
        return _json(
            {
                "who": _who(request),
                "account": account,
                "queues": queues,
                "next_marker": page[-1] if len(ordered) > limit else None,
                "truncated": truncated,
                "sampled_at": time.monotonic(),
            }
        )

    async def _queue_names(self, account: str) -> tuple[set[str], bool]:
        """Up to :data:`QUEUE_NAMES_MAX` names of the account's queues holding messages; and
        whether there may be more."""
        engine = self.engine
        names: set[str] = set()
        step = max(1, min(engine.settings.max_limit, QUEUE_NAMES_MAX))
        marker: str | None = None
        while len(names) < QUEUE_NAMES_MAX:
            size = min(step, QUEUE_NAMES_MAX - len(names))
            found = await engine.list_queues(account, Filter(size, marker, False))
            names.update(found)
            if len(found) < size:
                return names, False
            marker = found[-1]
        return names, True

    async def dashboard_queue(self, request: Request, account: str, queue: str) -> Response:
        """The queue's counts, its SQS attributes (when it is an SQS queue) and a page of its
        messages, hidden ones included, with their receive counts and a body preview."""
        _check_account(request, account)
        values = _query(request, frozenset({"marker", "limit"}))
        marker, limit = _marker(values), _limit(values, MESSAGES_PAGE, 0, MESSAGES_PAGE_MAX)
        engine = self.engine
        counts = await engine.count(account, queue)
        attributes: dict[str, str] | None = None
        found = await self.sqs.queues.find(account, queue)
        if found is not None:
            caller = Caller(account, engine.settings.region, request.headers.get("host", ""))
            attributes = await queue_attributes(self.sqs, caller, found, ["All"])
        messages: list[dict[str, object]] = []
        next_marker: str | None = None
        if limit:
            # One more than the page tells whether another page follows (max_limit may cap it).
            listed = await engine.get_messages(account, queue, Filter(limit + 1, marker, True))
            more = len(listed) >= min(limit + 1, engine.settings.max_limit)
            listed = listed[:limit]
            now = engine.now()
            messages = [_message(m, now) for m in listed]
            next_marker = listed[-1].id if more and listed else None
        return _json(
            {
                "who": _who(request),
                "account": account,
                "queue": queue,
                "counts": _counts(counts),
                "sqs": attributes,
                "fifo": found.fifo if found is not None else False,
                "messages": messages,
                "next_marker": next_marker,
                "sampled_at": time.monotonic(),
            }
        )


def _who(request: Request) -> dict[str, object]:
    """What the caller may do, for the page to show or hide its controls."""
    grant = request.grant
    if grant is None:
        return {"auth": False, "admin": True, "account": None, "write": True}
    return {"auth": True, "admin": grant.account is None, "account": grant.account, "write": grant.write}


def _check_account(request: Request, account: str) -> None:
    """Refuse another account's data (the route's access check does too; this keeps it so)."""
    grant = request.grant
    if grant is not None and grant.account is not None and grant.account != account:
        raise Forbidden("this credential is for another account")
