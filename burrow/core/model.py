"""Values of the queue model and the time rules that give them meaning.

Times are absolute seconds (floats) on whatever clock the service injects; ``0`` is
the "none" sentinel for both deadlines, so a message with ``expires == 0`` never
expires and one with ``hidden_until == 0`` is visible. Clients speak relative whole
seconds (``ttl``, ``hide``); :func:`deadline` and :func:`remaining` convert.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from enum import Enum
from typing import Any, Final


@dataclass(frozen=True, slots=True)
class Message:
    """A snapshot of one stored message."""

    id: str
    body: bytes
    #: Absolute expiry time; 0 = never expires.
    expires: float
    #: Absolute time the message becomes visible; 0 (or any time <= now) = visible.
    hidden_until: float
    #: Opaque bytes owned by a protocol front end (SQS keeps its message attributes
    #: here); empty for plain burrow messages. Backends store it verbatim.
    meta: bytes = b""
    #: Times :meth:`~burrow.backends.base.Backend.claim` handed the message out (SQS's
    #: ApproximateReceiveCount, and the token its receipt handles carry); 0 = never.
    receives: int = 0
    #: When the first claim took it; 0 = never claimed.
    first_received: float = 0.0
    #: FIFO message group ("" = none), set by ``send_message`` and kept by every write
    #: except a replacing ``put_message``.
    group: str = ""
    #: FIFO sequence number assigned by ``send_message`` (0 = none).
    sequence: int = 0


@dataclass(frozen=True, slots=True)
class Filter:
    """Which items of a list an operation touches.

    Items are taken in insertion order, starting after ``marker`` (an unknown marker
    means "from the beginning"), at most ``limit`` of them (None = no limit). Hidden
    messages are skipped unless ``match_hidden``; the flag is ignored for accounts
    and queues.
    """

    limit: int | None = None
    marker: str | None = None
    match_hidden: bool = False


ALL = Filter()
ALL_MESSAGES = Filter(match_hidden=True)


@dataclass(frozen=True, slots=True)
class Update:
    """New deadlines for matched messages; None leaves that deadline unchanged."""

    expires: float | None = None
    hidden_until: float | None = None
    meta: bytes | None = None


@dataclass(frozen=True, slots=True)
class Counts:
    """Messages of one queue by state (expired ones are in none of them).

    *visible*: ``hidden_until <= now``; *in flight*: hidden and claimed at least once
    (``receives > 0``); *delayed*: hidden and never claimed.
    """

    visible: int = 0
    in_flight: int = 0
    delayed: int = 0


@dataclass(frozen=True, slots=True)
class Sent:
    """What :meth:`~burrow.backends.base.Backend.send_message` did.

    ``created`` is False when the deduplication key was already live: nothing was
    stored and ``message``/``sequence`` are the earlier send's.
    """

    message: str
    sequence: int
    created: bool


def _slot_setters(cls: type, names: tuple[str, ...]) -> tuple[Callable[[Any, Any], None], ...]:
    """The slot descriptors' setters of a slotted dataclass, checked against its fields."""
    if tuple(f.name for f in fields(cls)) != names:
        raise TypeError(f"{cls.__name__} fields changed; update its fast constructor")
    return tuple(vars(cls)[name].__set__ for name in names)


def _compiled(cls: type) -> bool:
    """Whether ``cls`` is a mypyc-compiled class (burrow/_build.py): those refuse ``object.__new__``."""
    try:
        object.__new__(cls)
    except TypeError:
        return True
    return False


#: True when this module runs compiled: its classes then construct natively, faster than any
#: trick, and the slot-setting constructors below (and in the stores) must not be used.
COMPILED: Final = _compiled(Message)

# Fast constructors for the values built on every request, for pure Python. A frozen
# dataclass's __init__ sets each field through ``object.__setattr__`` (about 1 us for a
# Filter); setting the slots through their descriptors builds the same, equally frozen,
# object in half that.
_new = object.__new__
_set_limit, _set_marker, _set_match_hidden = _slot_setters(Filter, ("limit", "marker", "match_hidden"))
_set_expires, _set_hidden_until, _set_meta = _slot_setters(Update, ("expires", "hidden_until", "meta"))


def new_filter(limit: int | None, marker: str | None, match_hidden: bool) -> Filter:
    """``Filter(limit, marker, match_hidden)``, faster."""
    if COMPILED:
        return Filter(limit, marker, match_hidden)
    f: Filter = _new(Filter)
    _set_limit(f, limit)
    _set_marker(f, marker)
    _set_match_hidden(f, match_hidden)
    return f


def new_update(expires: float | None, hidden_until: float | None, meta: bytes | None = None) -> Update:
    """``Update(expires, hidden_until, meta)``, faster."""
    if COMPILED:
        return Update(expires, hidden_until, meta)
    u: Update = _new(Update)
    _set_expires(u, expires)
    _set_hidden_until(u, hidden_until)
    _set_meta(u, meta)
    return u


class Detail(Enum):
    """Response shapes (the ``detail`` parameter)."""

    NONE = "none"
    ID = "id"
    ALL = "all"
    ATTRIBUTES = "attributes"
    BODY = "body"


def deadline(seconds: int, now: float) -> float:
    """The absolute time ``seconds`` from ``now``; 0 seconds means no deadline (0)."""
    return now + seconds if seconds else 0.0


def remaining(when: float, now: float) -> int:
    """Whole seconds left until ``when``, rounded up; 0 when there is no deadline or it passed."""
    if when <= now:
        return 0
    return math.ceil(when - now)


def is_visible(hidden_until: float, now: float) -> bool:
    return hidden_until <= now


def is_expired(expires: float, now: float) -> bool:
    return 0 < expires <= now


def matches(message_hidden_until: float, match_hidden: bool, now: float) -> bool:
    """Whether a list operation sees a message (expired ones must be skipped by the caller)."""
    return match_hidden or message_hidden_until <= now


def apply_limit(limit: int | None, cap: int) -> int:
    """The effective item count for one response: the client's limit, never above ``cap``."""
    return cap if limit is None else min(limit, cap)
