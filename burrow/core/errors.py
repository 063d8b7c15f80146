"""The errors of the queue service, each carrying its HTTP status and a short code.

One table (the classes below) maps every failure to a status; the API front end, the
HTTP layer's own refusals (:mod:`burrow.http.protocol`) and the Python client
(:mod:`burrow.client`) all use it, so a status and a code always mean the same thing.
"""

from __future__ import annotations

from typing import ClassVar


class BurrowError(Exception):
    """Base of every expected failure. ``code`` is a stable machine-readable word."""

    # ClassVar: read from the class too (ERRORS_BY_CODE), which a compiled class allows only so.
    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(BurrowError):
    """The request is invalid; nothing was changed."""

    status = 400
    code = "bad_request"


class Unauthorized(BurrowError):
    """Auth is on and the request carries no valid credential (answered with
    ``WWW-Authenticate: Bearer realm="burrow"``)."""

    status = 401
    code = "unauthorized"


class Forbidden(BurrowError):
    """A valid credential that does not allow this: another account's, or a read-only one on a write."""

    status = 403
    code = "forbidden"


class NotFound(BurrowError):
    """Nothing matched: no such account, queue or message, or no visible message."""

    status = 404
    code = "not_found"


class MethodNotAllowed(BurrowError):
    status = 405
    code = "method_not_allowed"

    def __init__(self, message: str, allow: str = "") -> None:
        super().__init__(message)
        #: The methods the resource does allow, for the ``Allow`` header.
        self.allow = allow


class StorageUnavailable(BurrowError):
    """The store could not commit (disk full, I/O error): the write was not acknowledged."""

    status = 503
    code = "storage_unavailable"


class InsufficientStorage(StorageUnavailable):
    """The disk is full: the write was not stored. Deletes and expiry still work and free room
    for new messages (a subclass, so code that handles a storage failure handles this too)."""

    status = 507
    code = "insufficient_storage"


class QuotaExceeded(BurrowError):
    """A write, or a long poll, over one of the account's quotas (:mod:`burrow.quotas`): refused,
    nothing changed. Answered 429 with ``Retry-After``: it succeeds once the account's usage
    drops (deletes, expiry, polls ending). ``quota`` names which: queues, messages, bytes or
    waiters."""

    status = 429
    code = "quota_exceeded"

    def __init__(self, message: str, quota: str = "", retry_after: int = 1) -> None:
        super().__init__(message)
        self.quota = quota
        #: Seconds for ``Retry-After``: when the engine looks at the account's usage again.
        self.retry_after = retry_after


# -- The HTTP layer's own refusals: answered before any handler runs (or instead of one), after
# which the connection is closed.


class RequestTimeout(BurrowError):
    """A request head or body did not arrive in time (``--header-timeout``, ``--body-timeout``)."""

    status = 408
    code = "request_timeout"


class PayloadTooLarge(BurrowError):
    """A request body over ``--max-body-bytes`` (declared or streamed)."""

    status = 413
    code = "payload_too_large"


class UriTooLong(BurrowError):
    """A request target over ``--max-url-bytes``."""

    status = 414
    code = "uri_too_long"


class HeadersTooLarge(BurrowError):
    """A request head over ``--max-header-bytes``, or more than ``--max-header-count`` headers."""

    status = 431
    code = "headers_too_large"


class TooManyConnections(BurrowError):
    """A connection over ``--max-connections`` or ``--max-connections-per-client`` (answered with
    ``Retry-After``)."""

    status = 503
    code = "unavailable"


class ServerBusy(BurrowError):
    """The server is over a resource budget for now: ``--max-inflight-bytes``, the pipelining
    bound of one connection, or memory. Answered with ``Retry-After``; the requests it refuses
    were not handled (after an out-of-memory failure inside a handler, the request may have been)."""

    status = 503
    code = "busy"


class VersionNotSupported(BurrowError):
    """An HTTP version other than 1.0 and 1.1."""

    status = 505
    code = "version_not_supported"


#: The HTTP layer's refusals with their messages (what it answers is exactly these).
HEAD_TIMEOUT = RequestTimeout("request headers not received in time")
BODY_TIMEOUT = RequestTimeout("request body not received in time")
BODY_TOO_LARGE = PayloadTooLarge("request body too large")
URL_TOO_LONG = UriTooLong("request URL too long")
HEAD_TOO_LARGE = HeadersTooLarge("request header section too large")
TOO_MANY_HEADERS = HeadersTooLarge("too many request headers")
TOO_MANY_CONNECTIONS = TooManyConnections("too many connections")
TOO_MANY_CLIENT_CONNECTIONS = TooManyConnections("too many connections from this client address")
OVERLOADED = ServerBusy("too many request and response bytes in flight; retry later")
TOO_MANY_PIPELINED = ServerBusy("too many pipelined requests waiting on this connection")
OUT_OF_MEMORY = ServerBusy("the server ran out of memory; retry later")
VERSION_NOT_SUPPORTED = VersionNotSupported("only HTTP/1.0 and 1.1 are supported")
INTERNAL = BurrowError("internal server error")
UPGRADE_REFUSED = BadRequest("protocol upgrades are not supported")
CONNECT_REFUSED = BadRequest("protocol upgrades and CONNECT are not supported")
DUPLICATE_HOST = BadRequest("duplicate Host header")
CHUNKED_ON_HTTP10 = BadRequest("Transfer-Encoding is not allowed in HTTP/1.0")
UNSUPPORTED_TRANSFER_ENCODING = BadRequest("unsupported Transfer-Encoding")


class ServiceUnavailable(BurrowError):
    """A server behind the router cannot be reached (down, its connections all busy, or no
    answer in time): retry after ``Retry-After``. Only the router answers it."""

    status = 503
    code = "service_unavailable"


class Conflict(BurrowError):
    """The operation cannot run now because another like it is running (one backup at a time)."""

    status = 409
    code = "conflict"


class NotSupported(BurrowError):
    """This server's backend does not do that (an online backup of a memory store)."""

    status = 501
    code = "not_implemented"


INVALID_URL = BadRequest("invalid request URL")
MISSING_HOST = BadRequest("an HTTP/1.1 request must have a Host header")
WRONG_HOST = BadRequest("the request target names another host than the Host header")

_ALL: tuple[type[BurrowError], ...] = (
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    StorageUnavailable,
    InsufficientStorage,
    QuotaExceeded,
    ServiceUnavailable,
    Conflict,
    NotSupported,
    RequestTimeout,
    PayloadTooLarge,
    UriTooLong,
    HeadersTooLarge,
    TooManyConnections,
    ServerBusy,
    VersionNotSupported,
)
#: Error code -> class (what a client reads back from an error body).
ERRORS_BY_CODE: dict[str, type[BurrowError]] = {cls.code: cls for cls in _ALL}
#: Status -> class, for an error response without a known code (503: the storage's).
ERRORS_BY_STATUS: dict[int, type[BurrowError]] = {
    cls.status: cls
    for cls in _ALL
    if cls is not TooManyConnections and cls is not ServerBusy and cls is not ServiceUnavailable
}
