"""Robustness: random, malformed and hostile requests over a real socket never break the server.

Hypothesis builds whole HTTP requests (methods, paths of odd segments, query strings,
headers, bodies: random bytes, random JSON for the SQS JSON protocol, random form bodies
for the SQS query protocol) and sends them to a real server, on the memory and the
SQLite in-memory backends. For every request (burrow v1.0 Decisions 1, 5, 6):

* the status is below 500, or a 503 (storage or capacity) with an error body;
* error bodies are well-formed JSON or XML, and success bodies too;
* the server logs no error (a handler or parser-callback exception);
* the connection either stays usable (a ``GET /`` after it is answered) or is closed
  cleanly after a ``connection: close`` response.

Known messages stored before the run, in an account the generators never name, must be
unchanged after it, and the server must still answer quickly. The run is derandomized
and small enough for CI; inputs that once found bugs are kept as ``@example`` cases.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from burrow.client import Reply, SyncConnection, encode_request
from burrow.config import Settings
from burrow.sqs.model import receipt_handle
from burrow.testing.backends import SERVER_BACKENDS
from tests.sqs.conftest import ThreadedServer

#: The account and queue of the messages that must survive; no generator produces these names.
KNOWN_ACCOUNT = "known-account-5e1f"
KNOWN_QUEUE = "known-queue"
KNOWN_SQS_QUEUE = "known-sqs-queue"
KNOWN_MESSAGES: dict[str, bytes] = {
    "m-text": b"hello, world",
    "m-binary": bytes(range(256)),
    "m-empty": b"",
    "m/slash %": "caf\u00e9 \u2603".encode(),
}
#: The SQS default account (no Authorization header) and the queues the fuzzer aims at.
SQS_ACCOUNT = "000000000000"
FUZZ_QUEUES = ("fz", "fz.fifo", "fz-dlq", "fz-dlq.fifo")

#: Wall-clock limit for one response; a request still unanswered then is a hang.
TIMEOUT = 5.0

# -- strategies -----------------------------------------------------------------------------
#
# Most generated requests are *nearly* valid (a plausible request with one or two parts made
# wrong), so they get past the first check and reach deep code; the rest are noise.

#: Path segments: plausible names first, then the odd ones.
NAMES = ["a", "q", "m", "m1", "m2", "fz", "fz.fifo", SQS_ACCOUNT, "x" * 256, "%C3%A9", "a%2Fb"]
ODD_SEGMENTS = [
    "",
    ".",
    "..",
    "v1.0",
    "x" * 257,
    "%00",
    "%2F",
    "%C3%28",
    "%E2%82",
    "%FF%FE",
    "%",
    "%G1",
    "%%",
    "%7F",
    "%0A",
    "%20",
    "+",
    "%41" * 257,
    "%C3%A9" * 128,
    "%C3%A9" * 129,
    "%F0%9F%92%A9",
    "%ED%A0%80",  # an encoded surrogate: not UTF-8
    ";",
    "@",
    "*",
]
URL_SAFE = st.text(st.sampled_from("abcxyz019-_.~!$&'()*+,;=:@%"), min_size=0, max_size=12)
SEGMENTS = st.one_of(
    st.sampled_from(NAMES),
    st.sampled_from(NAMES),
    st.sampled_from(NAMES),
    st.sampled_from(ODD_SEGMENTS),
    URL_SAFE,
    st.binary(max_size=8).map(lambda b: quote(b, safe="")),
)

#: Query values that are wrong for every parameter, or wrongly encoded.
ODD_VALUES = st.one_of(
    st.sampled_from(
        [
            "",
            "-1",
            "+1",
            "1.5",
            "1e3",
            "%201",
            "1%20",
            "9999999999999",
            str(2**64),
            "0x10",
            "\u0661",  # ARABIC-INDIC DIGIT ONE: str.isdigit() but not ASCII
            "\u00b2",  # SUPERSCRIPT TWO: str.isdigit() but int() fails
            "%C2%B2",
            "%D9%A1",
            "yes",
            "ALL",
            "%00",
            "%C3%28",
            "%",
            "%2",
            "%zz",
            "+",
            "a+b",
            "%2B",
            "x" * 300,
        ]
    ),
    st.binary(max_size=6).map(lambda b: quote(b, safe="")),
    URL_SAFE,
)
#: wait: every valid positive value costs a long poll (max_wait = 1 s), so only 0 is valid here.
V1_VALUES: dict[str, st.SearchStrategy[str]] = {
    "limit": st.sampled_from(["1", "2", "1000", "1001", "0", "2147483648", "999999999999"]),
    "marker": st.sampled_from(["m", "m1", "zz-unknown", "%2F", "a+b", "%C3%A9", "x" * 257]),
    "match_hidden": st.sampled_from(["true", "false", "TRUE", "False"]),
    "detail": st.sampled_from(["none", "id", "all", "attributes", "body"]),
    "ttl": st.sampled_from(["0", "1", "600", "1000000000", "1000000001", "999999999999"]),
    "hide": st.sampled_from(["0", "1", "600", "1000000000", "1000000001", "999999999999"]),
    "wait": st.just("0"),
}


@st.composite
def queries(draw: st.DrawFn) -> str:
    pairs = []
    for _ in range(draw(st.integers(0, 4))):
        key = draw(st.one_of(st.sampled_from(sorted(V1_VALUES)), st.sampled_from(["Action", "x"]), URL_SAFE))
        good = V1_VALUES.get(key)
        value = draw(good if good is not None and draw(st.integers(0, 3)) else ODD_VALUES)
        if key == "wait" and value.isdigit() and value != "0":
            value = "0"
        form = draw(st.sampled_from(["pair"] * 6 + ["bare", "empty-key", "double"]))
        if form == "pair":
            pairs.append(f"{key}={value}")
        elif form == "bare":
            pairs.append(key)
        elif form == "empty-key":
            pairs.append(f"={value}")
        else:
            pairs.append(f"{key}={value}={value}")
    return "&".join(pairs)


@st.composite
def targets(draw: st.DrawFn, method: str) -> str:
    kind = draw(st.sampled_from(["v1"] * 6 + ["raw", "absolute", "asterisk"]))
    if kind == "asterisk":
        return "*"
    segments = draw(st.lists(SEGMENTS, min_size=0, max_size=4))
    if kind == "v1":
        # DELETE /v1.0 (all accounts) would legitimately remove the known messages.
        if method == "DELETE" and not segments:
            segments = ["a"]
        path = "/v1.0" + "".join("/" + s for s in segments)
    else:
        path = "/" + "/".join(segments)
        if method == "DELETE" and path.rstrip("/") in ("/v1.0", ""):
            path = "/v1.0/a"
    if kind == "absolute":
        path = "http://example.com" + path
    if draw(st.integers(0, 2)):
        path += "?" + draw(queries())
    return path


JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
    st.sampled_from(["", "1", "-1", "\u00b2", "\u0661", "\x00", "String", "Number", "Binary", "All"]),
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=8,
)

SQS_ACTIONS = [
    "CreateQueue",
    "GetQueueUrl",
    "ListQueues",
    "DeleteQueue",
    "GetQueueAttributes",
    "SetQueueAttributes",
    "PurgeQueue",
    "TagQueue",
    "UntagQueue",
    "ListQueueTags",
    "ListDeadLetterSourceQueues",
    "StartMessageMoveTask",
    "ListMessageMoveTasks",
    "CancelMessageMoveTask",
    "SendMessage",
    "SendMessageBatch",
    "ReceiveMessage",
    "DeleteMessage",
    "DeleteMessageBatch",
    "ChangeMessageVisibility",
    "ChangeMessageVisibilityBatch",
    "AddPermission",
    "RemovePermission",
]
#: Replaced, when a request is sent, by the latest receipt handle the server handed out.
RECEIPT = "@@RECEIPT@@"
QUEUE_NAMES = ["fz", "fz.fifo", "fz-dlq", "fz-dlq.fifo", "fz2", "fz2.fifo"]
ARNS = [f"arn:aws:sqs:us-east-1:{SQS_ACCOUNT}:{n}" for n in QUEUE_NAMES]
GOOD_URLS = [f"http://localhost/{SQS_ACCOUNT}/{n}" for n in QUEUE_NAMES] + [f"/{SQS_ACCOUNT}/fz"]
ODD_URLS = [
    f"https://x/{SQS_ACCOUNT}/fz?y=1",
    "/a/q",
    "fz",
    "",
    "http://h",
    "/a/b/c",
    "/\x00/\x00",
    f"/{'a' * 300}/{'q' * 300}",
    f"/{SQS_ACCOUNT}/fz#fifo",
    "/a%2Fb/q",
    "/\u00e9/\u00e9",
]
QUEUE_URLS = st.sampled_from(GOOD_URLS * 3 + ODD_URLS)
GOOD_ATTRIBUTE = st.one_of(
    st.builds(
        lambda t, v: {"DataType": t, "StringValue": v},
        st.sampled_from(["String", "String.x", "Number", "Number.int"]),
        st.sampled_from(["1", "-1.5e3", ".5", "1" * 40, "x", "\u00e9\U0001f4a9"]),
    ),
    st.builds(
        lambda t, v: {"DataType": t, "BinaryValue": v},
        st.sampled_from(["Binary", "Binary.gif"]),
        st.sampled_from(["AAEC", "/w==", "AA"]),
    ),
)
ODD_ATTRIBUTE = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "DataType": st.sampled_from(["String", "Number", "Binary", "Binary.", "", "Foo", "S" * 300]),
            "StringValue": st.one_of(
                st.sampled_from(["1", "", "1" * 50, "1e999999", "1.2.3", "\ufffe", "\x00"]), JSON_SCALARS
            ),
            "BinaryValue": st.one_of(st.sampled_from(["!!", "", "A", "AA=A"]), JSON_SCALARS),
            "StringListValues": JSON_VALUES,
            "BinaryListValues": JSON_VALUES,
        },
    ),
    JSON_VALUES,
)
ATTRIBUTE_VALUES = st.one_of(GOOD_ATTRIBUTE, GOOD_ATTRIBUTE, ODD_ATTRIBUTE)
ATTRIBUTE_NAMES = st.one_of(
    st.sampled_from(["a", "b", "a.b", "x-y_z"] * 3 + [".a", "a.", "a..b", "AWS.x", "x" * 257, "\u00e9"]),
    st.text(max_size=6),
)
GOOD_QUEUE_ATTRIBUTES: dict[str, list[str]] = {
    "DelaySeconds": ["0", "1", "900"],
    "MaximumMessageSize": ["1024", "1048576"],
    "MessageRetentionPeriod": ["60", "1209600"],
    "VisibilityTimeout": ["0", "30", "43200"],
    "ReceiveMessageWaitTimeSeconds": ["0"],  # a positive one costs long polls
    "FifoQueue": ["true", "false"],
    "ContentBasedDeduplication": ["true", "false"],
    "DeduplicationScope": ["messageGroup", "queue"],
    "FifoThroughputLimit": ["perQueue", "perMessageGroupId"],
    "RedrivePolicy": [
        orjson.dumps({"deadLetterTargetArn": arn, "maxReceiveCount": n}).decode()
        for arn in ARNS[:4]
        for n in (1, "2")
    ]
    + [""],
    "RedriveAllowPolicy": ['{"redrivePermission": "allowAll"}', ""],
    "Policy": ["{}", ""],
    "KmsMasterKeyId": ["alias/x"],
    "KmsDataKeyReusePeriodSeconds": ["60", "86400"],
    "SqsManagedSseEnabled": ["true", "false"],
}
ODD_QUEUE_ATTRIBUTE_VALUES = st.one_of(
    st.sampled_from(
        [
            "-1",
            "\u0661\u0660",
            "\u00b2",
            "1" * 13,
            "True",
            "[]",
            "null",
            '{"deadLetterTargetArn": "arn:aws:sqs:r:000000000000:fz", "maxReceiveCount": "\u0661"}',
            '{"deadLetterTargetArn": "arn:aws:sqs:r:000000000000:fz", "maxReceiveCount": "\u00b2"}',
            '{"deadLetterTargetArn": "arn:aws:sqs:r:000000000000:fz", "maxReceiveCount": 1e3}',
            '{"deadLetterTargetArn": "arn:aws:sqs:r:000000000000:fz#fifo", "maxReceiveCount": 1}',
            '{"deadLetterTargetArn": 1, "maxReceiveCount": 1}',
            '{"deadLetterTargetArn": "arn:aws:sqs:r:000000000000:fz", "maxReceiveCount": true}',
        ]
    ),
    JSON_SCALARS,
)


@st.composite
def queue_attributes(draw: st.DrawFn) -> dict[str, Any]:
    names = draw(st.lists(st.sampled_from([*GOOD_QUEUE_ATTRIBUTES, "QueueArn", "Bogus"]), max_size=3))
    out: dict[str, Any] = {}
    for name in names:
        good = GOOD_QUEUE_ATTRIBUTES.get(name)
        out[name] = draw(
            st.sampled_from(good) if good and draw(st.integers(0, 3)) else ODD_QUEUE_ATTRIBUTE_VALUES
        )
    return out


RECEIPTS = st.one_of(
    st.just(RECEIPT),
    st.just(RECEIPT),
    st.builds(
        receipt_handle,
        st.sampled_from([SQS_ACCOUNT, "a"]),
        st.sampled_from(["fz", "fz.fifo", "q"]),
        st.text(max_size=8),
        st.integers(-1, 3),
        st.integers(-1, 2**53),
    ),
    st.sampled_from(["", "x", "WyJhIl0", "bnVsbA", "W10", "e30", "!!", "WzEsMiwzLDRd", "\u00e9"]),
)
BODIES = st.one_of(
    st.sampled_from(["hi", "x" * 2000, "\u00e9\U0001f4a9", "tab\tcr\rlf\n"]),
    st.text(min_size=1, max_size=10),
)


@st.composite
def entries(draw: st.DrawFn, action: str) -> list[dict[str, Any]]:
    out = []
    for i in range(draw(st.integers(1, 11))):
        entry: dict[str, Any] = {"Id": draw(st.sampled_from([f"e{i}"] * 5 + ["e0", "", "x" * 81, "a b"]))}
        if action == "SendMessageBatch":
            entry["MessageBody"] = draw(BODIES)
            if draw(st.booleans()):
                entry["MessageGroupId"] = draw(st.sampled_from(["g", "h"]))
            if draw(st.integers(0, 3)) == 0:
                entry["MessageAttributes"] = draw(
                    st.dictionaries(ATTRIBUTE_NAMES, ATTRIBUTE_VALUES, max_size=2)
                )
            if draw(st.integers(0, 3)) == 0:
                entry["DelaySeconds"] = draw(st.integers(0, 2))
        else:
            entry["ReceiptHandle"] = draw(RECEIPTS)
            if action == "ChangeMessageVisibilityBatch":
                entry["VisibilityTimeout"] = draw(st.integers(0, 43200))
        out.append(entry)
    return out


@st.composite
def sqs_members(draw: st.DrawFn, action: str) -> dict[str, Any]:
    """A plausible request for ``action``; then a few members made wrong or left out."""
    p: dict[str, Any] = {}
    if action not in (
        "CreateQueue",
        "GetQueueUrl",
        "ListQueues",
        "StartMessageMoveTask",
        "ListMessageMoveTasks",
    ):
        p["QueueUrl"] = draw(QUEUE_URLS)
    if action == "DeleteQueue" and draw(st.integers(0, 3)):
        # a deleted queue cannot be created again for 60 s: spare the seeded ones, mostly
        p["QueueUrl"] = draw(st.sampled_from([f"/{SQS_ACCOUNT}/fz2", f"/{SQS_ACCOUNT}/fz2.fifo"]))
    fifo = "fifo" in str(p.get("QueueUrl", ""))
    if action in ("CreateQueue", "GetQueueUrl"):
        p["QueueName"] = draw(st.sampled_from(QUEUE_NAMES))
    if action == "CreateQueue":
        p["Attributes"] = draw(queue_attributes())
        if str(p["QueueName"]).endswith(".fifo") and draw(st.integers(0, 3)):
            p["Attributes"]["FifoQueue"] = "true"
        if draw(st.integers(0, 3)) == 0:
            p["tags"] = draw(st.dictionaries(st.text(max_size=4), st.text(max_size=4), max_size=3))
    elif action == "SetQueueAttributes":
        p["Attributes"] = draw(queue_attributes())
    elif action in ("GetQueueAttributes", "ReceiveMessage") and draw(st.booleans()):
        names = [*GOOD_QUEUE_ATTRIBUTES, "All", "SentTimestamp", "ApproximateNumberOfMessages", "Bogus"]
        p["AttributeNames"] = draw(st.lists(st.sampled_from(names), max_size=3))
    if action == "SendMessage":
        p["MessageBody"] = draw(BODIES)
        if draw(st.booleans()):
            p["MessageAttributes"] = draw(st.dictionaries(ATTRIBUTE_NAMES, ATTRIBUTE_VALUES, max_size=3))
        if draw(st.integers(0, 3)) == 0:
            p["MessageSystemAttributes"] = {"AWSTraceHeader": draw(ATTRIBUTE_VALUES)}
        if fifo or draw(st.integers(0, 3)) == 0:
            p["MessageGroupId"] = draw(st.sampled_from(["g", "h", "!~"]))
        if draw(st.integers(0, 3)) == 0:
            p["MessageDeduplicationId"] = draw(st.sampled_from(["d", "e"]))
        if draw(st.integers(0, 3)) == 0:
            p["DelaySeconds"] = draw(st.integers(0, 2))
    elif action in ("SendMessageBatch", "DeleteMessageBatch", "ChangeMessageVisibilityBatch"):
        p["Entries"] = draw(entries(action))
    elif action == "ReceiveMessage":
        p["MaxNumberOfMessages"] = draw(st.integers(1, 10))
        p["WaitTimeSeconds"] = 0
        if draw(st.booleans()):
            p["VisibilityTimeout"] = draw(st.sampled_from([0, 1, 30, 43200]))
        if draw(st.booleans()):
            p["MessageAttributeNames"] = draw(
                st.lists(st.sampled_from(["All", ".*", "a.*", "a", "b"]), max_size=2)
            )
        if draw(st.booleans()):
            p["MessageSystemAttributeNames"] = draw(
                st.lists(st.sampled_from(["All", "SenderId"]), max_size=2)
            )
    elif action in ("DeleteMessage", "ChangeMessageVisibility"):
        p["ReceiptHandle"] = draw(RECEIPTS)
        if action == "ChangeMessageVisibility":
            p["VisibilityTimeout"] = draw(st.sampled_from([0, 1, 30, 43200]))
    elif action in ("ListQueues", "ListDeadLetterSourceQueues"):
        if draw(st.booleans()):
            p["MaxResults"] = draw(st.integers(1, 3))
        if draw(st.booleans()):
            p["NextToken"] = draw(st.sampled_from(["Zno", "Znoy", "!!", "\u00e9", "/w==", "ZnotZmlmbw"]))
        if action == "ListQueues" and draw(st.booleans()):
            p["QueueNamePrefix"] = draw(st.sampled_from(["f", "fz-", ""]))
    elif action == "TagQueue":
        p["Tags"] = draw(st.dictionaries(st.text(max_size=130), st.text(max_size=3), max_size=3))
    elif action == "UntagQueue":
        p["TagKeys"] = draw(st.lists(st.text(max_size=4), max_size=3))
    elif action in ("StartMessageMoveTask", "ListMessageMoveTasks"):
        p["SourceArn"] = draw(st.sampled_from(ARNS))
        if draw(st.booleans()):
            key = "DestinationArn" if action == "StartMessageMoveTask" else "MaxResults"
            p[key] = draw(st.sampled_from(ARNS)) if key == "DestinationArn" else draw(st.integers(1, 10))
        if action == "StartMessageMoveTask" and draw(st.booleans()):
            p["MaxNumberOfMessagesPerSecond"] = draw(st.integers(1, 500))
    elif action == "CancelMessageMoveTask":
        p["TaskHandle"] = draw(st.sampled_from(["", "x", "WyJ4Il0="]))
    # Spoil it: drop members, or give one a wrong value.
    for _ in range(draw(st.sampled_from([0, 0, 1, 1, 2]))):
        key = draw(st.sampled_from(sorted(p) or ["QueueUrl"]) | st.sampled_from(["Bogus", "QueueUrl"]))
        if draw(st.integers(0, 4)) == 0:
            p.pop(key, None)
        else:
            p[key] = draw(JSON_VALUES)
    return p


def flatten(action: str, members: dict[str, Any]) -> list[tuple[str, str]]:
    """The query protocol's flattened parameters for JSON-shaped members (what old SDKs send)."""
    out = [("Action", action)]
    maps = {"Attributes": "Attribute", "Tags": "Tag", "tags": "Tag", "MessageAttributes": "MessageAttribute"}
    lists = {
        "AttributeNames": "AttributeName",
        "MessageAttributeNames": "MessageAttributeName",
        "MessageSystemAttributeNames": "MessageSystemAttributeName",
        "TagKeys": "TagKey",
    }

    def scalar(value: Any) -> str:
        return value if isinstance(value, str) else orjson.dumps(value).decode()

    def add(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                add(f"{prefix}.{k}", v)
        elif isinstance(value, list):
            for i, v in enumerate(value, 1):
                add(f"{prefix}.{i}", v)
        else:
            out.append((prefix, scalar(value)))

    for key, value in members.items():
        if key in maps and isinstance(value, dict):
            for i, (k, v) in enumerate(value.items(), 1):
                out.append((f"{maps[key]}.{i}.{'Key' if 'ag' in key else 'Name'}", k))
                add(f"{maps[key]}.{i}.Value", v)
        elif key in lists and isinstance(value, list):
            out.extend((f"{lists[key]}.{i}", scalar(v)) for i, v in enumerate(value, 1))
        elif key == "MessageSystemAttributes" and isinstance(value, dict):
            for i, (k, v) in enumerate(value.items(), 1):
                out.append((f"MessageSystemAttribute.{i}.Name", k))
                add(f"MessageSystemAttribute.{i}.Value", v)
        elif key == "Entries" and isinstance(value, list):
            for i, entry in enumerate(value, 1):
                add(f"{action}RequestEntry.{i}", entry)
        else:
            add(key, value)
    return out


FORM_KEYS = [
    "Attribute.1.Name",
    "Attribute.\u00b2.Name",
    "Attribute.\u0661.Name",
    "Attribute.0.Value",
    "Attribute.x",
    "Attribute",
    "MessageAttribute.1.Value",
    "MessageAttribute.1.Value.DataType",
    "SendMessageBatchRequestEntry.1",
    "SendMessageBatchRequestEntry.01.Id",
    "SendMessageBatchRequestEntry.-1.Id",
    "SendMessageBatchRequestEntry." + "9" * 30 + ".Id",
    "TagKey.1.x",
    "AttributeName",
    "QueueUrl.x",
    "",
    ".",
    "..",
    "a..b",
]


@st.composite
def form_pairs(draw: st.DrawFn) -> list[tuple[str, str]]:
    action = draw(st.sampled_from(SQS_ACTIONS))
    pairs = flatten(action, draw(sqs_members(action)))
    for _ in range(draw(st.sampled_from([0, 0, 1, 2]))):
        i = draw(st.integers(0, len(pairs)))
        pairs.insert(i, (draw(st.sampled_from(FORM_KEYS)), draw(st.one_of(ODD_VALUES, st.text(max_size=4)))))
    if draw(st.integers(0, 9)) == 0:
        pairs = [(k, v) for k, v in pairs if k != "Action"]
    return pairs


@st.composite
def form_bodies(draw: st.DrawFn) -> bytes:
    pairs = draw(form_pairs())
    encoded = "&".join(
        f"{quote(k, safe='', errors='surrogatepass')}={quote(v, safe='', errors='surrogatepass')}"
        for k, v in pairs
    )
    junk = draw(st.sampled_from([""] * 12 + ["&", "&&", "%", "=x", "&%ff=1", "&a=%C3%28", "&a=%ED%A0%80"]))
    return (encoded + junk).encode()


@st.composite
def sqs_json_bodies(draw: st.DrawFn, action: str) -> bytes:
    kind = draw(st.sampled_from(["members"] * 8 + ["value", "raw"]))
    if kind == "raw":
        return draw(
            st.one_of(
                st.binary(max_size=20),
                st.sampled_from(
                    [
                        b"",
                        b" ",
                        b"{",
                        b"[]",
                        b"null",
                        b'{"QueueUrl": "\\ud800"}',
                        b"\xff",
                        b"{}" * 2,
                        b"1e999",
                    ]
                ),
            )
        )
    value: Any = draw(JSON_VALUES) if kind == "value" else draw(sqs_members(action))
    try:
        return orjson.dumps(value)
    except (orjson.JSONEncodeError, TypeError):
        return b"{}"


AUTHORIZATIONS = st.one_of(
    st.builds(
        "AWS4-HMAC-SHA256 Credential={}/{}/{}/{}/{}, SignedHeaders={}, Signature={}".format,
        st.sampled_from(["a", SQS_ACCOUNT, SQS_ACCOUNT, "", "x" * 129, "a%2F", "a/b"]),
        st.sampled_from(["20240101", "", "x"]),
        st.sampled_from(["us-east-1", "", "eu-west-1"]),
        st.sampled_from(["sqs", "s3"]),
        st.sampled_from(["aws4_request", ""]),
        st.sampled_from(["host", "host;x-amz-date", "", ";;"]),
        st.sampled_from(["00", "zz", "", "0" * 64]),
    ),
    st.sampled_from(
        [
            "",
            "AWS4-HMAC-SHA256",
            "AWS4-HMAC-SHA256 Credential=",
            "AWS4-HMAC-SHA256 Credential=a, SignedHeaders=host, Signature=00",
            "AWS4-HMAC-SHA256 Credential=/, SignedHeaders=host, Signature=00",
            "Basic YTpi",
            "AWS4-HMAC-SHA256 Credential=a/b/c/d/e/f/g, SignedHeaders=host, Signature=0",
        ]
    ),
)

CONTENT_TYPES = [
    "application/json",
    "application/x-amz-json-1.0",
    "application/x-www-form-urlencoded",
    "application/x-www-form-urlencoded; charset=utf-8",
    "text/plain",
    "",
    "multipart/form-data; boundary=x",
]


@dataclass
class Req:
    method: str
    target: str
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    chunked: bool = False
    version: str = "1.1"

    def encode(self, receipt: str = "") -> bytes:
        target = self.target.replace(RECEIPT, quote(receipt, safe=""))
        headers = [("Host", "fuzz"), *self.headers]
        body = self.body.replace(RECEIPT.encode(), receipt.encode())
        if self.chunked:
            headers.append(("Transfer-Encoding", "chunked"))
            chunks = (body[i : i + 7] for i in range(0, len(body), 7))
            body = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in chunks) + b"0\r\n\r\n"
        else:
            headers.append(("Content-Length", str(len(body))))
        return encode_request(self.method, target, body, headers, version=self.version)


