"""Per-account quotas: the limits an operator sets on one tenant in the credentials file.

Only the data type lives here for now; the engine enforces it (a write over a quota is 429
with ``Retry-After``). ``None`` means unlimited.
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
