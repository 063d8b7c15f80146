"""SQS values and their compact encodings in the Burrow store.

* A queue's SQS state (settable attributes, tags, timestamps, tombstone) is one
  orjson document in queue metadata (:class:`QueueState`).
* A message's SQS extras (attributes, receive count, group, ...) are one orjson
  document in ``Message.meta`` (:class:`MessageMeta`); a message put through the
  burrow v1.0 API has empty meta, which decodes to "never received, no attributes".
* A receipt handle names (account, queue, message, receive count). The count grows
  on every receive, so each receive hands out a new handle and an older one no
  longer matches the stored message: that is how a stale consumer is kept out.

:class:`MessageMeta` and :class:`Receipt` are built several times per request, so they
are slotted dataclasses *without* ``frozen=True`` (a frozen ``__init__`` sets each field
through ``object.__setattr__``, about 1 us for MessageMeta). Treat them as immutable:
make a changed copy with :func:`dataclasses.replace`.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import os
from dataclasses import dataclass, field
from typing import Any

import orjson

from burrow.core.model import Message

DEFAULT_ACCOUNT = "000000000000"

#: Settable queue attributes and their defaults (strings, as on the wire).
DEFAULTS: dict[str, str] = {
    "DelaySeconds": "0",
    "MaximumMessageSize": "1048576",
    "MessageRetentionPeriod": "345600",
    "ReceiveMessageWaitTimeSeconds": "0",
    "VisibilityTimeout": "30",
    "SqsManagedSseEnabled": "true",
}
FIFO_DEFAULTS: dict[str, str] = {
    "ContentBasedDeduplication": "false",
    "DeduplicationScope": "queue",
    "FifoThroughputLimit": "perQueue",
}


@dataclass(frozen=True, slots=True)
class Attribute:
    """One message attribute value: exactly one of ``string`` / ``binary`` is set."""

    data_type: str
    string: str | None = None
    binary: bytes | None = None

    def size(self, name: str) -> int:
        """Bytes counted against MaximumMessageSize (name, type and value)."""
        value = self.binary if self.binary is not None else (self.string or "").encode("utf-8")
        return len(name.encode("utf-8")) + len(self.data_type.encode("utf-8")) + len(value)

    def to_json(self) -> dict[str, str]:
        if self.binary is not None:
            return {"DataType": self.data_type, "BinaryValue": base64.b64encode(self.binary).decode("ascii")}
        return {"DataType": self.data_type, "StringValue": self.string or ""}


def _pack_attributes(attributes: dict[str, Attribute]) -> dict[str, list[str]]:
    return {
        name: (
            [a.data_type, "B", base64.b64encode(a.binary).decode("ascii")]
            if a.binary is not None
            else [a.data_type, "S", a.string or ""]
        )
        for name, a in attributes.items()
    }


def _unpack_attributes(packed: dict[str, list[str]]) -> dict[str, Attribute]:
    return {
        name: (Attribute(dt, binary=base64.b64decode(v)) if kind == "B" else Attribute(dt, string=v))
        for name, (dt, kind, v) in packed.items()
    }


@dataclass(slots=True)
class MessageMeta:
    """SQS data of one message. Times are epoch milliseconds.

    Only the first group of fields is stored (in ``Message.meta``); the receive count,
    first-receive time, group and sequence number are the store's own per-message data
    (``Message.receives`` ...), which its atomic claim and FIFO send maintain, and are
    filled in by :meth:`of`.
    """

    sent: int = 0
    attributes: dict[str, Attribute] = field(default_factory=dict)
    trace_header: str | None = None
    dedup_id: str | None = None
    sender: str | None = None
    dlq_source: str | None = None
    # -- from the store's per-message data, never encoded --
    receive_count: int = 0
    first_receive: int = 0
    group: str | None = None
    sequence: str | None = None

    def encode(self) -> bytes:
        doc: dict[str, Any] = {"s": self.sent}
        if self.attributes:
            doc["a"] = _pack_attributes(self.attributes)
        for key, value in (
            ("x", self.trace_header),
            ("d", self.dedup_id),
            ("u", self.sender),
            ("D", self.dlq_source),
        ):
            if value is not None:
                doc[key] = value
        return orjson.dumps(doc)

    @staticmethod
    def decode(raw: bytes) -> MessageMeta:
        """The stored part alone (no receive count, group or sequence)."""
        if not raw:
            return MessageMeta()
        try:
            doc = orjson.loads(raw)
            get = doc.get
            return MessageMeta(
                get("s", 0),
                _unpack_attributes(doc["a"]) if "a" in doc else {},
                get("x"),
                get("d"),
                get("u"),
                get("D"),
            )
        except (orjson.JSONDecodeError, TypeError, ValueError, KeyError, AttributeError, binascii.Error):
            return MessageMeta()  # foreign meta (another front end's): treat as a plain message

    @staticmethod
    def of(m: Message) -> MessageMeta:
        """Everything SQS knows of a stored message: its meta plus the store's per-message data."""
        meta = MessageMeta.decode(m.meta)
        meta.receive_count = m.receives
        meta.first_receive = int(m.first_received * 1000)
        meta.group = m.group or None
        meta.sequence = sequence_number(m.sequence) if m.sequence else None
        return meta


#: Sequence numbers are 20-digit decimal strings like AWS's; the store counts from 1.
_SEQUENCE_BASE = 18_000_000_000_000_000_000


