"""The SQS AWS JSON 1.0 front end: ``X-Amz-Target: AmazonSQS.<Action>`` with a JSON body.

It only translates: authenticate, parse the body, run the action, render JSON.
Errors carry the shape in ``__type`` and the legacy code in ``x-amzn-query-error``
(botocore reports the latter as ``Error.Code``).
"""

from __future__ import annotations

import logging
from typing import Any

import orjson

from burrow.api.sqs_auth import Authenticator
from burrow.core.errors import BurrowError
from burrow.http.types import Request, Response
from burrow.sqs.actions import run
from burrow.sqs.errors import SqsError
from burrow.sqs.model import new_id
from burrow.sqs.service import SqsService

log = logging.getLogger("burrow.api.sqs")

JSON_10 = "application/x-amz-json-1.0"
_PREFIX = "AmazonSQS."


def storage_error(error: BurrowError) -> SqsError:
    """A store failure as the SQS error a client retries on."""
    return SqsError("ServiceUnavailable", f"The service is unavailable: {error.message}")


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
    def __init__(self, sqs: SqsService, auth: Authenticator) -> None:
        self.sqs = sqs
        self.auth = auth

    async def __call__(self, request: Request) -> Response:
        request_id = new_id()
        try:
            target = request.headers.get("x-amz-target", "")
            if not target.startswith(_PREFIX):
                raise SqsError(
                    "InvalidAction", f"Unknown X-Amz-Target {target[:100]!r}; expected AmazonSQS.<Action>."
                )
            caller = self.auth.caller(request, self.sqs.wall_clock())
            params = _params(request.body)
            result = await run(self.sqs, caller, target[len(_PREFIX) :], params)
            return Response(200, orjson.dumps(result), JSON_10, [("x-amzn-RequestId", request_id)])
        except SqsError as error:
            return json_error(error, request_id)
        except BurrowError as error:
            return json_error(storage_error(error), request_id)
