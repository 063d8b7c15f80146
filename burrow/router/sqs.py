"""Which queue an SQS request names, so the router can send it to that queue's server.

The request is read, never changed: its body and signed headers go to the server byte for
byte, which verifies the signature (a router never re-signs). What names the queue:

* ``QueueUrl`` (a URL, its ``/account/queue`` path, or a bare name of the caller's own
  account): every action on one queue. In the query protocol a request sent to a queue
  URL's path names that queue when it has no ``QueueUrl`` parameter.
* ``QueueName`` with the caller's account (``QueueOwnerAWSAccountId`` for GetQueueUrl):
  CreateQueue, GetQueueUrl.
* ``SourceArn``: StartMessageMoveTask, ListMessageMoveTasks; the ARN inside a
  ``TaskHandle``: CancelMessageMoveTask.
* nothing: ListQueues (every server of the caller's account is asked; see
  :mod:`burrow.router.merge`), and requests the server will refuse anyway.

The caller's account is read as the server reads it: the SigV4 credential's access key, or
``sqs_default_account`` without one (:func:`burrow.api.sqs_auth.signed_account`).
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

import orjson

from burrow.api.sqs_auth import signed_account
from burrow.api.sqs_query import form_params
from burrow.http.types import Request
from burrow.sqs.errors import SqsError
from burrow.sqs.model import parse_arn, parse_queue_url

_PREFIX = "AmazonSQS."
_BY_NAME = frozenset(("CreateQueue", "GetQueueUrl"))
_BY_SOURCE_ARN = frozenset(("StartMessageMoveTask", "ListMessageMoveTasks"))


@dataclass(frozen=True, slots=True)
class SqsTarget:
    """What an SQS request addresses: its action, the caller's account, and the queue it names."""

    action: str
    account: str
    #: The queue's (account, name), or None when the request names none.
    queue: tuple[str, str] | None
    #: The request members (JSON-shaped for JSON requests; flat form fields for query ones).
    params: dict[str, Any]


def sqs_target(request: Request, protocol: str, default_account: str) -> SqsTarget:
    """The :class:`SqsTarget` of an SQS request (``protocol``: ``"json"`` or ``"query"``).

    A request too malformed to name a queue (a body that is not JSON, an unknown action)
    names none: the server it goes to answers the error.
    """
    account = signed_account(request.headers) or default_account
    params: dict[str, Any]
    if protocol == "json":
        action = request.headers.get("x-amz-target", "").removeprefix(_PREFIX)
        try:
            loaded = orjson.loads(request.body) if request.body.strip() else {}
        except orjson.JSONDecodeError:
            loaded = None
        params = loaded if isinstance(loaded, dict) else {}
    else:
        try:
            params = dict(form_params(request))
        except SqsError:
            params = {}
        action = str(params.get("Action", ""))
        if "QueueUrl" not in params and request.path.count("/") == 2 and request.path != "/":
            params["QueueUrl"] = request.path
    return SqsTarget(action, account, _queue_of(action, account, params), params)


def _queue_of(action: str, account: str, params: dict[str, Any]) -> tuple[str, str] | None:
    if action in _BY_NAME:
        name = params.get("QueueName")
        owner = params.get("QueueOwnerAWSAccountId") if action == "GetQueueUrl" else None
        if not isinstance(name, str) or not name:
            return None
        return (owner if isinstance(owner, str) and owner else account), name
    if action in _BY_SOURCE_ARN:
        return _by_arn(params.get("SourceArn"))
    if action == "CancelMessageMoveTask":
        return _by_arn(_task_arn(params.get("TaskHandle")))
    url = params.get("QueueUrl")
    if not isinstance(url, str):
        return None
    parsed = parse_queue_url(url)
    if parsed is None:
        return None
    return parsed[0] or account, parsed[1]


def _by_arn(arn: object) -> tuple[str, str] | None:
    parsed = parse_arn(arn) if isinstance(arn, str) else None
    return None if parsed is None else (parsed[1], parsed[2])


def _task_arn(handle: object) -> str | None:
    """The source queue ARN inside a move task handle (base64 JSON ``[id, arn]``)."""
    if not isinstance(handle, str):
        return None
    try:
        decoded = orjson.loads(base64.urlsafe_b64decode(handle.encode("ascii")))
    except (ValueError, UnicodeError, binascii.Error, orjson.JSONDecodeError):
        return None
    if isinstance(decoded, list) and len(decoded) == 2 and isinstance(decoded[1], str):
        return decoded[1]
    return None
