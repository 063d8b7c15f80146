"""The isolation matrix: every route of both APIs, attacked every way, through a real ``burrow serve``.

One server (a subprocess started with ``--credentials``) holds a victim tenant's data on both
APIs. Then every burrow v1.0 route of :data:`burrow.api.routes.ROUTES` (each method, and one it
lacks) and every SQS action of :data:`burrow.sqs.actions.ACTIONS` (JSON and query protocols,
signed by botocore) is sent at the victim's names with no credential, a wrong token or secret,
an unknown access key, another tenant's credential, a read-only credential on a write, and a
correctly signed SigV4 request dated 20 minutes ago. Every one must be refused (401 or 403),
no error body may contain the victim's account, queue or message names or bodies, and the
victim's data must all still be there afterwards.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import threading
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from unittest import mock
from urllib.parse import urlencode, urlsplit

import orjson
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from burrow.api.routes import ROUTES
from burrow.client import Connection, Reply
from burrow.sqs.actions import ACTIONS
from burrow.testing.process import ServeProcess
from tests.boto import sqs_client

VICTIM, MALLORY = "victim-acct", "mallory"
V1_QUEUE, SQS_QUEUE, SQS_DLQ = "victim-q", "victim-sqs", "victim-dlq"
TOKENS = {
    "admin": "admin-" + "a" * 40,
    "victim": "victim-rw-" + "v" * 40,
    "victim_read": "victim-ro-" + "r" * 40,
    "mallory": "mallory-rw-" + "m" * 40,
    "mallory_read": "mallory-ro-" + "n" * 40,
}
KEYS = {"VICTIMKEY": "victim-secret-" + "s" * 26, "MALLORYKEY": "mallory-secret-" + "t" * 25}
V1_MESSAGES = {f"victim-msg-{i}": f"victim-body-{i}" for i in range(5)}
SQS_BODIES = [f"victim-sqs-body-{i}" for i in range(4)]
DLQ_BODIES = [f"victim-dlq-body-{i}" for i in range(6)]
#: Strings of the victim that no refusal may contain.
SECRETS_OF_VICTIM = (
    VICTIM,
    V1_QUEUE,
    SQS_QUEUE,
    SQS_DLQ,
    "victim-msg",
    "victim-body",
    "victim-sqs-body",
    "victim-dlq-body",
    "VICTIMKEY",
    KEYS["VICTIMKEY"],
)
WRITES = ("PUT", "POST", "DELETE")
T = TypeVar("T")


class Background:
    """An event loop in a daemon thread, for a ``burrow serve`` subprocess that outlives one test
    (its stderr is read all along) and for async clients called from plain tests."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


def credentials_file(path: Path) -> str:
    path.write_text(
        f"""admin_tokens = ["{TOKENS["admin"]}"]
[accounts.{VICTIM}]
tokens = ["{TOKENS["victim"]}"]
read_tokens = ["{TOKENS["victim_read"]}"]
sqs_keys = {{ VICTIMKEY = "{KEYS["VICTIMKEY"]}" }}
[accounts.{MALLORY}]
tokens = ["{TOKENS["mallory"]}"]
read_tokens = ["{TOKENS["mallory_read"]}"]
sqs_keys = {{ MALLORYKEY = "{KEYS["MALLORYKEY"]}" }}
"""
    )
    return str(path)


@dataclass
class Victim:
    url: str
    host: str
    sqs_url: str
    dlq_url: str
    dlq_arn: str
    task: str


@pytest.fixture(scope="module")
def background() -> Iterator[Background]:
    runner = Background()
    yield runner
    runner.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, background: Background) -> Iterator[str]:
    """``burrow serve --credentials`` in a subprocess; its base URL."""
    path = credentials_file(tmp_path_factory.mktemp("auth") / "credentials.toml")
    process = ServeProcess("--backend", "memory://", "--port", "0", "--credentials", path)
    url = background.run(process.start())
    try:
        yield url
    finally:
        background.run(process.stop())


