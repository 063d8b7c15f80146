"""The SQS AWS JSON 1.0 front end: ``X-Amz-Target: AmazonSQS.<Action>`` with a JSON body.

It only translates: authenticate, parse the body, run the action, render JSON.
Errors carry the shape in ``__type`` and the legacy code in ``x-amzn-query-error``
(botocore reports the latter as ``Error.Code``). Each request is counted by its action
(:func:`sqs_stats`).
"""

from __future__ import annotations

import asyncio
import logging
from time import perf_counter
from typing import Any

import orjson

from burrow.api.sqs_auth import Authenticator
from burrow.core.errors import BurrowError
from burrow.http.types import Request, Response
from burrow.metrics import CANCELLED, SQS, UNMATCHED, Metrics, OpStats
from burrow.sqs.actions import ACTIONS, run
from burrow.sqs.errors import SqsError, from_burrow
from burrow.sqs.model import new_id
from burrow.sqs.service import SqsService

log = logging.getLogger("burrow.api.sqs")

JSON_10 = "application/x-amz-json-1.0"
_PREFIX = "AmazonSQS."


def storage_error(error: BurrowError) -> SqsError:
    """A store failure as the SQS error a client retries on (a quota: see ``from_burrow``)."""
    return from_burrow(error)


def sqs_stats(metrics: Metrics) -> dict[str, OpStats]:
    """Counters of every SQS action, and of requests naming none that exists (key ``""``)."""
    stats = {action: metrics.op(SQS, action) for action in ACTIONS}
    stats[""] = metrics.op(SQS, UNMATCHED)
    return stats


def json_error(error: SqsError, request_id: str) -> Response:
    body = orjson.dumps({"__type": f"com.amazonaws.sqs#{error.shape}", "message": error.message})
    headers = [
        ("x-amzn-query-error", f"{error.code};{error.fault}"),
        ("x-amzn-RequestId", request_id),
    ]
    return Response(error.status, body, JSON_10, headers)


def _params(body: bytes) -> dict[str, Any]:
    """The request members: the body's JSON object; an empty (or blank) body is no members."""
    try:
        params = orjson.loads(body)
    except orjson.JSONDecodeError:
        # Blank bodies are rare: only look for one once parsing failed.
        if not body.strip():
            return {}
        raise SqsError("InvalidParameterValue", "The request body is not valid JSON.") from None
    if not isinstance(params, dict):
        raise SqsError("InvalidParameterValue", "The request body must be a JSON object.")
    return params


class SqsJsonApi:
    def __init__(self, sqs: SqsService, auth: Authenticator, metrics: Metrics | None = None) -> None:
        self.sqs = sqs
        self.auth = auth
        self._stats = sqs_stats(metrics) if metrics is not None else {}
        self._observe = metrics.observe if metrics is not None and metrics.observing else None

    async def __call__(self, request: Request) -> Response:
        observe = self._observe
        started = perf_counter() if observe is not None else 0.0
        request_id = new_id()
        target = request.headers.get("x-amz-target", "")
        action = target[len(_PREFIX) :] if target.startswith(_PREFIX) else ""
        try:
            if not action:
                raise SqsError(
                    "InvalidAction", f"Unknown X-Amz-Target {target[:100]!r}; expected AmazonSQS.<Action>."
                )
            caller = self.auth.caller(request, self.sqs.wall_clock())
            params = _params(request.body)
            result = await run(self.sqs, caller, action, params)
            response = Response(200, orjson.dumps(result), JSON_10, [("x-amzn-RequestId", request_id)])
        except SqsError as error:
            response = json_error(error, request_id)
        except BurrowError as error:
            response = json_error(storage_error(error), request_id)
        except asyncio.CancelledError:  # the client went away (a long poll, mostly): 499
            if observe is not None:
                observe(self._stats.get(action) or self._stats[""], request, CANCELLED, started)
            raise
        if observe is not None:
            stats = self._stats
            observe(stats.get(action) or stats[""], request, response, started)
        return response
