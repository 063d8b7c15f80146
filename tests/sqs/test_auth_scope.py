"""A SigV4 credential scope for another region or another service is 403, never 400.

With ``sqs_credentials`` set the server is one region (``Settings.region``) and one service
(``sqs``): a request signed for anything else gets SignatureDoesNotMatch (403), as from
AWS, on both protocols; without credentials the scope is not checked.
"""

from __future__ import annotations

import time
from urllib.parse import urlencode

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from burrow.api.sqs_auth import Authenticator
from burrow.client import Connection
from burrow.config import Settings
from burrow.http.types import Request
from burrow.sqs.errors import SqsError
from burrow.testing.server import running_server

#: (signed region, signed service, the word the 403 reason names)
SCOPES = [
    ("eu-west-1", "sqs", "region"),
    ("us-east-1", "sns", "service"),
    ("us-east-1", "execute-api", "service"),
    ("eu-west-1", "sns", "region"),
]


def signed(url: str, protocol: str, region: str, service: str, secret: str = "secret") -> AWSRequest:
    if protocol == "json":
        body = b"{}"
        headers = {"X-Amz-Target": "AmazonSQS.ListQueues", "Content-Type": "application/x-amz-json-1.0"}
    else:
        body = urlencode({"Action": "ListQueues", "Version": "2012-11-05"}).encode()
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
    request = AWSRequest("POST", url, data=body, headers=headers)
    SigV4Auth(Credentials("key", secret), service, region).add_auth(request)
    return request


def as_burrow_request(aws: AWSRequest, host: str) -> Request:
    headers = {k.lower(): str(v) for k, v in aws.headers.items()}
    headers["host"] = host
    body = aws.body if isinstance(aws.body, bytes) else str(aws.body or "").encode()
    return Request("POST", "/", headers=headers, body=body)


@pytest.mark.parametrize(("region", "service", "word"), SCOPES)
@pytest.mark.parametrize("protocol", ["json", "query"])
def test_another_region_or_service_is_403(protocol: str, region: str, service: str, word: str) -> None:
    auth = Authenticator(Settings(sqs_credentials="key:secret"))  # region us-east-1
    request = as_burrow_request(signed("http://sqs.local:8080/", protocol, region, service), "sqs.local:8080")
    with pytest.raises(SqsError) as error:
        auth.caller(request, time.time())
    assert (error.value.code, error.value.status) == ("SignatureDoesNotMatch", 403)
    assert word in error.value.message
    # The same request signed for this region and sqs is accepted.
    good = as_burrow_request(signed("http://sqs.local:8080/", protocol, "us-east-1", "sqs"), "sqs.local:8080")
    assert auth.caller(good, time.time()).account == "key"
    # Without credentials the scope is not checked: any region or service is accepted.
    assert Authenticator(Settings()).caller(request, time.time()).account == "key"


@pytest.mark.parametrize(("region", "service"), [(region, service) for region, service, _ in SCOPES])
@pytest.mark.parametrize("protocol", ["json", "query"])
async def test_server_answers_403_for_a_foreign_scope(protocol: str, region: str, service: str) -> None:
    settings = Settings(backend="memory://", sqs_credentials="key:secret", region="eu-central-1")
    async with running_server(settings) as server, Connection(server.url) as conn:
        # "eu-west-1" differs from this server's eu-central-1; "us-east-1" does too.
        aws = signed(server.url + "/", protocol, region, service)
        body = aws.body if isinstance(aws.body, bytes) else str(aws.body or "").encode()
        reply = await conn.request("POST", "/", body, dict(aws.headers.items()))
        assert reply.status == 403, reply
        assert b"SignatureDoesNotMatch" in reply.body
        ok = signed(server.url + "/", protocol, "eu-central-1", "sqs")
        ok_body = ok.body if isinstance(ok.body, bytes) else str(ok.body or "").encode()
        assert (await conn.request("POST", "/", ok_body, dict(ok.headers.items()))).status == 200
