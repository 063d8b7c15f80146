"""The pure SQS parts without a server: receipts, meta encoding, FIFO selection, query unflattening,
SigV4 verification against botocore's signer, and the protocol routing rule."""

from __future__ import annotations

import asyncio
import time

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from burrow.api.routes import sqs_protocol
from burrow.api.sqs_auth import Authenticator
from burrow.api.sqs_query import query_params
from burrow.backends import open_backend
from burrow.config import Settings
from burrow.core.model import Message
from burrow.engine import Engine
from burrow.http.types import Request
from burrow.sqs import validation
from burrow.sqs.errors import SqsError
from burrow.sqs.model import Attribute, MessageMeta, Receipt, parse_queue_url
from burrow.sqs.queues import QueueRegistry


def test_receipts_round_trip_and_reject_garbage() -> None:
    receipt = Receipt("acct", "q", "m-1", 3, 1_700_000_000_123)
    assert Receipt.decode(receipt.encode()) == receipt
    assert Receipt("acct", "q", "m-1", 4, 1_700_000_000_123).encode() != receipt.encode()
    for bad in ("", "garbage", "!!!", "W10", "x" * 5000):
        assert Receipt.decode(bad) is None


def test_meta_round_trip_and_foreign_meta() -> None:
    meta = MessageMeta(
        sent=5,
        attributes={"b": Attribute("Binary", binary=b"\x00"), "s": Attribute("String", string="v")},
        trace_header="t",
        dedup_id="d",
        sender="me",
        dlq_source="arn",
    )
    assert MessageMeta.decode(meta.encode()) == meta
    assert MessageMeta.decode(b"") == MessageMeta()
    assert MessageMeta.decode(b"not json") == MessageMeta()


def test_meta_of_a_message_takes_the_stores_per_message_data() -> None:
    stored = MessageMeta(sent=5, dedup_id="d").encode()
    m = Message("m", b"", 0.0, 0.0, stored, receives=3, first_received=1.5, group="g", sequence=7)
    meta = MessageMeta.of(m)
    assert (meta.sent, meta.dedup_id, meta.receive_count, meta.first_receive) == (5, "d", 3, 1500)
    assert (meta.group, meta.sequence) == ("g", "18000000000000000007")
    assert MessageMeta.of(Message("m", b"", 0.0, 0.0)) == MessageMeta()
    # the store's data is never written into meta, so it cannot go stale there
    assert MessageMeta.decode(meta.encode()) == MessageMeta(sent=5, dedup_id="d")


def test_query_unflattening() -> None:
    body = (
        "Action=SendMessageBatch&QueueUrl=http%3A%2F%2Fh%2Fa%2Fq"
        "&SendMessageBatchRequestEntry.2.Id=b&SendMessageBatchRequestEntry.2.MessageBody=two"
        "&SendMessageBatchRequestEntry.1.Id=a&SendMessageBatchRequestEntry.1.MessageBody=one"
        "&SendMessageBatchRequestEntry.1.MessageAttribute.1.Name=k"
        "&SendMessageBatchRequestEntry.1.MessageAttribute.1.Value.DataType=String"
        "&SendMessageBatchRequestEntry.1.MessageAttribute.1.Value.StringValue=v"
    )
    action, members = query_params(Request("POST", "/", body=body.encode()))
    assert action == "SendMessageBatch"
    assert members == {
        "QueueUrl": "http://h/a/q",
        "Entries": [
            {
                "Id": "a",
                "MessageBody": "one",
                "MessageAttributes": {"k": {"DataType": "String", "StringValue": "v"}},
            },
            {"Id": "b", "MessageBody": "two"},
        ],
    }
    _, members = query_params(
        Request("GET", "/acct/queue", query="Action=ReceiveMessage&AttributeName.1=All")
    )
    assert members == {"QueueUrl": "/acct/queue", "AttributeNames": ["All"]}
    with pytest.raises(SqsError):
        query_params(Request("POST", "/", body=b"Action=CreateQueue&Attribute.x.Name=a"))
    for index in ("%C2%B2", "%D9%A1"):  # SUPERSCRIPT TWO, ARABIC-INDIC ONE: isdigit() but not 0-9
        with pytest.raises(SqsError):
            query_params(Request("POST", "/", body=f"Action=ListQueues&Attribute.{index}.Name=a".encode()))


def test_numbers_are_ascii_digits() -> None:
    """Strict like the v1.0 API: digits of other scripts are not numbers (int() would take most)."""
    assert validation.integer("7", "X", 0, 10) == 7
    assert validation.integer(" 7", "X", 0, 10) == 7
    for value in ("\u0661", "\u00b2", "1\u0661", "\uff17"):
        with pytest.raises(SqsError):
            validation.integer(value, "X", 0, 10)
        with pytest.raises(SqsError):
            validation.queue_attributes({"DelaySeconds": value}, fifo=False)
        with pytest.raises(SqsError):
            validation.message_attributes({"n": {"DataType": "Number", "StringValue": value}})
    assert validation.message_attributes({"n": {"DataType": "Number", "StringValue": "-1.5e3"}})


