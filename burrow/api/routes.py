"""The route table: every path and method Burrow answers, in one place.

Paths are split on ``/`` *before* percent-decoding, so ``%2F`` is an ordinary
character inside a name. ``/v1.0`` paths route by depth (accounts, queues,
messages, message) and method; a known path with an unlisted method is 405,
anything else is 404.

"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import orjson

from burrow.api.v1 import JSON, V1Api
from burrow.core import validation
from burrow.core.errors import BurrowError, MethodNotAllowed, NotFound
from burrow.http.types import Request, Response
from burrow.service import Service

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
_WHAT = ("account", "queue", "message")


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

    async def __call__(self, request: Request) -> Response:
        try:
            return await self._dispatch(request)
        except BurrowError as error:
            return error_response(error)

    async def _dispatch(self, request: Request) -> Response:
        path = request.path
        if path == "/":
            return await _pick(ROOT_ROUTES, request.method)(self.v1, request)
        parts = path.split("/")
        # parts[0] is the empty string before the leading slash.
        if len(parts) < 2 or parts[0] or parts[1] != "v1.0" or len(parts) > 5:
            raise NotFound(f"no such path {path[:200]!r}; the API lives under /v1.0")
        handler = _pick(V1_ROUTES[len(parts) - 2], request.method)
        names = [validation.name(raw, _WHAT[i]) for i, raw in enumerate(parts[2:])]
        return await handler(self.v1, request, *names)


def _pick(
    routes: dict[str, Callable[..., Awaitable[Response]]], method: str
) -> Callable[..., Awaitable[Response]]:
    handler = routes.get(method)
    if handler is None:
        allow = ", ".join(routes)
        raise MethodNotAllowed(f"method {method} is not allowed here; allowed: {allow}", allow)
    return handler
