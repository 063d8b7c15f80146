"""The SQS query/XML front end (the legacy protocol): form parameters in, XML out.

Requests are ``Action=...&Version=2012-11-05`` plus flattened members
(``Attribute.1.Name``, ``MessageAttribute.1.Value.StringValue``,
``SendMessageBatchRequestEntry.1.Id``, ...), in a form-encoded POST body or a GET
query string, on ``/`` or on a queue URL path (which then stands for ``QueueUrl``).
They are unflattened into the JSON shape the action table takes; results are
rendered as ``<{Action}Response><{Action}Result>...`` in the 2012-11-05 namespace.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from time import perf_counter
from typing import Any
from urllib.parse import parse_qsl
from xml.sax.saxutils import escape

from burrow.api.sqs_auth import Authenticator
from burrow.api.sqs_json import sqs_stats, storage_error
from burrow.core.errors import BurrowError
from burrow.http.types import Request, Response
from burrow.metrics import CANCELLED, Metrics
from burrow.sqs.actions import run
from burrow.sqs.errors import SqsError, invalid
from burrow.sqs.model import new_id
from burrow.sqs.service import SqsService

XML = "text/xml"
NAMESPACE = "http://queue.amazonaws.com/doc/2012-11-05/"

#: query prefix -> (JSON member, key field, value field) for flattened maps.
_MAPS = {
    "Attribute": ("Attributes", "Name", "Value"),
    "Tag": ("Tags", "Key", "Value"),
    "MessageAttribute": ("MessageAttributes", "Name", "Value"),
    "MessageSystemAttribute": ("MessageSystemAttributes", "Name", "Value"),
}
#: query prefix -> JSON member for flattened lists of strings.
_LISTS = {
    "AttributeName": "AttributeNames",
    "MessageAttributeName": "MessageAttributeNames",
    "MessageSystemAttributeName": "MessageSystemAttributeNames",
    "TagKey": "TagKeys",
    "AWSAccountId": "AWSAccountIds",
    "ActionName": "Actions",
}
_ENTRIES = frozenset(
    {
        "SendMessageBatchRequestEntry",
        "DeleteMessageBatchRequestEntry",
        "ChangeMessageVisibilityBatchRequestEntry",
    }
)
#: Response list members -> element name of each item, per action where it differs.
_ITEM_NAMES = {
    "QueueUrls": "QueueUrl",
    "queueUrls": "QueueUrl",
    "Messages": "Message",
    "Failed": "BatchResultErrorEntry",
    "Results": "ListMessageMoveTasksResultEntry",
}
_MAP_ITEMS = {
    "Attributes": ("Attribute", "Name", "Value"),
    "Tags": ("Tag", "Key", "Value"),
    "MessageAttributes": ("MessageAttribute", "Name", "Value"),
}
_IGNORED = frozenset(
    {
        "Action",
        "Version",
        "SignatureVersion",
        "SignatureMethod",
        "Signature",
        "AWSAccessKeyId",
        "Timestamp",
        "Expires",
    }
)

Tree = dict[str, Any]


def form_params(request: Request) -> dict[str, str]:
    """The query string and (for a form POST) the body, decoded; body values win."""
    params: dict[str, str] = {}
    try:
        for source in (request.query, request.body.decode("utf-8") if request.method == "POST" else ""):
            params.update(parse_qsl(source, keep_blank_values=True, errors="strict"))
    except (UnicodeDecodeError, ValueError):
        raise invalid("The request parameters are not valid UTF-8 form encoding.") from None
    return params


def _tree(params: Mapping[str, str]) -> Tree:
    root: Tree = {}
    for key, value in params.items():
        if key in _IGNORED or key.startswith("X-Amz-"):
            continue
        node = root
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise invalid(f"Parameter {key[:100]} conflicts with another parameter.")
            node = child
        if isinstance(node.get(parts[-1]), dict):
            raise invalid(f"Parameter {key[:100]} conflicts with another parameter.")
        node[parts[-1]] = value
    return root


def _items(node: object, key: str) -> list[Any]:
    # ASCII digits only: str.isdigit() also admits digits int() rejects, such as "\u00b2".
    if not isinstance(node, dict) or not all(k.isascii() and k.isdigit() for k in node):
        raise invalid(f"Parameter {key} must be numbered: {key}.1, {key}.2, ...")
    return [node[k] for k in sorted(node, key=int)]


def _unflatten(tree: Tree) -> Tree:
    out: Tree = {}
    for key, node in tree.items():
        if key in _MAPS:
            name, key_field, value_field = _MAPS[key]
            entries: dict[str, Any] = {}
            for item in _items(node, key):
                if not isinstance(item, dict) or not isinstance(item.get(key_field), str):
                    raise invalid(f"Each {key}.N needs a {key_field}.")
                value = item.get(value_field)
                entries[item[key_field]] = _unflatten(value) if isinstance(value, dict) else value
            out[name] = entries
        elif key in _LISTS:
            out[_LISTS[key]] = _items(node, key)
        elif key in _ENTRIES:
            out["Entries"] = [_unflatten(e) if isinstance(e, dict) else e for e in _items(node, key)]
        else:
            out[key] = _unflatten(node) if isinstance(node, dict) else node
    return out


def query_params(request: Request) -> tuple[str, Tree]:
    """(action, JSON-shaped members) of a query request."""
    params = form_params(request)
    action = params.get("Action")
    if not action:
        raise SqsError("MissingAction", "The request must contain the parameter Action.")
    members = _unflatten(_tree(params))
    if "QueueUrl" not in members and request.path.count("/") == 2 and request.path != "/":
        members["QueueUrl"] = request.path
    return action, members


# -- XML rendering ---------------------------------------------------------------------

_ENTITIES = {"\r": "&#xD;", '"': "&quot;"}
#: Characters XML 1.0 cannot carry at all (not even as character references): control
#: characters other than tab, CR and LF, lone surrogates, U+FFFE and U+FFFF.
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _text(value: object) -> str:
    """``value`` as XML character data; characters XML cannot carry become U+FFFD."""
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value)
    if _NOT_XML.search(text) is not None:
        text = _NOT_XML.sub("\ufffd", text)
    return escape(text, _ENTITIES)


def _element(name: str, value: object, action: str) -> str:
    if isinstance(value, dict):
        if name in _MAP_ITEMS:
            item, key_field, value_field = _MAP_ITEMS[name]
            return "".join(
                f"<{item}><{key_field}>{_text(k)}</{key_field}>{_element(value_field, v, action)}</{item}>"
                for k, v in value.items()
            )
        inner = "".join(_element(k, v, action) for k, v in value.items())
        return f"<{name}>{inner}</{name}>"
    if isinstance(value, list):
        item = _ITEM_NAMES.get(name) or f"{action}ResultEntry"
        return "".join(_element(item, v, action) for v in value)
    return f"<{name}>{_text(value)}</{name}>"


def render(action: str, result: Mapping[str, Any], request_id: str) -> bytes:
    inner = "".join(_element(k, v, action) for k, v in result.items())
    return (
        f'<?xml version="1.0"?><{action}Response xmlns="{NAMESPACE}"><{action}Result>{inner}</{action}Result>'
        f"<ResponseMetadata><RequestId>{request_id}</RequestId></ResponseMetadata></{action}Response>"
    ).encode()


def xml_error(error: SqsError, request_id: str) -> Response:
    body = (
        f'<?xml version="1.0"?><ErrorResponse xmlns="{NAMESPACE}"><Error><Type>{error.fault}</Type>'
        f"<Code>{_text(error.code)}</Code><Message>{_text(error.message)}</Message><Detail/></Error>"
        f"<RequestId>{request_id}</RequestId></ErrorResponse>"
    ).encode()
    return Response(error.status, body, XML, [("x-amzn-RequestId", request_id)])


class SqsQueryApi:
    def __init__(self, sqs: SqsService, auth: Authenticator, metrics: Metrics | None = None) -> None:
        self.sqs = sqs
        self.auth = auth
        self._stats = sqs_stats(metrics) if metrics is not None else {}
        self._observe = metrics.observe if metrics is not None and metrics.observing else None

    async def __call__(self, request: Request) -> Response:
        observe = self._observe
        started = perf_counter() if observe is not None else 0.0
        request_id = new_id()
        action = ""
        try:
            caller = self.auth.caller(request, self.sqs.wall_clock())
            action, members = query_params(request)
            result = await run(self.sqs, caller, action, members)
            response = Response(
                200, render(action, result, request_id), XML, [("x-amzn-RequestId", request_id)]
            )
        except SqsError as error:
            response = xml_error(error, request_id)
        except BurrowError as error:
            response = xml_error(storage_error(error), request_id)
        except asyncio.CancelledError:  # the client went away (a long poll, mostly): 499
            if observe is not None:
                observe(self._stats.get(action) or self._stats[""], request, CANCELLED, started)
            raise
        if observe is not None:
            stats = self._stats
            observe(stats.get(action) or stats[""], request, response, started)
        return response
