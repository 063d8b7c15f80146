"""One store, two APIs, every server backend: what SQS sends burrow v1.0 reads and the other way round;
and SQS queues and messages surviving a restart on the durable backend."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from burrow.client import SyncConnection
from tests.sqs.conftest import ThreadedServer, client, settings_for


@pytest.fixture
def each_backend(server_backend: str, tmp_path: Path) -> Iterator[ThreadedServer]:
    """A fresh server (nothing else in its store) on each backend."""
    with ThreadedServer(settings_for(server_backend, tmp_path)) as running:
        yield running


def _v1(server: ThreadedServer, method: str, target: str, body: bytes = b"") -> tuple[int, bytes]:
    with SyncConnection(server.url, timeout=10) as conn:
        reply = conn.request(method, target, body)
        return reply.status, reply.body


def test_sqs_to_v1_and_v1_to_sqs(each_backend: ThreadedServer, name: str) -> None:
    server = each_backend
    sqs = client(server.url)
    url = sqs.create_queue(QueueName=name)["QueueUrl"]
    assert url.endswith(f"/testing/{name}")
    sent = sqs.send_message(
        QueueUrl=url,
        MessageBody="from sqs ✓",
        MessageAttributes={"k": {"DataType": "String", "StringValue": "v"}},
    )

    status, body = _v1(server, "GET", f"/v1.0/testing/{name}")
    assert status == 200
    [message] = json.loads(body)
    assert (message["id"], message["body"]) == (sent["MessageId"], "from sqs ✓")
    assert 345_000 < message["ttl"] <= 345_600  # MessageRetentionPeriod became the v1 ttl

    status, _ = _v1(server, "PUT", f"/v1.0/testing/{name}/from-v1?ttl=600", b"from v1")
    assert status == 201
    got = sqs.receive_message(
        QueueUrl=url, MaxNumberOfMessages=10, MessageAttributeNames=["All"], AttributeNames=["All"]
    )["Messages"]
    by_id = {m["MessageId"]: m for m in got}
    assert by_id["from-v1"]["Body"] == "from v1"
    assert by_id["from-v1"]["Attributes"]["ApproximateReceiveCount"] == "1"
    assert by_id[sent["MessageId"]]["MessageAttributes"]["k"]["StringValue"] == "v"

    # Both are now hidden for v1 too (an SQS receive is a v1 hide).
    status, _ = _v1(server, "GET", f"/v1.0/testing/{name}")
    assert status == 404
    for m in got:
        sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
    status, _ = _v1(server, "GET", f"/v1.0/testing/{name}?match_hidden=true")
    assert status == 404
    # The emptied queue is gone for v1.0 (no messages) but still exists for SQS.
    assert _v1(server, "GET", "/v1.0/testing")[0] == 404
    assert sqs.get_queue_url(QueueName=name)["QueueUrl"] == url


def test_core_flow_on_every_backend(each_backend: ThreadedServer, name: str) -> None:
    sqs = client(each_backend.url)
    url = sqs.create_queue(
        QueueName=name + ".fifo", Attributes={"FifoQueue": "true", "ContentBasedDeduplication": "true"}
    )["QueueUrl"]
    for i in range(3):
        sqs.send_message(QueueUrl=url, MessageBody=f"m{i}", MessageGroupId="g")
    sqs.send_message(QueueUrl=url, MessageBody="m0", MessageGroupId="g")  # duplicate
    got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]
    assert [m["Body"] for m in got] == ["m0", "m1", "m2"]
    deleted = sqs.delete_message_batch(
        QueueUrl=url, Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(got)]
    )
    assert len(deleted["Successful"]) == 3
    start = time.monotonic()
    assert "Messages" not in sqs.receive_message(QueueUrl=url, WaitTimeSeconds=1)
    assert time.monotonic() - start >= 0.9


def test_sqs_state_survives_restart_on_disk(tmp_path: Path, name: str) -> None:
    settings = settings_for("sqlite-file", tmp_path)
    with ThreadedServer(settings) as first:
        sqs = client(first.url)
        url = sqs.create_queue(QueueName=name, Attributes={"VisibilityTimeout": "7"}, tags={"t": "1"})[
            "QueueUrl"
        ]
        sent = sqs.send_message(QueueUrl=url, MessageBody="durable")
    with ThreadedServer(settings) as second:
        sqs = client(second.url)
        url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
        attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["VisibilityTimeout"])["Attributes"]
        assert attrs == {"VisibilityTimeout": "7"}
        assert sqs.list_queue_tags(QueueUrl=url)["Tags"] == {"t": "1"}
        got: dict[str, Any] = sqs.receive_message(QueueUrl=url)["Messages"][0]
        assert (got["MessageId"], got["Body"]) == (sent["MessageId"], "durable")
