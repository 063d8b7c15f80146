"""The OpenAPI 3.1 document of the burrow v1.0 API and the operations endpoints (``GET /openapi.json``).

Written by hand from docs/api.md, beside the route table it describes: every path, method,
parameter, status and body shape the server answers. Operation ids are the handlers' names
(the ``operation`` label of ``burrow_requests_total``). The limits the document states
(``ttl``/``hide``/``wait`` maxima) are the server's settings, so it is built per server.
``tests/test_openapi.py`` checks it covers the route table and runs schemathesis against a
real server with it. The SQS API (its own wire protocols on ``/`` and queue URLs) is
described in docs/sqs.md, not here; nor are the dashboard's routes (``api=UI_API``: ``/ui``,
its files, and the JSON only its page reads, which changes with the page; docs/operations.md
"Dashboard").
"""

from __future__ import annotations

from typing import Any

from burrow import __version__
from burrow.config import Settings
from burrow.core.errors import ERRORS_BY_CODE
from burrow.core.validation import MAX_NAME_BYTES

Schema = dict[str, Any]

#: Error codes of ``{"error": code, "message": text}`` bodies (burrow.core.errors, Decision 5).
ERROR_CODES = sorted(ERRORS_BY_CODE)

#: Characters no name may hold that a regular expression can name (docs/api.md "Names"):
#: controls, the common format characters, line and paragraph separators. The server's rule
#: is stricter (every format character, unassigned code points, ...): those names get 400.
_NAME_PATTERN = (
    "^[^\\u0000-\\u001f\\u007f-\\u009f\\u00ad\\u061c\\u180e\\u200b-\\u200f\\u2028-\\u202e"
    "\\u2060-\\u206f\\ufeff\\ufff9-\\ufffb]+$"
)
_BOOLEAN_PATTERN = "^([Tt][Rr][Uu][Ee]|[Ff][Aa][Ll][Ss][Ee])$"
_INT_MAX_LIMIT = 1 << 31


def _ref(kind: str, name: str) -> Schema:
    return {"$ref": f"#/components/{kind}/{name}"}


def _json(schema: Schema) -> Schema:
    return {"application/json": {"schema": schema}}


def _list_headers(next_marker: bool) -> Schema:
    headers = {"X-Burrow-Truncated": _ref("headers", "Truncated")}
    if next_marker:
        headers["X-Burrow-Next-Marker"] = _ref("headers", "NextMarker")
    return headers


#: Statuses the HTTP layer may answer for any request (docs/api.md "HTTP"), beside the operation's own.
_COMMON = {
    "400": _ref("responses", "BadRequest"),
    "401": _ref("responses", "Unauthorized"),
    "403": _ref("responses", "Forbidden"),
    "408": _ref("responses", "RequestTimeout"),
    "413": _ref("responses", "PayloadTooLarge"),
    "414": _ref("responses", "UriTooLong"),
    "431": _ref("responses", "HeadersTooLarge"),
    "503": _ref("responses", "Unavailable"),
    "505": _ref("responses", "VersionNotSupported"),
}


def _operation(
    operation_id: str,
    summary: str,
    parameters: list[str],
    responses: dict[str, Schema],
    *,
    tag: str = "v1.0",
    writes: bool = False,
    body: bool = False,
    public: bool = False,
) -> Schema:
    op: Schema = {
        "operationId": operation_id,
        "summary": summary,
        "tags": [tag],
        "parameters": [_ref("parameters", p) for p in parameters],
        "responses": {**responses, **_COMMON},
    }
    if public:  # no credential is asked for (Route.access "public")
        op["security"] = []
    if writes:
        op["responses"]["507"] = _ref("responses", "InsufficientStorage")
    if body:
        op["requestBody"] = {
            "required": False,
            "description": "The message body: any bytes, up to max_body_bytes (larger is 413).",
            "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
        }
    if not op["parameters"]:
        del op["parameters"]
    return op


def _names_list(operation_id: str, summary: str, get: bool, what: str) -> Schema:
    responses: Schema = {
        "200": {
            "description": f"The {what} (at detail=id names, at detail=all objects), in order.",
            "headers": _list_headers(next_marker=get),
            "content": _json(_ref("schemas", "NameList")),
        },
        "204": {"description": "detail=none: done, nothing returned."},
        "404": _ref("responses", "NotFound"),
    }
    return _operation(
        operation_id,
        summary,
        ["limit", "marker", "names_detail"],
        responses,
        writes=not get,
    )


