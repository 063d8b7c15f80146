"""How many storage calls an SQS cycle costs: the engine's operations are one round trip each.

A send + receive + delete cycle through real boto3 must cost at most 4 calls on the
store (it cost 8 when a receive read candidates and then compare-and-set each one, and
every request re-read the queue document). Counted by wrapping the running server's
backend methods, so what is counted is exactly what reaches the store.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import pytest

from burrow.backends.base import Backend
from tests.sqs.conftest import ThreadedServer

OPERATIONS = [
    name
    for name, value in vars(Backend).items()
    if callable(value) and not name.startswith("_") and name not in ("open", "close", "clean")
]


@pytest.fixture
def calls(server: ThreadedServer) -> Iterator[Counter[str]]:
    backend = server.server.engine.backend
    counted: Counter[str] = Counter()

    def counting(name: str, method: Callable[..., Coroutine[Any, Any, Any]]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Coroutine[Any, Any, Any]:
            counted[name] += 1
            return method(*args, **kwargs)

        return call

    for name in OPERATIONS:
        setattr(backend, name, counting(name, getattr(backend, name)))
    try:
        yield counted
    finally:
        for name in OPERATIONS:
            delattr(backend, name)  # the class's methods again


def test_a_send_receive_delete_cycle_is_at_most_four_storage_calls(
    sqs: Any, name: str, calls: Counter[str]
) -> None:
    url = sqs.create_queue(QueueName=name)["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody="warm-up")  # the queue document is now cached
    for m in sqs.receive_message(QueueUrl=url)["Messages"]:
        sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
    calls.clear()
    for i in range(20):
        sqs.send_message(QueueUrl=url, MessageBody=f"m{i}")
        (m,) = sqs.receive_message(QueueUrl=url, VisibilityTimeout=30)["Messages"]
        sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
    assert 3 * 20 <= sum(calls.values()) <= 4 * 20, calls  # counted at all, and at most 4 a cycle
    assert calls["claim"] == 20 and calls["delete_message"] == 20, calls


def test_a_fifo_cycle_is_at_most_four_storage_calls(sqs: Any, name: str, calls: Counter[str]) -> None:
    url = sqs.create_queue(QueueName=name + ".fifo", Attributes={"FifoQueue": "true"})["QueueUrl"]
    sqs.get_queue_attributes(QueueUrl=url)
    calls.clear()
    for i in range(20):
        sqs.send_message(QueueUrl=url, MessageBody=f"m{i}", MessageGroupId="g", MessageDeduplicationId=str(i))
        (m,) = sqs.receive_message(QueueUrl=url, VisibilityTimeout=30)["Messages"]
        sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
    assert 3 * 20 <= sum(calls.values()) <= 4 * 20, calls  # counted at all, and at most 4 a cycle
    assert calls["send_message"] == 20 and calls["claim"] == 20, calls