SQS_PATHS = ["/", "/", f"/{SQS_ACCOUNT}/fz", f"/{SQS_ACCOUNT}/fz.fifo", "/a/q", "/a/b/c"]


@st.composite
def requests(draw: st.DrawFn) -> Req:
    style = draw(st.sampled_from(["v1", "v1", "sqs-json", "sqs-json", "sqs-query", "sqs-query"]))
    headers: list[tuple[str, str]] = []
    if style == "sqs-json":
        method = draw(st.sampled_from(["POST"] * 8 + ["GET", "PUT"]))
        target = draw(st.sampled_from(SQS_PATHS))
        action = draw(st.sampled_from(SQS_ACTIONS))
        target_header = "AmazonSQS." + action
        if draw(st.integers(0, 9)) == 0:
            target_header = draw(
                st.sampled_from(["AmazonSQS", "", "amazonsqs.", "AmazonSQS.Bogus", "AmazonSQS."])
            )
        headers.append(("X-Amz-Target", target_header))
        headers.append(
            ("Content-Type", draw(st.sampled_from(["application/x-amz-json-1.0", *CONTENT_TYPES])))
        )
        body = draw(sqs_json_bodies(action))
    elif style == "sqs-query":
        target = draw(st.sampled_from(SQS_PATHS))
        body = draw(form_bodies())
        if draw(st.integers(0, 3)):
            method = "POST"
            headers.append(("Content-Type", "application/x-www-form-urlencoded"))
        else:
            method = "GET"
            target += "?" + body.decode("ascii")
            body = b""
    else:
        method = draw(
            st.sampled_from(
                ["GET", "GET", "PUT", "PUT", "POST", "POST", "DELETE", "HEAD", "OPTIONS", "PATCH", "TRACE"]
            )
        )
        target = draw(targets(method))
        body = draw(st.one_of(st.just(b""), st.binary(max_size=40), st.just(b"\xff" * 5000)))
        if draw(st.integers(0, 3)) == 0:
            headers.append(("Content-Type", draw(st.sampled_from(CONTENT_TYPES))))
    if draw(st.integers(0, 3)) == 0:
        headers.append(("Authorization", draw(AUTHORIZATIONS)))
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2]))):
        headers.append(
            draw(
                st.sampled_from(
                    [
                        ("Expect", "100-continue"),
                        ("Expect", "something-else"),
                        ("Connection", "close"),
                        ("Connection", "keep-alive"),
                        ("X-Amz-Date", "20240101T000000Z"),
                        ("X-Amz-Date", "garbage"),
                        ("Content-Encoding", "gzip"),
                        ("Accept", "*/*"),
                        ("X-Amz-Target", "AmazonSQS.ListQueues"),
                        ("Content-Type", "application/x-www-form-urlencoded"),
                        ("Authorization", "AWS4-HMAC-SHA256 Credential=\u00e9/x/y/sqs/aws4_request"),
                    ]
                )
            )
        )
    chunked = draw(st.integers(0, 5)) == 0
    version = draw(st.sampled_from(["1.1"] * 8 + ["1.0"]))
    if version == "1.0":
        chunked = False  # Transfer-Encoding on HTTP/1.0 is a 400 by design (covered in tests/http)
    return Req(method, target, headers, body, chunked, version)


