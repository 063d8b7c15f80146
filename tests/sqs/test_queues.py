"""Queue actions through boto3: create (idempotent), URLs, listing, attributes, tags, purge, delete,
and the error codes boto3 reports for each failure."""

from __future__ import annotations

import json
from typing import Any

import pytest
from botocore.exceptions import ClientError

from burrow.client import SyncConnection
from tests.sqs.conftest import Clock, ThreadedServer, client


def _code(error: pytest.ExceptionInfo[ClientError]) -> str:
    return str(error.value.response["Error"]["Code"])


def test_create_is_idempotent_for_identical_attributes(sqs: Any, name: str) -> None:
    url = sqs.create_queue(QueueName=name, Attributes={"VisibilityTimeout": "40"})["QueueUrl"]
    assert url == f"{sqs.meta.endpoint_url}/testing/{name}"
    assert sqs.create_queue(QueueName=name, Attributes={"VisibilityTimeout": "40"})["QueueUrl"] == url
    assert sqs.create_queue(QueueName=name)["QueueUrl"] == url
    with pytest.raises(ClientError) as error:
        sqs.create_queue(QueueName=name, Attributes={"VisibilityTimeout": "41"})
    assert _code(error) == "QueueAlreadyExists"
    assert isinstance(error.value, sqs.exceptions.QueueNameExists)


@pytest.mark.parametrize(
    ("queue", "attributes", "code"),
    [
        ("bad name!", {}, "InvalidParameterValue"),
        ("x" * 81, {}, "InvalidParameterValue"),
        ("plain", {"FifoQueue": "true"}, "InvalidParameterValue"),
        ("ends.fifo", {}, "InvalidParameterValue"),
        ("q", {"VisibilityTimeout": "43201"}, "InvalidAttributeValue"),
        ("q", {"MessageRetentionPeriod": "59"}, "InvalidAttributeValue"),
        ("q", {"MaximumMessageSize": "1048577"}, "InvalidAttributeValue"),
        ("q", {"DelaySeconds": "901"}, "InvalidAttributeValue"),
        ("q", {"ReceiveMessageWaitTimeSeconds": "21"}, "InvalidAttributeValue"),
        ("q", {"Bogus": "1"}, "InvalidAttributeName"),
        ("q", {"QueueArn": "x"}, "InvalidAttributeName"),
        ("q", {"ContentBasedDeduplication": "true"}, "InvalidAttributeName"),
        ("q", {"RedrivePolicy": "not json"}, "InvalidAttributeValue"),
        # digits of other scripts are not integers (SUPERSCRIPT TWO once made a 500)
        ("q", {"DelaySeconds": "\u0661"}, "InvalidAttributeValue"),
        (
            "q",
            {
                "RedrivePolicy": '{"deadLetterTargetArn": "arn:aws:sqs:r:testing:q",'
                ' "maxReceiveCount": "\u00b2"}'
            },
            "InvalidAttributeValue",
        ),
        (
            "q",
            {
                "RedrivePolicy": '{"deadLetterTargetArn": "arn:aws:sqs:us-east-1:testing:nope-dlq",'
                ' "maxReceiveCount": 3}'
            },
            "InvalidParameterValue",
        ),
    ],
)
def test_create_validation(sqs: Any, queue: str, attributes: dict[str, str], code: str) -> None:
    with pytest.raises(ClientError) as error:
        sqs.create_queue(QueueName=queue, Attributes=attributes)
    assert _code(error) == code


def test_get_queue_url_and_missing_queue_errors(sqs: Any, name: str) -> None:
    url = sqs.create_queue(QueueName=name)["QueueUrl"]
    assert sqs.get_queue_url(QueueName=name)["QueueUrl"] == url
    assert sqs.get_queue_url(QueueName=name, QueueOwnerAWSAccountId="testing")["QueueUrl"] == url
    missing = url + "-missing"
    calls: list[tuple[str, dict[str, Any]]] = [
        ("get_queue_url", {"QueueName": name + "-missing"}),
        ("send_message", {"QueueUrl": missing, "MessageBody": "x"}),
        ("receive_message", {"QueueUrl": missing}),
        ("get_queue_attributes", {"QueueUrl": missing}),
        ("delete_queue", {"QueueUrl": missing}),
        ("purge_queue", {"QueueUrl": missing}),
    ]
    for method, kwargs in calls:
        with pytest.raises(ClientError) as error:
            getattr(sqs, method)(**kwargs)
        assert _code(error) == "AWS.SimpleQueueService.NonExistentQueue"
        assert error.value.response["Error"]["QueryErrorCode"] == "QueueDoesNotExist"
        assert error.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400


