"""FIFO queue rules that are SQS's own: deduplication ids and keys.

The rest of FIFO lives in the store, where it can be atomic: group blocking (a
group gives nothing while any of its messages is in flight; one receive may take
several consecutive messages of an unblocked group), per-queue sequence numbers and
the 5-minute deduplication window (a send whose key was seen in the window is
accepted but not stored again, and the reply repeats the first send's MessageId and
SequenceNumber). See :meth:`burrow.backends.base.Backend.claim` and
:meth:`~burrow.backends.base.Backend.send_message`.
"""

from __future__ import annotations

import hashlib


def content_dedup_id(body: str) -> str:
    """The deduplication id of a body when ContentBasedDeduplication is on: its SHA-256."""
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


def dedup_key(dedup_id: str, group: str, scope: str) -> str:
    """The key deduplication is checked on: the id, within the group when DeduplicationScope says so."""
    return f"{group}\n{dedup_id}" if scope == "messageGroup" else dedup_id
