"""The legacy query/XML protocol by raw HTTP form posts (and GET), checked against the XML shapes
of the 2012-11-05 API: results, flattened lists and maps, batch entries and error documents."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from typing import Any
from urllib.parse import urlencode

from burrow.client import SyncConnection
from tests.sqs.conftest import ThreadedServer

NS = {"sqs": "http://queue.amazonaws.com/doc/2012-11-05/"}


class Query:
    def __init__(self, server: ThreadedServer) -> None:
        self.url = server.url

    def __call__(
        self, params: dict[str, str], path: str = "/", method: str = "POST"
    ) -> tuple[int, ET.Element]:
        form = urlencode({"Version": "2012-11-05", **params})
        with SyncConnection(self.url, timeout=10) as conn:
            if method == "GET":
                reply = conn.request("GET", f"{path}?{form}", headers={"Host": "sqs.local"})
            else:
                headers = {
                    "Content-Type": "application/x-www-form-urlencoded; charset=utf-8",
                    "Host": "sqs.local",
                }
                reply = conn.request("POST", path, form.encode(), headers)
            assert reply.headers.get("content-type") == "text/xml"
            return reply.status, ET.fromstring(reply.body)


def _text(root: ET.Element, path: str) -> str:
    found = root.find(path, NS)
    assert found is not None, path
    return found.text or ""


def test_queue_lifecycle_and_messages_over_query(server: ThreadedServer, name: str) -> None:
    q = Query(server)
    status, root = q(
        {
            "Action": "CreateQueue",
            "QueueName": name,
            "Attribute.1.Name": "VisibilityTimeout",
            "Attribute.1.Value": "40",
            "Tag.1.Key": "team",
            "Tag.1.Value": "core",
        }
    )
    assert status == 200 and root.tag == f"{{{NS['sqs']}}}CreateQueueResponse"
    url = _text(root, "sqs:CreateQueueResult/sqs:QueueUrl")
    assert url == f"http://sqs.local/000000000000/{name}"
    assert _text(root, "sqs:ResponseMetadata/sqs:RequestId")

    status, root = q(
        {
            "Action": "SendMessage",
            "QueueUrl": url,
            "MessageBody": "hello\r\n<&>",
            "MessageAttribute.1.Name": "k",
            "MessageAttribute.1.Value.DataType": "String",
            "MessageAttribute.1.Value.StringValue": "v",
        }
    )
    assert status == 200
    assert (
        _text(root, "sqs:SendMessageResult/sqs:MD5OfMessageAttributes") == "0a77b0642718c3d9dd47090567d11e0d"
    )

    # On the queue URL path, the path stands for QueueUrl.
    status, root = q(
        {
            "Action": "ReceiveMessage",
            "AttributeName.1": "All",
            "MessageAttributeName.1": "All",
            "MaxNumberOfMessages": "5",
        },
        path=f"/000000000000/{name}",
    )
    assert status == 200
    message = root.find("sqs:ReceiveMessageResult/sqs:Message", NS)
    assert message is not None
    assert _text(message, "sqs:Body") == "hello\r\n<&>"  # \r survives XML as &#xD;
    attributes = {_text(a, "sqs:Name"): _text(a, "sqs:Value") for a in message.findall("sqs:Attribute", NS)}
    assert attributes["ApproximateReceiveCount"] == "1"
    assert _text(message, "sqs:MessageAttribute/sqs:Name") == "k"
    assert _text(message, "sqs:MessageAttribute/sqs:Value/sqs:StringValue") == "v"
    assert _text(message, "sqs:MessageAttribute/sqs:Value/sqs:DataType") == "String"
    handle = _text(message, "sqs:ReceiptHandle")

    status, root = q(
        {
            "Action": "DeleteMessageBatch",
            "QueueUrl": url,
            "DeleteMessageBatchRequestEntry.1.Id": "ok",
            "DeleteMessageBatchRequestEntry.1.ReceiptHandle": handle,
            "DeleteMessageBatchRequestEntry.2.Id": "bad",
            "DeleteMessageBatchRequestEntry.2.ReceiptHandle": "garbage",
        }
    )
    assert status == 200
    result = root.find("sqs:DeleteMessageBatchResult", NS)
    assert result is not None
    assert [_text(e, "sqs:Id") for e in result.findall("sqs:DeleteMessageBatchResultEntry", NS)] == ["ok"]
    failed = result.findall("sqs:BatchResultErrorEntry", NS)
    assert [(_text(f, "sqs:Id"), _text(f, "sqs:Code"), _text(f, "sqs:SenderFault")) for f in failed] == [
        ("bad", "ReceiptHandleIsInvalid", "true")
    ]

    status, root = q(
        {
            "Action": "GetQueueAttributes",
            "QueueUrl": url,
            "AttributeName.1": "VisibilityTimeout",
            "AttributeName.2": "QueueArn",
        },
        method="GET",
    )
    assert status == 200
    pairs = {
        _text(a, "sqs:Name"): _text(a, "sqs:Value")
        for a in root.findall("sqs:GetQueueAttributesResult/sqs:Attribute", NS)
    }
    assert pairs == {"VisibilityTimeout": "40", "QueueArn": f"arn:aws:sqs:us-east-1:000000000000:{name}"}

    status, root = q({"Action": "ListQueueTags", "QueueUrl": url})
    assert [
        (_text(t, "sqs:Key"), _text(t, "sqs:Value"))
        for t in root.findall("sqs:ListQueueTagsResult/sqs:Tag", NS)
    ] == [("team", "core")]

    status, root = q({"Action": "ListQueues", "QueueNamePrefix": name})
    assert [u.text for u in root.findall("sqs:ListQueuesResult/sqs:QueueUrl", NS)] == [url]

    status, root = q({"Action": "DeleteQueue", "QueueUrl": url})
    assert status == 200 and root.find("sqs:DeleteQueueResult", NS) is not None


def test_send_message_batch_over_query(server: ThreadedServer, name: str) -> None:
    q = Query(server)
    url = _text(q({"Action": "CreateQueue", "QueueName": name})[1], "sqs:CreateQueueResult/sqs:QueueUrl")
    params: dict[str, Any] = {"Action": "SendMessageBatch", "QueueUrl": url}
    for i, body in enumerate(["one", "", "three"], start=1):
        params[f"SendMessageBatchRequestEntry.{i}.Id"] = f"e{i}"
        params[f"SendMessageBatchRequestEntry.{i}.MessageBody"] = body
    params["SendMessageBatchRequestEntry.3.MessageAttribute.1.Name"] = "n"
    params["SendMessageBatchRequestEntry.3.MessageAttribute.1.Value.DataType"] = "Number"
    params["SendMessageBatchRequestEntry.3.MessageAttribute.1.Value.StringValue"] = "7"
    status, root = q(params)
    assert status == 200
    result = root.find("sqs:SendMessageBatchResult", NS)
    assert result is not None
    ok = result.findall("sqs:SendMessageBatchResultEntry", NS)
    assert [_text(e, "sqs:Id") for e in ok] == ["e1", "e3"]
    assert ok[1].find("sqs:MD5OfMessageAttributes", NS) is not None
    assert [_text(f, "sqs:Id") for f in result.findall("sqs:BatchResultErrorEntry", NS)] == ["e2"]


def test_permissions_over_query(server: ThreadedServer, name: str) -> None:
    """AddPermission's flattened AWSAccountId.N and ActionName.N; the policy in GetQueueAttributes."""
    q = Query(server)
    url = _text(q({"Action": "CreateQueue", "QueueName": name})[1], "sqs:CreateQueueResult/sqs:QueueUrl")
    status, root = q(
        {
            "Action": "AddPermission",
            "QueueUrl": url,
            "Label": "share",
            "AWSAccountId.1": "111122223333",
            "AWSAccountId.2": "444455556666",
            "ActionName.1": "SendMessage",
            "ActionName.2": "GetQueueUrl",
        }
    )
    assert status == 200 and root.find("sqs:AddPermissionResult", NS) is not None
    status, root = q({"Action": "GetQueueAttributes", "QueueUrl": url, "AttributeName.1": "Policy"})
    [attribute] = root.findall("sqs:GetQueueAttributesResult/sqs:Attribute", NS)
    assert _text(attribute, "sqs:Name") == "Policy"
    [statement] = json.loads(_text(attribute, "sqs:Value"))["Statement"]
    assert statement["Sid"] == "share"
    assert statement["Principal"] == {
        "AWS": ["arn:aws:iam::111122223333:root", "arn:aws:iam::444455556666:root"]
    }
    assert statement["Action"] == ["SQS:SendMessage", "SQS:GetQueueUrl"]
    status, root = q({"Action": "AddPermission", "QueueUrl": url, "Label": "x", "AWSAccountId.1": "1"})
    assert (status, _text(root, "sqs:Error/sqs:Code")) == (400, "MissingParameter")
    status, root = q({"Action": "RemovePermission", "QueueUrl": url, "Label": "share"})
    assert status == 200 and root.find("sqs:RemovePermissionResult", NS) is not None
    status, root = q({"Action": "RemovePermission", "QueueUrl": url, "Label": "share"})
    assert (status, _text(root, "sqs:Error/sqs:Code")) == (400, "InvalidParameterValue")