def _unsigned(server: ThreadedServer, action: str, body: bytes, host: str) -> tuple[int, bytes]:
    headers = {
        "X-Amz-Target": f"AmazonSQS.{action}",
        "Content-Type": "application/x-amz-json-1.0",
        "Host": host,
    }
    with SyncConnection(server.url, timeout=10) as conn:
        reply = conn.request("POST", "/", body, headers)
        return reply.status, reply.body


def test_queue_urls_follow_the_host_header(server: ThreadedServer, name: str) -> None:
    """URLs name the host the client used; unsigned requests use the default account."""
    client(server.url).create_queue(QueueName=name)
    body = b'{"QueueName": "%s", "QueueOwnerAWSAccountId": "testing"}' % name.encode()
    status, reply = _unsigned(server, "GetQueueUrl", body, "queues.example:9999")
    assert (status, reply) == (200, b'{"QueueUrl":"http://queues.example:9999/testing/%s"}' % name.encode())
    status, reply = _unsigned(server, "CreateQueue", b'{"QueueName": "%s"}' % name.encode(), "10.0.0.7:80")
    assert (status, reply) == (200, b'{"QueueUrl":"http://10.0.0.7:80/000000000000/%s"}' % name.encode())


def test_list_queues_prefix_and_paging(server: ThreadedServer) -> None:
    sqs = client(server.url, access_key="lister")  # its own account: nothing else in the listing
    names = [f"page-{i:02d}" for i in range(7)] + ["other"]
    for n in names:
        sqs.create_queue(QueueName=n)
    assert len(sqs.list_queues()["QueueUrls"]) == 8
    seen: list[str] = []
    token: dict[str, str] = {}
    while True:
        page = sqs.list_queues(QueueNamePrefix="page-", MaxResults=3, **token)
        seen += [u.rsplit("/", 1)[1] for u in page["QueueUrls"]]
        if "NextToken" not in page:
            break
        token = {"NextToken": page["NextToken"]}
    assert seen == names[:7]
    assert "QueueUrls" not in sqs.list_queues(QueueNamePrefix="none-")
    with pytest.raises(ClientError) as error:
        sqs.list_queues(MaxResults=1001)
    assert _code(error) == "InvalidParameterValue"


def test_accounts_are_separate(server: ThreadedServer, name: str) -> None:
    alice, bob = client(server.url, access_key="alice"), client(server.url, access_key="bob")
    url = alice.create_queue(QueueName=name)["QueueUrl"]
    assert "/alice/" in url
    with pytest.raises(ClientError):
        bob.get_queue_url(QueueName=name)
    bob_url = bob.create_queue(QueueName=name)["QueueUrl"]
    assert bob_url != url
    alice.send_message(QueueUrl=url, MessageBody="for alice")
    assert "Messages" not in bob.receive_message(QueueUrl=bob_url)


def test_attributes_get_and_set(sqs: Any, name: str) -> None:
    url = sqs.create_queue(QueueName=name)["QueueUrl"]
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert attrs["VisibilityTimeout"] == "30"
    assert attrs["MaximumMessageSize"] == "1048576"
    assert attrs["MessageRetentionPeriod"] == "345600"
    assert attrs["DelaySeconds"] == "0"
    assert attrs["ReceiveMessageWaitTimeSeconds"] == "0"
    assert attrs["QueueArn"] == f"arn:aws:sqs:us-east-1:testing:{name}"
    assert "FifoQueue" not in attrs
    sqs.set_queue_attributes(QueueUrl=url, Attributes={"VisibilityTimeout": "5", "DelaySeconds": "2"})
    got = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["VisibilityTimeout", "DelaySeconds"])
    assert got["Attributes"] == {"VisibilityTimeout": "5", "DelaySeconds": "2"}
    assert "Attributes" not in sqs.get_queue_attributes(QueueUrl=url)
    with pytest.raises(ClientError) as error:
        sqs.set_queue_attributes(QueueUrl=url, Attributes={"FifoQueue": "true"})
    assert _code(error) == "InvalidAttributeValue"
    with pytest.raises(ClientError) as error:
        sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["Nope"])
    assert _code(error) == "InvalidAttributeName"


