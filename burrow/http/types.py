"""Request and response values exchanged between the HTTP protocol and the API front ends.

They are plain slotted objects, not a framework: the protocol fills a ``Request`` from
parser callbacks and writes a ``Response`` back; everything in between is the route
table's business.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from burrow.auth.grant import Grant


class Request:
    """One parsed HTTP request. ``path`` is still percent-encoded; ``query`` is raw."""

    __slots__ = ("method", "path", "query", "headers", "body", "peer", "grant")

    def __init__(
        self,
        method: str,
        path: str,
        query: str = "",
        headers: dict[str, str] | None = None,
        body: bytes = b"",
        peer: str = "",
    ) -> None:
        self.method = method
        self.path = path
        self.query = query
        #: Header names lower-cased; a repeated header's values are joined with ", ".
        self.headers = headers if headers is not None else {}
        self.body = body
        self.peer = peer
        #: What authentication granted (set by the route table before the handler runs); None
        #: when auth is off, which means unrestricted.
        self.grant: Grant | None = None


class Response:
    """A status, a body, its content type and any extra headers."""

    __slots__ = ("status", "body", "content_type", "headers")

    def __init__(
        self,
        status: int,
        body: bytes = b"",
        content_type: str | None = None,
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        self.status = status
        self.body = body
        self.content_type = content_type
        self.headers = headers


#: What the protocol calls for each request.
Handler = Callable[[Request], Awaitable[Response]]
