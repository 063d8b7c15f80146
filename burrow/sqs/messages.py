"""SQS message operations over the queue engine: send, receive, delete, visibility.

Storage mapping: one SQS message is one Burrow message in (account, queue) with the
same id; the body is the UTF-8 body, ``expires`` is send time + MessageRetentionPeriod,
``hidden_until`` is the delay or the visibility deadline, ``meta`` holds the SQS
extras (:class:`~burrow.sqs.model.MessageMeta`), and the store's own per-message data
holds the receive count, first-receive time, FIFO group and sequence number.

Each operation is one engine call, made atomic by the store: a receive is a *claim*
(take, hide and count in one call; FIFO queues by group), a delete is a delete
conditional on the receipt's receive count, a FIFO send assigns the sequence number
and checks deduplication in the same call, and a dead-letter redrive is a *move*.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from burrow.core.model import Message
from burrow.engine import Engine
from burrow.sqs import fifo
from burrow.sqs.digests import md5_of_attributes, md5_of_body
from burrow.sqs.errors import SqsError, invalid
from burrow.sqs.model import (
    Attribute,
    MessageMeta,
    Receipt,
    new_id,
    queue_arn,
    receipt_handle,
    sequence_number,
)
from burrow.sqs.queues import Queue, QueueRegistry
from burrow.sqs.validation import DEDUP_WINDOW, MAX_VISIBILITY

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

    def __init__(self, engine: Engine, queues: QueueRegistry) -> None:
        self.engine = engine
        self.queues = queues

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
        now = self.engine.now()
        delay = queue.number("DelaySeconds") if out.delay is None else out.delay
        attributes = out.attributes or {}
        data = out.body.encode("utf-8")
        meta = MessageMeta(
            sent=_ms(now),
            attributes=attributes,
            trace_header=out.trace_header,
            dedup_id=out.dedup_id,
            sender=sender,
        ).encode()
        retention = queue.number("MessageRetentionPeriod")
        message_id = new_id()
        sequence = None
        if queue.fifo:
            assert out.dedup_id is not None and out.group is not None
            key = fifo.dedup_key(out.dedup_id, out.group, queue.state.attribute("DeduplicationScope"))
            stored = await self.engine.send(
                queue.account,
                queue.name,
                message_id,
                data,
                retention,
                delay,
                meta,
                out.group,
                key,
                int(DEDUP_WINDOW),
            )
            message_id, sequence = stored.message, sequence_number(stored.sequence)
        else:
            await self.engine.put_message(queue.account, queue.name, message_id, data, retention, delay, meta)
        trace = {"AWSTraceHeader": Attribute("String", out.trace_header)} if out.trace_header else {}
        return Sent(
            message_id,
            md5_of_body(data),
            md5_of_attributes(attributes),
            md5_of_attributes(trace),
            sequence,
        )

    # -- receive ----------------------------------------------------------------
    async def receive(
        self, queue: Queue, limit: int, visibility: int, wait: int, region: str
    ) -> list[Received]:
        """Claim up to ``limit`` messages, long polling up to ``wait`` seconds when there are none.

        A claimed message past its queue's maxReceiveCount goes to the dead-letter queue
        instead of to the caller (so a receive may return fewer than it claimed).
        """
        claimed = await self.engine.claim(queue.account, queue.name, limit, visibility, wait, queue.fifo)
        if not claimed:
            return []
        now_ms = _ms(self.engine.now())
        redrive = queue.redrive()
        out: list[Received] = []
        for m in claimed:
            if (
                redrive is not None
                and m.receives > redrive[2]
                and await self._dead_letter(queue, m, redrive, region)
            ):
                continue
            receipt = receipt_handle(queue.account, queue.name, m.id, m.receives, now_ms)
            out.append(Received(m, MessageMeta.of(m), receipt))
        return out

    async def _dead_letter(
        self, queue: Queue, m: Message, redrive: tuple[str, str, int], region: str
    ) -> bool:
        """Move a message that exceeded maxReceiveCount to its dead-letter queue (False: no DLQ there)."""
        dlq = await self.queues.find(redrive[0], redrive[1])
        if dlq is None or (dlq.account, dlq.name) == (queue.account, queue.name):
            return False  # no DLQ there, or the queue itself (a policy stored before that was refused)
        meta = MessageMeta.decode(m.meta)
        moved = replace(meta, dlq_source=queue_arn(region, queue.account, queue.name))
        await self.engine.move(
            queue.account,
            queue.name,
            m.id,
            dlq.account,
            dlq.name,
            dlq.number("MessageRetentionPeriod"),
            meta=moved.encode(),
            receives=m.receives - 1,  # the deliveries made; the claim that moves it is not one
            expect_receives=m.receives,
            sent=meta.sent / 1000 if meta.sent else None,
        )
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
        await self.engine.delete_message(
            queue.account, queue.name, receipt.message, expect_receives=receipt.receive_count
        )

    async def change_visibility(self, queue: Queue, handle: str, timeout: int) -> None:
        """Set a new visibility timeout on an in-flight message.

        As AWS, any receipt handle of the message works, not only the latest: the
        message must exist and be in flight. The 12-hour cap counts from the receive
        the handle came from.
        """
        receipt = self._receipt(queue, handle)
        now = self.engine.now()
        m = await self.engine.get_message(queue.account, queue.name, receipt.message)
        unavailable = invalid(
            f"Value {handle[:200]} for parameter ReceiptHandle is invalid. Reason: Message does"
            " not exist or is not available for visibility timeout change."
        )
        if m is None:
            raise unavailable
        if m.hidden_until <= now or not m.receives:
            raise SqsError("MessageNotInflight", "The message referred to is not in flight.")
        if now + timeout - receipt.received / 1000 > MAX_VISIBILITY:
            raise invalid(
                f"Value {timeout} for parameter VisibilityTimeout is invalid. Reason: Total"
                " VisibilityTimeout for the message is beyond the limit [43200 seconds]"
            )
        stored = await self.engine.update_message(
            queue.account, queue.name, m.id, None, timeout, expect_hidden_until=m.hidden_until
        )
        if stored is None:
            raise unavailable
