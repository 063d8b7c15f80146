"""The route table: every path and method Burrow answers, in one place.

Paths are split on ``/`` *before* percent-decoding, so ``%2F`` is an ordinary
character inside a name. ``/v1.0`` paths route by depth (accounts, queues,
messages, message) and method; a known path with an unlisted method is 405,
anything else is 404.

SQS requests are told apart before that, by one rule (:func:`sqs_protocol`), on
paths v1.0 never uses for these methods (``POST /`` is 405 in v1.0, and v1.0 has no
two-segment paths outside ``/v1.0``):

* ``POST`` on ``/`` or on a queue URL path ``/{account}/{queue}`` with an
  ``X-Amz-Target`` header -> SQS JSON 1.0;
* ``POST`` there with a form (``application/x-www-form-urlencoded``) body, or ``GET``
  there with ``Action=`` in the query string -> SQS query/XML.

Everything else, including every path under ``/v1.0``, routes as burrow v1.0.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import orjson

from burrow.api.sqs_auth import Authenticator
from burrow.api.sqs_json import SqsJsonApi
from burrow.api.sqs_query import SqsQueryApi
from burrow.api.v1 import JSON, V1Api
from burrow.core import validation
from burrow.core.errors import BurrowError, MethodNotAllowed, NotFound
from burrow.http.types import Request, Response
from burrow.service import Service
from burrow.sqs.service import SqsService

log = logging.getLogger("burrow.api")

V1Handler = Callable[..., Awaitable[Response]]

#: depth below /v1.0 -> method -> handler. Depth 0 is the account list, 1 an account's
#: queues, 2 a queue's messages, 3 one message.
V1_ROUTES: dict[int, dict[str, Callable[..., Awaitable[Response]]]] = {
    0: {"GET": V1Api.list_accounts, "DELETE": V1Api.delete_accounts},
    1: {"GET": V1Api.list_queues, "DELETE": V1Api.delete_queues},
    2: {"GET": V1Api.get_messages, "POST": V1Api.update_messages, "DELETE": V1Api.delete_messages},
    3: {
        "GET": V1Api.get_message,
        "PUT": V1Api.put_message,
        "POST": V1Api.update_message,
        "DELETE": V1Api.delete_message,
    },
}
ROOT_ROUTES: dict[str, Callable[..., Awaitable[Response]]] = {"GET": V1Api.versions}


def error_response(error: BurrowError) -> Response:
    """The JSON error body of burrow v1.0 Decision 5."""
    body = orjson.dumps({"error": error.code, "message": error.message})
    if isinstance(error, MethodNotAllowed):
        return Response(error.status, body, JSON, [("allow", error.allow)])
    return Response(error.status, body, JSON)


class App:
    """The request handler the HTTP layer calls: route, run, map errors to statuses."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.v1 = V1Api(service)
        sqs, auth = SqsService(service), Authenticator(service.settings)
        self.sqs_json = SqsJsonApi(sqs, auth)
        self.sqs_query = SqsQueryApi(sqs, auth)

    async def __call__(self, request: Request) -> Response:
        # Routing runs inline here rather than in a separate ``_dispatch`` coroutine: every
        # coroutine frame costs on each request (this is the hot path of the whole server).
        try:
            path = request.path
            # No path under /v1.0/ is SQS (see sqs_protocol), so those skip that check.
            if not path.startswith("/v1.0/"):
                protocol = sqs_protocol(request)
                if protocol is not None:
                    return await (self.sqs_json if protocol == "json" else self.sqs_query)(request)
                if path == "/":
                    root = ROOT_ROUTES.get(request.method) or _pick(ROOT_ROUTES, request.method)
                    return await root(self.v1, request)
            parts = path.split("/")
            # parts[0] is the empty string before the leading slash.
            n = len(parts)
            if n < 2 or parts[0] or parts[1] != "v1.0" or n > 5:
                raise NotFound(f"no such path {path[:200]!r}; the API lives under /v1.0")
            routes = V1_ROUTES[n - 2]
            handler = routes.get(request.method) or _pick(routes, request.method)
            name = validation.name
            if n == 5:
                return await handler(
                    self.v1,
                    request,
                    name(parts[2], "account"),
                    name(parts[3], "queue"),
                    name(parts[4], "message"),
                )
            if n == 4:
                return await handler(self.v1, request, name(parts[2], "account"), name(parts[3], "queue"))
            if n == 3:
                return await handler(self.v1, request, name(parts[2], "account"))
            return await handler(self.v1, request)
        except BurrowError as error:
            return error_response(error)


def sqs_protocol(request: Request) -> str | None:
    """``"json"`` or ``"query"`` for an SQS request (see the module docstring), else None."""
    method, path = request.method, request.path
    if method not in ("POST", "GET") or (path != "/" and (path.count("/") != 2 or path.startswith("/v1.0/"))):
        return None
    if method == "GET":
        query = request.query
        return "query" if query.startswith("Action=") or "&Action=" in query else None
    if "x-amz-target" in request.headers:
        return "json"
    if request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        return "query"
    return None


def _pick(
    routes: dict[str, Callable[..., Awaitable[Response]]], method: str
) -> Callable[..., Awaitable[Response]]:
    handler = routes.get(method)
    if handler is None:
        allow = ", ".join(routes)
        raise MethodNotAllowed(f"method {method} is not allowed here; allowed: {allow}", allow)
    return handler
