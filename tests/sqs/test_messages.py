"""Message actions through the real boto3 client over a socket: send, receive, delete, visibility,
batches with partial failures, receipt handles, long polling, delay and retention."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from botocore.exceptions import ClientError

from burrow.sqs.digests import md5_of_attributes
from burrow.sqs.model import Attribute
from tests.sqs.conftest import Clock, ThreadedServer


def _code(error: pytest.ExceptionInfo[ClientError]) -> str:
    return str(error.value.response["Error"]["Code"])


def test_send_receive_delete(sqs: Any, name: str) -> None:
    url = sqs.create_queue(QueueName=name)["QueueUrl"]
    sent = sqs.send_message(QueueUrl=url, MessageBody="hello", MessageGroupId="accepted-on-standard")
    got = sqs.receive_message(QueueUrl=url, AttributeNames=["All"])["Messages"]
    assert [m["MessageId"] for m in got] == [sent["MessageId"]]
    attrs = got[0]["Attributes"]
    assert attrs["ApproximateReceiveCount"] == "1"
    assert attrs["SenderId"] == "testing"
    assert abs(int(attrs["SentTimestamp"]) - time.time() * 1000) < 10_000
    assert int(attrs["ApproximateFirstReceiveTimestamp"]) >= int(attrs["SentTimestamp"])
    assert "Messages" not in sqs.receive_message(QueueUrl=url)  # in flight: nothing to see
    sqs.delete_message(QueueUrl=url, ReceiptHandle=got[0]["ReceiptHandle"])
    counts = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert counts["ApproximateNumberOfMessages"] == "0"
    assert counts["ApproximateNumberOfMessagesNotVisible"] == "0"


def test_receipt_handles_change_and_stale_ones_cannot_delete_but_can_change_visibility(
    sqs: Any, name: str
) -> None:
    url = sqs.create_queue(QueueName=name)["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody="x")
    first = sqs.receive_message(QueueUrl=url, VisibilityTimeout=0)["Messages"][0]
    second = sqs.receive_message(QueueUrl=url, VisibilityTimeout=30)["Messages"][0]
    assert first["MessageId"] == second["MessageId"]
    assert first["ReceiptHandle"] != second["ReceiptHandle"]
    # The stale consumer's delete "succeeds" (as on AWS) but the message stays with its new holder.
    sqs.delete_message(QueueUrl=url, ReceiptHandle=first["ReceiptHandle"])
    counts = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessagesNotVisible"])
    assert counts["Attributes"]["ApproximateNumberOfMessagesNotVisible"] == "1"
    # An older handle still changes the visibility of the message in flight (as on AWS).
    sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=first["ReceiptHandle"], VisibilityTimeout=0)
    third = sqs.receive_message(QueueUrl=url, VisibilityTimeout=30)["Messages"][0]
    assert third["MessageId"] == first["MessageId"]
    sqs.delete_message(QueueUrl=url, ReceiptHandle=second["ReceiptHandle"])  # stale now: kept
    sqs.delete_message(QueueUrl=url, ReceiptHandle=third["ReceiptHandle"])
    assert (
        sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"][
            "ApproximateNumberOfMessagesNotVisible"
        ]
        == "0"
    )
    with pytest.raises(ClientError) as error:
        sqs.delete_message(QueueUrl=url, ReceiptHandle="garbage")
    assert _code(error) == "ReceiptHandleIsInvalid"
    other = sqs.create_queue(QueueName=name + "-other")["QueueUrl"]
    with pytest.raises(ClientError) as error:  # a handle from another queue is not valid here
        sqs.delete_message(QueueUrl=other, ReceiptHandle=second["ReceiptHandle"])
    assert _code(error) == "ReceiptHandleIsInvalid"


def test_change_visibility(sqs: Any, name: str) -> None:
    url = sqs.create_queue(QueueName=name, Attributes={"VisibilityTimeout": "60"})["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody="x")
    m = sqs.receive_message(QueueUrl=url)["Messages"][0]
    assert "Messages" not in sqs.receive_message(QueueUrl=url)
    sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"], VisibilityTimeout=0)
    again = sqs.receive_message(QueueUrl=url, AttributeNames=["ApproximateReceiveCount"])["Messages"][0]
    assert again["Attributes"]["ApproximateReceiveCount"] == "2"
    with pytest.raises(ClientError) as error:  # beyond 12 h from this receive
        sqs.change_message_visibility(
            QueueUrl=url, ReceiptHandle=again["ReceiptHandle"], VisibilityTimeout=43201
        )
    assert _code(error) == "InvalidParameterValue"
    sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=again["ReceiptHandle"], VisibilityTimeout=0)
    with pytest.raises(ClientError) as error:
        sqs.change_message_visibility(
            QueueUrl=url, ReceiptHandle=again["ReceiptHandle"], VisibilityTimeout=10
        )
    assert _code(error) == "AWS.SimpleQueueService.MessageNotInflight"


def test_visibility_timeout_expiry_redelivers(sqs: Any, name: str) -> None:
    url = sqs.create_queue(QueueName=name)["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody="x")
    sqs.receive_message(QueueUrl=url, VisibilityTimeout=1)
    start = time.monotonic()
    got = sqs.receive_message(QueueUrl=url, WaitTimeSeconds=5, AttributeNames=["ApproximateReceiveCount"])
    # Woken by the cleaner when the visibility ends (clean_interval 0.1 s in these servers).
    assert got["Messages"][0]["Attributes"]["ApproximateReceiveCount"] == "2"
    assert 0.5 < time.monotonic() - start < 3


def test_long_poll_returns_as_soon_as_a_message_is_sent(sqs: Any, name: str) -> None:
    url = sqs.create_queue(QueueName=name)["QueueUrl"]
    sender = threading.Timer(0.3, lambda: sqs.send_message(QueueUrl=url, MessageBody="late"))
    start = time.monotonic()
    sender.start()
    try:
        got = sqs.receive_message(QueueUrl=url, WaitTimeSeconds=10, MaxNumberOfMessages=10)
    finally:
        sender.join()
    elapsed = time.monotonic() - start
    assert [m["Body"] for m in got["Messages"]] == ["late"]
    assert 0.25 < elapsed < 2, elapsed


def test_long_poll_times_out_empty_and_short_poll_returns_now(sqs: Any, name: str) -> None:
    url = sqs.create_queue(QueueName=name, Attributes={"ReceiveMessageWaitTimeSeconds": "1"})["QueueUrl"]
    start = time.monotonic()
    assert "Messages" not in sqs.receive_message(QueueUrl=url)  # queue default wait: 1 s
    assert 0.9 < time.monotonic() - start < 3
    start = time.monotonic()
    assert "Messages" not in sqs.receive_message(QueueUrl=url, WaitTimeSeconds=0)
    assert time.monotonic() - start < 0.5


def test_change_visibility_to_zero_wakes_a_long_poll(sqs: Any, name: str) -> None:
    url = sqs.create_queue(QueueName=name)["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody="x")
    held = sqs.receive_message(QueueUrl=url, VisibilityTimeout=600)["Messages"][0]
    release = threading.Timer(
        0.3,
        lambda: sqs.change_message_visibility(
            QueueUrl=url, ReceiptHandle=held["ReceiptHandle"], VisibilityTimeout=0
        ),
    )
    start = time.monotonic()
    release.start()
    try:
        got = sqs.receive_message(QueueUrl=url, WaitTimeSeconds=10)
    finally:
        release.join()
    assert got["Messages"][0]["MessageId"] == held["MessageId"]
    assert time.monotonic() - start < 2


def test_delay_seconds_message_and_queue(sqs: Any, name: str) -> None:
    url = sqs.create_queue(QueueName=name, Attributes={"DelaySeconds": "1"})["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody="queue-delay")
    sqs.send_message(QueueUrl=url, MessageBody="now", DelaySeconds=0)
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert (attrs["ApproximateNumberOfMessages"], attrs["ApproximateNumberOfMessagesDelayed"]) == ("1", "1")
    assert [m["Body"] for m in sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]] == [
        "now"
    ]
    start = time.monotonic()
    got = sqs.receive_message(QueueUrl=url, WaitTimeSeconds=5)  # woken when the delay ends
    assert [m["Body"] for m in got["Messages"]] == ["queue-delay"]
    assert time.monotonic() - start < 2.5


def test_batches_with_partial_failures(sqs: Any, name: str) -> None:
    url = sqs.create_queue(QueueName=name)["QueueUrl"]
    sent = sqs.send_message_batch(
        QueueUrl=url,
        Entries=[
            {"Id": "a", "MessageBody": "one"},
            {"Id": "b", "MessageBody": "bad \x00 char"},
            {"Id": "c", "MessageBody": "three", "DelaySeconds": 0},
        ],
    )
    assert sorted(e["Id"] for e in sent["Successful"]) == ["a", "c"]
    assert [(f["Id"], f["Code"], f["SenderFault"]) for f in sent["Failed"]] == [
        ("b", "InvalidMessageContents", True)
    ]
    got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]
    assert sorted(m["Body"] for m in got) == ["one", "three"]
    handles = [m["ReceiptHandle"] for m in got]
    changed = sqs.change_message_visibility_batch(
        QueueUrl=url,
        Entries=[
            {"Id": "x", "ReceiptHandle": handles[0], "VisibilityTimeout": 100},
            {"Id": "y", "ReceiptHandle": "garbage", "VisibilityTimeout": 100},
        ],
    )
    assert [e["Id"] for e in changed["Successful"]] == ["x"]
    assert [(f["Id"], f["Code"]) for f in changed["Failed"]] == [("y", "ReceiptHandleIsInvalid")]
    deleted = sqs.delete_message_batch(
        QueueUrl=url,
        Entries=[{"Id": "x", "ReceiptHandle": h} for h in handles[:1]]
        + [{"Id": "y", "ReceiptHandle": handles[1]}, {"Id": "bad", "ReceiptHandle": "garbage"}],
    )
    assert sorted(e["Id"] for e in deleted["Successful"]) == ["x", "y"]
    assert [(f["Id"], f["Code"]) for f in deleted["Failed"]] == [("bad", "ReceiptHandleIsInvalid")]


@pytest.mark.parametrize(
    ("entries", "code"),
    [
        ([], "AWS.SimpleQueueService.EmptyBatchRequest"),
        (
            [{"Id": str(i), "MessageBody": "x"} for i in range(11)],
            "AWS.SimpleQueueService.TooManyEntriesInBatchRequest",
        ),
        (
            [{"Id": "a", "MessageBody": "x"}, {"Id": "a", "MessageBody": "y"}],
            "AWS.SimpleQueueService.BatchEntryIdsNotDistinct",
        ),
        ([{"Id": "bad id!", "MessageBody": "x"}], "AWS.SimpleQueueService.InvalidBatchEntryId"),
        (
            [{"Id": str(i), "MessageBody": "x" * 300_000} for i in range(4)],
            "AWS.SimpleQueueService.BatchRequestTooLong",
        ),
    ],
)
def test_whole_batch_errors(sqs: Any, name: str, entries: list[dict[str, Any]], code: str) -> None:
    url = sqs.create_queue(QueueName=name)["QueueUrl"]
    with pytest.raises(ClientError) as error:
        sqs.send_message_batch(QueueUrl=url, Entries=entries)
    assert _code(error) == code
    assert error.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"MessageBody": ""}, "InvalidParameterValue"),
        ({"MessageBody": "x\x01y"}, "InvalidMessageContents"),
        ({"MessageBody": "x", "DelaySeconds": 901}, "InvalidParameterValue"),
        ({"MessageBody": "x", "MessageDeduplicationId": "d"}, "InvalidParameterValue"),
        (
            {"MessageBody": "x", "MessageAttributes": {"AWS.x": {"DataType": "String", "StringValue": "v"}}},
            "InvalidParameterValue",
        ),
        (
            {"MessageBody": "x", "MessageAttributes": {"n": {"DataType": "Number", "StringValue": "abc"}}},
            "InvalidParameterValue",
        ),
        (
            {"MessageBody": "x", "MessageAttributes": {"n": {"DataType": "Nope", "StringValue": "1"}}},
            "InvalidParameterValue",
        ),
        (
            {
                "MessageBody": "x",
                "MessageAttributes": {f"a{i}": {"DataType": "String", "StringValue": "v"} for i in range(11)},
            },
            "InvalidParameterValue",
        ),
        (
            {
                "MessageBody": "x",
                "MessageSystemAttributes": {"Other": {"DataType": "String", "StringValue": "v"}},
            },
            "InvalidParameterValue",
        ),
    ],
)
def test_send_validation(sqs: Any, name: str, kwargs: dict[str, Any], code: str) -> None:
    url = sqs.create_queue(QueueName=name)["QueueUrl"]
    with pytest.raises(ClientError) as error:
        sqs.send_message(QueueUrl=url, **kwargs)
    assert _code(error) == code


def test_message_size_limit(sqs: Any, name: str) -> None:
    url = sqs.create_queue(QueueName=name, Attributes={"MaximumMessageSize": "1024"})["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody="x" * 1024)
    with pytest.raises(ClientError) as error:
        sqs.send_message(QueueUrl=url, MessageBody="x" * 1025)
    assert _code(error) == "InvalidParameterValue"
    big = sqs.create_queue(QueueName=name + "-big")["QueueUrl"]
    sqs.send_message(QueueUrl=big, MessageBody="y" * 1_048_576)
    with pytest.raises(ClientError) as error:
        sqs.send_message(QueueUrl=big, MessageBody="y" * 1_048_577)
    assert _code(error) == "InvalidParameterValue"
    assert len(sqs.receive_message(QueueUrl=big)["Messages"][0]["Body"]) == 1_048_576


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"MaxNumberOfMessages": 11}, "InvalidParameterValue"),
        ({"MaxNumberOfMessages": 0}, "InvalidParameterValue"),
        ({"WaitTimeSeconds": 21}, "InvalidParameterValue"),
        ({"VisibilityTimeout": 43201}, "InvalidParameterValue"),
        ({"AttributeNames": ["Bogus"]}, "InvalidAttributeName"),
    ],
)
def test_receive_validation(sqs: Any, name: str, kwargs: dict[str, Any], code: str) -> None:
    url = sqs.create_queue(QueueName=name)["QueueUrl"]
    with pytest.raises(ClientError) as error:
        sqs.receive_message(QueueUrl=url, **kwargs)
    assert _code(error) == code


def test_receive_returns_what_is_there_without_waiting_for_more(sqs: Any, name: str) -> None:
    url = sqs.create_queue(QueueName=name)["QueueUrl"]
    sqs.send_message_batch(QueueUrl=url, Entries=[{"Id": str(i), "MessageBody": str(i)} for i in range(3)])
    start = time.monotonic()
    got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=10)
    assert len(got["Messages"]) == 3
    assert time.monotonic() - start < 1


def test_message_attribute_name_selection(sqs: Any, name: str) -> None:
    url = sqs.create_queue(QueueName=name)["QueueUrl"]
    attrs = {n: {"DataType": "String", "StringValue": n} for n in ("color", "size", "meta.a", "meta.b")}
    sqs.send_message(QueueUrl=url, MessageBody="x", MessageAttributes=attrs)
    m = sqs.receive_message(QueueUrl=url, VisibilityTimeout=0, MessageAttributeNames=["color", "meta.*"])
    assert set(m["Messages"][0]["MessageAttributes"]) == {"color", "meta.a", "meta.b"}
    m = sqs.receive_message(QueueUrl=url, VisibilityTimeout=0)
    assert "MessageAttributes" not in m["Messages"][0] and "MD5OfMessageAttributes" not in m["Messages"][0]


def test_message_attribute_prefix_selects_names_starting_with_it(sqs: Any, name: str) -> None:
    """``Hel.*`` selects every attribute whose name starts with ``Hel``, as on AWS."""
    url = sqs.create_queue(QueueName=name)["QueueUrl"]
    names = ("Hello", "Help.Me", "Hel", "Hex", "hello", "xHello")
    attrs = {n: {"DataType": "String", "StringValue": n} for n in names}
    sqs.send_message(QueueUrl=url, MessageBody="x", MessageAttributes=attrs)
    for wanted, selected in (
        (["Hel.*"], {"Hello", "Help.Me", "Hel"}),
        (["Help.*", "Hex"], {"Help.Me", "Hex"}),
        (["Help.Me.*"], {"Help.Me"}),
        ([".*"], set(names)),
        (["Nothing.*"], set()),
    ):
        got = sqs.receive_message(QueueUrl=url, VisibilityTimeout=0, MessageAttributeNames=wanted)
        message = got["Messages"][0]
        assert set(message.get("MessageAttributes", {})) == selected, wanted
        if selected:  # the digest covers exactly the attributes returned
            expected = md5_of_attributes({n: Attribute("String", n) for n in selected})
            assert message["MD5OfMessageAttributes"] == expected
        else:
            assert "MD5OfMessageAttributes" not in message


@pytest.mark.parametrize(
    ("call", "entry"),
    [
        ("send_message_batch", "SendMessageBatchRequestEntry"),
        ("delete_message_batch", "DeleteMessageBatchRequestEntry"),
        ("change_message_visibility_batch", "ChangeMessageVisibilityBatchRequestEntry"),
    ],
)
def test_empty_batches_name_their_entry_type(sqs: Any, name: str, call: str, entry: str) -> None:
    url = sqs.create_queue(QueueName=name)["QueueUrl"]
    with pytest.raises(ClientError) as error:
        getattr(sqs, call)(QueueUrl=url, Entries=[])
    assert _code(error) == "AWS.SimpleQueueService.EmptyBatchRequest"
    assert error.value.response["Error"]["QueryErrorCode"] == "EmptyBatchRequest"
    assert error.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert f"at least one {entry} in the request" in error.value.response["Error"]["Message"]


def test_retention_really_expires_messages(timed: tuple[ThreadedServer, Clock, Any], name: str) -> None:
    server, clock, sqs = timed
    url = sqs.create_queue(QueueName=name, Attributes={"MessageRetentionPeriod": "60"})["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody="old")
    clock.advance(30)
    sqs.send_message(QueueUrl=url, MessageBody="young")
    clock.advance(31)
    server.call(server.server.engine.clean())
    bodies = [m["Body"] for m in sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]]
    assert bodies == ["young"]
    assert server.call(server.server.engine.backend.count_messages()) == 1
