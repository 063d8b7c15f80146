"""The route table: every path and method Burrow answers, in one place (:data:`ROUTES`).

Paths are split on ``/`` *before* percent-decoding, so ``%2F`` is an ordinary
character inside a name. Matching, in one dict lookup or two (this runs on every request):

* A template is an optional literal first segment (``""`` for ``/``, ``v1.0``, ``health``,
  ``metrics``) followed by up to 3 ``{name}`` parameters; only the first segment is ever
  compared as a literal.
* A path matches the route whose template has as many segments and the same first
  segment, or else the one with as many segments whose first segment is a parameter.
  So a literal first segment shadows the parameter routes for paths of its length:
  ``/health/{check}`` takes ``/health/x`` from ``/{account}/{queue}`` (which is why it
  accepts SQS requests too, exactly as a queue URL does).
* Parameters are validated names (:func:`burrow.core.validation.name`). A matched path
  with an unlisted method is 405 (with ``Allow``); a path no route matches, or one with
  no burrow v1.0 methods, is 404.

Routes of ``api=OPS_API`` (health probes, metrics, the OpenAPI document) are not queue API
routes: their handlers are :class:`burrow.api.ops.OpsApi`'s. What authentication asks of a
request on each route is the route's ``access`` (see :class:`Route`): probes carry no
credentials, so ``/health/*`` is public. With auth on (:class:`burrow.auth.Guard`), a
burrow v1.0 request is checked before its handler runs (401 before 405, and before the 404
of a path no route matches) and carries its :class:`~burrow.auth.Grant` in ``request.grant``;
SQS requests are checked by their front ends (:class:`burrow.api.sqs_auth.Authenticator`).

SQS requests go only to the routes marked ``sqs`` (``/`` and the queue URL paths
``/{account}/{queue}``, paths where v1.0 has no use for these methods) and are told
apart there by one rule (:func:`sqs_markers`):

* ``POST`` with an ``X-Amz-Target`` header -> SQS JSON 1.0;
* ``POST`` with a form (``application/x-www-form-urlencoded``) body, or ``GET`` with
  ``Action=`` in the query string -> SQS query/XML.

Everything else, including every path under ``/v1.0``, routes as burrow v1.0.

Every answered request is counted (:class:`burrow.metrics.Metrics`, by API, operation and
status) here, or by the SQS front ends for theirs, unless ``--metrics off``.
"""

from __future__ import annotations

import asyncio
import logging
from bisect import bisect_left
from collections.abc import Awaitable, Callable
from time import perf_counter
from typing import NoReturn

import orjson

from burrow.accesslog import AccessLog
from burrow.api.ops import OpsApi
from burrow.api.sqs_auth import Authenticator
from burrow.api.sqs_json import SqsJsonApi
from burrow.api.sqs_query import SqsQueryApi
from burrow.api.v1 import JSON, V1Api
from burrow.auth.guard import CHALLENGE, Guard
from burrow.core import validation
from burrow.core.errors import BurrowError, MethodNotAllowed, NotFound, Unauthorized
from burrow.engine import Engine
from burrow.http.types import Request, Response
from burrow.metrics import (
    CANCELLED,
    FAILED,
    LATENCY_BOUNDS,
    OPS,
    UNMATCHED,
    V1,
    Metrics,
    OpStats,
    ServerGauges,
)
from burrow.sqs.service import SqsService
from burrow.ui.api import UiApi

log = logging.getLogger("burrow.api")

#: App._observing: requests are counted (inline), or observed by Metrics.observe.
COUNT, OBSERVE = 1, 2

V1Handler = Callable[..., Awaitable[Response]]

#: Route.api: whose handlers a route's are (App holds one object of each).
V1_API, OPS_API = "v1", "ops"
#: The web dashboard (burrow.ui.api.UiApi): its page and assets, and the JSON the page reads.
UI_API = "ui"
#: Route.access values (see Route).
ACCESS = ("public", "admin", "account", "any")


