"""Dead-letter queues and redrive through boto3: the move on the receive that exceeds
maxReceiveCount, ListDeadLetterSourceQueues, StartMessageMoveTask / List / Cancel."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.sqs.conftest import together


@pytest.fixture
def name(name: str, server_backend: str) -> str:
    """Through the router, a source queue, its dead-letter queue and a move task's destination
    must live on one server (the server that moves a message holds both ends): the queues of
    these tests share a hash tag there."""
    return together(name, server_backend)


def _code(error: pytest.ExceptionInfo[ClientError]) -> str:
    return str(error.value.response["Error"]["Code"])


def _arn(sqs: Any, url: str) -> str:
    return str(sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"])


def _with_dlq(sqs: Any, name: str, max_receives: int = 2) -> tuple[str, str]:
    dlq = sqs.create_queue(QueueName=name + "-dlq")["QueueUrl"]
    policy = json.dumps({"deadLetterTargetArn": _arn(sqs, dlq), "maxReceiveCount": str(max_receives)})
    src = sqs.create_queue(QueueName=name, Attributes={"RedrivePolicy": policy})["QueueUrl"]
    return src, dlq


def _wait_for_task(sqs: Any, dlq_arn: str, status: str) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while True:
        task: dict[str, Any] = sqs.list_message_move_tasks(SourceArn=dlq_arn)["Results"][0]
        if task["Status"] == status or time.monotonic() > deadline:
            return task
        time.sleep(0.05)


def test_move_to_dlq_on_the_receive_that_exceeds_max(sqs: Any, name: str) -> None:
    src, dlq = _with_dlq(sqs, name)
    sent = sqs.send_message(QueueUrl=src, MessageBody="poison")
    for count in ("1", "2"):
        m = sqs.receive_message(QueueUrl=src, VisibilityTimeout=0, AttributeNames=["All"])["Messages"][0]
        assert m["Attributes"]["ApproximateReceiveCount"] == count
    assert "Messages" not in sqs.receive_message(QueueUrl=src)  # third receive moves it instead
    moved = sqs.receive_message(QueueUrl=dlq, AttributeNames=["All"])["Messages"][0]
    assert moved["MessageId"] == sent["MessageId"] and moved["Body"] == "poison"
    assert moved["Attributes"]["DeadLetterQueueSourceArn"] == _arn(sqs, src)
    assert moved["Attributes"]["ApproximateReceiveCount"] == "3"  # kept, plus this receive
    sources = sqs.list_dead_letter_source_queues(QueueUrl=dlq)["queueUrls"]
    assert sources == [src]
    policy = json.loads(
        sqs.get_queue_attributes(QueueUrl=src, AttributeNames=["RedrivePolicy"])["Attributes"][
            "RedrivePolicy"
        ]
    )
    assert policy == {"deadLetterTargetArn": _arn(sqs, dlq), "maxReceiveCount": 2}


def test_redrive_back_to_source(sqs: Any, name: str) -> None:
    src, dlq = _with_dlq(sqs, name, max_receives=1)
    sqs.send_message_batch(QueueUrl=src, Entries=[{"Id": str(i), "MessageBody": f"m{i}"} for i in range(3)])
    for _ in range(2):
        for m in sqs.receive_message(QueueUrl=src, MaxNumberOfMessages=10, VisibilityTimeout=0).get(
            "Messages", []
        ):
            assert m["Body"].startswith("m")
    assert "Messages" not in sqs.receive_message(QueueUrl=src)
    dlq_arn = _arn(sqs, dlq)
    assert (
        sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["ApproximateNumberOfMessages"])["Attributes"][
            "ApproximateNumberOfMessages"
        ]
        == "3"
    )
    handle = sqs.start_message_move_task(SourceArn=dlq_arn)["TaskHandle"]
    task = _wait_for_task(sqs, dlq_arn, "COMPLETED")
    assert task["Status"] == "COMPLETED"
    assert task["ApproximateNumberOfMessagesMoved"] == 3 and task["ApproximateNumberOfMessagesToMove"] == 3
    assert "TaskHandle" not in task
    back = sqs.receive_message(QueueUrl=src, MaxNumberOfMessages=10, AttributeNames=["All"])["Messages"]
    assert sorted(m["Body"] for m in back) == ["m0", "m1", "m2"]
    assert all(m["Attributes"]["ApproximateReceiveCount"] == "1" for m in back)
    with pytest.raises(ClientError) as error:  # finished tasks cannot be cancelled
        sqs.cancel_message_move_task(TaskHandle=handle)
    assert _code(error) == "AWS.SimpleQueueService.UnsupportedOperation"


def test_redrive_to_destination_cancel_and_errors(sqs: Any, name: str) -> None:
    src, dlq = _with_dlq(sqs, name, max_receives=1)
    dest = sqs.create_queue(QueueName=name + "-dest")["QueueUrl"]
    dlq_arn = _arn(sqs, dlq)
    for i in range(20):
        sqs.send_message(QueueUrl=dlq, MessageBody=f"d{i}")
    # Slow task (1 message/s) so that it is still running when cancelled.
    handle = sqs.start_message_move_task(
        SourceArn=dlq_arn, DestinationArn=_arn(sqs, dest), MaxNumberOfMessagesPerSecond=1
    )["TaskHandle"]
    running = sqs.list_message_move_tasks(SourceArn=dlq_arn, MaxResults=10)["Results"]
    assert running[0]["Status"] == "RUNNING" and running[0]["TaskHandle"] == handle
    assert running[0]["MaxNumberOfMessagesPerSecond"] == 1
    with pytest.raises(ClientError) as error:  # one running task per source
        sqs.start_message_move_task(SourceArn=dlq_arn)
    assert _code(error) == "AWS.SimpleQueueService.UnsupportedOperation"
    moved = sqs.cancel_message_move_task(TaskHandle=handle)["ApproximateNumberOfMessagesMoved"]
    assert 0 <= moved < 20
    assert sqs.list_message_move_tasks(SourceArn=dlq_arn)["Results"][0]["Status"] == "CANCELLED"
    counted = sqs.get_queue_attributes(QueueUrl=dest, AttributeNames=["ApproximateNumberOfMessages"])
    assert counted["Attributes"]["ApproximateNumberOfMessages"] == str(moved)

    fast = sqs.start_message_move_task(SourceArn=dlq_arn, DestinationArn=_arn(sqs, dest))["TaskHandle"]
    assert fast != handle
    assert _wait_for_task(sqs, dlq_arn, "COMPLETED")["ApproximateNumberOfMessagesMoved"] == 20 - moved
    assert "Messages" not in sqs.receive_message(QueueUrl=dlq)
    with pytest.raises(ClientError) as error:  # a queue nobody dead-letters into
        sqs.start_message_move_task(SourceArn=_arn(sqs, src))
    assert _code(error) == "InvalidParameterValue"
    with pytest.raises(ClientError) as error:
        sqs.cancel_message_move_task(TaskHandle="nonsense")
    assert _code(error) == "ResourceNotFoundException"


def test_dlq_must_match_queue_type(sqs: Any, name: str) -> None:
    fifo_dlq = sqs.create_queue(QueueName=name + ".fifo", Attributes={"FifoQueue": "true"})["QueueUrl"]
    policy = json.dumps({"deadLetterTargetArn": _arn(sqs, fifo_dlq), "maxReceiveCount": 3})
    with pytest.raises(ClientError) as error:
        sqs.create_queue(QueueName=name, Attributes={"RedrivePolicy": policy})
    assert _code(error) == "InvalidParameterValue"


def test_a_queue_is_not_its_own_dead_letter_queue(sqs: Any, name: str) -> None:
    """A self-redrive once deleted the message on the receive that should have moved it."""
    url = sqs.create_queue(QueueName=name)["QueueUrl"]
    policy = json.dumps({"deadLetterTargetArn": _arn(sqs, url), "maxReceiveCount": 1})
    with pytest.raises(ClientError) as error:
        sqs.set_queue_attributes(QueueUrl=url, Attributes={"RedrivePolicy": policy})
    assert _code(error) == "InvalidParameterValue"
    with pytest.raises(ClientError) as error:  # nor at creation: a queue of that name would be it
        sqs.create_queue(
            QueueName=name + "-x", Attributes={"RedrivePolicy": policy.replace(name, name + "-x")}
        )
    assert _code(error) == "InvalidParameterValue"
    sqs.send_message(QueueUrl=url, MessageBody="kept")
    for _ in range(3):
        (message,) = sqs.receive_message(QueueUrl=url)["Messages"]
        assert message["Body"] == "kept"
        sqs.change_message_visibility(
            QueueUrl=url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0
        )


def test_move_task_onto_its_source_is_refused(sqs: Any, name: str) -> None:
    """Moving a DLQ onto itself once deleted every message it moved."""
    _, dlq = _with_dlq(sqs, name)
    sqs.send_message(QueueUrl=dlq, MessageBody="kept")
    dlq_arn = _arn(sqs, dlq)
    with pytest.raises(ClientError) as error:
        sqs.start_message_move_task(SourceArn=dlq_arn, DestinationArn=dlq_arn)
    assert _code(error) == "InvalidParameterValue"
    assert sqs.list_message_move_tasks(SourceArn=dlq_arn)["Results"] == []
    (message,) = sqs.receive_message(QueueUrl=dlq)["Messages"]
    assert message["Body"] == "kept"
