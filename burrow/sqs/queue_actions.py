"""SQS actions on queues: create, look up, list, attributes, tags, purge, delete, DLQ sources,
permissions, redrive.

Each takes (service, caller, request members) and returns the response members,
JSON-shaped; empty members are left out as AWS does.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import replace
from typing import Any

import orjson

from burrow.sqs import validation
from burrow.sqs.errors import SqsError, invalid, missing, no_queue
from burrow.sqs.model import DEFAULTS, FIFO_DEFAULTS, QueueState, parse_arn, queue_arn, queue_url
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
from burrow.sqs.redrive import MoveTask, task_account
from burrow.sqs.service import SqsService

Result = dict[str, Any]


async def create_queue(sqs: SqsService, caller: Caller, p: Params) -> Result:
    name = required_text(p, "QueueName")
    raw = mapping(p, "Attributes")
    fifo_flag = raw.get("FifoQueue")
    fifo = isinstance(fifo_flag, str) and fifo_flag.lower() == "true"
    validation.queue_name(name, fifo)
    attributes = validation.queue_attributes(raw, fifo)
    _check_redrive_region(caller, attributes)
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
        visible, in_flight, delayed = await sqs.queues.counts(q)
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
    _check_redrive_region(caller, attributes)
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


def _check_redrive_region(caller: Caller, attributes: dict[str, str]) -> None:
    """A dead-letter target in another region does not exist here (the server is one region)."""
    raw = attributes.get("RedrivePolicy")
    parsed = parse_arn(orjson.loads(raw)["deadLetterTargetArn"]) if raw else None
    if parsed is not None and parsed[0] != caller.region:
        raise invalid(
            "Value for parameter RedrivePolicy is invalid. Reason: Dead letter target does not exist."
        )


# -- permissions -----------------------------------------------------------------------

#: Actions AddPermission may share (AWS lets a queue owner share only these; ``*`` is all).
SHAREABLE_ACTIONS = frozenset(
    {
        "*",
        "ChangeMessageVisibility",
        "DeleteMessage",
        "GetQueueAttributes",
        "GetQueueUrl",
        "ListDeadLetterSourceQueues",
        "PurgeQueue",
        "ReceiveMessage",
        "SendMessage",
    }
)
#: Most actions in one AddPermission (one policy statement), as AWS.
MAX_PERMISSION_ACTIONS = 7
_LABEL = re.compile(r"[A-Za-z0-9_-]{1,80}")
#: A principal is a Burrow account, i.e. an SQS access key.
_ACCOUNT = re.compile(r"[A-Za-z0-9_.-]{1,128}")


def _label(p: Params) -> str:
    label = required_text(p, "Label")
    if not _LABEL.fullmatch(label):
        raise invalid(
            f"Value {label[:100]} for parameter Label is invalid. Reason: Can only include"
            " alphanumeric characters, hyphens, or underscores. 1 to 80 in length."
        )
    return label


def _policy(state: QueueState, arn: str) -> dict[str, Any]:
    """The queue's policy document (a fresh one when it has none), with Statement as a list."""
    raw = state.attributes.get("Policy")
    doc: dict[str, Any] = orjson.loads(raw) if raw else {}  # stored ones are checked JSON objects
    doc.setdefault("Version", "2012-10-17")
    doc.setdefault("Id", f"{arn}/SQSDefaultPolicy")
    statements = doc.get("Statement", [])
    doc["Statement"] = statements if isinstance(statements, list) else [statements]
    return doc


def _with_policy(state: QueueState, doc: dict[str, Any]) -> QueueState:
    """``state`` with ``doc`` as its Policy; without statements left, with no Policy."""
    attributes = {k: v for k, v in state.attributes.items() if k != "Policy"}
    if doc["Statement"]:
        attributes["Policy"] = orjson.dumps(doc).decode()
    return replace(state, attributes=attributes)