def test_tags(sqs: Any, name: str) -> None:
    url = sqs.create_queue(QueueName=name, tags={"team": "core"})["QueueUrl"]
    assert sqs.list_queue_tags(QueueUrl=url)["Tags"] == {"team": "core"}
    sqs.tag_queue(QueueUrl=url, Tags={"env": "test", "team": "queues"})
    assert sqs.list_queue_tags(QueueUrl=url)["Tags"] == {"team": "queues", "env": "test"}
    sqs.untag_queue(QueueUrl=url, TagKeys=["team"])
    assert sqs.list_queue_tags(QueueUrl=url)["Tags"] == {"env": "test"}
    sqs.untag_queue(QueueUrl=url, TagKeys=["env"])
    assert "Tags" not in sqs.list_queue_tags(QueueUrl=url)
    with pytest.raises(ClientError) as error:
        sqs.tag_queue(QueueUrl=url, Tags={f"k{i}": "v" for i in range(51)})
    assert _code(error) == "InvalidParameterValue"


def test_empty_queue_exists_for_sqs(sqs: Any, name: str) -> None:
    url = sqs.create_queue(QueueName=name)["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody="x")
    m = sqs.receive_message(QueueUrl=url)["Messages"][0]
    sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
    assert sqs.get_queue_url(QueueName=name)["QueueUrl"] == url
    assert url in sqs.list_queues(QueueNamePrefix=name)["QueueUrls"]


def test_purge_and_delete_with_their_60_second_rules(
    timed: tuple[ThreadedServer, Clock, Any], name: str
) -> None:
    server, clock, sqs = timed
    url = sqs.create_queue(QueueName=name)["QueueUrl"]
    sqs.send_message_batch(QueueUrl=url, Entries=[{"Id": str(i), "MessageBody": "x"} for i in range(5)])
    sqs.receive_message(QueueUrl=url)  # one in flight: purge removes it too
    sqs.purge_queue(QueueUrl=url)
    assert server.call(server.server.engine.backend.count_messages()) == 0
    with pytest.raises(ClientError) as error:
        sqs.purge_queue(QueueUrl=url)
    assert _code(error) == "AWS.SimpleQueueService.PurgeQueueInProgress"
    assert error.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    clock.advance(61)
    sqs.purge_queue(QueueUrl=url)

    sqs.send_message(QueueUrl=url, MessageBody="x")
    sqs.delete_queue(QueueUrl=url)
    assert server.call(server.server.engine.backend.count_messages()) == 0
    with pytest.raises(ClientError) as error:
        sqs.get_queue_url(QueueName=name)
    assert _code(error) == "AWS.SimpleQueueService.NonExistentQueue"
    with pytest.raises(ClientError) as error:
        sqs.create_queue(QueueName=name)
    assert _code(error) == "AWS.SimpleQueueService.QueueDeletedRecently"
    clock.advance(61)
    assert sqs.create_queue(QueueName=name)["QueueUrl"] == url


def _policy(sqs: Any, url: str) -> Any:
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["Policy"]).get("Attributes", {})
    return json.loads(attributes["Policy"]) if "Policy" in attributes else None