def test_queue_url_parsing() -> None:
    assert parse_queue_url("http://host:1/acct/q") == ("acct", "q")
    assert parse_queue_url("/acct/q") == ("acct", "q")
    assert parse_queue_url("https://host/q") is None
    assert parse_queue_url("http://host") is None
    assert parse_queue_url("q") == ("", "q")  # a bare name: the caller's account
    assert parse_queue_url("") is None


def test_routing_rule() -> None:
    form = {"content-type": "application/x-www-form-urlencoded"}
    assert sqs_protocol(Request("POST", "/", headers={"x-amz-target": "AmazonSQS.ListQueues"})) == "json"
    assert sqs_protocol(Request("POST", "/a/q", headers={"x-amz-target": "AmazonSQS.SendMessage"})) == "json"
    assert sqs_protocol(Request("POST", "/", headers=form)) == "query"
    assert sqs_protocol(Request("POST", "/a/q", headers=form)) == "query"
    assert sqs_protocol(Request("GET", "/", query="Action=ListQueues")) == "query"
    assert sqs_protocol(Request("GET", "/a/q", query="Version=1&Action=ReceiveMessage")) == "query"
    assert sqs_protocol(Request("POST", "/")) is None
    assert sqs_protocol(Request("GET", "/")) is None
    assert sqs_protocol(Request("POST", "/v1.0/a", headers=form)) is None
    assert sqs_protocol(Request("POST", "/v1.0/a/q", headers=form)) is None
    assert sqs_protocol(Request("PUT", "/a/q", headers={"x-amz-target": "x"})) is None


def _signed(secret: str, body: bytes = b"{}") -> Request:
    aws = AWSRequest(
        "POST",
        "http://sqs.local:8080/",
        data=body,
        headers={"X-Amz-Target": "AmazonSQS.ListQueues", "Content-Type": "application/x-amz-json-1.0"},
    )
    SigV4Auth(Credentials("key", secret), "sqs", "ap-south-1").add_auth(aws)
    headers = {k.lower(): str(v) for k, v in aws.headers.items()}
    headers["host"] = "sqs.local:8080"
    return Request("POST", "/", headers=headers, body=body)


def test_sigv4_against_botocore() -> None:
    auth = Authenticator(Settings(sqs_credentials="key:secret", region="ap-south-1"))
    caller = auth.caller(_signed("secret"), time.time())
    assert (caller.account, caller.region, caller.host, caller.strict) == (
        "key",
        "ap-south-1",
        "sqs.local:8080",
        True,
    )
    with pytest.raises(SqsError) as error:
        auth.caller(_signed("other"), time.time())
    assert error.value.code == "SignatureDoesNotMatch"
    tampered = _signed("secret")
    tampered.body = b'{"x": 1}'
    with pytest.raises(SqsError):
        auth.caller(tampered, time.time())
    # Dev mode: any signature is accepted, the key still picks the account.
    dev = Authenticator(Settings())
    assert dev.caller(_signed("anything"), time.time()).account == "key"
    # The server is one region: verified, another region's scope is refused; unverified, ignored.
    with pytest.raises(SqsError) as error:
        Authenticator(Settings(sqs_credentials="key:secret")).caller(_signed("secret"), time.time())
    assert (error.value.code, error.value.status) == ("SignatureDoesNotMatch", 403)
    assert dev.caller(_signed("anything"), time.time()).region == "us-east-1"
    assert dev.caller(Request("POST", "/"), time.time()).account == "000000000000"


def test_queue_cache_follows_the_stored_document() -> None:
    """The registry reuses a decoded Queue only while the stored document is unchanged."""

    async def scenario() -> None:
        settings = Settings()
        registry = QueueRegistry(Engine(open_backend("memory://", settings), settings))
        await registry.create("a", "q", {"VisibilityTimeout": "30"}, {}, 1000.0)
        first = await registry.get("a", "q")
        assert await registry.get("a", "q") is first
        assert first.number("VisibilityTimeout") == 30 and first.redrive() is None
        await registry.set_attributes(first, {"VisibilityTimeout": "5"}, 1001.0)
        changed = await registry.get("a", "q")
        assert changed is not first and changed.number("VisibilityTimeout") == 5
        assert first.number("VisibilityTimeout") == 30  # a request keeps the version it read
        await registry.delete(changed, 1002.0)
        assert await registry.find("a", "q") is None
        await registry.create("a", "q", {}, {}, 1100.0)
        assert (await registry.get("a", "q")).number("VisibilityTimeout") == 30

    asyncio.run(scenario())
