"""Requests that span servers: asked of each server, answers merged into one.

burrow v1.0 lists of accounts (``/v1.0``, every server) and of one account's queues
(``/v1.0/{account}``, the servers of the account's subset):

* **Order.** The merged list is each server's own list in turn, each server's names in its
  own first-insertion order; a name listed by several servers (an account with queues on
  several) appears once, where it first appears. Servers come in an order that depends on
  their URLs only, so routers side by side list alike whatever order they were given the
  servers in: for accounts, their URLs sorted; for an account's queues, the order of the
  account's slots (:meth:`burrow.hashing.Placement.account_servers`, as ``burrow.Client``
  lists them). First insertion across servers is known to nobody, so it cannot be the order.
* **limit** counts names of the merged list; ``--max-limit`` caps a GET as on a server.
* **marker** is found in the merged list, which is read from its start (a page at a time
  from each server) until it is found: the answer continues after it. A name nobody lists
  means "from the start", as on a server. Reading is bounded (:data:`SCAN_LIMIT` names).
* **GET** asks the servers for ids and renders the answer itself, within
  ``--max-response-bytes`` as a server does (``X-Burrow-Truncated``, ``X-Burrow-Next-Marker``).
* **DELETE** without ``limit`` and ``marker`` is sent to every server as it is, and their
  answers merged (each server's own budget caps its part). With either, the names are
  picked as a GET would pick them, then deleted where they live: a queue run on its server
  by ``marker`` and ``limit``, an account on every server of its subset.

Any server that is down fails the whole request with a 503 naming it (a partial list would
look complete); a DELETE may have been carried out by the other servers by then.

SQS ``ListQueues`` asks every server of the caller's account and merges the answers in name
order, which is the order a server lists in, so ``MaxResults`` and ``NextToken`` (the last
name returned) page exactly as on one server.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final, TypeVar, cast
from urllib.parse import quote
from xml.etree import ElementTree

import orjson

from burrow.api.sqs_json import JSON_10
from burrow.api.sqs_query import NAMESPACE, XML, render
from burrow.api.v1 import JSON, LIST_NAMES, NO_CONTENT, TRUNCATED, Params, _names
from burrow.config import Settings
from burrow.core.errors import BadRequest, NotFound
from burrow.core.model import Detail
from burrow.http.types import Request, Response
from burrow.router.upstream import Unavailable, Upstream
from burrow.sqs.model import new_id

__all__ = ["SCAN_LIMIT", "Lists", "Relay", "list_queues", "versions"]

#: Most names one request reads from the servers while it looks for its marker or picks
#: names to delete (a deep marker in a huge list); past it a GET is a 503 and a DELETE
#: stops there and says it was cut short.
SCAN_LIMIT: Final = 100_000
#: DELETE requests in flight at once while deleting picked accounts one by one.
_DELETE_BATCH: Final = 32

T = TypeVar("T")

#: Sends a request (method, target, the client's request for its headers) to a server.
Ask = Callable[[Upstream, str, str, Request], Awaitable[Response]]
#: Sends the client's request as it is to a server.
Forward = Callable[[Upstream, Request], Awaitable[Response]]


class Relay(Exception):
    """A server's answer that is the answer: an error other than "nothing matched"."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status)
        self.response = response


def _check_detail(detail: Detail) -> Detail:
    """As the server: accounts and queues have no attributes or bodies."""
    if detail is Detail.ATTRIBUTES or detail is Detail.BODY:
        raise BadRequest(f"detail={detail.value} is not available for accounts or queues")
    return detail