def _message_list(operation_id: str, summary: str, parameters: list[str], next_marker: bool) -> Schema:
    responses: Schema = {
        "200": {
            "description": "The matched messages at the requested detail, in queue order.",
            "headers": _list_headers(next_marker),
            "content": _json(_ref("schemas", "MessageList")),
        },
        "204": {"description": "detail=none: done, nothing returned."},
        "404": _ref("responses", "NotFound"),
        "429": _ref("responses", "QuotaExceeded"),  # a wait over the account's waiters quota
    }
    return _operation(operation_id, summary, parameters, responses, writes=operation_id != "get_messages")


def _one_message(operation_id: str, summary: str, parameters: list[str], writes: bool) -> Schema:
    responses: Schema = {
        "200": {
            "description": "The message: at detail=all or attributes a JSON object, at detail=id or"
            " body the raw id or body.",
            "content": {
                **_json({"oneOf": [_ref("schemas", "Message"), _ref("schemas", "Attributes")]}),
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            },
        },
        "204": {"description": "detail=none: done, nothing returned."},
        "404": _ref("responses", "NotFound"),
    }
    return _operation(operation_id, summary, parameters, responses, writes=writes)


def _error_response(description: str, retry: bool = False) -> Schema:
    response: Schema = {"description": description, "content": _json(_ref("schemas", "Error"))}
    if retry:
        response["headers"] = {
            "Retry-After": {
                "description": "Seconds to wait before retrying.",
                "schema": {"type": "string", "pattern": "^[0-9]+$"},
            }
        }
    return response


