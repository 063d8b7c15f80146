"""SQS actions on queues: create, look up, list, attributes, tags, purge, delete, DLQ sources, redrive.

Each takes (service, caller, request members) and returns the response members,
JSON-shaped; empty members are left out as AWS does.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from burrow.sqs import validation
from burrow.sqs.errors import SqsError, invalid, no_queue
from burrow.sqs.model import DEFAULTS, FIFO_DEFAULTS, parse_arn, queue_arn, queue_url
from burrow.sqs.params import (
    Caller,
    Params,
    account_of,
    integer,
    mapping,
    queue,
    required_text,
    strings,
    text,
    url,
)
from burrow.sqs.queues import Queue
from burrow.sqs.redrive import MoveTask
from burrow.sqs.service import SqsService

Result = dict[str, Any]


async def create_queue(sqs: SqsService, caller: Caller, p: Params) -> Result:
    name = required_text(p, "QueueName")
    raw = mapping(p, "Attributes")
    fifo_flag = raw.get("FifoQueue")
    fifo = isinstance(fifo_flag, str) and fifo_flag.lower() == "true"
    validation.queue_name(name, fifo)
    attributes = validation.queue_attributes(raw, fifo)
    tags = validation.tags(p.get("tags", p.get("Tags")))
    await sqs.queues.create(caller.account, name, attributes, tags, sqs.now())
    return {"QueueUrl": queue_url(caller.host, caller.account, name)}


async def get_queue_url(sqs: SqsService, caller: Caller, p: Params) -> Result:
    name = required_text(p, "QueueName")
    account = account_of(caller, text(p, "QueueOwnerAWSAccountId") or caller.account)
    q = await sqs.queues.find(account, name)
    if q is None:
        raise no_queue()
    return {"QueueUrl": url(caller, q)}


def _page(names: list[str], p: Params, token_name: str = "NextToken") -> tuple[list[str], str | None]:
    """Names sorted; ``NextToken`` is the last name returned, only when MaxResults was given."""
    limit = integer(p, "MaxResults", 1, 1000)
    token = text(p, token_name)
    names = sorted(names)
    if token:
        try:
            after = base64.urlsafe_b64decode(token.encode("ascii")).decode("utf-8")
        except (binascii.Error, ValueError, UnicodeError):
            raise invalid("Invalid NextToken value.") from None
        names = [n for n in names if n > after]
    page = names[: limit or 1000]
    more = limit is not None and len(names) > limit
    next_token = base64.urlsafe_b64encode(page[-1].encode("utf-8")).decode("ascii") if more else None
    return page, next_token


async def list_queues(sqs: SqsService, caller: Caller, p: Params) -> Result:
    prefix = text(p, "QueueNamePrefix") or ""
    names = [q.name for q in await sqs.queues.all(caller.account) if q.name.startswith(prefix)]
    page, token = _page(names, p)
    out: Result = {}
    if page:
        out["QueueUrls"] = [queue_url(caller.host, caller.account, n) for n in page]
    if token:
        out["NextToken"] = token
    return out


async def delete_queue(sqs: SqsService, caller: Caller, p: Params) -> Result:
    await sqs.queues.delete(await queue(sqs, caller, p), sqs.now())
    return {}


async def queue_attributes(sqs: SqsService, caller: Caller, q: Queue, names: list[str]) -> dict[str, str]:
    """The requested attributes ("All" = every one) as strings."""
    for name in names:
        if name != "All" and name not in validation.ALL_QUEUE_ATTRIBUTES:
            raise SqsError("InvalidAttributeName", f"Unknown Attribute {name[:100]}.")
    wanted = set(validation.ALL_QUEUE_ATTRIBUTES) if "All" in names else set(names)
    state = q.state
    values: dict[str, str] = {}
    for name in (*DEFAULTS, *(FIFO_DEFAULTS if q.fifo else ()), *state.attributes):
        values[name] = state.attribute(name)
    values["QueueArn"] = queue_arn(caller.region, q.account, q.name)
    values["CreatedTimestamp"] = str(state.created)
    values["LastModifiedTimestamp"] = str(state.modified)
    if wanted & {
        "ApproximateNumberOfMessages",
        "ApproximateNumberOfMessagesNotVisible",
        "ApproximateNumberOfMessagesDelayed",
    }:
        visible, in_flight, delayed = await sqs.queues.counts(q, sqs.now())
        values["ApproximateNumberOfMessages"] = str(visible)
        values["ApproximateNumberOfMessagesNotVisible"] = str(in_flight)
        values["ApproximateNumberOfMessagesDelayed"] = str(delayed)
    return {k: v for k, v in sorted(values.items()) if k in wanted}


async def get_queue_attributes(sqs: SqsService, caller: Caller, p: Params) -> Result:
    q = await queue(sqs, caller, p)
    values = await queue_attributes(sqs, caller, q, strings(p, "AttributeNames"))
    return {"Attributes": values} if values else {}


async def set_queue_attributes(sqs: SqsService, caller: Caller, p: Params) -> Result:
    q = await queue(sqs, caller, p)
    if p.get("Attributes") is None:
        raise SqsError("MissingParameter", "The request must contain the parameter Attributes.")
    attributes = validation.queue_attributes(mapping(p, "Attributes"), q.fifo)
    await sqs.queues.set_attributes(q, attributes, sqs.now())
    return {}


async def purge_queue(sqs: SqsService, caller: Caller, p: Params) -> Result:
    await sqs.queues.purge(await queue(sqs, caller, p), sqs.now())
    return {}


async def tag_queue(sqs: SqsService, caller: Caller, p: Params) -> Result:
    q = await queue(sqs, caller, p)
    tags = validation.tags(p.get("Tags"))
    if not tags:
        raise SqsError("MissingParameter", "The request must contain the parameter Tags.")
    await sqs.queues.tag(q, tags, sqs.now())
    return {}


async def untag_queue(sqs: SqsService, caller: Caller, p: Params) -> Result:
    q = await queue(sqs, caller, p)
    keys = strings(p, "TagKeys")
    if not keys:
        raise SqsError("MissingParameter", "The request must contain the parameter TagKeys.")
    await sqs.queues.untag(q, keys, sqs.now())
    return {}


async def list_queue_tags(sqs: SqsService, caller: Caller, p: Params) -> Result:
    q = await queue(sqs, caller, p)
    return {"Tags": dict(q.state.tags)} if q.state.tags else {}


async def list_dead_letter_source_queues(sqs: SqsService, caller: Caller, p: Params) -> Result:
    q = await queue(sqs, caller, p)
    page, token = _page(await sqs.queues.dead_letter_sources(q), p)
    out: Result = {"queueUrls": [queue_url(caller.host, q.account, n) for n in page]}
    if token:
        out["NextToken"] = token
    return out


# -- redrive -------------------------------------------------------------------------


async def _queue_by_arn(sqs: SqsService, caller: Caller, arn: str, what: str) -> Queue:
    parsed = parse_arn(arn)
    if parsed is None:
        raise invalid(f"Value {arn[:200]} for parameter {what} is invalid. Reason: not an SQS queue ARN.")
    found = await sqs.queues.find(account_of(caller, parsed[1]), parsed[2])
    if found is None:
        raise SqsError("ResourceNotFoundException", f"The queue {arn[:200]} does not exist.")
    return found


async def start_message_move_task(sqs: SqsService, caller: Caller, p: Params) -> Result:
    source_arn = required_text(p, "SourceArn")
    source = await _queue_by_arn(sqs, caller, source_arn, "SourceArn")
    destination_arn = text(p, "DestinationArn")
    destination = None
    if destination_arn:
        destination = await _queue_by_arn(sqs, caller, destination_arn, "DestinationArn")
        if (destination.account, destination.name) == (source.account, source.name):
            # each move puts the message and then deletes it from the source: the same message
            raise invalid("The source and destination queues of a message move task must differ.")
    rate = integer(p, "MaxNumberOfMessagesPerSecond", 1, 500)
    handle = await sqs.moves.start(source, source_arn, destination, destination_arn or None, rate)
    return {"TaskHandle": handle}


def _task(task: MoveTask) -> Result:
    out: Result = {
        "Status": task.status,
        "SourceArn": task.source_arn,
        "ApproximateNumberOfMessagesMoved": task.moved,
        "ApproximateNumberOfMessagesToMove": task.to_move,
        "StartedTimestamp": task.started,
    }
    if task.status == "RUNNING":
        out["TaskHandle"] = task.handle
    if task.destination_arn:
        out["DestinationArn"] = task.destination_arn
    if task.rate:
        out["MaxNumberOfMessagesPerSecond"] = task.rate
    if task.failure:
        out["FailureReason"] = task.failure
    return out


async def list_message_move_tasks(sqs: SqsService, caller: Caller, p: Params) -> Result:
    source = await _queue_by_arn(sqs, caller, required_text(p, "SourceArn"), "SourceArn")
    limit = integer(p, "MaxResults", 1, 10) or 1
    return {"Results": [_task(t) for t in sqs.moves.list(source, limit)]}


async def cancel_message_move_task(sqs: SqsService, caller: Caller, p: Params) -> Result:
    task = await sqs.moves.cancel(required_text(p, "TaskHandle"))
    return {"ApproximateNumberOfMessagesMoved": task.moved}
