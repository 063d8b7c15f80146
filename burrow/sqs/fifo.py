"""FIFO queue rules, pure: group blocking, the 5-minute deduplication window, sequence numbers.

* Order is the store's insertion order, so messages of one group come back in the
  order they were sent.
* A group is *blocked* while any of its messages is hidden (in flight, or delayed);
  messages after a hidden one are not handed out even if visible. One receive may
  take several consecutive messages of an unblocked group.
* A send whose deduplication key was seen in the last 5 minutes is accepted but not
  stored again; the reply repeats the first send's MessageId and SequenceNumber. The
  key is the deduplication id (explicit, or SHA-256 of the body with
  ContentBasedDeduplication), prefixed by the group when DeduplicationScope is
  ``messageGroup``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field

import orjson

from burrow.core.model import Message
from burrow.sqs.model import MessageMeta
from burrow.sqs.validation import DEDUP_WINDOW

#: Sequence numbers are 20-digit decimal strings like AWS's; this is the first one.
_SEQUENCE_BASE = 18_000_000_000_000_000_000


def content_dedup_id(body: str) -> str:
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


def dedup_key(dedup_id: str, group: str, scope: str) -> str:
    return f"{group}\n{dedup_id}" if scope == "messageGroup" else dedup_id


@dataclass(slots=True)
class FifoState:
    """Per-queue FIFO bookkeeping kept in queue metadata beside the queue's own."""

    next_sequence: int = 1
    #: dedup key -> (message id, sequence number, time first seen)
    seen: dict[str, tuple[str, str, float]] = field(default_factory=dict)

    def prune(self, now: float) -> None:
        horizon = now - DEDUP_WINDOW
        if self.seen and min(t for _, _, t in self.seen.values()) <= horizon:
            self.seen = {k: v for k, v in self.seen.items() if v[2] > horizon}

    def duplicate(self, key: str, now: float) -> tuple[str, str] | None:
        """(message id, sequence) of an earlier send with this key inside the window."""
        hit = self.seen.get(key)
        if hit is None or hit[2] <= now - DEDUP_WINDOW:
            return None
        return hit[0], hit[1]

    def record(self, key: str, message_id: str, now: float) -> str:
        """Assign the next sequence number to a new message and remember its key."""
        sequence = str(_SEQUENCE_BASE + self.next_sequence)
        self.next_sequence += 1
        self.seen[key] = (message_id, sequence, now)
        return sequence

    def encode(self) -> bytes:
        return orjson.dumps({"n": self.next_sequence, "s": self.seen})

    @staticmethod
    def decode(raw: bytes | None) -> FifoState:
        if not raw:
            return FifoState()
        doc = orjson.loads(raw)
        return FifoState(doc["n"], {k: (v[0], v[1], v[2]) for k, v in doc["s"].items()})


def receivable(
    messages: Iterable[tuple[Message, MessageMeta]], now: float, limit: int
) -> list[tuple[Message, MessageMeta]]:
    """The first ``limit`` messages a FIFO receive may take, honouring group blocking."""
    blocked: set[str] = set()
    out: list[tuple[Message, MessageMeta]] = []
    for message, meta in messages:
        group = meta.group or ""
        if group in blocked:
            continue
        if message.hidden_until > now:
            blocked.add(group)
            continue
        out.append((message, meta))
        if len(out) >= limit:
            break
    return out
