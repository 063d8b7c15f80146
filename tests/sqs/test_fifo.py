"""FIFO queues through boto3: order per group, group blocking while in flight, deduplication by
id and by content within 5 minutes, sequence numbers, and FIFO-only rules."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.sqs.conftest import Clock, ThreadedServer


def _code(error: pytest.ExceptionInfo[ClientError]) -> str:
    return str(error.value.response["Error"]["Code"])


def _fifo(sqs: Any, name: str, **attributes: str) -> str:
    return str(
        sqs.create_queue(QueueName=name + ".fifo", Attributes={"FifoQueue": "true", **attributes})["QueueUrl"]
    )


def test_order_per_group_and_sequence_numbers(sqs: Any, name: str) -> None:
    url = _fifo(sqs, name)
    sequences = []
    for i in range(6):
        group = "a" if i % 2 == 0 else "b"
        sent = sqs.send_message(
            QueueUrl=url, MessageBody=f"{group}{i}", MessageGroupId=group, MessageDeduplicationId=str(i)
        )
        sequences.append(int(sent["SequenceNumber"]))
    assert sequences == sorted(sequences) and len(set(sequences)) == 6
    assert all(len(str(s)) == 20 for s in sequences)
    got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, AttributeNames=["All"])["Messages"]
    assert [m["Body"] for m in got] == ["a0", "b1", "a2", "b3", "a4", "b5"]
    first = got[0]["Attributes"]
    assert first["MessageGroupId"] == "a" and first["MessageDeduplicationId"] == "0"
    assert int(first["SequenceNumber"]) == sequences[0]


def test_group_blocked_while_a_message_is_in_flight(sqs: Any, name: str) -> None:
    url = _fifo(sqs, name, ContentBasedDeduplication="true")
    for body, group in (("a1", "a"), ("a2", "a"), ("b1", "b"), ("a3", "a")):
        sqs.send_message(QueueUrl=url, MessageBody=body, MessageGroupId=group)
    first = sqs.receive_message(QueueUrl=url)["Messages"]
    assert [m["Body"] for m in first] == ["a1"]
    # Group a is blocked while a1 is in flight; b is free.
    second = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]
    assert [m["Body"] for m in second] == ["b1"]
    assert "Messages" not in sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)
    # a1 comes back (visibility 0): it is first again, a2 and a3 still wait behind it.
    sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=first[0]["ReceiptHandle"], VisibilityTimeout=0)
    again = sqs.receive_message(QueueUrl=url)["Messages"]
    assert [m["Body"] for m in again] == ["a1"]
    sqs.delete_message(QueueUrl=url, ReceiptHandle=again[0]["ReceiptHandle"])
    rest = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]
    assert [m["Body"] for m in rest] == ["a2", "a3"]


def test_deduplication_by_id_and_content(timed: tuple[ThreadedServer, Clock, Any], name: str) -> None:
    server, clock, sqs = timed
    url = _fifo(sqs, name)
    one = sqs.send_message(QueueUrl=url, MessageBody="x", MessageGroupId="g", MessageDeduplicationId="d1")
    dup = sqs.send_message(QueueUrl=url, MessageBody="other", MessageGroupId="g", MessageDeduplicationId="d1")
    assert (dup["MessageId"], dup["SequenceNumber"]) == (one["MessageId"], one["SequenceNumber"])
    assert server.call(server.server.engine.backend.count_messages()) == 1
    with pytest.raises(ClientError) as error:  # no dedup id and no content-based dedup
        sqs.send_message(QueueUrl=url, MessageBody="x", MessageGroupId="g")
    assert _code(error) == "InvalidParameterValue"

    cbd = _fifo(sqs, name + "-cbd", ContentBasedDeduplication="true")
    a = sqs.send_message(QueueUrl=cbd, MessageBody="same", MessageGroupId="g")
    b = sqs.send_message(QueueUrl=cbd, MessageBody="same", MessageGroupId="h")
    assert a["MessageId"] == b["MessageId"]  # queue-scoped dedup by default
    clock.advance(301)  # the 5-minute window has passed
    c = sqs.send_message(QueueUrl=cbd, MessageBody="same", MessageGroupId="g")
    assert c["MessageId"] != a["MessageId"]
    assert int(c["SequenceNumber"]) > int(a["SequenceNumber"])


def test_deduplication_scope_message_group(sqs: Any, name: str) -> None:
    url = _fifo(
        sqs,
        name,
        ContentBasedDeduplication="true",
        DeduplicationScope="messageGroup",
        FifoThroughputLimit="perMessageGroupId",
    )
    a = sqs.send_message(QueueUrl=url, MessageBody="same", MessageGroupId="g")
    b = sqs.send_message(QueueUrl=url, MessageBody="same", MessageGroupId="h")
    assert a["MessageId"] != b["MessageId"]
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert attrs["FifoQueue"] == "true" and attrs["DeduplicationScope"] == "messageGroup"


def test_fifo_rules(sqs: Any, name: str) -> None:
    url = _fifo(sqs, name, ContentBasedDeduplication="true")
    with pytest.raises(ClientError) as error:
        sqs.send_message(QueueUrl=url, MessageBody="x")
    assert _code(error) == "MissingParameter"
    with pytest.raises(ClientError) as error:
        sqs.send_message(QueueUrl=url, MessageBody="x", MessageGroupId="g", DelaySeconds=5)
    assert _code(error) == "InvalidParameterValue"
    batch = sqs.send_message_batch(
        QueueUrl=url,
        Entries=[
            {"Id": "ok", "MessageBody": "1", "MessageGroupId": "g"},
            {"Id": "delayed", "MessageBody": "2", "MessageGroupId": "g", "DelaySeconds": 5},
            {"Id": "ok2", "MessageBody": "3", "MessageGroupId": "g"},
        ],
    )
    assert [e["Id"] for e in batch["Successful"]] == ["ok", "ok2"]
    assert all("SequenceNumber" in e for e in batch["Successful"])
    assert [(f["Id"], f["Code"]) for f in batch["Failed"]] == [("delayed", "InvalidParameterValue")]
    got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]
    assert [m["Body"] for m in got] == ["1", "3"]


@pytest.mark.parametrize(
    ("attributes", "missing", "code"),
    [
        ({}, "MessageGroupId", "MissingParameter"),
        ({}, "MessageDeduplicationId", "InvalidParameterValue"),
        ({"ContentBasedDeduplication": "true"}, "MessageGroupId", "MissingParameter"),
    ],
)
def test_fifo_batch_missing_ids_fail_the_whole_request(
    sqs: Any, name: str, attributes: dict[str, str], missing: str, code: str
) -> None:
    """An entry without its group id (or, without content-based deduplication, its dedup id) fails
    the whole SendMessageBatch, as on AWS: a 400, and no entry is sent, not even the valid ones."""
    url = _fifo(sqs, name, **attributes)
    entries = [
        {"Id": f"e{i}", "MessageBody": f"m{i}", "MessageGroupId": "g", "MessageDeduplicationId": f"d{i}"}
        for i in range(3)
    ]
    entries[0]["MessageBody"] = "bad \x00 char"  # an entry's own failure does not mask the batch's
    del entries[2][missing]
    with pytest.raises(ClientError) as error:
        sqs.send_message_batch(QueueUrl=url, Entries=entries)
    assert _code(error) == code
    assert error.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert "Messages" not in sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"])
    assert attrs["Attributes"]["ApproximateNumberOfMessages"] == "0"
    del entries[0]  # with every id present, entries fail or succeed on their own again
    entries[1][missing] = "restored"
    sent = sqs.send_message_batch(QueueUrl=url, Entries=entries)
    assert [e["Id"] for e in sent["Successful"]] == ["e1", "e2"] and sent.get("Failed", []) == []