async def _gather(aws: Sequence[Awaitable[T]]) -> list[T]:
    """Every result, or the first failure once all have finished (none is left running)."""
    results = await asyncio.gather(*aws, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return cast(list[T], results)


def _ok(response: Response) -> Response:
    """``response`` if it is a 2xx or a 404; else it is the answer (:class:`Relay`)."""
    if response.status >= 300 and response.status != 404:
        raise Relay(response)
    return response


def _json(response: Response, upstream: Upstream | None = None) -> Any:
    """The JSON body of a server's 2xx answer (a body that is not JSON makes the request a 503)."""
    try:
        return orjson.loads(response.body)
    except orjson.JSONDecodeError:
        where = f"server {upstream.url}" if upstream is not None else "a server"
        raise Unavailable(f"{where} answered {response.status} with a body that is not JSON") from None


def _header(response: Response, name: str) -> str | None:
    for key, value in response.headers or ():
        if key.lower() == name:
            return value
    return None


class _ServerList:
    """One server's list of names, read a page at a time in its own order."""

    __slots__ = ("done", "marker", "prefix", "upstream")

    def __init__(self, upstream: Upstream, prefix: str) -> None:
        self.upstream = upstream
        self.prefix = prefix
        self.marker: str | None = None
        self.done = False

    async def page(self, ask: Ask, request: Request, size: int) -> list[str]:
        target = f"{self.prefix}?detail=id&limit={size}"
        if self.marker is not None:
            target += "&marker=" + quote(self.marker, safe="")
        response = _ok(await ask(self.upstream, "GET", target, request))
        if response.status == 404:
            self.done = True
            return []
        names = _json(response, self.upstream)
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise Unavailable(f"server {self.upstream.url} answered a list that is not one")
        if not names or (len(names) < size and _header(response, TRUNCATED) is None):
            self.done = True
        if names:
            self.marker = names[-1]
        return names


#: A picked name: the index of the server it was read from, the name, and the name before it
#: in that server's list (None at its start).
Pick = tuple[int, str, str | None]


class Lists:
    """GET and DELETE of account and queue lists across servers (see the module docstring)."""

    def __init__(self, settings: Settings, ask: Ask) -> None:
        self.ask = ask
        self.max_limit = settings.max_limit
        self.max_seconds = settings.max_seconds
        self.budget = settings.max_response_bytes
        #: A DELETE's cap on names returned (as on a server: the budget at 1 KiB a name).
        self.item_cap = max(1, settings.max_response_bytes // 1024)

    async def get(self, request: Request, servers: Sequence[Upstream], prefix: str, what: str) -> Response:
        p = Params(request.query, LIST_NAMES, self.max_seconds)
        detail, filter = _check_detail(p.detail(Detail.ID)), p.filter()
        want = min(filter.limit or self.max_limit, self.max_limit)
        picked, _ = await self._pick(request, servers, prefix, filter.marker, want, get=True)
        cut = len(picked) >= self.max_limit and (filter.limit is None or filter.limit > self.max_limit)
        return _names([name for _, name, _ in picked], detail, what, self.budget, cut)

    async def delete(
        self,
        request: Request,
        servers: Sequence[Upstream],
        prefix: str,
        what: str,
        holders: Callable[[str], Sequence[Upstream]] | None,
    ) -> Response:
        """``holders``: for account lists, the servers that may hold an account (its subset);
        None for queue lists, whose names each live on one server."""
        p = Params(request.query, LIST_NAMES, self.max_seconds)
        detail, filter = _check_detail(p.detail(Detail.NONE)), p.filter()
        if filter.limit is None and filter.marker is None:
            return await self._delete_everywhere(request, servers, prefix, what, detail)
        # As on a server: a DELETE that returns names has its limit capped to fit the budget.
        capped = detail is not Detail.NONE and (filter.limit is None or filter.limit > self.item_cap)
        want = self.item_cap if capped else min(filter.limit or SCAN_LIMIT, SCAN_LIMIT)
        picked, more = await self._pick(request, servers, prefix, filter.marker, want, get=False)
        if holders is None:
            deleted = await self._delete_runs(request, servers, prefix, picked)
        else:
            deleted = await self._delete_each(request, holders, [name for _, name, _ in picked])
        cut = more or len(picked) >= (self.item_cap if capped else SCAN_LIMIT)
        return _names(deleted, detail, what, cut=cut)

    async def _delete_everywhere(
        self, request: Request, servers: Sequence[Upstream], prefix: str, what: str, detail: Detail
    ) -> Response:
        target = f"{prefix}?{request.query}" if request.query else prefix
        responses = [_ok(r) for r in await _gather([self.ask(u, "DELETE", target, request) for u in servers])]
        if detail is Detail.NONE:
            if all(r.status == 404 for r in responses):
                raise NotFound(f"no {what} found")
            return NO_CONTENT
        names: dict[str, None] = {}
        cut = False
        for response in responses:
            if response.status == 200:
                names.update(dict.fromkeys(_decode_names(response, detail)))
                cut = cut or _header(response, TRUNCATED) is not None
        return _names(list(names), detail, what, cut=cut)

    async def _pick(
        self,
        request: Request,
        servers: Sequence[Upstream],
        prefix: str,
        marker: str | None,
        want: int,
        *,
        get: bool,
    ) -> tuple[list[Pick], bool]:
        """The first ``want`` names after ``marker`` in the merged list, and whether reading
        stopped at :data:`SCAN_LIMIT` with more to read."""
        lists = [_ServerList(u, prefix) for u in servers]
        size = self.max_limit if marker is not None else max(1, min(want, self.max_limit))
        pages = await _gather([s.page(self.ask, request, size) for s in lists])
        seen: set[str] = set()
        picked: list[Pick] = []
        before: list[Pick] = []  # what precedes the marker: the answer if it turns out unknown
        found = marker is None
        read = 0
        for index, (server_list, page) in enumerate(zip(lists, pages, strict=True)):
            previous: str | None = None
            while True:
                for name in page:
                    if name not in seen:
                        seen.add(name)
                        pick = (index, name, previous)
                        if found:
                            picked.append(pick)
                            if len(picked) >= want:
                                return picked, False
                        elif name == marker:
                            found = True
                        else:
                            before.append(pick)
                    previous = name
                read += len(page)
                if server_list.done:
                    break
                if read >= SCAN_LIMIT:
                    if get and not found:
                        raise Unavailable(
                            f"the marker was not among the first {SCAN_LIMIT} names of the merged list"
                        )
                    return (picked if found else before[:want]), True
                page = await server_list.page(self.ask, request, size)
        return (picked if found else before[:want]), False

    async def _delete_runs(
        self, request: Request, servers: Sequence[Upstream], prefix: str, picked: list[Pick]
    ) -> list[str]:
        """Delete picked queues: on each server, the run of its list they form."""
        runs: dict[int, tuple[str | None, int]] = {}
        for index, _, previous in picked:
            start, count = runs.get(index, (previous, 0))
            runs[index] = (start, count + 1)
        order = sorted(runs)
        asks = []
        for index in order:
            start, count = runs[index]
            target = f"{prefix}?detail=id&limit={count}"
            if start is not None:
                target += "&marker=" + quote(start, safe="")
            asks.append(self.ask(servers[index], "DELETE", target, request))
        deleted: list[str] = []
        for response in await _gather(asks):
            if _ok(response).status == 200:
                deleted.extend(_decode_names(response, Detail.ID))
        return deleted

    async def _delete_each(
        self, request: Request, holders: Callable[[str], Sequence[Upstream]], names: list[str]
    ) -> list[str]:
        """Delete picked accounts, each on every server that may hold it."""
        deleted: list[str] = []
        for first in range(0, len(names), _DELETE_BATCH):
            batch = names[first : first + _DELETE_BATCH]
            asks = [
                (name, self.ask(server, "DELETE", "/v1.0/" + quote(name, safe=""), request))
                for name in batch
                for server in holders(name)
            ]
            responses = await _gather([ask for _, ask in asks])
            hit = {
                name
                for (name, _), response in zip(asks, responses, strict=True)
                if _ok(response).status != 404
            }
            deleted.extend(name for name in batch if name in hit)
        return deleted


def _decode_names(response: Response, detail: Detail) -> list[str]:
    """The names of a list answered at ``detail`` (``id``: strings; ``all``: ``{"id": ...}``)."""
    data = _json(response)
    if isinstance(data, list) and detail is Detail.ALL:
        data = [item.get("id") if isinstance(item, dict) else None for item in data]
    if not isinstance(data, list) or not all(isinstance(name, str) for name in data):
        raise Unavailable("a server answered a list of names that is not one")
    return data


async def versions(forward: Forward, request: Request, servers: Sequence[Upstream]) -> Response:
    """``GET /`` of every server: the API versions all of them speak (each answers ``["v1.0"]``)."""
    responses = await _gather([forward(u, request) for u in servers])
    merged: dict[str, None] = {}
    for response in responses:
        if response.status != 200:
            raise Relay(response)
        spoken = _json(response)
        if not isinstance(spoken, list) or not all(isinstance(v, str) for v in spoken):
            raise Unavailable("a server answered GET / with something that is not a list of versions")
        merged.update(dict.fromkeys(spoken))
    return Response(200, orjson.dumps(list(merged)), JSON)


# -- SQS ListQueues ------------------------------------------------------------------------


def _queue_name(url: str) -> str:
    return url.rsplit("/", 1)[-1]


def _parse_list(response: Response, protocol: str) -> tuple[list[str], bool]:
    """(queue URLs, whether a NextToken came) of one server's ListQueues answer."""
    if protocol == "json":
        data = _json(response) if response.body else {}
        urls = data.get("QueueUrls", []) if isinstance(data, dict) else None
        if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
            raise Unavailable("a server answered ListQueues with something that is not its result")
        return urls, bool(data.get("NextToken"))
    try:
        root = ElementTree.fromstring(response.body)
    except ElementTree.ParseError:
        raise Unavailable("a server answered ListQueues with XML that does not parse") from None
    ns = {"sqs": NAMESPACE}
    urls = [el.text or "" for el in root.iterfind(".//sqs:QueueUrl", ns)]
    return urls, root.find(".//sqs:NextToken", ns) is not None


async def list_queues(
    forward: Forward, request: Request, servers: Sequence[Upstream], protocol: str, params: dict[str, Any]
) -> Response:
    """ListQueues over the servers of the caller's account: each answers the same signed request;
    the union, in name order, is cut to ``MaxResults`` (1000 without) as a server cuts its own."""
    responses = await _gather([forward(u, request) for u in servers])
    urls: dict[str, None] = {}
    more = False
    for response in responses:
        if response.status != 200:
            raise Relay(response)  # an error every server gives alike: bad parameters, a bad signature
        found, token = _parse_list(response, protocol)
        urls.update(dict.fromkeys(found))
        more = more or token
    ordered = sorted(urls, key=_queue_name)
    raw = params.get("MaxResults")
    limit = int(raw) if raw is not None else None  # the servers accepted it: an integer 1..1000
    page = ordered[: limit or 1000]
    result: dict[str, Any] = {}
    if page:
        result["QueueUrls"] = page
    if limit is not None and (more or len(ordered) > limit):
        result["NextToken"] = base64.urlsafe_b64encode(_queue_name(page[-1]).encode()).decode("ascii")
    request_id = new_id()
    headers = [("x-amzn-RequestId", request_id)]
    if protocol == "json":
        return Response(200, orjson.dumps(result), JSON_10, headers)
    return Response(200, render("ListQueues", result, request_id), XML, headers)
