"""SQS actions on messages: send, receive, delete, change visibility, and their batches.

Batches check the request as a whole first (empty, too many, ids, total size and, on
a FIFO queue, every entry's group and deduplication ids: a 400 for the whole call),
then run each entry on its own and report it under Successful or Failed, like AWS.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from collections.abc import Set as AbstractSet
from typing import Any

from burrow.core.errors import InsufficientStorage, QuotaExceeded
from burrow.sqs import validation
from burrow.sqs.digests import md5_of_attributes, md5_of_body
from burrow.sqs.errors import SqsError, from_burrow, invalid, missing
from burrow.sqs.messages import Outgoing, Received, Sent
from burrow.sqs.model import Attribute
from burrow.sqs.params import Caller, Params, integer, queue, required_text, strings, text
from burrow.sqs.queues import Queue
from burrow.sqs.service import SqsService

Result = dict[str, Any]

SYSTEM_ATTRIBUTES = frozenset(
    {
        "SenderId",
        "SentTimestamp",
        "ApproximateReceiveCount",
        "ApproximateFirstReceiveTimestamp",
        "SequenceNumber",
        "MessageDeduplicationId",
        "MessageGroupId",
        "AWSTraceHeader",
        "DeadLetterQueueSourceArn",
    }
)


def _outgoing(p: Params) -> Outgoing:
    group = p.get("MessageGroupId")
    dedup = p.get("MessageDeduplicationId")
    return Outgoing(
        body=validation.body(p.get("MessageBody")),
        delay=integer(p, "DelaySeconds", 0, validation.MAX_DELAY),
        attributes=validation.message_attributes(p.get("MessageAttributes")),
        trace_header=validation.system_attributes(p.get("MessageSystemAttributes")),
        group=None if group is None else validation.group_or_dedup_id(group, "MessageGroupId"),
        dedup_id=None if dedup is None else validation.group_or_dedup_id(dedup, "MessageDeduplicationId"),
    )


def _sent(sent: Sent) -> Result:
    out: Result = {"MessageId": sent.message_id, "MD5OfMessageBody": sent.md5_body}
    if sent.md5_attributes:
        out["MD5OfMessageAttributes"] = sent.md5_attributes
    if sent.md5_system:
        out["MD5OfMessageSystemAttributes"] = sent.md5_system
    if sent.sequence:
        out["SequenceNumber"] = sent.sequence
    return out


async def send_message(sqs: SqsService, caller: Caller, p: Params) -> Result:
    q = await queue(sqs, caller, p)
    out = sqs.messages.check(q, _outgoing(p))
    return _sent(await sqs.messages.send(q, out, caller.account))


def _failure(entry_id: str, error: SqsError) -> Result:
    return {"Id": entry_id, "SenderFault": error.sender_fault, "Code": error.code, "Message": error.message}


async def _batch(
    entries: list[Mapping[str, Any]], run: Callable[[Mapping[str, Any]], Awaitable[Result]]
) -> Result:
    successful: list[Result] = []
    failed: list[Result] = []
    for entry in entries:
        try:
            successful.append({"Id": entry["Id"], **await run(entry)})
        except SqsError as error:
            failed.append(_failure(entry["Id"], error))
        except (QuotaExceeded, InsufficientStorage) as error:  # entries before it were stored
            failed.append(_failure(entry["Id"], from_burrow(error)))
    return {"Successful": successful, "Failed": failed}


async def send_message_batch(sqs: SqsService, caller: Caller, p: Params) -> Result:
    q = await queue(sqs, caller, p)
    entries = validation.batch_ids(p.get("Entries"), "SendMessageBatchRequestEntry")
    total = 0
    for entry in entries:
        body = entry.get("MessageBody")
        total += len(body.encode("utf-8")) if isinstance(body, str) else 0
        attrs = entry.get("MessageAttributes")
        if isinstance(attrs, Mapping):
            total += sum(len(str(n)) + len(str(v)) for n, v in attrs.items())
    if total > validation.MAX_BATCH_BYTES:
        raise SqsError(
            "BatchRequestTooLong",
            f"Batch requests cannot be longer than"
            f" {validation.MAX_BATCH_BYTES} bytes. You have sent {total} bytes.",
        )

    # Every entry is checked before any is sent: on a FIFO queue an entry without its
    # group id (or dedup id) fails the whole request, as on AWS, and then nothing is sent.
    checked: dict[str, Outgoing | SqsError] = {}
    for entry in entries:
        if q.fifo:
            _require_fifo_ids(q, entry)
        entry_id = str(entry["Id"])  # checked by batch_ids: distinct strings
        try:
            checked[entry_id] = sqs.messages.check(q, _outgoing(entry))
        except SqsError as error:  # the entry's own failure: reported under Failed
            checked[entry_id] = error

    async def one(entry: Mapping[str, Any]) -> Result:
        out = checked[str(entry["Id"])]
        if isinstance(out, SqsError):
            raise out
        return _sent(await sqs.messages.send(q, out, caller.account))

    return await _batch(entries, one)


def _require_fifo_ids(q: Queue, entry: Mapping[str, Any]) -> None:
    """The ids a FIFO batch entry must carry; AWS fails the whole batch when one lacks them."""
    if entry.get("MessageGroupId") is None:
        raise missing("MessageGroupId")
    if (
        entry.get("MessageDeduplicationId") is None
        and q.state.attribute("ContentBasedDeduplication") != "true"
    ):
        raise invalid(
            "The queue should either have ContentBasedDeduplication enabled or"
            " MessageDeduplicationId provided explicitly"
        )


# -- receive -------------------------------------------------------------------------


def _wanted_attributes(names: list[str], attributes: dict[str, Attribute]) -> dict[str, Attribute]:
    """Message attributes selected by MessageAttributeNames: names, ``All``, ``.*`` or ``prefix.*``.

    As on AWS, ``prefix.*`` selects every name that starts with ``prefix`` (the ``.*``
    is a wildcard, not part of the prefix): ``Hel.*`` selects ``Hello`` and ``Help.Me``.
    """
    if not names or not attributes:
        return {}
    if "All" in names or ".*" in names:
        return attributes
    prefixes = tuple(n[:-2] for n in names if n.endswith(".*"))
    exact = set(names)
    return {k: v for k, v in attributes.items() if k in exact or (prefixes and k.startswith(prefixes))}


def _render(r: Received, caller: Caller, system: AbstractSet[str], names: list[str], now_ms: int) -> Result:
    m, meta = r.message, r.meta
    data = m.body
    try:
        body = data.decode("utf-8")  # valid UTF-8 (every SQS body): its digest is of the stored bytes
    except UnicodeDecodeError:  # a burrow v1.0 binary body: SQS sees (and digests) it repaired
        body = data.decode("utf-8", "replace")
        data = body.encode("utf-8")
    out: Result = {
        "MessageId": m.id,
        "ReceiptHandle": r.receipt,
        "MD5OfBody": md5_of_body(data),
        "Body": body,
    }
    if system:
        values = {
            "SenderId": meta.sender or caller.account,
            "SentTimestamp": str(meta.sent or now_ms),
            "ApproximateReceiveCount": str(meta.receive_count),
            "ApproximateFirstReceiveTimestamp": str(meta.first_receive),
            "SequenceNumber": meta.sequence,
            "MessageDeduplicationId": meta.dedup_id,
            "MessageGroupId": meta.group,
            "AWSTraceHeader": meta.trace_header,
            "DeadLetterQueueSourceArn": meta.dlq_source,
        }
        picked = {k: v for k, v in values.items() if v is not None and k in system}
        if picked:
            out["Attributes"] = picked
    attributes = _wanted_attributes(names, meta.attributes)
    if attributes:
        out["MD5OfMessageAttributes"] = md5_of_attributes(attributes)
        out["MessageAttributes"] = {k: v.to_json() for k, v in attributes.items()}
    return out


_NO_NAMES: frozenset[str] = frozenset()


def _system_names(p: Params) -> AbstractSet[str]:
    """The system attributes AttributeNames and MessageSystemAttributeNames ask for (checked)."""
    if "AttributeNames" not in p and "MessageSystemAttributeNames" not in p:
        return _NO_NAMES  # most receives ask for none: skip building sets
    requested = set(strings(p, "AttributeNames")) | set(strings(p, "MessageSystemAttributeNames"))
    for name in requested:
        if name != "All" and name not in SYSTEM_ATTRIBUTES and name not in validation.ALL_QUEUE_ATTRIBUTES:
            raise SqsError("InvalidAttributeName", f"Unknown Attribute {name[:100]}.")
    return SYSTEM_ATTRIBUTES if "All" in requested else requested & SYSTEM_ATTRIBUTES


async def receive_message(sqs: SqsService, caller: Caller, p: Params) -> Result:
    q = await queue(sqs, caller, p)
    limit = integer(p, "MaxNumberOfMessages", 1, 10) or 1
    visibility = integer(p, "VisibilityTimeout", 0, validation.MAX_VISIBILITY)
    wait = integer(p, "WaitTimeSeconds", 0, validation.MAX_WAIT)
    text(p, "ReceiveRequestAttemptId")
    system = _system_names(p)
    names = strings(p, "MessageAttributeNames")
    received = await sqs.messages.receive(
        q,
        limit,
        q.number("VisibilityTimeout") if visibility is None else visibility,
        q.number("ReceiveMessageWaitTimeSeconds") if wait is None else wait,
        caller.region,
    )
    if not received:
        return {}
    now_ms = int(sqs.now() * 1000)
    return {"Messages": [_render(r, caller, system, names, now_ms) for r in received]}


# -- delete and visibility ---------------------------------------------------------------


async def delete_message(sqs: SqsService, caller: Caller, p: Params) -> Result:
    q = await queue(sqs, caller, p)
    await sqs.messages.delete(q, required_text(p, "ReceiptHandle"))
    return {}


async def delete_message_batch(sqs: SqsService, caller: Caller, p: Params) -> Result:
    q = await queue(sqs, caller, p)
    entries = validation.batch_ids(p.get("Entries"), "DeleteMessageBatchRequestEntry")

    async def one(entry: Mapping[str, Any]) -> Result:
        await sqs.messages.delete(q, required_text(entry, "ReceiptHandle"))
        return {}

    return await _batch(entries, one)


async def _change(sqs: SqsService, q: Queue, p: Params) -> None:
    handle = required_text(p, "ReceiptHandle")
    timeout = integer(p, "VisibilityTimeout", 0, validation.MAX_VISIBILITY)
    if timeout is None:
        raise SqsError("MissingParameter", "The request must contain the parameter VisibilityTimeout.")
    await sqs.messages.change_visibility(q, handle, timeout)


async def change_message_visibility(sqs: SqsService, caller: Caller, p: Params) -> Result:
    await _change(sqs, await queue(sqs, caller, p), p)
    return {}


async def change_message_visibility_batch(sqs: SqsService, caller: Caller, p: Params) -> Result:
    q = await queue(sqs, caller, p)
    entries = validation.batch_ids(p.get("Entries"), "ChangeMessageVisibilityBatchRequestEntry")

    async def one(entry: Mapping[str, Any]) -> Result:
        await _change(sqs, q, entry)
        return {}

    return await _batch(entries, one)
