"""Values of the queue model and the time rules that give them meaning.

Times are absolute seconds (floats) on whatever clock the service injects; ``0`` is
the "none" sentinel for both deadlines, so a message with ``expires == 0`` never
expires and one with ``hidden_until == 0`` is visible. Clients speak relative whole
seconds (``ttl``, ``hide``); :func:`deadline` and :func:`remaining` convert.
"""

from __future__ import annotations

import math
from enum import Enum
from typing import Final

# Why these are not dataclasses: mypyc compiles a dataclass's class but keeps the __init__
# that ``dataclasses`` generates (bytecode that, for a frozen one, sets each field through
# ``object.__setattr__``); these are built on every request, and a plain class with
# ``__slots__`` and an explicit ``__init__`` constructs natively when compiled and about as
# fast as anything in pure Python. ``Final`` keeps them immutable: mypy refuses assignments,
# and the compiled attributes are read-only. Changed copies come from ``replace``.


class Message:
    """A snapshot of one stored message."""

    __slots__ = (
        "id",
        "body",
        "expires",
        "hidden_until",
        "meta",
        "receives",
        "first_received",
        "group",
        "sequence",
    )

    id: Final[str]
    body: Final[bytes]
    #: Absolute expiry time; 0 = never expires.
    expires: Final[float]
    #: Absolute time the message becomes visible; 0 (or any time <= now) = visible.
    hidden_until: Final[float]
    #: Opaque bytes owned by a protocol front end (SQS keeps its message attributes
    #: here); empty for plain burrow messages. Backends store it verbatim.
    meta: Final[bytes]
    #: Times :meth:`~burrow.backends.base.Backend.claim` handed the message out (SQS's
    #: ApproximateReceiveCount, and the token its receipt handles carry); 0 = never.
    receives: Final[int]
    #: When the first claim took it; 0 = never claimed.
    first_received: Final[float]
    #: FIFO message group ("" = none), set by ``send_message`` and kept by every write
    #: except a replacing ``put_message``.
    group: Final[str]
    #: FIFO sequence number assigned by ``send_message`` (0 = none).
    sequence: Final[int]

    def __init__(
        self,
        id: str,
        body: bytes,
        expires: float,
        hidden_until: float,
        meta: bytes = b"",
        receives: int = 0,
        first_received: float = 0.0,
        group: str = "",
        sequence: int = 0,
    ) -> None:
        self.id = id
        self.body = body
        self.expires = expires
        self.hidden_until = hidden_until
        self.meta = meta
        self.receives = receives
        self.first_received = first_received
        self.group = group
        self.sequence = sequence

    def _key(self) -> tuple[str, bytes, float, float, bytes, int, float, str, int]:
        return (
            self.id,
            self.body,
            self.expires,
            self.hidden_until,
            self.meta,
            self.receives,
            self.first_received,
            self.group,
            self.sequence,
        )

    def replace(
        self,
        *,
        expires: float | None = None,
        hidden_until: float | None = None,
        meta: bytes | None = None,
        receives: int | None = None,
        first_received: float | None = None,
    ) -> Message:
        """A copy with the given fields changed (the ones stores change in place)."""
        return Message(
            self.id,
            self.body,
            self.expires if expires is None else expires,
            self.hidden_until if hidden_until is None else hidden_until,
            self.meta if meta is None else meta,
            self.receives if receives is None else receives,
            self.first_received if first_received is None else first_received,
            self.group,
            self.sequence,
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Message):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return (
            f"Message(id={self.id!r}, body={self.body!r}, expires={self.expires!r}, "
            f"hidden_until={self.hidden_until!r}, meta={self.meta!r}, receives={self.receives!r}, "
            f"first_received={self.first_received!r}, group={self.group!r}, sequence={self.sequence!r})"
        )


class Filter:
    """Which items of a list an operation touches.

    Items are taken in insertion order, starting after ``marker`` (an unknown marker
    means "from the beginning"), at most ``limit`` of them (None = no limit). Hidden
    messages are skipped unless ``match_hidden``; the flag is ignored for accounts
    and queues.
    """

    __slots__ = ("limit", "marker", "match_hidden")

    limit: Final[int | None]
    marker: Final[str | None]
    match_hidden: Final[bool]

    def __init__(
        self, limit: int | None = None, marker: str | None = None, match_hidden: bool = False
    ) -> None:
        self.limit = limit
        self.marker = marker
        self.match_hidden = match_hidden

    def with_limit(self, limit: int | None) -> Filter:
        """This filter with another ``limit``."""
        return Filter(limit, self.marker, self.match_hidden)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Filter):
            return NotImplemented
        return (self.limit, self.marker, self.match_hidden) == (other.limit, other.marker, other.match_hidden)

    def __hash__(self) -> int:
        return hash((self.limit, self.marker, self.match_hidden))

    def __repr__(self) -> str:
        return f"Filter(limit={self.limit!r}, marker={self.marker!r}, match_hidden={self.match_hidden!r})"


ALL = Filter()
ALL_MESSAGES = Filter(match_hidden=True)


class Update:
    """New deadlines for matched messages; None leaves that deadline unchanged."""

    __slots__ = ("expires", "hidden_until", "meta")

    expires: Final[float | None]
    hidden_until: Final[float | None]
    meta: Final[bytes | None]

    def __init__(
        self, expires: float | None = None, hidden_until: float | None = None, meta: bytes | None = None
    ) -> None:
        self.expires = expires
        self.hidden_until = hidden_until
        self.meta = meta

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Update):
            return NotImplemented
        return (self.expires, self.hidden_until, self.meta) == (other.expires, other.hidden_until, other.meta)

    def __hash__(self) -> int:
        return hash((self.expires, self.hidden_until, self.meta))

    def __repr__(self) -> str:
        return f"Update(expires={self.expires!r}, hidden_until={self.hidden_until!r}, meta={self.meta!r})"


class Counts:
    """Messages of one queue by state (expired ones are in none of them).

    *visible*: ``hidden_until <= now``; *in flight*: hidden and claimed at least once
    (``receives > 0``); *delayed*: hidden and never claimed.
    """

    __slots__ = ("visible", "in_flight", "delayed")

    visible: Final[int]
    in_flight: Final[int]
    delayed: Final[int]

    def __init__(self, visible: int = 0, in_flight: int = 0, delayed: int = 0) -> None:
        self.visible = visible
        self.in_flight = in_flight
        self.delayed = delayed

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Counts):
            return NotImplemented
        return (self.visible, self.in_flight, self.delayed) == (other.visible, other.in_flight, other.delayed)

    def __hash__(self) -> int:
        return hash((self.visible, self.in_flight, self.delayed))

    def __repr__(self) -> str:
        return f"Counts(visible={self.visible!r}, in_flight={self.in_flight!r}, delayed={self.delayed!r})"


class Sent:
    """What :meth:`~burrow.backends.base.Backend.send_message` did.

    ``created`` is False when the deduplication key was already live: nothing was
    stored and ``message``/``sequence`` are the earlier send's.
    """

    __slots__ = ("message", "sequence", "created")

    message: Final[str]
    sequence: Final[int]
    created: Final[bool]

    def __init__(self, message: str, sequence: int, created: bool) -> None:
        self.message = message
        self.sequence = sequence
        self.created = created

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sent):
            return NotImplemented
        return (self.message, self.sequence, self.created) == (other.message, other.sequence, other.created)

    def __hash__(self) -> int:
        return hash((self.message, self.sequence, self.created))

    def __repr__(self) -> str:
        return f"Sent(message={self.message!r}, sequence={self.sequence!r}, created={self.created!r})"


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
