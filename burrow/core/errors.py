"""The errors of the queue service, each carrying its HTTP status and a short code.

One table (the classes below) maps every failure to a status; the HTTP front end and
the Python client both use it, so a status always means the same thing.
"""

from __future__ import annotations


class BurrowError(Exception):
    """Base of every expected failure. ``code`` is a stable machine-readable word."""

    status = 500
    code = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(BurrowError):
    """The request is invalid; nothing was changed."""

    status = 400
    code = "bad_request"


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


ERRORS_BY_STATUS: dict[int, type[BurrowError]] = {
    cls.status: cls for cls in (BadRequest, NotFound, MethodNotAllowed, StorageUnavailable)
}
