"""The SQS queue registry: queues as documents in the store's queue metadata.

An SQS queue exists while its metadata document exists and is not a tombstone, even
when it holds no message (a burrow v1.0 queue only exists while it holds one; the
two views share the messages). Deleting a queue leaves a tombstone so that
re-creating it within 60 s fails like AWS (QueueDeletedRecently). A FIFO queue's
sequence counter and deduplication records are the store's, kept with the document.

Every change is a compare-and-set on the stored document (read, change, swap; retry
if another writer got there first), so processes sharing a store never lose each
other's changes. Each process keeps the documents it read for :data:`CACHE_SECONDS`,
which saves a store round trip on every message request; a change made elsewhere is
seen within that time (AWS documents up to 60 s for attribute changes to apply).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import orjson

from burrow.core.model import ALL_MESSAGES
from burrow.engine import Engine
from burrow.sqs.errors import SqsError, invalid, no_queue
from burrow.sqs.model import QueueState, parse_arn
from burrow.sqs.validation import MAX_TAGS, PURGE_WAIT, RECREATE_WAIT

#: How long a process reuses a queue document it read (seconds on the engine's clock).
CACHE_SECONDS = 1.0
#: Compare-and-set rounds before a change gives up (each lost round means another writer won).
_CAS_ROUNDS = 32
#: Store keys with this character are another component's (``#`` cannot occur in an SQS name).
RESERVED = "#"


@dataclass(slots=True)
class Queue:
    """One live SQS queue as read at the start of a request.

    The registry hands out one Queue per stored version of the queue document (see
    :meth:`QueueRegistry._queue`), so what is derived from its attributes is worked out
    once per version, not on every request. Not frozen, to keep building it cheap;
    treat it as immutable.
    """

    account: str
    name: str
    state: QueueState
    fifo: bool = field(init=False, compare=False)
    #: Memo of :meth:`number`: attribute name -> value.
    _numbers: dict[str, int] = field(init=False, compare=False, repr=False, default_factory=dict)
    #: Memo of :meth:`redrive`; ``_redrive_known`` tells None from "not parsed yet".
    _redrive: tuple[str, str, int] | None = field(init=False, compare=False, repr=False, default=None)
    _redrive_known: bool = field(init=False, compare=False, repr=False, default=False)

    def __post_init__(self) -> None:
        self.fifo = self.state.fifo

    def number(self, name: str) -> int:
        """``state.number(name)``, remembered (the state of this version never changes)."""
        value = self._numbers.get(name)
        if value is None:
            value = self._numbers[name] = self.state.number(name)
        return value

    def redrive(self) -> tuple[str, str, int] | None:
        """(dead-letter account, queue, maxReceiveCount) when a RedrivePolicy is set."""
        if not self._redrive_known:
            self._redrive = self._parse_redrive()
            self._redrive_known = True
        return self._redrive

    def _parse_redrive(self) -> tuple[str, str, int] | None:
        raw = self.state.attributes.get("RedrivePolicy")
        if not raw:
            return None
        doc = orjson.loads(raw)
        parsed = parse_arn(doc["deadLetterTargetArn"])
        if parsed is None:
            return None
        return parsed[1], parsed[2], int(doc["maxReceiveCount"])


class QueueRegistry:
    """Create, look up, change and delete SQS queues."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        #: (account, name) -> (stored document, the Queue decoded from it, when it was read).
        self._cache: dict[tuple[str, str], tuple[bytes, Queue, float]] = {}

    def _queue(self, account: str, name: str, raw: bytes, now: float) -> Queue:
        """The queue a stored document describes (tombstones included), remembered as read at ``now``.

        Decoded once per document: the cached Queue is reused for as long as the stored
        bytes stay the same (a change of attributes, a delete or a re-creation stores
        new bytes).
        """
        key = (account, name)
        hit = self._cache.get(key)
        if hit is not None and hit[0] == raw:
            queue = hit[1]
        else:
            queue = Queue(account, name, QueueState.decode(raw))
            if len(self._cache) > 10_000:
                self._cache.clear()
        self._cache[key] = (raw, queue, now)
        return queue

    async def _read(self, account: str, name: str) -> tuple[bytes | None, Queue | None]:
        raw = await self.engine.get_queue_meta(account, name)
        if raw is None:
            self._cache.pop((account, name), None)
            return None, None
        return raw, self._queue(account, name, raw, self.engine.now())

    async def find(self, account: str, name: str) -> Queue | None:
        if RESERVED in name:
            return None
        hit = self._cache.get((account, name))
        if hit is not None and self.engine.now() - hit[2] < CACHE_SECONDS:
            queue: Queue | None = hit[1]
        else:
            queue = (await self._read(account, name))[1]
        return None if queue is None or queue.state.deleted else queue

    async def get(self, account: str, name: str) -> Queue:
        queue = await self.find(account, name)
        if queue is None:
            raise no_queue()
        return queue

    async def all(self, account: str) -> list[Queue]:
        now = self.engine.now()
        out = []
        for name, raw in await self.engine.list_queue_meta(account):
            if RESERVED in name:
                continue
            queue = self._queue(account, name, raw, now)
            if not queue.state.deleted:
                out.append(queue)
        return out

    async def _swap(self, account: str, name: str, expect: bytes | None, state: QueueState | None) -> bool:
        raw = None if state is None else state.encode()
        if not await self.engine.swap_queue_meta(account, name, expect, raw):
            return False
        if raw is None:
            self._cache.pop((account, name), None)
        else:
            self._queue(account, name, raw, self.engine.now())
        return True

    async def check_redrive(self, account: str, name: str, fifo: bool, attributes: dict[str, str]) -> None:
        """A RedrivePolicy must name another existing queue of the same account and kind.

        Not the queue itself: moving a message "to its dead-letter queue" would then
        replace it and delete it, losing it.
        """
        raw = attributes.get("RedrivePolicy")
        if not raw:
            return
        parsed = parse_arn(orjson.loads(raw)["deadLetterTargetArn"])
        if parsed is not None and parsed[1:] == (account, name):
            raise invalid(
                "Value for parameter RedrivePolicy is invalid. Reason: A queue cannot be its own"
                " dead-letter queue."
            )
        target = None if parsed is None or parsed[1] != account else await self.find(account, parsed[2])
        if target is None:
            raise invalid(
                "Value for parameter RedrivePolicy is invalid. Reason: Dead letter target does not exist."
            )
        if target.fifo != fifo:
            raise invalid(
                "Value for parameter RedrivePolicy is invalid. Reason: Dead-letter queue must be"
                " the same type of queue (FIFO or standard) as the source."
            )

    async def create(
        self, account: str, name: str, attributes: dict[str, str], tags: dict[str, str], now: float
    ) -> None:
        """Create the queue, or accept an identical re-creation (QueueNameExists otherwise)."""
        fifo = attributes.get("FifoQueue") == "true"
        await self.check_redrive(account, name, fifo, attributes)
        if len(tags) > MAX_TAGS:
            raise invalid(f"Too many tags: a queue can have at most {MAX_TAGS}.")
        for _ in range(_CAS_ROUNDS):
            raw, existing = await self._read(account, name)
            if existing is not None and not existing.state.deleted:
                for key, value in attributes.items():
                    if existing.state.attribute(key) != value:
                        raise SqsError(
                            "QueueNameExists",
                            f"A queue already exists with the same name and a"
                            f" different value for attribute {key}.",
                        )
                return
            if existing is not None and now - existing.state.deleted < RECREATE_WAIT:
                raise SqsError(
                    "QueueDeletedRecently",
                    "You must wait 60 seconds after deleting a queue"
                    " before you can create another queue with the same name.",
                )
            stamp = int(now)
            if await self._swap(account, name, raw, QueueState(attributes, tags, stamp, stamp)):
                return
        raise _contended(name)

    async def delete(self, queue: Queue, now: float) -> None:
        """Leave a tombstone (for QueueDeletedRecently), then drop the queue's messages.

        The document is removed before the tombstone is stored, which drops the store's
        FIFO state (sequence counter, deduplication records) with it.
        """
        for _ in range(_CAS_ROUNDS):
            raw, current = await self._read(queue.account, queue.name)
            if current is None or current.state.deleted:
                raise no_queue()
            if await self._swap(queue.account, queue.name, raw, None):
                break
        else:
            raise _contended(queue.name)
        await self._swap(queue.account, queue.name, None, QueueState(deleted=now))
        await self.engine.delete_messages(queue.account, queue.name, ALL_MESSAGES)

    async def update(self, queue: Queue, now: float, change: Callable[[QueueState], QueueState]) -> None:
        """Apply ``change`` to the current document with compare-and-set (so no change is lost)."""
        for _ in range(_CAS_ROUNDS):
            raw, current = await self._read(queue.account, queue.name)
            if current is None or current.state.deleted:
                raise no_queue()
            state = replace(change(current.state), modified=int(now))
            if await self._swap(queue.account, queue.name, raw, state):
                return
        raise _contended(queue.name)

    async def set_attributes(self, queue: Queue, attributes: dict[str, str], now: float) -> None:
        if attributes.get("FifoQueue", "true" if queue.fifo else "false") != (
            "true" if queue.fifo else "false"
        ):
            raise SqsError("InvalidAttributeValue", "FifoQueue cannot be changed after the queue is created.")
        await self.check_redrive(queue.account, queue.name, queue.fifo, attributes)

        def merged(state: QueueState) -> QueueState:
            values = dict(state.attributes)
            for key, value in attributes.items():
                if value == "" and key in ("RedrivePolicy", "RedriveAllowPolicy", "Policy"):
                    values.pop(key, None)
                else:
                    values[key] = value
            return replace(state, attributes=values)

        await self.update(queue, now, merged)

    async def tag(self, queue: Queue, tags: dict[str, str], now: float) -> None:
        def tagged(state: QueueState) -> QueueState:
            merged = {**state.tags, **tags}
            if len(merged) > MAX_TAGS:
                raise invalid(f"Too many tags added for queue {queue.name}: at most {MAX_TAGS}.")
            return replace(state, tags=merged)

        await self.update(queue, now, tagged)

    async def untag(self, queue: Queue, keys: list[str], now: float) -> None:
        def untagged(state: QueueState) -> QueueState:
            return replace(state, tags={k: v for k, v in state.tags.items() if k not in keys})

        await self.update(queue, now, untagged)

    async def purge(self, queue: Queue, now: float) -> None:
        """Delete every message; at most once per 60 s (PurgeQueueInProgress)."""

        def purged(state: QueueState) -> QueueState:
            if now - state.purged < PURGE_WAIT:
                raise SqsError(
                    "PurgeQueueInProgress",
                    f"Only one PurgeQueue operation on {queue.name} is allowed every 60 seconds.",
                )
            return replace(state, purged=now)

        await self.update(queue, now, purged)
        await self.engine.delete_messages(queue.account, queue.name, ALL_MESSAGES)

    async def counts(self, queue: Queue) -> tuple[int, int, int]:
        """(visible, in flight, delayed) message counts; a hidden never-received message is delayed."""
        c = await self.engine.count(queue.account, queue.name)
        return c.visible, c.in_flight, c.delayed

    async def dead_letter_sources(self, queue: Queue) -> list[str]:
        """Names of the account's queues whose RedrivePolicy targets ``queue``."""
        out = []
        for other in await self.all(queue.account):
            target = other.redrive()
            if target is not None and target[:2] == (queue.account, queue.name):
                out.append(other.name)
        return out

    async def is_dead_letter_queue(self, queue: Queue) -> bool:
        return bool(await self.dead_letter_sources(queue))


def _contended(name: str) -> SqsError:
    return SqsError("ServiceUnavailable", f"Queue {name} is being changed concurrently; retry the request.")