def test_errors_over_query(server: ThreadedServer, name: str) -> None:
    q = Query(server)
    status, root = q({"Action": "GetQueueUrl", "QueueName": name + "-missing"})
    assert status == 400 and root.tag == f"{{{NS['sqs']}}}ErrorResponse"
    assert _text(root, "sqs:Error/sqs:Code") == "AWS.SimpleQueueService.NonExistentQueue"
    assert _text(root, "sqs:Error/sqs:Type") == "Sender"
    assert _text(root, "sqs:RequestId")
    status, root = q({"Action": "Frobnicate"})
    assert (status, _text(root, "sqs:Error/sqs:Code")) == (400, "InvalidAction")
    status, root = q({"QueueName": "x"})
    assert (status, _text(root, "sqs:Error/sqs:Code")) == (400, "MissingAction")
    status, root = q({"Action": "CreateQueue"})
    assert (status, _text(root, "sqs:Error/sqs:Code")) == (400, "MissingParameter")
    status, root = q({"Action": "CreateQueue", "QueueName": name, "Attribute.x.Name": "DelaySeconds"})
    assert (status, _text(root, "sqs:Error/sqs:Code")) == (400, "InvalidParameterValue")
    # str.isdigit() digits that int() rejects are no index (they once made a 500)
    status, root = q({"Action": "CreateQueue", "QueueName": name, "Attribute.\u00b2.Name": "DelaySeconds"})
    assert (status, _text(root, "sqs:Error/sqs:Code")) == (400, "InvalidParameterValue")


def test_xml_never_carries_characters_xml_forbids(server: ThreadedServer) -> None:
    """A control character echoed in an error message (once malformed XML) becomes U+FFFD."""
    q = Query(server)
    for method in ("POST", "GET"):
        status, root = q({"Action": "Frob\x1fnicate\x00"}, method=method)
        assert (status, _text(root, "sqs:Error/sqs:Code")) == (400, "InvalidAction")
        assert "Frob\ufffdnicate\ufffd" in _text(root, "sqs:Error/sqs:Message")


def test_v1_routes_are_untouched(server: ThreadedServer) -> None:
    """POST / without SQS markers is still v1.0's 405; GET / is still the version list."""
    with SyncConnection(server.url, timeout=10) as conn:
        assert conn.request("POST", "/", b"x").status == 405
        reply = conn.request("GET", "/")
        assert (reply.status, reply.body) == (200, b'["v1.0"]')
        assert conn.request("GET", "/some/path").status == 404
