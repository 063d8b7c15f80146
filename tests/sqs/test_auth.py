"""SigV4 with credentials configured: signatures verified by the real botocore signer, the access key
selecting the account, and each rejection reported with the code boto3 shows."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from burrow.client import SyncConnection
from tests.sqs.conftest import Clock, ThreadedServer, client, settings_for, together


@pytest.fixture(scope="module")
def clock() -> Clock:
    return Clock()


@pytest.fixture(scope="module")
def secured(
    server_backend: str, tmp_path_factory: pytest.TempPathFactory, clock: Clock
) -> Iterator[ThreadedServer]:
    settings = settings_for(
        server_backend,
        tmp_path_factory.mktemp("auth"),
        sqs_credentials="alice:a-secret,bob:b-secret",
    )
    with ThreadedServer(settings, clock) as running:
        yield running


def _code(error: pytest.ExceptionInfo[ClientError]) -> str:
    return str(error.value.response["Error"]["Code"])


def test_valid_signatures_select_the_account(secured: ThreadedServer, name: str) -> None:
    alice = client(secured.url, "alice", "a-secret")
    url = alice.create_queue(QueueName=name)["QueueUrl"]
    assert url.endswith(f"/alice/{name}")
    alice.send_message(QueueUrl=url, MessageBody="signed")
    assert alice.receive_message(QueueUrl=url)["Messages"][0]["Body"] == "signed"
    arn = alice.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    assert arn == f"arn:aws:sqs:us-east-1:alice:{name}"  # the server's region
    bob = client(secured.url, "bob", "b-secret")
    with pytest.raises(ClientError) as error:  # bob cannot reach alice's queue
        bob.send_message(QueueUrl=url, MessageBody="x")
    assert _code(error) == "AccessDenied"
    assert error.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


@pytest.mark.parametrize(
    ("access", "secret", "code"),
    [("alice", "wrong", "SignatureDoesNotMatch"), ("mallory", "whatever", "InvalidClientTokenId")],
)
def test_bad_credentials(secured: ThreadedServer, access: str, secret: str, code: str) -> None:
    with pytest.raises(ClientError) as error:
        client(secured.url, access, secret).list_queues()
    assert _code(error) == code
    assert error.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


def test_expired_signature(secured: ThreadedServer, clock: Clock) -> None:
    clock.advance(1000)  # the server is now 16+ minutes ahead of the client's signature
    try:
        with pytest.raises(ClientError) as error:
            client(secured.url, "alice", "a-secret").list_queues()
        assert _code(error) == "SignatureDoesNotMatch"
        assert "expired" in error.value.response["Error"]["Message"]
    finally:
        clock.advance(-1000)


def _post(server: ThreadedServer, body: bytes, headers: dict[str, str]) -> tuple[int, bytes, str]:
    with SyncConnection(server.url, timeout=10) as conn:
        reply = conn.request("POST", "/", body, headers)
        return reply.status, reply.body, reply.headers.get("x-amzn-query-error", "")


def test_unsigned_and_tampered_requests(secured: ThreadedServer, name: str) -> None:
    status, _, code = _post(
        secured, b"{}", {"X-Amz-Target": "AmazonSQS.ListQueues", "Content-Type": "application/x-amz-json-1.0"}
    )
    assert (status, code) == (403, "MissingAuthenticationToken;Sender")
    form = urlencode({"Action": "CreateQueue", "QueueName": name, "Version": "2012-11-05"}).encode()
    request = AWSRequest(
        "POST", secured.url + "/", data=form, headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    SigV4Auth(Credentials("bob", "b-secret"), "sqs", "us-east-1").add_auth(request)
    headers: dict[str, Any] = dict(request.headers.items())
    status, body, _ = _post(secured, form, headers)
    assert status == 200 and b"<QueueUrl>" in body and b"/bob/" + name.encode() in body
    status, body, _ = _post(secured, form.replace(b"CreateQueue", b"DeleteQueue"), headers)
    assert status == 403 and b"<Code>SignatureDoesNotMatch</Code>" in body


def test_signed_for_another_region_or_service_is_refused(secured: ThreadedServer) -> None:
    """With verification on, the credential scope must name this server's region and ``sqs``."""
    with pytest.raises(ClientError) as error:
        client(secured.url, "alice", "a-secret", region="eu-west-1").list_queues()
    assert _code(error) == "SignatureDoesNotMatch"
    assert "region" in error.value.response["Error"]["Message"]
    assert error.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    body = b"{}"
    request = AWSRequest(
        "POST",
        secured.url + "/",
        data=body,
        headers={"X-Amz-Target": "AmazonSQS.ListQueues", "Content-Type": "application/x-amz-json-1.0"},
    )
    SigV4Auth(Credentials("alice", "a-secret"), "sns", "us-east-1").add_auth(request)
    status, reply, code = _post(secured, body, dict(request.headers.items()))
    assert (status, code) == (403, "SignatureDoesNotMatch;Sender")
    assert b"service" in reply


def test_configured_region_names_every_arn(server_backend: str, tmp_path: Path, name: str) -> None:
    """``region`` (``--region``, ``BURROW_REGION``) is the one region; unverified requests may be
    signed for any region, and ARNs still name the configured one."""
    name = together(name, server_backend)  # through the router, a queue and its DLQ share a server
    with ThreadedServer(settings_for(server_backend, tmp_path, region="eu-central-1")) as dev:
        sqs = client(dev.url, region="ap-south-1")  # dev mode: the signed region is ignored
        url = sqs.create_queue(QueueName=name)["QueueUrl"]
        dlq = sqs.create_queue(QueueName=name + "-dlq")["QueueUrl"]
        dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"][
            "QueueArn"
        ]
        assert dlq_arn == f"arn:aws:sqs:eu-central-1:testing:{name}-dlq"
        policy = json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": 1})
        sqs.set_queue_attributes(QueueUrl=url, Attributes={"RedrivePolicy": policy})
        sqs.send_message(QueueUrl=url, MessageBody="x")
        sqs.receive_message(QueueUrl=url, VisibilityTimeout=0)
        assert "Messages" not in sqs.receive_message(QueueUrl=url)  # the second receive moved it
        moved = sqs.receive_message(QueueUrl=dlq, AttributeNames=["DeadLetterQueueSourceArn"])["Messages"]
        assert (
            moved[0]["Attributes"]["DeadLetterQueueSourceArn"] == f"arn:aws:sqs:eu-central-1:testing:{name}"
        )
        elsewhere = json.dumps(
            {"deadLetterTargetArn": f"arn:aws:sqs:us-east-1:testing:{name}-dlq", "maxReceiveCount": 1}
        )
        with pytest.raises(ClientError) as error:  # no queue of another region exists here
            sqs.set_queue_attributes(QueueUrl=url, Attributes={"RedrivePolicy": elsewhere})
        assert _code(error) == "InvalidParameterValue"
