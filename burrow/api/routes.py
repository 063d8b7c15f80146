"""The route table: every path and method Burrow answers, in one place (:data:`ROUTES`).

Paths are split on ``/`` *before* percent-decoding, so ``%2F`` is an ordinary
character inside a name. A path matches the route whose template has as many segments
and the same first segment (a literal: ``""`` for ``/``, ``v1.0``), or else the one whose
first segment is a ``{name}`` parameter; parameters are validated names
(:func:`burrow.core.validation.name`). A matched path with an unlisted method is 405
(with ``Allow``); a path no route matches, or one with no burrow v1.0 methods, is 404.

SQS requests go only to the routes marked ``sqs`` (``/`` and the queue URL paths
``/{account}/{queue}``, paths where v1.0 has no use for these methods) and are told
apart there by one rule (:func:`sqs_markers`):

* ``POST`` with an ``X-Amz-Target`` header -> SQS JSON 1.0;
* ``POST`` with a form (``application/x-www-form-urlencoded``) body, or ``GET`` with
  ``Action=`` in the query string -> SQS query/XML.

Everything else, including every path under ``/v1.0``, routes as burrow v1.0.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import NoReturn

import orjson

from burrow.api.sqs_auth import Authenticator
from burrow.api.sqs_json import SqsJsonApi
from burrow.api.sqs_query import SqsQueryApi
from burrow.api.v1 import JSON, V1Api
from burrow.core import validation
from burrow.core.errors import BurrowError, MethodNotAllowed, NotFound
from burrow.engine import Engine
from burrow.http.types import Request, Response
from burrow.sqs.service import SqsService

log = logging.getLogger("burrow.api")

V1Handler = Callable[..., Awaitable[Response]]


class Route:
    """One path template of the table: its burrow v1.0 handlers by method, and whether SQS
    requests may arrive on it. Only the first segment may be a literal; the others are
    parameters, passed (validated) to the handler in order."""

    __slots__ = ("first", "methods", "params", "sqs", "template")

    def __init__(self, template: str, methods: dict[str, V1Handler], *, sqs: bool = False) -> None:
        segments = template.split("/")[1:]  # "/" is one empty literal segment
        literal = not segments[0].startswith("{")
        params = segments[1:] if literal else segments
        if not all(p.startswith("{") and p.endswith("}") for p in params) or len(params) > 3:
            raise ValueError(f"route {template!r}: up to 3 parameters, after an optional literal first")
        self.template = template
        self.methods = methods
        self.sqs = sqs
        #: Parameter names, which are also what validation calls them ("account", ...).
        self.params = tuple(p[1:-1] for p in params)
        #: The literal first segment, or None for a parameter.
        self.first = segments[0] if literal else None


#: Every path Burrow answers.
ROUTES: tuple[Route, ...] = (
    Route("/", {"GET": V1Api.versions}, sqs=True),
    Route("/v1.0", {"GET": V1Api.list_accounts, "DELETE": V1Api.delete_accounts}),
    Route("/v1.0/{account}", {"GET": V1Api.list_queues, "DELETE": V1Api.delete_queues}),
    Route(
        "/v1.0/{account}/{queue}",
        {"GET": V1Api.get_messages, "POST": V1Api.update_messages, "DELETE": V1Api.delete_messages},
    ),
    Route(
        "/v1.0/{account}/{queue}/{message}",
        {
            "GET": V1Api.get_message,
            "PUT": V1Api.put_message,
            "POST": V1Api.update_message,
            "DELETE": V1Api.delete_message,
        },
    ),
    Route("/{account}/{queue}", {}, sqs=True),  # SQS queue URLs
)

# The table compiled for lookup by (number of "/"-separated parts, first segment), then by the
# number of parts alone for templates whose first segment is a parameter.
_BY_FIRST: dict[tuple[int, str], Route] = {}
_BY_PARTS: dict[int, Route] = {}
for _route in ROUTES:
    _n = len(_route.params) + (2 if _route.first is not None else 1)
    if _route.first is not None:
        _BY_FIRST[(_n, _route.first)] = _route
    else:
        _BY_PARTS[_n] = _route


def route_for(path: str) -> tuple[Route | None, list[str]]:
    """The route ``path`` matches (None if none), and the path split on ``/``."""
    parts = path.split("/")
    n = len(parts)
    if n < 2 or parts[0]:
        return None, parts
    return _BY_FIRST.get((n, parts[1])) or _BY_PARTS.get(n), parts


def error_response(error: BurrowError) -> Response:
    """The JSON error body of burrow v1.0 Decision 5."""
    body = orjson.dumps({"error": error.code, "message": error.message})
    if isinstance(error, MethodNotAllowed):
        return Response(error.status, body, JSON, [("allow", error.allow)])
    return Response(error.status, body, JSON)


class App:
    """The request handler the HTTP layer calls: route, run, map errors to statuses."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.v1 = V1Api(engine)
        sqs, auth = SqsService(engine), Authenticator(engine.settings)
        self.sqs_json = SqsJsonApi(sqs, auth)
        self.sqs_query = SqsQueryApi(sqs, auth)

    async def __call__(self, request: Request) -> Response:
        # Routing runs inline here rather than in a separate ``_dispatch`` coroutine: every
        # coroutine frame costs on each request (this is the hot path of the whole server).
        try:
            # route_for(), inlined (a call and a tuple less per request)
            parts = request.path.split("/")
            n = len(parts)
            route = None if n < 2 or parts[0] else _BY_FIRST.get((n, parts[1])) or _BY_PARTS.get(n)
            if route is None:
                raise NotFound(f"no such path {request.path[:200]!r}; the API lives under /v1.0")
            if route.sqs:
                protocol = sqs_markers(request)
                if protocol is not None:
                    return await (self.sqs_json if protocol == "json" else self.sqs_query)(request)
            handler = route.methods.get(request.method) or _pick(route, request)
            params = route.params
            if not params:
                return await handler(self.v1, request)
            name = validation.name
            at = 2 if route.first is not None else 1  # where the parameters start in parts
            if len(params) == 3:
                return await handler(
                    self.v1,
                    request,
                    name(parts[at], params[0]),
                    name(parts[at + 1], params[1]),
                    name(parts[at + 2], params[2]),
                )
            if len(params) == 2:
                return await handler(
                    self.v1, request, name(parts[at], params[0]), name(parts[at + 1], params[1])
                )
            return await handler(self.v1, request, name(parts[at], params[0]))
        except BurrowError as error:
            return error_response(error)


def sqs_markers(request: Request) -> str | None:
    """``"json"`` or ``"query"`` if ``request`` is marked as SQS (see the module docstring), else
    None. Its path is not looked at: only routes marked ``sqs`` ask."""
    method = request.method
    if method == "GET":
        query = request.query
        return "query" if query.startswith("Action=") or "&Action=" in query else None
    if method != "POST":
        return None
    if "x-amz-target" in request.headers:
        return "json"
    if request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        return "query"
    return None


def sqs_protocol(request: Request) -> str | None:
    """``"json"`` or ``"query"`` for a request the table sends to SQS, else None."""
    route, _ = route_for(request.path)
    return sqs_markers(request) if route is not None and route.sqs else None


def _pick(route: Route, request: Request) -> NoReturn:
    """The 405 (or, on a path with no v1.0 methods, the 404) for a method ``route`` lacks."""
    if not route.methods:
        raise NotFound(f"no such path {request.path[:200]!r}; the API lives under /v1.0")
    allow = ", ".join(route.methods)
    raise MethodNotAllowed(f"method {request.method} is not allowed here; allowed: {allow}", allow)
