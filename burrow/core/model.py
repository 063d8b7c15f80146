"""Values of the queue model and the time rules that give them meaning.

Times are absolute seconds (floats) on whatever clock the service injects; ``0`` is
the "none" sentinel for both deadlines, so a message with ``expires == 0`` never
expires and one with ``hidden_until == 0`` is visible. Clients speak relative whole
seconds (``ttl``, ``hide``); :func:`deadline` and :func:`remaining` convert.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum


@dataclass(frozen=True, slots=True)
class Message:
    """A snapshot of one stored message."""

    id: str
    body: bytes
    #: Absolute expiry time; 0 = never expires.
    expires: float
    #: Absolute time the message becomes visible; 0 (or any time <= now) = visible.
    hidden_until: float
    #: Opaque bytes owned by a protocol front end (SQS keeps its message attributes and
    #: receive count here); empty for plain burrow messages. Backends store it verbatim.
    meta: bytes = b""


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
