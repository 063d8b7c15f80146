"""The MD5 digests against values computed independently of burrow.sqs.digests.

boto3 never checks these, so a wrong digest would pass every boto3 test while
breaking the Java, JS, Go, .NET, Ruby and PHP SDKs. Expected values here come from
published check values or from hashlib + struct written out in the test.
"""

from __future__ import annotations

import hashlib
import struct
from typing import Any

from burrow.sqs.digests import md5_of_attributes, md5_of_body
from burrow.sqs.model import Attribute


def _field(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def test_body_digest_known_value() -> None:
    assert md5_of_body("hello") == "5d41402abc4b2a76b9719d911017c592"
    assert md5_of_body("héllo ✓") == hashlib.md5("héllo ✓".encode()).hexdigest()


def test_string_attribute_known_value() -> None:
    # The value moto and AWS return for {k: String "v"} (sqs.md 5.3).
    assert md5_of_attributes({"k": Attribute("String", string="v")}) == "0a77b0642718c3d9dd47090567d11e0d"


def test_binary_and_number_attributes_by_hand() -> None:
    blob = bytes([0, 1, 2, 255])
    expected = hashlib.md5(
        _field(b"a.num")
        + _field(b"Number")
        + b"\x01"
        + _field(b"-12.5")
        + _field(b"b.bin")
        + _field(b"Binary.jpeg")
        + b"\x02"
        + _field(blob)
    ).hexdigest()
    attrs = {"b.bin": Attribute("Binary.jpeg", binary=blob), "a.num": Attribute("Number", string="-12.5")}
    assert md5_of_attributes(attrs) == expected


def test_no_attributes_means_no_digest() -> None:
    assert md5_of_attributes({}) is None


def test_digests_on_the_wire(sqs: Any, name: str) -> None:
    """Send and receive return the digests of what was sent, including Binary and Number."""
    url = sqs.create_queue(QueueName=name)["QueueUrl"]
    blob = b"\x00\xffbinary"
    attrs = {
        "n": {"DataType": "Number", "StringValue": "42"},
        "b": {"DataType": "Binary", "BinaryValue": blob},
        "s": {"DataType": "String.custom", "StringValue": "ünï"},
    }
    expected = hashlib.md5(
        _field(b"b")
        + _field(b"Binary")
        + b"\x02"
        + _field(blob)
        + _field(b"n")
        + _field(b"Number")
        + b"\x01"
        + _field(b"42")
        + _field(b"s")
        + _field(b"String.custom")
        + b"\x01"
        + _field("ünï".encode())
    ).hexdigest()
    trace = "Root=1-5759e988-bd862e3fe1be46a994272793"
    sent = sqs.send_message(
        QueueUrl=url,
        MessageBody="hello",
        MessageAttributes=attrs,
        MessageSystemAttributes={"AWSTraceHeader": {"DataType": "String", "StringValue": trace}},
    )
    assert sent["MD5OfMessageBody"] == "5d41402abc4b2a76b9719d911017c592"
    assert sent["MD5OfMessageAttributes"] == expected
    assert (
        sent["MD5OfMessageSystemAttributes"]
        == hashlib.md5(
            _field(b"AWSTraceHeader") + _field(b"String") + b"\x01" + _field(trace.encode())
        ).hexdigest()
    )
    got = sqs.receive_message(
        QueueUrl=url, MessageAttributeNames=["All"], MessageSystemAttributeNames=["All"]
    )
    message = got["Messages"][0]
    assert message["MD5OfBody"] == "5d41402abc4b2a76b9719d911017c592"
    assert message["MD5OfMessageAttributes"] == expected
    assert message["MessageAttributes"]["b"]["BinaryValue"] == blob
    assert message["Attributes"]["AWSTraceHeader"] == trace
    # Asking for a subset digests only what is returned (what SDKs recompute).
    sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0)
    only_n = sqs.receive_message(QueueUrl=url, MessageAttributeNames=["n"])["Messages"][0]
    assert set(only_n["MessageAttributes"]) == {"n"}
    assert (
        only_n["MD5OfMessageAttributes"]
        == hashlib.md5(_field(b"n") + _field(b"Number") + b"\x01" + _field(b"42")).hexdigest()
    )
