"""The router's request handler: the public API of a server (burrow v1.0 and SQS on one port),
each request sent to the server that holds its queue, or to every server it spans.

* ``/v1.0/{account}/{queue}[/{message}]`` goes to ``server_for(account, queue)`` as it is:
  method, path, query, headers and body, long polls included; the answer comes back as the
  server gave it (status, headers, body byte for byte).
* ``/v1.0/{account}`` (GET, DELETE) spans the account's servers and ``/v1.0`` and ``GET /``
  every server; the answers are merged (:mod:`burrow.router.merge`).
* SQS requests go to the server of the queue they name (:mod:`burrow.router.sqs`);
  ListQueues spans the caller's account's servers.
* Anything else (a 405, a 404, a name the server will refuse) goes to any server that is up:
  it answers exactly as a server does.

A server that is down makes exactly the requests that need it answer 503 (``Retry-After:
1``, the JSON error ``service_unavailable`` or the SQS error ``ServiceUnavailable``), naming
it; nothing is sent elsewhere instead. The router keeps no state but which servers are up.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Final

import orjson

from burrow.api.routes import error_response, route_for, sqs_markers
from burrow.api.sqs_json import json_error
from burrow.api.sqs_query import xml_error
from burrow.api.v1 import JSON
from burrow.client import encode_request
from burrow.config import Settings
from burrow.core.errors import BadRequest, BurrowError, NotFound, ServiceUnavailable
from burrow.core.validation import name
from burrow.hashing import Placement
from burrow.http.types import Request, Response
from burrow.router.merge import Lists, Relay, list_queues, versions
from burrow.router.sqs import sqs_target
from burrow.router.upstream import Unavailable, Upstream
from burrow.sqs.errors import SqsError
from burrow.sqs.model import new_id

__all__ = ["Router", "unavailable"]

log = logging.getLogger("burrow.router")

#: Request headers that belong to one hop (RFC 9110 7.6.1), or that the router sets itself
#: (``content-length``: its own framing of the body it received whole; ``expect``: the router
#: already answered it).
_HOP_BY_HOP: Final = frozenset(
    (
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "expect",
        "content-length",
    )
)
#: Also left out of the requests the router makes up itself (list pages, per-name deletes).
_NOT_ASKED: Final = _HOP_BY_HOP | {"content-type"}
#: Seconds a client is told to wait before retrying a 503.
RETRY_AFTER: Final = "1"
#: Most (account, queue) placements remembered; the memo is emptied when full.
_PLACED_MAX: Final = 65_536
_OK: Final = Response(200, orjson.dumps({"status": "ok"}), JSON)

# What the route table's templates are to the router.
_QUEUE, _ACCOUNT, _ALL, _ROOT = 1, 2, 3, 4
_KINDS: Final = {
    "/v1.0/{account}/{queue}": _QUEUE,
    "/v1.0/{account}/{queue}/{message}": _QUEUE,
    "/v1.0/{account}": _ACCOUNT,
    "/v1.0": _ALL,
    "/": _ROOT,
}


def unavailable(message: str) -> Response:
    """The burrow v1.0 503 of a server the router cannot reach."""
    body = orjson.dumps({"error": ServiceUnavailable.code, "message": message})
    return Response(503, body, JSON, [("retry-after", RETRY_AFTER)])


def _sqs_unavailable(protocol: str, message: str) -> Response:
    error, request_id = SqsError("ServiceUnavailable", message), new_id()
    response = json_error(error, request_id) if protocol == "json" else xml_error(error, request_id)
    return Response(response.status, response.body, response.content_type, [
        *(response.headers or ()),
        ("retry-after", RETRY_AFTER),
    ])  # fmt: skip


class Router:
    """Routes requests over the servers of ``settings.servers`` (see the module docstring).

    ``pool_size``: most connections to one server (default: ``max_connections_per_client``,
    the most a server with the same settings accepts from one address, within
    ``max_connections``). A long poll holds one for its duration; a request finding all of
    them busy is answered 503 at once.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        pool_size: int | None = None,
        health_interval: float = 1.0,
        health_timeout: float = 2.0,
    ) -> None:
        urls = settings.server_urls()
        if not urls:
            raise ValueError("no servers to route to: give --servers http://host:port,...")
        self.settings = settings
        self.placement = Placement(urls, settings.subset_size)
        limit = pool_size or min(settings.max_connections, settings.max_connections_per_client)
        self.upstreams: dict[str, Upstream] = {
            url: Upstream(
                url,
                limit=limit,
                # the longest long poll a server holds, plus the time a busy one may take to answer
                timeout=settings.max_wait + settings.body_timeout,
                connect_timeout=settings.header_timeout,
                idle_timeout=settings.idle_timeout,
                max_response=8 * max(settings.max_response_bytes, settings.max_body_bytes),
                health_interval=health_interval,
                health_timeout=health_timeout,
            )
            for url in self.placement.servers
        }
        #: Every server, in the order merged lists take them (their URLs sorted).
        self.ordered: list[Upstream] = [self.upstreams[url] for url in sorted(self.upstreams)]
        #: The ``Host`` of requests whose client sent none (HTTP/1.0): the router's own address.
        self.host = f"{settings.host}:{settings.port}"
        self.lists = Lists(settings, self.ask)
        #: The server of recently used (account, queue) path segments: placing one hashes.
        self._placed: dict[tuple[str, str], Upstream] = {}

    async def start(self, host: str, port: int) -> None:
        """Start health checks; ``host:port`` is where the router listens."""
        self.host = f"{host}:{port}"
        for upstream in self.ordered:
            upstream.start()

    async def close(self) -> None:
        await asyncio.gather(*(upstream.close() for upstream in self.ordered))

    # -- routing -----------------------------------------------------------------------
    async def __call__(self, request: Request) -> Response:
        route, parts = route_for(request.path)
        kind = _KINDS.get(route.template) if route is not None else None
        if route is not None and route.ops and request.method == "GET" and sqs_markers(request) is None:
            local = self._ops(route.template, parts)
            if local is not None:
                return local
        try:
            if kind == _QUEUE:
                return await self.forward(self._queue_server(parts[2], parts[3]), request)
            if route is not None and route.sqs:
                protocol = sqs_markers(request)
                if protocol is not None:
                    return await self._sqs(request, protocol)
            method = request.method
            if method == "GET" or method == "DELETE":
                if kind == _ACCOUNT:
                    return await self._account(request, parts[2])
                if kind == _ALL:
                    return await self._everything(request)
                if kind == _ROOT and method == "GET":
                    return await versions(self.forward, request, self.ordered)
            return await self.forward(self._any(), request)
        except Unavailable as error:
            return unavailable(error.message)
        except Relay as relay:
            return relay.response
        except BurrowError as error:
            return error_response(error)

    def _ops(self, template: str, parts: list[str]) -> Response | None:
        """The router's own probes and metrics (None: forward, as for ``/openapi.json``).

        ``/health/live``: the router runs. ``/health/ready``: every server passed its last
        health check (a server that is down makes its queues fail, so the router is not ready
        as a whole; the 503 names the servers). ``/metrics``: the router counts nothing; each
        server is scraped directly.
        """
        if template == "/metrics":
            return error_response(NotFound("the router keeps no metrics: scrape each server's /metrics"))
        if template != "/health/{check}" or parts[2] not in ("live", "ready"):
            return None
        down = [f"{u.url} ({u.reason})" for u in self.ordered if not u.up]
        if parts[2] == "live" or not down:
            return _OK
        return unavailable("not ready: servers down: " + ", ".join(down))

    def _queue_server(self, raw_account: str, raw_queue: str) -> Upstream:
        key = (raw_account, raw_queue)
        upstream = self._placed.get(key)
        if upstream is None:
            try:
                account, queue = name(raw_account, "account"), name(raw_queue, "queue")
            except BadRequest:
                return self._any()  # any server answers the 400 the name deserves
            upstream = self.upstreams[self.placement.server_for(account, queue)]
            if len(self._placed) >= _PLACED_MAX:
                self._placed.clear()
            self._placed[key] = upstream
        return upstream

    def _account_servers(self, account: str) -> list[Upstream]:
        """The servers of an account's subset, in merge order: the order of its slots (which
        depends on the server URLs only, as ``burrow.Client`` merges too)."""
        return [self.upstreams[url] for url in self.placement.account_servers(account)]

    def _any(self) -> Upstream:
        """A server that is up, for requests no queue ties to one (their answer is the same anywhere)."""
        for upstream in self.ordered:
            if upstream.up:
                return upstream
        raise Unavailable("no server is up: " + "; ".join(f"{u.url} ({u.reason})" for u in self.ordered))

    async def _account(self, request: Request, raw: str) -> Response:
        account = name(raw, "account")
        servers = self._account_servers(account)
        prefix = "/v1.0/" + raw
        what = f"queues in account {account!r}"
        if request.method == "GET":
            return await self.lists.get(request, servers, prefix, what)
        return await self.lists.delete(request, servers, prefix, what, holders=None)

    async def _everything(self, request: Request) -> Response:
        if request.method == "GET":
            return await self.lists.get(request, self.ordered, "/v1.0", "accounts")
        return await self.lists.delete(request, self.ordered, "/v1.0", "accounts", self._account_servers)

    async def _sqs(self, request: Request, protocol: str) -> Response:
        target = sqs_target(request, protocol, self.settings.sqs_default_account)
        try:
            if target.action == "ListQueues":
                servers = self._account_servers(target.account)
                return await list_queues(self.forward, request, servers, protocol, target.params)
            if target.queue is None:
                return await self.forward(self._any(), request)
            return await self.forward(self.upstreams[self.placement.server_for(*target.queue)], request)
        except Unavailable as error:
            return _sqs_unavailable(protocol, error.message)

    # -- sending ---------------------------------------------------------------------------
    def forward(self, upstream: Upstream, request: Request) -> Awaitable[Response]:
        """``request`` as it came (method, target, headers, body) to ``upstream``; its answer as
        given (``await forward(...)``: a plain function, to spare a coroutine frame per request)."""
        target = f"{request.path}?{request.query}" if request.query else request.path
        data = self._encode(request.method, target, request.body, request, _HOP_BY_HOP)
        return upstream.send(data, request.method == "HEAD")

    def _encode(self, method: str, target: str, body: bytes, request: Request, skip: frozenset[str]) -> bytes:
        headers = request.headers
        if "connection" in headers:  # the headers it names belong to this hop too
            skip = skip | {t.strip().lower() for t in headers["connection"].split(",")}
        fields = [(k, v) for k, v in headers.items() if k not in skip]
        return encode_request(method, target, body, fields, host=None if "host" in headers else self.host)

    async def ask(self, upstream: Upstream, method: str, target: str, request: Request) -> Response:
        """A request the router makes up (a list page, a delete), with the client's headers."""
        return await upstream.send(self._encode(method, target, b"", request, _NOT_ASKED), method == "HEAD")