def sequence_number(sequence: int) -> str:
    return str(_SEQUENCE_BASE + sequence)


# -- ids ----------------------------------------------------------------------------

_ID_RANDOM = os.urandom(10).hex()
_ID_PREFIX = f"{_ID_RANDOM[:8]}-{_ID_RANDOM[8:12]}-{_ID_RANDOM[12:16]}-{_ID_RANDOM[16:20]}-"
_ID_COUNTER = itertools.count(int.from_bytes(os.urandom(4), "big"))


def new_id() -> str:
    """A unique id in UUID layout: 80 random bits per process, then a 48-bit counter.

    ``uuid.uuid4()`` costs a system call per id; message and request ids are made on
    every request, and only uniqueness matters for them.
    """
    return f"{_ID_PREFIX}{next(_ID_COUNTER) & 0xFFFFFFFFFFFF:012x}"


# -- receipt handles -------------------------------------------------------------


# ``base64.urlsafe_b64encode``/``b64decode`` (non-strict), without their Python-level
# argument checks: a handle is made on every receive and read on every delete.
_TO_URLSAFE = bytes.maketrans(b"+/", b"-_")
_FROM_URLSAFE = bytes.maketrans(b"-_", b"+/")


@dataclass(slots=True)
class Receipt:
    """What a receipt handle names: the message, which receive of it, and when that was (ms)."""

    account: str
    queue: str
    message: str
    receive_count: int
    received: int

    def encode(self) -> str:
        return receipt_handle(self.account, self.queue, self.message, self.receive_count, self.received)

    @staticmethod
    def decode(handle: str) -> Receipt | None:
        """The receipt a handle names, or None when it is not one of ours."""
        if not handle or len(handle) > 4096:
            return None
        try:
            padded = (handle + "=" * (-len(handle) % 4)).encode("ascii").translate(_FROM_URLSAFE)
            account, queue, message, count, received = orjson.loads(binascii.a2b_base64(padded))
        except (ValueError, TypeError, binascii.Error):
            return None
        if (
            not isinstance(account, str)
            or not isinstance(queue, str)
            or not isinstance(message, str)
            or type(count) is not int
            or type(received) is not int
        ):
            return None
        return Receipt(account, queue, message, count, received)


def receipt_handle(account: str, queue: str, message: str, receive_count: int, received: int) -> str:
    """``Receipt(...).encode()`` without building the Receipt."""
    raw = orjson.dumps([account, queue, message, receive_count, received])
    return binascii.b2a_base64(raw, newline=False).translate(_TO_URLSAFE).decode("ascii").rstrip("=")


# -- queues ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class QueueState:
    """What queue metadata holds for one SQS queue. ``deleted`` > 0 marks a tombstone."""

    attributes: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    created: int = 0
    modified: int = 0
    purged: float = 0.0
    deleted: float = 0.0

    @property
    def fifo(self) -> bool:
        return self.attributes.get("FifoQueue") == "true"

    def attribute(self, name: str) -> str:
        value = self.attributes.get(name)
        if value is None:
            value = DEFAULTS.get(name) or (FIFO_DEFAULTS.get(name, "") if self.fifo else "")
        return value

    def number(self, name: str) -> int:
        return int(self.attribute(name))

    def encode(self) -> bytes:
        return orjson.dumps(
            {
                "a": self.attributes,
                "t": self.tags,
                "c": self.created,
                "m": self.modified,
                "p": self.purged,
                "d": self.deleted,
            }
        )

    @staticmethod
    def decode(raw: bytes) -> QueueState:
        doc = orjson.loads(raw)
        return QueueState(doc["a"], doc["t"], doc["c"], doc["m"], doc["p"], doc["d"])


def queue_arn(region: str, account: str, name: str) -> str:
    return f"arn:aws:sqs:{region}:{account}:{name}"


def parse_arn(arn: str) -> tuple[str, str, str] | None:
    """(region, account, queue) of an SQS queue ARN, or None."""
    parts = arn.split(":")
    if len(parts) != 6 or parts[0] != "arn" or parts[2] != "sqs" or not parts[4] or not parts[5]:
        return None
    return parts[3], parts[4], parts[5]


def queue_url(host: str, account: str, name: str) -> str:
    return f"http://{host}/{account}/{name}"


_PARSED_URLS: dict[str, tuple[str, str] | None] = {}


def parse_queue_url(url: str) -> tuple[str, str] | None:
    """(account, queue) from a queue URL (any scheme and host) or a ``/account/queue`` path.

    A bare queue name (no ``/`` at all), which AWS also accepts as a QueueUrl, gives
    account ``""``: the caller's own account.
    """
    if url in _PARSED_URLS:
        return _PARSED_URLS[url]
    parsed = _parse_queue_url(url)
    if len(_PARSED_URLS) >= 4096:
        _PARSED_URLS.clear()
    _PARSED_URLS[url] = parsed
    return parsed


def _parse_queue_url(url: str) -> tuple[str, str] | None:
    if "/" not in url:
        return ("", url) if url else None
    if "://" in url:
        url = url.split("://", 1)[1]
        slash = url.find("/")
        if slash < 0:
            return None
        url = url[slash:]
    parts = url.split("?", 1)[0].strip("/").split("/")
    if len(parts) != 2 or not parts[0] or not parts[1]:
        return None
    return parts[0], parts[1]
