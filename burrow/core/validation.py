"""Strict parsing of names and parameters (burrow v1.0 Decisions 1 and 3).

Every function either returns a clean value or raises :class:`BadRequest` with a
message a person can act on; nothing here has side effects, so a rejected request
has changed nothing.
"""

from __future__ import annotations

from urllib.parse import unquote_to_bytes

from burrow.core.errors import BadRequest
from burrow.core.model import Detail

MAX_NAME_BYTES = 256
#: Digits accepted in an integer parameter; more is rejected before int() runs.
MAX_INT_DIGITS = 12
_CONTROL = frozenset(range(0x20)) | {0x7F}


def name(raw: str, what: str) -> str:
    """Percent-decode one path segment and check it is a legal account/queue/message name.

    Names are 1-256 bytes of UTF-8 without control characters; ``%2F`` decodes to a
    ``/`` inside the name because the path was split before decoding.
    """
    # Fast path (the common case, on every request): printable ASCII, nothing to decode.
    if raw.isascii() and raw.isprintable() and 0 < len(raw) <= MAX_NAME_BYTES and "%" not in raw:
        return raw
    # The HTTP layer hands the target over latin-1 decoded, so this recovers the raw bytes.
    data = raw.encode("latin-1", "replace")
    if "%" in raw:
        data = unquote_to_bytes(data)
    if not data:
        raise BadRequest(f"{what} name must not be empty")
    if len(data) > MAX_NAME_BYTES:
        raise BadRequest(f"{what} name is {len(data)} bytes; the limit is {MAX_NAME_BYTES}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest(f"{what} name is not valid UTF-8") from None
    if not _CONTROL.isdisjoint(data):
        raise BadRequest(f"{what} name must not contain control characters")
    return text


def integer(value: str, param: str, minimum: int, maximum: int) -> int:
    """A base-10 integer of plain ASCII digits in [minimum, maximum]."""
    if not value or len(value) > MAX_INT_DIGITS or not (value.isascii() and value.isdigit()):
        raise BadRequest(f"{param} must be an integer >= {minimum}, got {value[:40]!r}")
    number = int(value)
    if number < minimum:
        raise BadRequest(f"{param} must be an integer >= {minimum}, got {number}")
    if number > maximum:
        raise BadRequest(f"{param} must be at most {maximum}, got {number}")
    return number


def boolean(value: str, param: str) -> bool:
    lowered = value.lower()
    if lowered == "true":
        return True
    if lowered == "false":
        return False
    raise BadRequest(f"{param} must be true or false, got {value[:40]!r}")


_DETAILS = {d.value: d for d in Detail}


def detail(value: str) -> Detail:
    try:
        return _DETAILS[value]
    except KeyError:
        raise BadRequest(
            f"detail must be one of none, id, all, attributes, body; got {value[:40]!r}"
        ) from None