class Route:
    """One path template of the table: its handlers by method, whether SQS requests may arrive
    on it, which front end's handlers they are (``api``), and who may call it (``access``).
    Only the first segment may be a literal; the others are parameters, passed (validated) to
    the handler in order.

    ``access``, what authentication asks of a request here when it is on:

    * ``"public"``: nothing (probes, the OpenAPI document, the dashboard's static files);
    * ``"admin"``: a server-wide admin token (listing or deleting accounts, ``/metrics``);
    * ``"account"``: a credential of the account the path names (read-only ones only for
      ``GET``); the default for templates with an ``{account}`` parameter;
    * ``"any"``: any valid credential; the default for the rest.
    """

    __slots__ = ("access", "api", "first", "methods", "ops", "params", "sqs", "template")

    def __init__(
        self,
        template: str,
        methods: dict[str, V1Handler],
        *,
        sqs: bool = False,
        api: str = V1_API,
        access: str | None = None,
    ) -> None:
        segments = template.split("/")[1:]  # "/" is one empty literal segment
        literal = not segments[0].startswith("{")
        params = segments[1:] if literal else segments
        if not all(p.startswith("{") and p.endswith("}") for p in params) or len(params) > 3:
            raise ValueError(f"route {template!r}: up to 3 parameters, after an optional literal first")
        self.template = template
        self.methods = methods
        self.sqs = sqs
        self.api = api
        #: An operations route (health, metrics, OpenAPI): not part of the queue API.
        self.ops = api == OPS_API
        #: Parameter names, which are also what validation calls them ("account", ...).
        self.params = tuple(p[1:-1] for p in params)
        if access is None:
            access = "account" if "account" in self.params else "any"
        if access not in ACCESS:
            raise ValueError(f"route {template!r}: access must be one of {', '.join(ACCESS)}")
        self.access = access
        #: The literal first segment, or None for a parameter.
        self.first = segments[0] if literal else None


