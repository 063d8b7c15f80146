"""Reading one SQS request's members (JSON-shaped: the query front end converts to this shape).

Wrong types and missing required members become the errors AWS returns
(InvalidParameterValue, MissingParameter), never a crash.
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from typing import Any

from burrow.sqs import validation
from burrow.sqs.errors import SqsError, invalid, missing, no_queue
from burrow.sqs.model import parse_queue_url, queue_url
from burrow.sqs.queues import Queue
from burrow.sqs.service import SqsService

Params = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is asking, and from where: the SigV4 access key's account, the server's region
    (``Settings.region``, which every ARN names), the Host header."""

    account: str
    region: str
    host: str
    #: True when signatures are verified: then a caller reaches only its own account's queues.
    strict: bool = False


def text(p: Params, name: str, required: bool = False) -> str | None:
    value = p.get(name)
    if value is None:
        if required:
            raise missing(name)
        return None
    if not isinstance(value, str):
        raise invalid(f"Value for parameter {name} is invalid. Reason: must be a string.")
    return value


def required_text(p: Params, name: str) -> str:
    value = text(p, name, required=True)
    assert value is not None
    return value


def integer(p: Params, name: str, minimum: int, maximum: int) -> int | None:
    value = p.get(name)
    return None if value is None else validation.integer(value, name, minimum, maximum)


def strings(p: Params, name: str) -> list[str]:
    value = p.get(name)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise invalid(f"Value for parameter {name} is invalid. Reason: must be a list of strings.")
    return value


def mapping(p: Params, name: str) -> Mapping[str, Any]:
    value = p.get(name)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise invalid(f"Value for parameter {name} is invalid. Reason: must be a map.")
    return value


def account_of(caller: Caller, account: str) -> str:
    """The account a request may address: any in dev mode, only the caller's when verifying."""
    if caller.strict and account != caller.account:
        raise SqsError("AccessDenied", "Access to the resource is denied.")
    return account


def queue(sqs: SqsService, caller: Caller, p: Params) -> Awaitable[Queue]:
    """The request's queue (``await queue(...)``); a plain function, to spare a coroutine frame.

    ``QueueUrl`` is a queue URL, its path, or (as AWS accepts) a bare queue name, which
    names a queue of the caller's own account.
    """
    parsed = parse_queue_url(required_text(p, "QueueUrl"))
    if parsed is None:
        raise no_queue()
    account, name = parsed
    return sqs.queues.get(account_of(caller, account or caller.account), name)


def url(caller: Caller, q: Queue) -> str:
    return queue_url(caller.host, q.account, q.name)