def _has_label(statement: object, label: str) -> bool:
    return isinstance(statement, dict) and statement.get("Sid") == label


async def add_permission(sqs: SqsService, caller: Caller, p: Params) -> Result:
    """A policy statement ``Sid=Label`` allowing the accounts ``SQS:<action>`` on the queue."""
    q = await queue(sqs, caller, p)
    label = _label(p)
    if p.get("AWSAccountIds") is None:
        raise missing("AWSAccountIds")
    accounts = strings(p, "AWSAccountIds")
    bad = next((a for a in accounts if not _ACCOUNT.fullmatch(a)), None) if accounts else "[]"
    if bad is not None:
        raise invalid(f"Value {bad[:130]} for parameter PrincipalId is invalid. Reason: Unable to verify.")
    actions = strings(p, "Actions")
    if not actions:
        raise missing("Actions")
    if len(actions) > MAX_PERMISSION_ACTIONS:
        raise SqsError(
            "OverLimit", f"{len(actions)} Actions were found, maximum allowed is {MAX_PERMISSION_ACTIONS}."
        )
    for action in actions:
        if action not in SHAREABLE_ACTIONS:
            raise invalid(
                f"Value SQS:{action[:100]} for parameter ActionName is invalid. Reason: Only the"
                " queue owner is allowed to invoke this action."
            )
    arn = queue_arn(caller.region, q.account, q.name)
    principals = [f"arn:aws:iam::{a}:root" for a in accounts]
    granted = [f"SQS:{a}" for a in actions]
    statement = {
        "Sid": label,
        "Effect": "Allow",
        "Principal": {"AWS": principals[0] if len(principals) == 1 else principals},
        "Action": granted[0] if len(granted) == 1 else granted,
        "Resource": arn,
    }

    def added(state: QueueState) -> QueueState:
        doc = _policy(state, arn)
        if any(_has_label(s, label) for s in doc["Statement"]):
            raise invalid(f"Value {label} for parameter Label is invalid. Reason: Already exists.")
        doc["Statement"].append(statement)
        return _with_policy(state, doc)

    await sqs.queues.update(q, sqs.now(), added)
    return {}


async def remove_permission(sqs: SqsService, caller: Caller, p: Params) -> Result:
    """Drop the policy statement ``Sid=Label``; the last one gone, the queue has no Policy."""
    q = await queue(sqs, caller, p)
    label = required_text(p, "Label")
    arn = queue_arn(caller.region, q.account, q.name)

    def removed(state: QueueState) -> QueueState:
        doc = _policy(state, arn)
        kept = [s for s in doc["Statement"] if not _has_label(s, label)]
        if len(kept) == len(doc["Statement"]):
            raise invalid(
                f"Value {label[:100]} for parameter Label is invalid."
                " Reason: can't find label on existing policy."
            )
        doc["Statement"] = kept
        return _with_policy(state, doc)

    await sqs.queues.update(q, sqs.now(), removed)
    return {}


# -- redrive -------------------------------------------------------------------------


async def _queue_by_arn(sqs: SqsService, caller: Caller, arn: str, what: str) -> Queue:
    parsed = parse_arn(arn)
    if parsed is None:
        raise invalid(f"Value {arn[:200]} for parameter {what} is invalid. Reason: not an SQS queue ARN.")
    if parsed[0] != caller.region:  # this server is one region: no queue of another exists
        raise SqsError("ResourceNotFoundException", f"The queue {arn[:200]} does not exist.")
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
    return {"Results": [_task(t) for t in await sqs.moves.list(source, limit)]}


async def cancel_message_move_task(sqs: SqsService, caller: Caller, p: Params) -> Result:
    handle = required_text(p, "TaskHandle")
    owner = task_account(handle)
    if owner is not None:
        account_of(caller, owner)  # another account's task: AccessDenied, its state untold
    task = await sqs.moves.cancel(handle)
    return {"ApproximateNumberOfMessagesMoved": task.moved}