#: Every path Burrow answers.
ROUTES: tuple[Route, ...] = (
    # public: the version list names no tenant, and it is the router's health check
    Route("/", {"GET": V1Api.versions}, sqs=True, access="public"),
    Route("/v1.0", {"GET": V1Api.list_accounts, "DELETE": V1Api.delete_accounts}, access="admin"),
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
    # Operations: outside the queue API, and outside any authentication.
    # sqs: /health/{check} shadows queue URLs of its length, so it must accept SQS requests too
    Route("/health/{check}", {"GET": OpsApi.health}, sqs=True, api=OPS_API, access="public"),
    Route("/metrics", {"GET": OpsApi.metrics}, api=OPS_API, access="admin"),
    Route("/backup", {"POST": OpsApi.backup}, api=OPS_API, access="admin"),
    Route("/openapi.json", {"GET": OpsApi.openapi}, api=OPS_API, access="public"),
    # The dashboard (docs/operations.md "Dashboard"): the page and its files carry no data;
    # its JSON is read with the caller's credential. sqs: /ui/{asset} and /ui-api/{account}
    # shadow queue URLs of their length.
    Route("/ui", {"GET": UiApi.dashboard}, api=UI_API, access="public"),
    Route("/ui/{asset}", {"GET": UiApi.dashboard_asset}, sqs=True, api=UI_API, access="public"),
    Route("/ui-api", {"GET": UiApi.dashboard_overview}, api=UI_API),
    Route("/ui-api/{account}", {"GET": UiApi.dashboard_account}, sqs=True, api=UI_API),
    Route("/ui-api/{account}/{queue}", {"GET": UiApi.dashboard_queue}, api=UI_API),
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


def operation_name(handler: V1Handler) -> str:
    """A handler's operation (its metrics label and OpenAPI operationId): the method's name.
    ``__name__`` alone would not do: a compiled method's is qualified (``V1Api.put_message``)."""
    return handler.__name__.rpartition(".")[2]


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
    if isinstance(error, Unauthorized):
        return Response(error.status, body, JSON, [CHALLENGE])
    return Response(error.status, body, JSON)


class App:
    """The request handler the HTTP layer calls: route, run, map errors to statuses, count."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        settings = engine.settings
        #: Opened here, so a path that cannot be written fails the start (OSError).
        access_log = AccessLog(settings.access_log) if settings.access_log else None
        self.metrics = metrics = Metrics(engine, access_log)
        if access_log is not None:
            engine.on_stop(access_log.aclose)
        metrics.hook_storage()
        self.v1 = V1Api(engine)
        self.ops = OpsApi(engine, metrics)
        #: The handler objects of Route.api names other than v1's.
        self._apis: dict[str, object] = {OPS_API: self.ops}
        #: The credentials check; None when auth is off (then a request costs one ``is None``).
        #: Loading them sets the engine's quotas (CredentialsError for a file that cannot be used).
        self.guard = Guard.from_settings(settings, engine.set_quotas)
        sqs, auth = SqsService(engine), Authenticator(settings, self.guard)
        self.sqs_json = SqsJsonApi(sqs, auth, metrics)
        self.sqs_query = SqsQueryApi(sqs, auth, metrics)
        self._apis[UI_API] = UiApi(engine, sqs)  # shares the SQS queue registry (its cache)
        #: Each handler's counters (None: no handler matched), made now so that a request
        #: only looks them up.
        self._stats: dict[V1Handler | None, OpStats] = {
            handler: metrics.op(V1 if route.api == V1_API else OPS, operation_name(handler))
            for route in ROUTES
            for handler in route.methods.values()
        }
        self._stats[None] = metrics.op(V1, UNMATCHED)
        #: What a request costs: 0 nothing (--metrics off, no access log), COUNT only the
        #: counting (inlined in __call__), OBSERVE metrics.observe (the access log is on).
        self._observing = 0 if not metrics.observing else COUNT if access_log is None else OBSERVE
        self._observe = metrics.observe

    def serving(self, server: ServerGauges) -> None:
        """Tell the App which HTTP server carries it (its connections and in-flight bytes are gauges)."""
        self.metrics.server = server

    async def __call__(self, request: Request) -> Response:
        # Routing runs inline here rather than in a separate ``_dispatch`` coroutine: every
        # coroutine frame costs on each request (this is the hot path of the whole server).
        observing = self._observing
        started = perf_counter() if observing else 0.0
        handler: V1Handler | None = None
        try:
            # route_for(), inlined (a call and a tuple less per request)
            parts = request.path.split("/")
            n = len(parts)
            route = None if n < 2 or parts[0] else _BY_FIRST.get((n, parts[1])) or _BY_PARTS.get(n)
            if route is None:
                if self.guard is not None:  # 401 before 404: no path is learned without a credential
                    self.guard.grant(request)
                raise NotFound(f"no such path {request.path[:200]!r}; the API lives under /v1.0")
            if route.sqs:
                protocol = sqs_markers(request)
                if protocol is not None:  # the SQS front ends count their requests by action
                    return await (self.sqs_json if protocol == "json" else self.sqs_query)(request)
            handler = route.methods.get(request.method)
            if self.guard is not None:
                request.grant = self.guard.check(request, route, parts)
            if handler is None:
                _pick(route, request)
            api = self.v1 if route.api == V1_API else self._apis[route.api]
            params = route.params
            if not params:
                response = await handler(api, request)
            else:
                name = validation.name
                at = 2 if route.first is not None else 1  # where the parameters start in parts
                if len(params) == 3:
                    response = await handler(
                        api,
                        request,
                        name(parts[at], params[0]),
                        name(parts[at + 1], params[1]),
                        name(parts[at + 2], params[2]),
                    )
                elif len(params) == 2:
                    response = await handler(
                        api, request, name(parts[at], params[0]), name(parts[at + 1], params[1])
                    )
                else:
                    response = await handler(api, request, name(parts[at], params[0]))
        except BurrowError as error:
            response = error_response(error)
        except asyncio.CancelledError:  # the client went away (a long poll, mostly)
            if observing:
                self._observe(self._stats[handler], request, CANCELLED, started)
            raise
        except Exception:  # the HTTP layer logs it and answers 500
            if observing:
                self._observe(self._stats[handler], request, FAILED, started)
            raise
        if observing == COUNT:
            # Metrics.observe's counting and latency_bucket(), inlined: this is most of what
            # counting costs a request (--metrics off skips it; docs/operations.md "Metrics").
            seconds = perf_counter() - started
            stats = self._stats[handler]
            stats.by_status[response.status][
                0 if seconds <= 0.0001
                else 1 if seconds <= 0.00025
                else 2 if seconds <= 0.0005
                else 3 if seconds <= 0.001
                else bisect_left(LATENCY_BOUNDS, seconds)
            ] += 1  # fmt: skip
            stats.total += seconds
        elif observing:
            self._observe(self._stats[handler], request, response, started)
        return response


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