# -- a raw-socket client --------------------------------------------------------------------


class Wire(SyncConnection):
    """One blocking TCP connection for hostile bytes: the shared client's raw send and its
    response parser, with 1xx responses skipped."""

    def __init__(self, port: int) -> None:
        super().__init__(port=port, timeout=TIMEOUT)
        self.connect()

    def answer(self, head_only: bool = False) -> Reply:
        while (reply := self.reply(head_only)).status < 200:
            pass
        assert reply.version == "HTTP/1.1", reply
        return reply

    def at_eof(self, head: bool = False) -> bool:
        """True if the server closes the connection without sending anything more.

        After a HEAD, an error the HTTP layer answers while parsing (before it knows the
        method) still carries its body; the connection closes after it all the same.
        """
        try:
            rest = self.read_to_eof()
        except (ConnectionResetError, TimeoutError):
            return False
        return rest == b"" or head


def check_answer(req: Req, answer: Reply) -> None:
    """The per-response rules: no 5xx but 503, and a well-formed body."""
    assert answer.status < 500 or answer.status == 503, (answer.status, answer.body[:300])
    if req.method == "HEAD" or answer.status in (204, 304):
        return
    content_type = answer.headers.get("content-type", "")
    if content_type.startswith("application/json") or content_type.startswith("application/x-amz-json"):
        data = orjson.loads(answer.body)
        if answer.status >= 400:
            assert isinstance(data, dict) and ("error" in data or "__type" in data), data
            assert data.get("message"), data
    elif content_type.startswith("text/xml"):
        ET.fromstring(answer.body)  # well-formed XML, errors and results alike
    elif answer.status >= 400:
        raise AssertionError(f"error {answer.status} without a JSON or XML body: {content_type!r}")