def test_add_and_remove_permission(sqs: Any, name: str) -> None:
    """AddPermission writes an AWS-shaped statement into the queue's Policy; RemovePermission drops it."""
    url = sqs.create_queue(QueueName=name)["QueueUrl"]
    arn = f"arn:aws:sqs:us-east-1:testing:{name}"
    assert _policy(sqs, url) is None
    sqs.add_permission(
        QueueUrl=url, Label="AliceSend", AWSAccountIds=["111122223333"], Actions=["SendMessage"]
    )
    sqs.add_permission(
        QueueUrl=url,
        Label="team-read_2",
        AWSAccountIds=["111122223333", "444455556666"],
        Actions=["ReceiveMessage", "DeleteMessage"],
    )
    policy = _policy(sqs, url)
    assert policy["Version"] == "2012-10-17" and policy["Id"] == f"{arn}/SQSDefaultPolicy"
    assert policy["Statement"] == [
        {
            "Sid": "AliceSend",
            "Effect": "Allow",
            "Principal": {"AWS": "arn:aws:iam::111122223333:root"},
            "Action": "SQS:SendMessage",
            "Resource": arn,
        },
        {
            "Sid": "team-read_2",
            "Effect": "Allow",
            "Principal": {"AWS": ["arn:aws:iam::111122223333:root", "arn:aws:iam::444455556666:root"]},
            "Action": ["SQS:ReceiveMessage", "SQS:DeleteMessage"],
            "Resource": arn,
        },
    ]
    assert "Policy" in sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]

    bad: list[tuple[dict[str, Any], str]] = [
        ({"Label": "AliceSend", "AWSAccountIds": ["1"], "Actions": ["SendMessage"]}, "InvalidParameterValue"),
        (
            {"Label": "bad label!", "AWSAccountIds": ["1"], "Actions": ["SendMessage"]},
            "InvalidParameterValue",
        ),
        ({"Label": "x" * 81, "AWSAccountIds": ["1"], "Actions": ["SendMessage"]}, "InvalidParameterValue"),
        ({"Label": "l", "AWSAccountIds": [], "Actions": ["SendMessage"]}, "InvalidParameterValue"),
        ({"Label": "l", "AWSAccountIds": ["not an account"], "Actions": ["*"]}, "InvalidParameterValue"),
        ({"Label": "l", "AWSAccountIds": ["1"], "Actions": []}, "MissingParameter"),
        ({"Label": "l", "AWSAccountIds": ["1"], "Actions": ["CreateQueue"]}, "InvalidParameterValue"),
        ({"Label": "l", "AWSAccountIds": ["1"], "Actions": ["Bogus"]}, "InvalidParameterValue"),
        ({"Label": "l", "AWSAccountIds": ["1"], "Actions": ["SendMessage"] * 8}, "OverLimit"),
    ]
    for kwargs, code in bad:
        with pytest.raises(ClientError) as error:
            sqs.add_permission(QueueUrl=url, **kwargs)
        assert _code(error) == code, kwargs
    assert len(_policy(sqs, url)["Statement"]) == 2  # no failed call changed it

    sqs.remove_permission(QueueUrl=url, Label="AliceSend")
    assert [s["Sid"] for s in _policy(sqs, url)["Statement"]] == ["team-read_2"]
    with pytest.raises(ClientError) as error:
        sqs.remove_permission(QueueUrl=url, Label="AliceSend")
    assert _code(error) == "InvalidParameterValue"
    sqs.remove_permission(QueueUrl=url, Label="team-read_2")
    assert _policy(sqs, url) is None  # the last statement gone, no Policy is left
    with pytest.raises(ClientError) as error:
        sqs.remove_permission(QueueUrl=url, Label="never-added")
    assert _code(error) == "InvalidParameterValue"
    sqs.add_permission(QueueUrl=url, Label="all", AWSAccountIds=["acme"], Actions=["*"])
    assert _policy(sqs, url)["Statement"][0]["Action"] == "SQS:*"
    with pytest.raises(ClientError) as error:
        sqs.add_permission(QueueUrl=url + "-missing", Label="l", AWSAccountIds=["1"], Actions=["SendMessage"])
    assert _code(error) == "AWS.SimpleQueueService.NonExistentQueue"


def test_bare_queue_name_as_queue_url(server: ThreadedServer, name: str) -> None:
    """A QueueUrl that is only a queue name means that queue in the caller's own account."""
    sqs = client(server.url, access_key="bare")
    url = sqs.create_queue(QueueName=name)["QueueUrl"]
    sent = sqs.send_message(QueueUrl=name, MessageBody="by name")
    got = sqs.receive_message(QueueUrl=name)["Messages"]
    assert [m["MessageId"] for m in got] == [sent["MessageId"]]
    sqs.delete_message(QueueUrl=name, ReceiptHandle=got[0]["ReceiptHandle"])
    attrs = sqs.get_queue_attributes(QueueUrl=name, AttributeNames=["QueueArn"])["Attributes"]
    assert attrs["QueueArn"] == f"arn:aws:sqs:us-east-1:bare:{name}"
    assert sqs.get_queue_url(QueueName=name)["QueueUrl"] == url
    other = client(server.url, access_key="someone-else")
    with pytest.raises(ClientError) as error:  # the same name is looked up in the other caller's account
        other.send_message(QueueUrl=name, MessageBody="x")
    assert _code(error) == "AWS.SimpleQueueService.NonExistentQueue"
    sqs.delete_queue(QueueUrl=name)
    with pytest.raises(ClientError) as error:
        sqs.get_queue_url(QueueName=name)
    assert _code(error) == "AWS.SimpleQueueService.NonExistentQueue"