def document(settings: Settings) -> Schema:
    """The OpenAPI 3.1 document of a server with these settings."""
    seconds_max = settings.max_seconds

    def seconds(name: str, meaning: str) -> Schema:
        return {
            "name": name,
            "in": "query",
            "required": False,
            "description": meaning,
            "schema": {"type": "integer", "minimum": 0, "maximum": seconds_max},
        }

    def name(kind: str) -> Schema:
        return {
            "name": kind,
            "in": "path",
            "required": True,
            "description": f"The {kind} name: 1 to {MAX_NAME_BYTES} bytes of UTF-8 without control,"
            " format (invisible) or unassigned characters; percent-decoded after the path is split,"
            " so %2F is a '/' inside the name.",
            "schema": {
                "type": "string",
                "minLength": 1,
                "maxLength": MAX_NAME_BYTES,
                "pattern": _NAME_PATTERN,
            },
        }

    def detail(names: bool) -> Schema:
        values = ["none", "id", "all"] if names else ["none", "id", "all", "attributes", "body"]
        return {
            "name": "detail",
            "in": "query",
            "required": False,
            "description": "What to return (defaults: id for GET of names, all for GET of messages,"
            " none for POST and DELETE).",
            "schema": {"type": "string", "enum": values},
        }

    parameters = {
        "account": name("account"),
        "queue": name("queue"),
        "message": name("message"),
        "limit": {
            "name": "limit",
            "in": "query",
            "required": False,
            "description": f"At most this many items (GET lists are capped at max_limit,"
            f" {settings.max_limit}).",
            "schema": {"type": "integer", "minimum": 1, "maximum": _INT_MAX_LIMIT},
        },
        "marker": {
            "name": "marker",
            "in": "query",
            "required": False,
            "description": "Only items after the item with this id or name; an unknown marker means"
            " from the start.",
            "schema": {"type": "string"},
        },
        "match_hidden": {
            "name": "match_hidden",
            "in": "query",
            "required": False,
            "description": "Also match hidden messages: true or false, in any case (default false).",
            "schema": {"type": "string", "pattern": _BOOLEAN_PATTERN},
        },
        "names_detail": detail(names=True),
        "messages_detail": detail(names=False),
        "wait": seconds(
            "wait",
            f"Long poll: if nothing matches, wait up to this many seconds (capped at max_wait,"
            f" {settings.max_wait}).",
        ),
        "ttl": seconds("ttl", "Seconds until the message expires; 0 = never."),
        "hide": seconds("hide", "Seconds the message stays hidden; 0 = visible."),
        "check": {
            "name": "check",
            "in": "path",
            "required": True,
            "description": "live: the process answers; ready: the store answers a round trip too.",
            "schema": {"type": "string", "enum": ["live", "ready"]},
        },
    }

    string_id = {"type": "string", "description": "An id (detail=id), or a UTF-8 body (detail=body)."}
    schemas: dict[str, Schema] = {
        "Error": {
            "type": "object",
            "description": "Every error (Decision 5).",
            "required": ["error", "message"],
            "additionalProperties": False,
            "properties": {
                "error": {"type": "string", "enum": ERROR_CODES},
                "message": {"type": "string", "description": "What went wrong, for a person."},
            },
        },
        "NameList": {
            "type": "array",
            "minItems": 1,
            "items": {
                "oneOf": [
                    {"type": "string"},
                    {
                        "type": "object",
                        "required": ["id"],
                        "additionalProperties": False,
                        "properties": {"id": {"type": "string"}},
                    },
                ]
            },
        },
        "Attributes": {
            "type": "object",
            "required": ["id", "ttl", "hide"],
            "additionalProperties": False,
            "properties": {
                "id": {"type": "string"},
                "ttl": {"type": "integer", "minimum": 0, "description": "Seconds left to live; 0 = forever."},
                "hide": {"type": "integer", "minimum": 0, "description": "Seconds left hidden; 0 = visible."},
            },
        },
        "Message": {
            "type": "object",
            "required": ["id", "ttl", "hide", "body"],
            "additionalProperties": False,
            "properties": {
                "id": {"type": "string"},
                "ttl": {"type": "integer", "minimum": 0},
                "hide": {"type": "integer", "minimum": 0},
                "body": {"type": "string", "description": "UTF-8 text, or base64 with body_encoding."},
                "body_encoding": {"type": "string", "enum": ["base64"]},
            },
        },
        "EncodedBody": {
            "type": "object",
            "description": "A body that is not UTF-8, in a detail=body list.",
            "required": ["body", "body_encoding"],
            "additionalProperties": False,
            "properties": {
                "body": {"type": "string", "contentEncoding": "base64"},
                "body_encoding": {"type": "string", "enum": ["base64"]},
            },
        },
        "MessageList": {
            "type": "array",
            "minItems": 1,
            "items": {
                "anyOf": [
                    string_id,
                    _ref("schemas", "Message"),
                    _ref("schemas", "Attributes"),
                    _ref("schemas", "EncodedBody"),
                ]
            },
        },
    }

    responses = {
        "BadRequest": _error_response("Invalid request (a parameter, a name, the framing): nothing changed."),
        "NotFound": _error_response("Nothing matched: no such account, queue or message, or no visible one."),
        "Unauthorized": {
            **_error_response(
                "Auth is on and the request carries no valid credential (never on the public"
                " operations: versions, health, this document). Answered before 404 and 405."
            ),
            "headers": {
                "WWW-Authenticate": {"schema": {"type": "string", "enum": ['Bearer realm="burrow"']}}
            },
        },
        "Forbidden": _error_response(
            "A valid credential that does not allow this: another account's, a read-only one on"
            " anything but GET, or an account's where an admin token is needed."
        ),
        "RequestTimeout": _error_response("The request's head or body took too long to arrive."),
        "PayloadTooLarge": _error_response("The request body is over max_body_bytes."),
        "UriTooLong": _error_response("The request target is over max_url_bytes."),
        "HeadersTooLarge": _error_response("The request head is over max_header_bytes or max_header_count."),
        "Unavailable": _error_response(
            "The store could not answer or commit (nothing was stored), or the server is over a limit.",
            retry=True,
        ),
        "InsufficientStorage": _error_response(
            "A storage budget (--max-memory, --max-disk) is reached, or the disk is full: the change"
            " was not stored. Reads, takes and deletes still work; deletes and expiry make room."
        ),
        "QuotaExceeded": _error_response(
            "Over one of the account's quotas (queues, messages, bytes, long-poll waiters): nothing"
            " changed. It succeeds once the account's usage drops; retry after Retry-After.",
            retry=True,
        ),
        "VersionNotSupported": _error_response("An HTTP version other than 1.0 and 1.1."),
    }

    headers = {
        "Truncated": {
            "description": "A server limit cut the list short: more items may match.",
            "schema": {"type": "string", "enum": ["true"]},
        },
        "NextMarker": {
            "description": "The id or name of the last item returned, percent-encoded: the marker"
            " to continue from.",
            "schema": {"type": "string"},
        },
    }

    list_params = ["limit", "marker", "match_hidden", "messages_detail", "wait"]
    paths: Schema = {
        "/": {
            "get": _operation(
                "versions",
                "The API versions this server speaks",
                [],
                {
                    "200": {
                        "description": 'Always ["v1.0"].',
                        "content": _json({"type": "array", "items": {"type": "string", "enum": ["v1.0"]}}),
                    }
                },
                public=True,
            )
        },
        "/v1.0": {
            "get": _names_list("list_accounts", "List accounts", True, "accounts"),
            "delete": _names_list(
                "delete_accounts", "Delete accounts and everything in them", False, "accounts"
            ),
        },
        "/v1.0/{account}": {
            "parameters": [_ref("parameters", "account")],
            "get": _names_list("list_queues", "List the account's queues", True, "queues"),
            "delete": _names_list("delete_queues", "Delete queues and their messages", False, "queues"),
        },
        "/v1.0/{account}/{queue}": {
            "parameters": [_ref("parameters", "account"), _ref("parameters", "queue")],
            "get": _message_list("get_messages", "List messages", list_params, next_marker=True),
            "post": _message_list(
                "update_messages",
                "Update ttl and hide of matched messages (hide > 0 takes them)",
                [*list_params, "ttl", "hide"],
                next_marker=True,
            ),
            "delete": _message_list(
                "delete_messages", "Delete matched messages", list_params, next_marker=False
            ),
        },
        "/v1.0/{account}/{queue}/{message}": {
            "parameters": [
                _ref("parameters", "account"),
                _ref("parameters", "queue"),
                _ref("parameters", "message"),
            ],
            "get": _one_message("get_message", "Get one message", ["messages_detail"], writes=False),
            "put": _operation(
                "put_message",
                "Create or replace a message",
                ["ttl", "hide"],
                {
                    "201": {"description": "Created."},
                    "204": {"description": "Replaced (body, ttl and hide; its position kept)."},
                    "429": _ref("responses", "QuotaExceeded"),
                },
                writes=True,
                body=True,
            ),
            "post": _one_message(
                "update_message",
                "Update ttl and hide of one message",
                ["messages_detail", "ttl", "hide"],
                True,
            ),
            "delete": _one_message("delete_message", "Delete one message", ["messages_detail"], True),
        },
        "/health/{check}": {
            "parameters": [_ref("parameters", "check")],
            "get": _operation(
                "health",
                "Liveness (live) and readiness (ready) probes; no authentication",
                [],
                {
                    "200": {
                        "description": "Healthy.",
                        "content": _json(
                            {
                                "type": "object",
                                "required": ["status"],
                                "properties": {"status": {"type": "string", "enum": ["ok"]}},
                            }
                        ),
                    },
                    "404": _ref("responses", "NotFound"),
                },
                tag="operations",
                public=True,
            ),
        },
        "/metrics": {
            "get": _operation(
                "metrics",
                "Prometheus metrics (text exposition format); an admin token when auth is on",
                [],
                {
                    "200": {
                        "description": "The metrics (docs/operations.md lists them).",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    "404": _ref("responses", "NotFound"),
                },
                tag="operations",
            ),
        },
        "/backup": {
            "post": _operation(
                "backup",
                "An online backup of a SQLite store into --backup-dir; an admin token when auth is on",
                [],
                {
                    "200": {
                        "description": "The backup written, its size, and older backups removed.",
                        "content": _json(
                            {
                                "type": "object",
                                "required": ["path", "bytes", "seconds", "removed"],
                                "properties": {
                                    "path": {"type": "string"},
                                    "bytes": {"type": "integer"},
                                    "seconds": {"type": "number"},
                                    "removed": {"type": "array", "items": {"type": "string"}},
                                },
                            }
                        ),
                    },
                    "409": _error_response("A backup is running already."),
                    "501": _error_response("This server's store does not make backups (memory, Redis)."),
                },
                tag="operations",
            ),
        },
        "/openapi.json": {
            "get": _operation(
                "openapi",
                "This document",
                [],
                {"200": {"description": "The OpenAPI 3.1 document.", "content": _json({"type": "object"})}},
                tag="operations",
                public=True,
            ),
        },
    }

    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Burrow",
            "version": __version__,
            "summary": "The burrow v1.0 message-queue API (accounts, queues, messages).",
            "description": "Reference: docs/api.md. Accounts and queues exist while they hold a message;"
            " nothing matched is a 404, never an empty list. The SQS API on the same port is"
            " described in docs/sqs.md.",
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "tags": [
            {"name": "v1.0", "description": "The burrow v1.0 API."},
            {"name": "operations", "description": "Health, metrics and this document: outside the API."},
        ],
        "paths": paths,
        # Auth is off unless credentials are configured (docs/operations.md "Auth and tenants"),
        # hence the empty requirement; public operations say security: [].
        "security": [{}, {"bearer": []}, {"authToken": []}],
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer"},
                "authToken": {"type": "apiKey", "in": "header", "name": "X-Auth-Token"},
            },
            "schemas": schemas,
            "parameters": parameters,
            "responses": responses,
            "headers": headers,
        },
    }
