"""Per-account quotas: the limits an operator sets on one tenant in the credentials file.

The engine enforces them (:class:`burrow.engine.Engine`; a write over a quota is 429 with
``Retry-After``, docs/operations.md "Budgets and quotas"). ``None`` means unlimited.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Quota:
    """Limits of one account. Each is a maximum the account may hold at once."""

    #: Queues the account may have.
    queues: int | None = None
    #: Messages stored in all its queues (visible, hidden and delayed).
    messages: int | None = None
    #: Bytes of message bodies stored in all its queues.
    bytes: int | None = None
    #: Long polls (v1.0 ``wait``, SQS ``WaitTimeSeconds``) parked at once.
    waiters: int | None = None

    #: The keys of a ``[accounts.NAME.quotas]`` table.
    KEYS = ("queues", "messages", "bytes", "waiters")


#: No limits: what an account without a quotas table gets.
UNLIMITED = Quota()


@dataclass(slots=True)
class Usage:
    """What an account holds, as :meth:`burrow.backends.base.Backend.usage` reads it.

    ``queues``: the names of its queues, those holding messages (burrow v1.0) and those with
    queue metadata (SQS queues, which exist while empty). ``messages``: stored messages,
    expired ones the cleaner has not removed yet included. ``bytes``: their bodies' bytes
    (0 when not asked for: it may cost a pass over the messages on some backends).
    """

    queues: set[str]
    messages: int = 0
    bytes: int = 0