@pytest.fixture(scope="module")
def victim(server: str, background: Background) -> Victim:
    """The victim's data: v1.0 messages, two SQS queues (one a dead-letter queue with a running
    message move task), tags and attributes."""
    url = server

    async def seed() -> None:
        async with Connection(url) as conn:
            for message, body in V1_MESSAGES.items():
                reply = await conn.request(
                    "PUT", f"/v1.0/{VICTIM}/{V1_QUEUE}/{message}?ttl=0", body.encode(), _bearer("victim")
                )
                assert reply.status == 201, reply

    background.run(seed())
    sqs = sqs_client(url, "VICTIMKEY", KEYS["VICTIMKEY"])
    dlq = sqs.create_queue(QueueName=SQS_DLQ)["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    policy = json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": 5})
    queue = sqs.create_queue(
        QueueName=SQS_QUEUE, Attributes={"RedrivePolicy": policy}, tags={"owner": "victim"}
    )["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    for body in SQS_BODIES:
        sqs.send_message(QueueUrl=queue, MessageBody=body)
    for body in DLQ_BODIES:
        sqs.send_message(QueueUrl=dlq, MessageBody=body)
    # One message a second: the task is still running while the matrix runs.
    task = sqs.start_message_move_task(
        SourceArn=dlq_arn, DestinationArn=queue_arn, MaxNumberOfMessagesPerSecond=1
    )["TaskHandle"]
    return Victim(url, url.removeprefix("http://"), queue, dlq, dlq_arn, task)


def _bearer(who: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[who]}"}


def _sigv4(
    method: str, url: str, body: bytes, headers: dict[str, str], key: str, secret: str, age: float
) -> dict[str, str]:
    """``headers`` plus a SigV4 signature by ``key``, dated ``age`` seconds ago."""
    request = AWSRequest(method, url, data=body, headers=dict(headers))
    then = datetime.datetime.now(datetime.UTC).replace(tzinfo=None) - datetime.timedelta(seconds=age)
    with mock.patch("botocore.auth.get_current_datetime", return_value=then):
        SigV4Auth(Credentials(key, secret), "sqs", "us-east-1").add_auth(request)
    return {k: str(v) for k, v in request.headers.items()}


# -- the attacks -------------------------------------------------------------------------------


#: v1.0 credentials that must be refused everywhere but on public routes: (label, headers, status).
def v1_anonymous(victim: Victim, method: str, path: str) -> list[tuple[str, dict[str, str], int]]:
    url = victim.url + path
    return [
        ("no credential", {}, 401),
        ("wrong bearer token", {"Authorization": "Bearer " + "x" * 43}, 401),
        ("wrong X-Auth-Token", {"X-Auth-Token": "y" * 43}, 401),
        ("token without Bearer", {"Authorization": TOKENS["victim"]}, 401),
        ("basic auth", {"Authorization": "Basic dmljdGltOnNlY3JldA=="}, 401),
        ("victim's SigV4 on v1.0", _sigv4(method, url, b"", {}, "VICTIMKEY", KEYS["VICTIMKEY"], 0), 401),
        (
            "expired SigV4 date",
            _sigv4(method, url, b"", {}, "VICTIMKEY", KEYS["VICTIMKEY"], 20 * 60),
            401,
        ),
    ]


def v1_cases(victim: Victim) -> list[tuple[str, str, str, dict[str, str], int]]:
    """(label, method, path, headers, expected status) for every non-public route and method."""
    names = {"account": VICTIM, "queue": V1_QUEUE, "message": "victim-msg-0"}
    cases = []
    for route in ROUTES:
        if route.access == "public":
            continue
        path = route.template
        for param in route.params:
            path = path.replace("{" + param + "}", names.get(param, "x"))
        for method in [*route.methods, "PATCH"]:
            target = path + ("?detail=all" if method == "GET" and route.params else "")
            for label, headers, status in v1_anonymous(victim, method, target):
                cases.append((f"{label} {method} {route.template}", method, target, headers, status))
            if route.access == "any":  # no tenant's data here: any valid credential may use it
                continue
            cases.append((f"other tenant {method} {route.template}", method, target, _bearer("mallory"), 403))
            cases.append(
                (
                    f"other tenant read-only {method} {route.template}",
                    method,
                    target,
                    _bearer("mallory_read"),
                    403,
                )
            )
            if method != "GET" and route.access == "account":
                cases.append(
                    (
                        f"read-only on a write {method} {route.template}",
                        method,
                        target,
                        _bearer("victim_read"),
                        403,
                    )
                )
            if route.access == "admin":
                cases.append((f"victim's token on admin {method}", method, target, _bearer("victim"), 403))
    return cases


def sqs_params(victim: Victim) -> dict[str, dict[str, Any]]:
    """Members for each SQS action, aimed at the victim's queues."""
    q = {"QueueUrl": victim.sqs_url}
    entry = {"Id": "e1"}
    params: dict[str, dict[str, Any]] = {
        "CreateQueue": {
            "QueueName": "mallory-q",
            "Attributes": {
                "RedrivePolicy": json.dumps({"deadLetterTargetArn": victim.dlq_arn, "maxReceiveCount": 1})
            },
        },
        "GetQueueUrl": {"QueueName": SQS_QUEUE, "QueueOwnerAWSAccountId": VICTIM},
        "ListQueues": {"QueueNamePrefix": "victim"},
        "DeleteQueue": q,
        "GetQueueAttributes": {**q, "AttributeNames": ["All"]},
        "SetQueueAttributes": {**q, "Attributes": {"VisibilityTimeout": "7"}},
        "PurgeQueue": q,
        "TagQueue": {**q, "Tags": {"owner": "mallory"}},
        "UntagQueue": {**q, "TagKeys": ["owner"]},
        "ListQueueTags": q,
        "ListDeadLetterSourceQueues": {"QueueUrl": victim.dlq_url},
        "StartMessageMoveTask": {"SourceArn": victim.dlq_arn},
        "ListMessageMoveTasks": {"SourceArn": victim.dlq_arn},
        "CancelMessageMoveTask": {"TaskHandle": victim.task},
        "AddPermission": {**q, "Label": "steal", "AWSAccountIds": [MALLORY], "Actions": ["ReceiveMessage"]},
        "RemovePermission": {**q, "Label": "steal"},
        "SendMessage": {**q, "MessageBody": "injected"},
        "SendMessageBatch": {**q, "Entries": [{**entry, "MessageBody": "injected"}]},
        "ReceiveMessage": {**q, "MaxNumberOfMessages": 10, "VisibilityTimeout": 600},
        "DeleteMessage": {**q, "ReceiptHandle": "handle"},
        "DeleteMessageBatch": {**q, "Entries": [{**entry, "ReceiptHandle": "handle"}]},
        "ChangeMessageVisibility": {**q, "ReceiptHandle": "handle", "VisibilityTimeout": 600},
        "ChangeMessageVisibilityBatch": {
            **q,
            "Entries": [{**entry, "ReceiptHandle": "handle", "VisibilityTimeout": 600}],
        },
    }
    assert set(params) == set(ACTIONS), "an SQS action was added: aim it at the victim here"
    return params


_FLAT_MAPS = {"Attributes": ("Attribute", "Name", "Value"), "Tags": ("Tag", "Key", "Value")}
_FLAT_LISTS = {
    "AttributeNames": "AttributeName",
    "TagKeys": "TagKey",
    "AWSAccountIds": "AWSAccountId",
    "Actions": "ActionName",
}


def flatten(action: str, params: dict[str, Any]) -> dict[str, str]:
    """The query protocol's form parameters for JSON-shaped members."""
    out = {"Action": action, "Version": "2012-11-05"}
    for key, value in params.items():
        if key in _FLAT_MAPS:
            prefix, k, v = _FLAT_MAPS[key]
            for i, (name, item) in enumerate(value.items(), 1):
                out[f"{prefix}.{i}.{k}"], out[f"{prefix}.{i}.{v}"] = name, item
        elif key in _FLAT_LISTS:
            for i, item in enumerate(value, 1):
                out[f"{_FLAT_LISTS[key]}.{i}"] = item
        elif key == "Entries":
            for i, item in enumerate(value, 1):
                for field, v in item.items():
                    out[f"{action}RequestEntry.{i}.{field}"] = str(v)
        else:
            out[key] = str(value)
    return out


def sqs_request(
    victim: Victim, protocol: str, action: str, params: dict[str, Any]
) -> tuple[str, bytes, dict[str, str]]:
    """(path, body, unsigned headers) of one SQS request."""
    if protocol == "json":
        headers = {"X-Amz-Target": f"AmazonSQS.{action}", "Content-Type": "application/x-amz-json-1.0"}
        return "/", orjson.dumps(params), headers
    form = flatten(action, params)
    path = "/"
    if "QueueUrl" in form:  # sent to the queue URL, which then stands for the parameter (as SDKs do)
        path = urlsplit(form.pop("QueueUrl")).path
    return path, urlencode(form).encode(), {"Content-Type": "application/x-www-form-urlencoded"}


#: Actions that name no queue of anyone's: another tenant's key runs them on its own account.
OWN_ACCOUNT = {"ListQueues"}


def sqs_cases(victim: Victim) -> list[tuple[str, str, bytes, dict[str, str], set[int]]]:
    cases = []
    for action, params in sqs_params(victim).items():
        for protocol in ("json", "query"):
            path, body, headers = sqs_request(victim, protocol, action, params)
            url = victim.url + path
            label = f"{protocol} {action}"

            def sign(key: str, secret: str, age: float, url: str = url, body: bytes = body) -> dict[str, str]:
                return _sigv4("POST", url, body, headers, key, secret, age)  # noqa: B023 (used at once)

            attacks: list[tuple[str, dict[str, str], set[int]]] = [
                ("no credential", headers, {403}),
                ("wrong secret", sign("VICTIMKEY", "not-the-secret", 0), {403}),
                ("unknown key", sign("NOSUCHKEY", "whatever", 0), {403}),
                ("expired date", sign("VICTIMKEY", KEYS["VICTIMKEY"], 20 * 60), {403}),
                # not a SigV4 header at all: IncompleteSignature, 400 as from AWS
                ("bearer token", {**headers, **_bearer("victim")}, {400}),
            ]
            if action not in OWN_ACCOUNT:
                # CreateQueue names the victim only in its RedrivePolicy: refused as a target that
                # does not exist (400), as AWS answers a dead-letter queue of another account
                allowed = {400} if action == "CreateQueue" else {403}
                attacks.append(("other tenant", sign("MALLORYKEY", KEYS["MALLORYKEY"], 0), allowed))
            for attack, signed, statuses in attacks:
                cases.append((f"{attack}: {label}", path, body, signed, statuses))
    return cases


def _leaks(reply: Reply) -> list[str]:
    text = reply.body.decode("utf-8", "replace") + " ".join(f"{k}: {v}" for k, v in reply.headers.items())
    return [s for s in SECRETS_OF_VICTIM if s in text]


async def _run_all(url: str, requests: list[tuple[str, str, str, bytes, dict[str, str]]]) -> list[Reply]:
    """Send every request (over 8 keep-alive connections); the replies in order."""
    replies: list[Reply | None] = [None] * len(requests)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(len(requests)):
        queue.put_nowait(i)

    async def worker() -> None:
        async with Connection(url, timeout=30) as conn:
            while not queue.empty():
                i = queue.get_nowait()
                _, method, path, body, headers = requests[i]
                replies[i] = await conn.request(method, path, body, headers)

    await asyncio.gather(*(worker() for _ in range(8)))
    assert all(r is not None for r in replies)
    return [r for r in replies if r is not None]


def test_every_route_refuses_every_attack(victim: Victim, background: Background) -> None:
    requests: list[tuple[str, str, str, bytes, dict[str, str]]] = []
    expected: list[set[int]] = []
    for label, method, path, headers, status in v1_cases(victim):
        requests.append((label, method, path, b"evil" if method in WRITES else b"", headers))
        expected.append({status})
    v1_count = len(requests)
    for label, path, body, headers, statuses in sqs_cases(victim):
        requests.append((label, "POST", path, body, headers))
        expected.append(statuses)
    assert v1_count >= 80 and len(requests) - v1_count >= 250  # the matrix is really this big

    replies = background.run(_run_all(victim.url, requests))
    failures = []
    for (label, method, path, _, _), statuses, reply in zip(requests, expected, replies, strict=True):
        if reply.status not in statuses:
            failures.append(f"{label}: {method} {path} -> {reply.status} {reply.body[:200]!r}")
        elif leaked := _leaks(reply):
            failures.append(f"{label}: {method} {path} -> {reply.status} body names {leaked}")
        elif reply.status == 401 and reply.headers.get("www-authenticate") != 'Bearer realm="burrow"':
            failures.append(f"{label}: 401 without the Bearer challenge")
    assert not failures, f"{len(failures)} of {len(requests)} attacks not refused cleanly:\n" + "\n".join(
        failures[:40]
    )
    _check_victim_intact(victim, background)


def test_other_tenant_sees_only_its_own_account(victim: Victim, background: Background) -> None:
    """The actions that name no queue run on the caller's own account and show nothing of the victim's."""
    mallory = sqs_client(victim.url, "MALLORYKEY", KEYS["MALLORYKEY"])
    assert "QueueUrls" not in mallory.list_queues(QueueNamePrefix="victim")
    assert "QueueUrls" not in mallory.list_queues()
    url = mallory.create_queue(QueueName=SQS_QUEUE)["QueueUrl"]  # the same name: its own queue
    assert url.endswith(f"/{MALLORY}/{SQS_QUEUE}")
    assert "Messages" not in mallory.receive_message(QueueUrl=url)
    mallory.delete_queue(QueueUrl=url)

    async def any_credential_routes() -> list[tuple[str, Reply]]:
        """Routes open to any valid credential (the dashboard's overview): what another tenant sees."""
        async with Connection(victim.url) as conn:
            return [
                (route.template, await conn.request("GET", route.template, b"", _bearer(who)))
                for route in ROUTES
                if route.access == "any" and "GET" in route.methods
                for who in ("mallory", "mallory_read")
            ]

    for template, reply in background.run(any_credential_routes()):
        assert reply.status < 500 and not _leaks(reply), (template, reply)
    _check_victim_intact(victim, background)


def _check_victim_intact(victim: Victim, background: Background) -> None:
    """Every message of the victim is still there, attributes and tags unchanged, no permission added."""

    async def v1() -> None:
        async with Connection(victim.url) as conn:
            reply = await conn.request(
                "GET", f"/v1.0/{VICTIM}/{V1_QUEUE}?match_hidden=true&detail=all", b"", _bearer("victim_read")
            )
            assert reply.status == 200, reply
            assert {m["id"]: m["body"] for m in orjson.loads(reply.body)} == V1_MESSAGES

    background.run(v1())
    sqs = sqs_client(victim.url, "VICTIMKEY", KEYS["VICTIMKEY"])
    attributes = sqs.get_queue_attributes(QueueUrl=victim.sqs_url, AttributeNames=["All"])["Attributes"]
    assert attributes["VisibilityTimeout"] == "30" and "Policy" not in attributes
    assert sqs.list_queue_tags(QueueUrl=victim.sqs_url)["Tags"] == {"owner": "victim"}
    total = 0
    for url in (victim.sqs_url, victim.dlq_url):
        counts = sqs.get_queue_attributes(
            QueueUrl=url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        total += int(counts["ApproximateNumberOfMessages"]) + int(
            counts["ApproximateNumberOfMessagesNotVisible"]
        )
    # The move task (one a second) may be between its put and its delete: counted at most once more.
    assert total in (len(SQS_BODIES) + len(DLQ_BODIES), len(SQS_BODIES) + len(DLQ_BODIES) + 1)
    tasks = sqs.list_message_move_tasks(SourceArn=victim.dlq_arn)["Results"]
    assert tasks[0]["Status"] in ("RUNNING", "COMPLETED")  # nobody cancelled it