# -- the server ------------------------------------------------------------------------------


class ErrorLog(logging.Handler):
    """Collects the server's ERROR records (handler and parser-callback exceptions)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def take(self) -> list[str]:
        out = [self.format(r) for r in self.records]
        self.records.clear()
        return out


@dataclass
class Fuzzed:
    server: ThreadedServer
    errors: ErrorLog

    @property
    def port(self) -> int:
        return self.server.server.port


def call(port: int, method: str, target: str, body: bytes = b"", **headers: str) -> Reply:
    wire = Wire(port)
    try:
        req = Req(method, target, list(headers.items()), body)
        wire.send(req.encode())
        return wire.answer(head_only=method == "HEAD")
    finally:
        wire.close()


def sqs_call(port: int, action: str, members: dict[str, Any], account: str = SQS_ACCOUNT) -> Reply:
    auth = (
        f"AWS4-HMAC-SHA256 Credential={account}/20240101/us-east-1/sqs/aws4_request,"
        " SignedHeaders=host, Signature=00"
    )
    answer = call(
        port,
        "POST",
        "/",
        orjson.dumps(members),
        **{"X-Amz-Target": f"AmazonSQS.{action}", "Content-Type": "application/x-amz-json-1.0"},
        Authorization=auth,
    )
    assert answer.status == 200, answer
    return answer


def seed(port: int) -> None:
    """The known messages (must survive), and queues with messages for the fuzzer to hit."""
    for mid, body in KNOWN_MESSAGES.items():
        target = f"/v1.0/{KNOWN_ACCOUNT}/{KNOWN_QUEUE}/{quote(mid, safe='')}?ttl=0&hide=0"
        assert call(port, "PUT", target, body).status == 201
    assert (
        call(port, "PUT", f"/v1.0/{KNOWN_ACCOUNT}/{KNOWN_QUEUE}/m-hidden?ttl=0&hide=100000", b"h").status
        == 201
    )
    sqs_call(port, "CreateQueue", {"QueueName": KNOWN_SQS_QUEUE}, KNOWN_ACCOUNT)
    url = f"/{KNOWN_ACCOUNT}/{KNOWN_SQS_QUEUE}"
    sqs_call(port, "SendMessage", {"QueueUrl": url, "MessageBody": "sqs body"}, KNOWN_ACCOUNT)
    for account in (SQS_ACCOUNT, "a"):
        for name in FUZZ_QUEUES:
            attributes = {"FifoQueue": "true", "ContentBasedDeduplication": "true"} if "fifo" in name else {}
            sqs_call(port, "CreateQueue", {"QueueName": name, "Attributes": attributes}, account)
            member = {"MessageGroupId": "g"} if "fifo" in name else {}
            for i in range(3):
                send = {"QueueUrl": f"/{account}/{name}", "MessageBody": f"m{i}", **member}
                sqs_call(port, "SendMessage", send, account)
    for mid in ("m", "m1", "m2"):
        assert call(port, "PUT", f"/v1.0/a/q/{mid}?ttl=0", b"x").status in (201, 204)


def known_state(port: int) -> Any:
    answer = call(port, "GET", f"/v1.0/{KNOWN_ACCOUNT}/{KNOWN_QUEUE}?match_hidden=true&detail=all")
    assert answer.status == 200, answer
    messages = orjson.loads(answer.body)
    for m in messages:
        m["hide"] = m["hide"] > 0  # counts down in real time
    bodies = {}
    for mid in KNOWN_MESSAGES:
        one = call(port, "GET", f"/v1.0/{KNOWN_ACCOUNT}/{KNOWN_QUEUE}/{quote(mid, safe='')}?detail=body")
        assert one.status == 200, one
        bodies[mid] = one.body
    sqs = call(port, "GET", f"/v1.0/{KNOWN_ACCOUNT}/{KNOWN_SQS_QUEUE}?match_hidden=true&detail=body")
    return messages, bodies, sqs.status, sqs.body


@pytest.fixture(scope="module", params=["memory", "sqlite-memory"])
def fuzzed(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzzed]:
    url = SERVER_BACKENDS[request.param].replace("{tmp}", str(tmp_path_factory.mktemp("fuzz")))
    settings_ = Settings(backend=url, max_wait=1, clean_interval=0.2, header_timeout=3.0, body_timeout=3.0)
    errors = ErrorLog()
    root = logging.getLogger()
    root.addHandler(errors)
    try:
        with ThreadedServer(settings_) as server:
            fuzzed = Fuzzed(server, errors)
            seed(fuzzed.port)
            before = known_state(fuzzed.port)
            assert before[0] and before[2] == 200
            yield fuzzed
            assert known_state(fuzzed.port) == before, "the known messages changed"
            started = time.monotonic()
            assert call(fuzzed.port, "GET", "/").body == b'["v1.0"]'
            assert time.monotonic() - started < 1.0
            assert errors.take() == []
    finally:
        root.removeHandler(errors)


#: The latest receipt handle the server handed out (requests may use it: see ``RECEIPT``).
_receipts: list[str] = ["none-yet"]
_RECEIPT_IN_ANSWER = re.compile(rb'(?:"ReceiptHandle":"|<ReceiptHandle>)([A-Za-z0-9_-]+)')


def exchange(port: int, reqs: list[Req], errors: ErrorLog) -> None:
    """Send the requests one by one on one connection; check each answer and the connection after."""
    wire = Wire(port)
    try:
        closed = False
        for req in reqs:
            wire.send(req.encode(_receipts[-1]))
            answer = wire.answer(head_only=req.method == "HEAD")
            logged = errors.take()
            assert not logged, (req, answer.status, logged)
            check_answer(req, answer)
            found = _RECEIPT_IN_ANSWER.search(answer.body)
            if found:
                _receipts[-1] = found.group(1).decode()
            if answer.headers.get("connection", "").lower() == "close":
                assert wire.at_eof(req.method == "HEAD"), "connection: close, but the connection stayed open"
                closed = True
                break
        if not closed:
            # still in step: the next request on this connection gets its own answer
            wire.send(encode_request("GET", "/", host="fuzz"))
            answer = wire.answer()
            assert (answer.status, answer.body) == (200, b'["v1.0"]'), answer
    finally:
        wire.close()
    assert not errors.take()


# -- the tests -------------------------------------------------------------------------------

FORM = ("Content-Type", "application/x-www-form-urlencoded")
BAD_COUNT_POLICY = orjson.dumps({"deadLetterTargetArn": ARNS[2], "maxReceiveCount": "\u00b2"}).decode()


@settings(
    max_examples=int(os.environ.get("BURROW_FUZZ_EXAMPLES", "300")),
    deadline=None,
    derandomize=not os.environ.get("BURROW_FUZZ_RANDOM"),  # set it for exploratory runs
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(reqs=st.lists(requests(), min_size=1, max_size=3))
# Inputs that found bugs: a control character echoed into XML (malformed XML) ...
@example(reqs=[Req("GET", "/?Action=%1F&QueueUrl=http://localhost/000000000000/fz")])
# ... str.isdigit() digits that int() rejects (500s): a query-protocol index, a maxReceiveCount.
@example(
    reqs=[Req("POST", "/", [FORM], b"Action=ListQueues&Attribute.%C2%B2.Name=a&Attribute.%C2%B2.Value=1")]
)
@example(
    reqs=[
        Req(
            "POST",
            "/",
            [("X-Amz-Target", "AmazonSQS.CreateQueue")],
            orjson.dumps({"QueueName": "fz3", "Attributes": {"RedrivePolicy": BAD_COUNT_POLICY}}),
        )
    ]
)
def test_random_requests_never_break_the_server(fuzzed: Fuzzed, reqs: list[Req]) -> None:
    exchange(fuzzed.port, reqs, fuzzed.errors)


def test_raw_bytes_get_a_clean_answer_or_close(fuzzed: Fuzzed) -> None:
    """A few hand-picked garbage heads (the HTTP layer's own tests cover framing in depth)."""
    for raw in (
        b"\x00\x01\x02\r\n\r\n",
        b"GET /v1.0/\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /v1.0 HTTP/9.9\r\nHost: x\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nab",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ):
        wire = Wire(fuzzed.port)
        try:
            wire.send(raw)
            with contextlib.suppress(EOFError):
                answer = wire.answer()
                assert 400 <= answer.status < 500 or answer.status == 505, answer
        finally:
            wire.close()
    assert not fuzzed.errors.take()
