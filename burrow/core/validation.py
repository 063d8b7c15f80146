"""Strict parsing of names and parameters (burrow v1.0 Decisions 1 and 3).

Every function either returns a clean value or raises :class:`BadRequest` with a
message a person can act on; nothing here has side effects, so a rejected request
has changed nothing.
"""

from __future__ import annotations

import unicodedata
from urllib.parse import unquote_to_bytes

from burrow.core.errors import BadRequest
from burrow.core.model import Detail

MAX_NAME_BYTES = 256
#: Digits accepted in an integer parameter; more is rejected before int() runs.
MAX_INT_DIGITS = 12
#: General categories no name may contain (docs/api.md "Names"), with how a 400 calls them:
#: controls (C0 and C1), format characters (bidi controls, zero-width characters, the soft
#: hyphen, the BOM, tag characters...), surrogates, unassigned code points and noncharacters
#: (as of the server's Python Unicode database), and line and paragraph separators.
_FORBIDDEN_CATEGORIES = {
    "Cc": "control character",
    "Cf": "invisible format character (bidi control, zero-width character or similar)",
    "Cs": "surrogate code point",
    "Cn": "unassigned code point or noncharacter",
    "Zl": "line separator",
    "Zp": "paragraph separator",
}
#: Assigned characters outside those categories that render as nothing at all (Unicode's
#: default-ignorable letters and marks, variation selectors excepted): the combining
#: grapheme joiner, the Khmer inherent vowels and the Hangul fillers.
_INVISIBLE = frozenset("\u034f\u17b4\u17b5\u115f\u1160\u3164\uffa0")


def name(raw: str, what: str) -> str:
    """Percent-decode one path segment and check it is a legal account/queue/message name.

    Names are 1-256 bytes of UTF-8 without control, bidi, zero-width or other invisible
    characters, unassigned code points or noncharacters (:func:`forbidden_character`);
    ``%2F`` decodes to a ``/`` inside the name because the path was split before decoding.
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
    bad = forbidden_character(text)
    if bad is not None:
        raise BadRequest(f"{what} name must not contain {bad}")
    return text


def forbidden_character(text: str) -> str | None:
    """None if ``text`` may be (part of) a name, else what is wrong, naming the first bad character.

    Forbidden: the general categories of :data:`_FORBIDDEN_CATEGORIES` and the characters
    of :data:`_INVISIBLE`. Everything else is allowed, spaces and private-use characters too.
    """
    # str.isprintable() is False exactly for categories Cc, Cf, Cs, Co, Cn, Zl, Zp and Zs
    # other than " ", so most names need no per-character look-up at all.
    if text.isprintable() and _INVISIBLE.isdisjoint(text):
        return None
    for index, char in enumerate(text):
        if char in _INVISIBLE:
            kind = "invisible character"
        elif char.isprintable():
            continue
        else:
            found = _FORBIDDEN_CATEGORIES.get(unicodedata.category(char))
            if found is None:  # Zs (spaces) and Co (private use) are allowed
                continue
            kind = found
        label = unicodedata.name(char, "")
        return f"{kind} U+{ord(char):04X}{' ' + label if label else ''} (character {index + 1})"
    return None


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
