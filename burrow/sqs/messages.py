"""SQS message operations over the Burrow store: send, receive, delete, visibility.

Storage mapping: one SQS message is one Burrow message in (account, queue) with the
same id; the body is the UTF-8 body, ``expires`` is send time + MessageRetentionPeriod,
``hidden_until`` is the delay or the visibility deadline, and ``meta`` holds the rest
(:class:`~burrow.sqs.model.MessageMeta`).

A receive claims each candidate with a compare-and-set on ``hidden_until`` (and
bumps the receive count in ``meta``), so two receivers never both get a message and
the loser simply moves on. Delete and ChangeMessageVisibility check the receipt's
receive count against the stored one, then write with the same compare-and-set.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace

from burrow.core.model import ALL_MESSAGES, Message, new_filter, new_update
from burrow.service import Service
from burrow.sqs import fifo
from burrow.sqs.digests import md5_of_attributes, md5_of_body
from burrow.sqs.errors import SqsError, invalid
from burrow.sqs.model import Attribute, MessageMeta, Receipt, new_id, queue_arn, receipt_handle
from burrow.sqs.queues import FIFO_SUFFIX, Queue, QueueRegistry
from burrow.sqs.validation import MAX_VISIBILITY

#: Rounds of "fetch candidates, claim them" per receive attempt; each round makes progress.
_CLAIM_ROUNDS = 4

# The values below are built on every send or receive: slotted, not frozen (a frozen
# __init__ costs about 0.1 us per field), and never changed once built.


@dataclass(slots=True)
class Outgoing:
    """One message to send, validated on its own (queue-dependent checks come in :meth:`Messages.check`)."""

    body: str
    delay: int | None = None
    attributes: dict[str, Attribute] | None = None
    trace_header: str | None = None
    group: str | None = None
    dedup_id: str | None = None

    def size(self) -> int:
        attrs = self.attributes or {}
        return len(self.body.encode("utf-8")) + sum(a.size(n) for n, a in attrs.items())


@dataclass(slots=True)
class Sent:
    message_id: str
    md5_body: str
    md5_attributes: str | None
    md5_system: str | None
    sequence: str | None


@dataclass(slots=True)
class Received:
    message: Message
    meta: MessageMeta
    receipt: str


def _ms(now: float) -> int:
    return int(now * 1000)


class Messages:
    """Message operations of the SQS API."""

    def __init__(self, service: Service, queues: QueueRegistry) -> None:
        self.service = service
        self.backend = service.backend
        self.queues = queues
        self._fifo_locks: dict[tuple[str, str], asyncio.Lock] = {}

    # -- send -------------------------------------------------------------------
    def check(self, queue: Queue, out: Outgoing) -> Outgoing:
        """Apply the rules that depend on the queue; return the message with its dedup id settled."""
        limit = queue.number("MaximumMessageSize")
        if out.size() > limit:
            raise invalid(
                f"One or more parameters are invalid. Reason: Message must be shorter than {limit} bytes."
            )
        if not queue.fifo:
            if out.dedup_id is not None:
                raise invalid(
                    "The request includes a parameter that is not valid for this queue type:"
                    " MessageDeduplicationId."
                )
            return out
        if out.delay:
            raise invalid(
                "Value for parameter DelaySeconds is invalid. Reason: The request include parameter"
                " that is not valid for this queue type."
            )
        if out.group is None:
            raise SqsError("MissingParameter", "The request must contain the parameter MessageGroupId.")
        if out.dedup_id is None:
            if queue.state.attribute("ContentBasedDeduplication") != "true":
                raise invalid(
                    "The queue should either have ContentBasedDeduplication enabled or"
                    " MessageDeduplicationId provided explicitly"
                )
            return replace(out, dedup_id=fifo.content_dedup_id(out.body))
        return out

    async def send(self, queue: Queue, out: Outgoing, sender: str) -> Sent:
        """Store one message (already passed through :meth:`check`)."""
        now = self.service.clock()
        delay = queue.number("DelaySeconds") if out.delay is None else out.delay
        attributes = out.attributes or {}
        data = out.body.encode("utf-8")
        meta = MessageMeta(
            sent=_ms(now),
            attributes=attributes,
            trace_header=out.trace_header,
            group=out.group,
            dedup_id=out.dedup_id,
            sender=sender,
        )
        message_id = new_id()
        sequence = None
        if queue.fifo:
            assert out.dedup_id is not None and out.group is not None
            key = (queue.account, queue.name)
            lock = self._fifo_locks.get(key)
            if lock is None:
                lock = self._fifo_locks[key] = asyncio.Lock()
            async with lock:
                raw = await self.backend.get_queue_meta(queue.account, queue.name + FIFO_SUFFIX)
                fifo_state = fifo.FifoState.decode(raw)
                fifo_state.prune(now)
                dedup = fifo.dedup_key(out.dedup_id, out.group, queue.state.attribute("DeduplicationScope"))
                seen = fifo_state.duplicate(dedup, now)
                if seen is not None:
                    message_id, sequence = seen
                else:
                    sequence = fifo_state.record(dedup, message_id, now)
                    await self._put(queue, message_id, data, replace(meta, sequence=sequence), delay, now)
                    await self.backend.set_queue_meta(
                        queue.account, queue.name + FIFO_SUFFIX, fifo_state.encode()
                    )
        else:
            await self._put(queue, message_id, data, meta, delay, now)
        trace = {"AWSTraceHeader": Attribute("String", out.trace_header)} if out.trace_header else {}
        return Sent(
            message_id,
            md5_of_body(data),
            md5_of_attributes(attributes),
            md5_of_attributes(trace),
            sequence,
        )

    async def _put(
        self, queue: Queue, message_id: str, body: bytes, meta: MessageMeta, delay: int, now: float
    ) -> None:
        expires = now + queue.number("MessageRetentionPeriod")
        hidden = now + delay if delay else 0.0
        await self.backend.put_message(
            queue.account, queue.name, message_id, body, expires, hidden, now, meta.encode()
        )
        if not delay:
            self.service.notify((queue.account, queue.name))

    # -- receive ----------------------------------------------------------------
    async def receive(
        self, queue: Queue, limit: int, visibility: int, wait: int, region: str
    ) -> list[Received]:
        """Claim up to ``limit`` messages, long polling up to ``wait`` seconds when there are none."""

        if wait <= 0:
            return await self._claim(queue, limit, visibility, region)

        async def attempt() -> list[Received]:
            return await self._claim(queue, limit, visibility, region)

        return await self.service.poll(queue.account, queue.name, wait, attempt)

    async def _claim(self, queue: Queue, limit: int, visibility: int, region: str) -> list[Received]:
        now = self.service.clock()
        out: list[Received] = []
        if queue.fifo:
            messages = await self.backend.get_messages(queue.account, queue.name, ALL_MESSAGES, now)
            failed: set[str] = set()
            decoded = ((m, MessageMeta.decode(m.meta)) for m in messages)
            for m, meta in fifo.receivable(decoded, now, limit):
                if (meta.group or "") in failed:
                    continue
                got = await self._claim_one(queue, m, meta, visibility, now, region)
                if isinstance(got, Received):
                    out.append(got)
                elif not got:
                    failed.add(meta.group or "")
            return out
        marker = None
        for _ in range(_CLAIM_ROUNDS):
            want = limit - len(out)
            batch = await self.backend.get_messages(
                queue.account, queue.name, new_filter(want, marker, False), now
            )
            for m in batch:
                got = await self._claim_one(queue, m, MessageMeta.decode(m.meta), visibility, now, region)
                if isinstance(got, Received):
                    out.append(got)
            if len(out) >= limit or len(batch) < want:
                break
            marker = batch[-1].id
        return out

    async def _claim_one(
        self, queue: Queue, m: Message, meta: MessageMeta, visibility: int, now: float, region: str
    ) -> Received | bool:
        """Claim one message: the Received; True when it went to the dead-letter queue; False when lost."""
        redrive = queue.redrive()
        if (
            redrive is not None
            and meta.receive_count >= redrive[2]
            and await self._dead_letter(queue, m, meta, redrive, now, region)
        ):
            return True
        claimed = meta.received(_ms(now))
        update = new_update(None, now + visibility if visibility else now, claimed.encode())
        stored = await self.backend.update_message(
            queue.account, queue.name, m.id, update, now, expect_hidden_until=m.hidden_until
        )
        if stored is None:
            return False
        receipt = receipt_handle(queue.account, queue.name, m.id, claimed.receive_count)
        return Received(stored, claimed, receipt)

    async def _dead_letter(
        self,
        queue: Queue,
        m: Message,
        meta: MessageMeta,
        redrive: tuple[str, str, int],
        now: float,
        region: str,
    ) -> bool:
        """Move a message that exhausted maxReceiveCount to its dead-letter queue (False: no DLQ there)."""
        dlq = await self.queues.find(redrive[0], redrive[1])
        if dlq is None or (dlq.account, dlq.name) == (queue.account, queue.name):
            return False  # no DLQ there, or the queue itself (a policy stored before that was refused)
        moved = replace(meta, dlq_source=queue_arn(region, queue.account, queue.name))
        sent = meta.sent / 1000 if meta.sent else now
        expires = sent + dlq.number("MessageRetentionPeriod")
        await self.backend.put_message(dlq.account, dlq.name, m.id, m.body, expires, 0.0, now, moved.encode())
        gone = await self.backend.delete_message(
            queue.account, queue.name, m.id, now, expect_hidden_until=m.hidden_until
        )
        if gone is None:  # another receiver claimed it meanwhile: undo the copy
            await self.backend.delete_message(dlq.account, dlq.name, m.id, now)
            return True
        self.service.notify((dlq.account, dlq.name))
        return True

    # -- delete and visibility ---------------------------------------------------
    @staticmethod
    def _receipt(queue: Queue, handle: str) -> Receipt:
        receipt = Receipt.decode(handle)
        if receipt is None or (receipt.account, receipt.queue) != (queue.account, queue.name):
            raise SqsError(
                "ReceiptHandleIsInvalid",
                f'The input receipt handle "{handle[:200]}" is not a valid receipt handle.',
            )
        return receipt

    async def delete(self, queue: Queue, handle: str) -> None:
        """Delete if ``handle`` is the latest receipt; an older one succeeds and deletes nothing (as AWS)."""
        receipt = self._receipt(queue, handle)
        now = self.service.clock()
        m = await self.backend.get_message(queue.account, queue.name, receipt.message, now)
        if m is None or MessageMeta.receive_count_of(m.meta) != receipt.receive_count:
            return
        gone = await self.backend.delete_message(
            queue.account, queue.name, receipt.message, now, expect_hidden_until=m.hidden_until
        )
        if gone is not None and queue.fifo:
            self.service.notify((queue.account, queue.name))  # its group may be unblocked now

    async def change_visibility(self, queue: Queue, handle: str, timeout: int) -> None:
        receipt = self._receipt(queue, handle)
        now = self.service.clock()
        m = await self.backend.get_message(queue.account, queue.name, receipt.message, now)
        meta = None if m is None else MessageMeta.decode(m.meta)
        unavailable = invalid(
            f"Value {handle[:200]} for parameter ReceiptHandle is invalid. Reason: Message does"
            " not exist or is not available for visibility timeout change."
        )
        if m is None or meta is None or meta.receive_count != receipt.receive_count:
            raise unavailable
        if m.hidden_until <= now:
            raise SqsError("MessageNotInflight", "The message referred to is not in flight.")
        if meta.last_receive and now + timeout - meta.last_receive / 1000 > MAX_VISIBILITY:
            raise invalid(
                f"Value {timeout} for parameter VisibilityTimeout is invalid. Reason: Total"
                " VisibilityTimeout for the message is beyond the limit [43200 seconds]"
            )
        update = new_update(None, now + timeout if timeout else now)
        stored = await self.backend.update_message(
            queue.account, queue.name, m.id, update, now, expect_hidden_until=m.hidden_until
        )
        if stored is None:
            raise unavailable
        if not timeout:
            self.service.notify((queue.account, queue.name))
