"""SQS input rules: names, limits and attribute values (sqs.md "Limits and defaults").

Each function returns a clean value or raises :class:`SqsError` with the code a
client of AWS would see. Nothing here has side effects.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping

import orjson

from burrow.sqs.errors import SqsError, invalid
from burrow.sqs.model import DEFAULTS, FIFO_DEFAULTS, Attribute, parse_arn

MAX_QUEUE_NAME = 80
MAX_BATCH = 10
MAX_BATCH_BYTES = 1_048_576
MAX_MESSAGE_ATTRIBUTES = 10
MAX_GROUP_OR_DEDUP_ID = 128
MAX_VISIBILITY = 43_200
MAX_DELAY = 900
MAX_WAIT = 20
MAX_TAGS = 50
DEDUP_WINDOW = 300.0
RECREATE_WAIT = 60.0
PURGE_WAIT = 60.0

_QUEUE_NAME = re.compile(r"[A-Za-z0-9_-]{1,80}")
_BATCH_ID = re.compile(r"[A-Za-z0-9_-]{1,80}")
_ATTR_NAME = re.compile(r"[A-Za-z0-9_.-]{1,256}")
_BAD_BODY_CHAR = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", re.ASCII)
#: Integers are ASCII digits only (``\d`` alone also matches other scripts' digits).
_INTEGER = re.compile(r"-?\d{1,12}", re.ASCII)
_DIGITS = re.compile(r"\d{1,12}", re.ASCII)
_GROUP_ID = re.compile(r"[!-~]{1,128}")  # alphanumeric and punctuation

#: Numeric queue attributes: (minimum, maximum).
_RANGES: dict[str, tuple[int, int]] = {
    "DelaySeconds": (0, MAX_DELAY),
    "MaximumMessageSize": (1024, 1_048_576),
    "MessageRetentionPeriod": (60, 1_209_600),
    "ReceiveMessageWaitTimeSeconds": (0, MAX_WAIT),
    "VisibilityTimeout": (0, MAX_VISIBILITY),
    "KmsDataKeyReusePeriodSeconds": (60, 86_400),
}
_BOOLEANS = frozenset({"FifoQueue", "ContentBasedDeduplication", "SqsManagedSseEnabled"})
_CHOICES: dict[str, frozenset[str]] = {
    "DeduplicationScope": frozenset({"messageGroup", "queue"}),
    "FifoThroughputLimit": frozenset({"perQueue", "perMessageGroupId"}),
}
_FIFO_ONLY = frozenset(FIFO_DEFAULTS)
#: Attributes a client may set (on CreateQueue or SetQueueAttributes).
SETTABLE = (
    frozenset(DEFAULTS)
    | _FIFO_ONLY
    | {
        "FifoQueue",
        "Policy",
        "RedrivePolicy",
        "RedriveAllowPolicy",
        "KmsMasterKeyId",
        "KmsDataKeyReusePeriodSeconds",
    }
)
#: Attributes GetQueueAttributes can return but nobody may set.
READ_ONLY = frozenset(
    {
        "ApproximateNumberOfMessages",
        "ApproximateNumberOfMessagesNotVisible",
        "ApproximateNumberOfMessagesDelayed",
        "CreatedTimestamp",
        "LastModifiedTimestamp",
        "QueueArn",
    }
)
ALL_QUEUE_ATTRIBUTES = SETTABLE | READ_ONLY


def queue_name(name: str, fifo: bool) -> str:
    base = name[:-5] if name.endswith(".fifo") else name
    if not _QUEUE_NAME.fullmatch(base) or len(name) > MAX_QUEUE_NAME:
        raise invalid(
            "Can only include alphanumeric characters, hyphens, or underscores. 1 to 80 in length"
            f" (and FIFO queue names end with .fifo); got {name[:100]!r}"
        )
    if fifo != name.endswith(".fifo"):
        raise invalid(
            "The name of a FIFO queue must end with the .fifo suffix (and only a FIFO queue's may)."
        )
    return name


def integer(value: object, what: str, minimum: int, maximum: int) -> int:
    """An integer in range; accepts JSON numbers and (from the query protocol) digit strings."""
    number: int | None = None
    if type(value) is int:
        number = value
    elif isinstance(value, str) and _INTEGER.fullmatch(value.strip()):
        number = int(value)
    if number is None or not minimum <= number <= maximum:
        raise invalid(
            f"Value {str(value)[:40]} for parameter {what} is invalid. Reason: must be between"
            f" {minimum} and {maximum}."
        )
    return number


def queue_attributes(attributes: Mapping[str, object], fifo: bool) -> dict[str, str]:
    """Check settable queue attributes; return them normalised (booleans lower-case)."""
    out: dict[str, str] = {}
    for name, raw in attributes.items():
        if name not in SETTABLE:
            raise SqsError("InvalidAttributeName", f"Unknown or read-only Attribute {name[:100]}.")
        if not isinstance(raw, str):
            raise SqsError(
                "InvalidAttributeValue", f"Invalid value for the parameter {name}: must be a string."
            )
        if name in _FIFO_ONLY and not fifo:
            raise SqsError("InvalidAttributeName", f"Unknown Attribute {name}: only FIFO queues have it.")
        value = raw
        if name in _RANGES:
            lo, hi = _RANGES[name]
            if not _DIGITS.fullmatch(raw) or not lo <= int(raw) <= hi:
                raise SqsError(
                    "InvalidAttributeValue",
                    f"Invalid value for the parameter {name}: must be an integer from {lo} to {hi}.",
                )
            value = str(int(raw))
        elif name in _BOOLEANS:
            if raw.lower() not in ("true", "false"):
                raise SqsError("InvalidAttributeValue", f"Invalid value for the parameter {name}.")
            value = raw.lower()
        elif name in _CHOICES and raw not in _CHOICES[name]:
            choices = ", ".join(sorted(_CHOICES[name]))
            raise SqsError(
                "InvalidAttributeValue", f"Invalid value for the parameter {name}: one of {choices}."
            )
        elif name == "RedrivePolicy" and raw:
            value = redrive_policy(raw)
        elif name in ("Policy", "RedriveAllowPolicy") and raw:
            _json_object(raw, name)
        out[name] = value
    if out.get("FifoQueue") == "false" and fifo:
        raise SqsError("InvalidAttributeValue", "Invalid value for the parameter FifoQueue.")
    return out


def _json_object(raw: str, name: str) -> dict[str, object]:
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        doc = None
    if not isinstance(doc, dict):
        raise SqsError("InvalidAttributeValue", f"Invalid value for the parameter {name}: not a JSON object.")
    return doc


def redrive_policy(raw: str) -> str:
    """Normalise a RedrivePolicy to ``{"deadLetterTargetArn": ..., "maxReceiveCount": n}``."""
    doc = _json_object(raw, "RedrivePolicy")
    arn, count = doc.get("deadLetterTargetArn"), doc.get("maxReceiveCount")
    if not isinstance(arn, str) or parse_arn(arn) is None:
        raise SqsError(
            "InvalidAttributeValue",
            "Value for parameter RedrivePolicy is invalid. Reason: Dead-letter target must be a queue ARN.",
        )
    if isinstance(count, str) and count.isascii() and count.isdigit():  # not "\u00b2", which int() rejects
        count = int(count)
    if type(count) is not int or not 1 <= count <= 1000:
        raise SqsError(
            "InvalidAttributeValue",
            "Value for parameter RedrivePolicy is invalid. Reason:"
            " maxReceiveCount must be an integer from 1 to 1000.",
        )
    return orjson.dumps({"deadLetterTargetArn": arn, "maxReceiveCount": count}).decode()


def body(text: object) -> str:
    if not isinstance(text, str):
        raise SqsError("MissingParameter", "The request must contain the parameter MessageBody.")
    if not text:
        raise invalid("The message body must be at least 1 character long.")
    bad = _BAD_BODY_CHAR.search(text)
    if bad is not None:
        raise SqsError(
            "InvalidMessageContents",
            f"Invalid characters found. Invalid character #x{ord(bad.group()):X} at offset {bad.start()}.",
        )
    return text


def _attribute_value(name: str, raw: object, system: bool) -> Attribute:
    label = "message system attribute" if system else "message attribute"
    if not isinstance(raw, Mapping):
        raise invalid(f"The {label} '{name}' must be an object with DataType and a value.")
    data_type = raw.get("DataType")
    if not isinstance(data_type, str) or not data_type:
        raise invalid(f"The {label} '{name}' must contain a non-empty attribute type.")
    base = data_type.split(".", 1)[0]
    if base not in ("String", "Number", "Binary") or len(data_type) > 256:
        raise invalid(
            f"The type of {label} '{name}' is invalid. You must use only the following"
            " supported type prefixes: Binary, Number, String."
        )
    if raw.get("StringListValues") or raw.get("BinaryListValues"):
        raise invalid(f"The {label} '{name}': StringListValues and BinaryListValues are not supported.")
    if base == "Binary":
        value = raw.get("BinaryValue")
        if isinstance(value, str):  # both protocols carry binary values as base64 text
            try:
                value = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                raise invalid(f"The {label} '{name}' has a BinaryValue that is not valid base64.") from None
        if not isinstance(value, bytes) or not value:
            raise invalid(f"The {label} '{name}' must contain a non-empty value of type 'Binary'.")
        return Attribute(data_type, binary=value)
    text = raw.get("StringValue")
    if not isinstance(text, str) or not text:
        raise invalid(f"The {label} '{name}' must contain a non-empty value of type '{base}'.")
    if base == "Number" and (not _NUMBER.fullmatch(text) or len(text.lstrip("+-").replace(".", "")) > 40):
        raise invalid(f"Can't cast the value of {label} '{name}' to a number.")
    if _BAD_BODY_CHAR.search(text):
        raise SqsError("InvalidMessageContents", f"Invalid characters found in {label} '{name}'.")
    return Attribute(data_type, string=text)


def message_attributes(raw: object) -> dict[str, Attribute]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise invalid("MessageAttributes must be a map of name to value.")
    if len(raw) > MAX_MESSAGE_ATTRIBUTES:
        raise invalid(
            f"Number of message attributes [{len(raw)}] exceeds the allowed maximum"
            f" [{MAX_MESSAGE_ATTRIBUTES}]."
        )
    out: dict[str, Attribute] = {}
    for name, value in raw.items():
        lowered = name.lower()
        if (
            not _ATTR_NAME.fullmatch(name)
            or lowered.startswith(("aws.", "amazon."))
            or name.startswith(".")
            or name.endswith(".")
            or ".." in name
        ):
            raise invalid(f"Message (user) attribute name '{name[:300]}' is invalid.")
        out[name] = _attribute_value(name, value, False)
    return out


def system_attributes(raw: object) -> str | None:
    """The AWSTraceHeader value, the only message system attribute there is."""
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise invalid("MessageSystemAttributes must be a map of name to value.")
    trace: str | None = None
    for name, value in raw.items():
        if name != "AWSTraceHeader":
            raise invalid(f"Message system attribute name '{name[:100]}' is invalid.")
        attr = _attribute_value(name, value, True)
        if attr.data_type != "String" or attr.string is None:
            raise invalid("The message system attribute AWSTraceHeader must be of type String.")
        trace = attr.string
    return trace


def group_or_dedup_id(value: object, what: str) -> str:
    if not isinstance(value, str) or not _GROUP_ID.fullmatch(value):
        raise invalid(
            f"Value {str(value)[:140]} for parameter {what} is invalid. Reason: it must be 1 to"
            f" {MAX_GROUP_OR_DEDUP_ID} alphanumeric or punctuation characters."
        )
    return value


def batch_ids(entries: object, kind: str) -> list[Mapping[str, object]]:
    """Check the batch as a whole: present, 1..10 entries, valid and distinct ids.

    ``kind`` is the entry type AWS names in the errors (``SendMessageBatchRequestEntry``).
    """
    if entries is None or entries == []:
        raise SqsError("EmptyBatchRequest", f"There should be at least one {kind} in the request.")
    if not isinstance(entries, list):
        raise invalid("Entries must be a list.")
    if len(entries) > MAX_BATCH:
        raise SqsError(
            "TooManyEntriesInBatchRequest",
            f"Maximum number of entries per request are {MAX_BATCH}. You have sent {len(entries)}.",
        )
    seen: set[str] = set()
    for entry in entries:
        if not isinstance(entry, Mapping):
            raise invalid("Each batch entry must be an object.")
        entry_id = entry.get("Id")
        if not isinstance(entry_id, str) or not _BATCH_ID.fullmatch(entry_id):
            raise SqsError(
                "InvalidBatchEntryId",
                "A batch entry id can only contain alphanumeric"
                " characters, hyphens and underscores. It can be at most 80 letters long.",
            )
        if entry_id in seen:
            raise SqsError("BatchEntryIdsNotDistinct", f"Id {entry_id} repeated.")
        seen.add(entry_id)
    return entries


def tags(raw: object) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise invalid("Tags must be a map of key to value.")
    out: dict[str, str] = {}
    for key, value in raw.items():
        if (
            not isinstance(key, str)
            or not 1 <= len(key) <= 128
            or not isinstance(value, str)
            or len(value) > 256
        ):
            raise invalid("Tag keys must be 1 to 128 characters and tag values at most 256.")
        out[key] = value
    return out
