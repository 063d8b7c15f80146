"""The SQS queue registry: queues as documents in the store's queue metadata.

An SQS queue exists while its metadata document exists and is not a tombstone, even
when it holds no message (a burrow v1.0 queue only exists while it holds one; the
two views share the messages). Deleting a queue leaves a tombstone so that
re-creating it within 60 s fails like AWS (QueueDeletedRecently). FIFO bookkeeping
lives beside the queue under ``<name>#fifo``; ``#`` cannot occur in an SQS name.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, replace

import orjson

from burrow.core.model import ALL_MESSAGES
from burrow.service import Service
from burrow.sqs.errors import SqsError, invalid, no_queue
from burrow.sqs.model import MessageMeta, QueueState, parse_arn
from burrow.sqs.validation import MAX_TAGS, PURGE_WAIT, RECREATE_WAIT

FIFO_SUFFIX = "#fifo"


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

    def __init__(self, service: Service) -> None:
        self.service = service
        self.backend = service.backend
        #: Serialises read-modify-write of queue documents within this process.
        self.lock = asyncio.Lock()
        #: (account, name) -> (stored document, the Queue decoded from it).
        self._parsed: dict[tuple[str, str], tuple[bytes, Queue]] = {}

    def _queue(self, account: str, name: str, raw: bytes) -> Queue:
        """The queue a stored document describes (tombstones included).

        Decoded once per document: every message request reads the document, and the
        cached Queue is reused for as long as the stored bytes stay the same (a change
        of attributes, a delete or a re-creation stores new bytes).
        """
        key = (account, name)
        hit = self._parsed.get(key)
        if hit is not None and hit[0] == raw:
            return hit[1]
        queue = Queue(account, name, QueueState.decode(raw))
        if len(self._parsed) > 10_000:
            self._parsed.clear()
        self._parsed[key] = (raw, queue)
        return queue

    def _decode(self, account: str, name: str, raw: bytes) -> QueueState:
        return self._queue(account, name, raw).state

    async def find(self, account: str, name: str) -> Queue | None:
        if FIFO_SUFFIX in name:
            return None
        raw = await self.backend.get_queue_meta(account, name)
        if raw is None:
            return None
        queue = self._queue(account, name, raw)
        return None if queue.state.deleted else queue

    async def get(self, account: str, name: str) -> Queue:
        queue = await self.find(account, name)
        if queue is None:
            raise no_queue()
        return queue

    async def all(self, account: str) -> list[Queue]:
        out = []
        for name, raw in await self.backend.list_queue_meta(account):
            if FIFO_SUFFIX in name:
                continue
            queue = self._queue(account, name, raw)
            if not queue.state.deleted:
                out.append(queue)
        return out

    async def _store(self, account: str, name: str, state: QueueState) -> None:
        await self.backend.set_queue_meta(account, name, state.encode())

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
        async with self.lock:
            raw = await self.backend.get_queue_meta(account, name)
            existing = None if raw is None else self._decode(account, name, raw)
            if existing is not None and not existing.deleted:
                for key, value in attributes.items():
                    if existing.attribute(key) != value:
                        raise SqsError(
                            "QueueNameExists",
                            f"A queue already exists with the same name and a"
                            f" different value for attribute {key}.",
                        )
                return
            if existing is not None and now - existing.deleted < RECREATE_WAIT:
                raise SqsError(
                    "QueueDeletedRecently",
                    "You must wait 60 seconds after deleting a queue"
                    " before you can create another queue with the same name.",
                )
            if len(tags) > MAX_TAGS:
                raise invalid(f"Too many tags: a queue can have at most {MAX_TAGS}.")
            stamp = int(now)
            await self._store(account, name, QueueState(attributes, tags, stamp, stamp))
            if fifo:
                await self.backend.set_queue_meta(account, name + FIFO_SUFFIX, None)

    async def delete(self, queue: Queue, now: float) -> None:
        """Drop the queue's messages and leave a tombstone (for QueueDeletedRecently)."""
        async with self.lock:
            await self.backend.delete_messages(queue.account, queue.name, ALL_MESSAGES, now)
            await self._store(queue.account, queue.name, QueueState(deleted=now))
            if queue.fifo:
                await self.backend.set_queue_meta(queue.account, queue.name + FIFO_SUFFIX, None)

    async def update(self, queue: Queue, now: float, **changes: object) -> None:
        """Apply changes to the current document (re-read under the lock, so none is lost)."""
        async with self.lock:
            current = await self.get(queue.account, queue.name)
            state = replace(current.state, modified=int(now), **changes)  # type: ignore[arg-type]
            await self._store(queue.account, queue.name, state)

    async def set_attributes(self, queue: Queue, attributes: dict[str, str], now: float) -> None:
        if attributes.get("FifoQueue", "true" if queue.fifo else "false") != (
            "true" if queue.fifo else "false"
        ):
            raise SqsError("InvalidAttributeValue", "FifoQueue cannot be changed after the queue is created.")
        await self.check_redrive(queue.account, queue.name, queue.fifo, attributes)
        merged = dict(queue.state.attributes)
        for key, value in attributes.items():
            if value == "" and key in ("RedrivePolicy", "RedriveAllowPolicy", "Policy"):
                merged.pop(key, None)
            else:
                merged[key] = value
        await self.update(queue, now, attributes=merged)

    async def tag(self, queue: Queue, tags: dict[str, str], now: float) -> None:
        merged = {**queue.state.tags, **tags}
        if len(merged) > MAX_TAGS:
            raise invalid(f"Too many tags added for queue {queue.name}: at most {MAX_TAGS}.")
        await self.update(queue, now, tags=merged)

    async def untag(self, queue: Queue, keys: list[str], now: float) -> None:
        await self.update(queue, now, tags={k: v for k, v in queue.state.tags.items() if k not in keys})

    async def purge(self, queue: Queue, now: float) -> None:
        """Delete every message; at most once per 60 s (PurgeQueueInProgress)."""
        if now - queue.state.purged < PURGE_WAIT:
            raise SqsError(
                "PurgeQueueInProgress",
                f"Only one PurgeQueue operation on {queue.name} is allowed every 60 seconds.",
            )
        await self.update(queue, now, purged=now)
        await self.backend.delete_messages(queue.account, queue.name, ALL_MESSAGES, now)

    async def counts(self, queue: Queue, now: float) -> tuple[int, int, int]:
        """(visible, in flight, delayed) message counts; a hidden never-received message is delayed."""
        visible = in_flight = delayed = 0
        for m in await self.backend.get_messages(queue.account, queue.name, ALL_MESSAGES, now):
            if m.hidden_until <= now:
                visible += 1
            elif MessageMeta.decode(m.meta).receive_count:
                in_flight += 1
            else:
                delayed += 1
        return visible, in_flight, delayed

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
