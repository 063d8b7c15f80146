"""``GET /metrics`` through a real server over a real socket: known operations, then the
exposition parsed with prometheus-client's own parser and checked number by number."""

from __future__ import annotations

import ast
import asyncio
import json
from bisect import bisect_left
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from burrow.api import routes
from burrow.backends.sqlite import SQLiteBackend
from burrow.cli import main
from burrow.client import Connection
from burrow.config import Settings
from burrow.metrics import LATENCY_BOUNDS, DepthScanner, latency_bucket
from burrow.testing.backends import SERVER_BACKENDS
from burrow.testing.clock import ManualClock
from burrow.testing.server import RunningServer, running_server

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
SQS_JSON = "application/x-amz-json-1.0"


async def scrape(conn: Connection) -> Samples:
    reply = await conn.request("GET", "/metrics")
    assert reply.status == 200, reply.body
    assert reply.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(reply.body.decode()):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sample's value; 0 when the exposition has no such sample (a counter never incremented)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def requests(samples: Samples, operation: str, status: int, api: str = "v1") -> float:
    return value(samples, "burrow_requests_total", api=api, operation=operation, status=str(status))


def label_values(samples: Samples, name: str, label: str) -> set[str]:
    return {dict(labels)[label] for (n, labels) in samples if n == name}


async def sqs(conn: Connection, action: str, **members: object) -> dict[str, object]:
    headers = {"X-Amz-Target": f"AmazonSQS.{action}", "Content-Type": SQS_JSON}
    reply = await conn.request("POST", "/", orjson.dumps(members), headers)
    assert reply.status == 200, reply.body
    result: dict[str, object] = orjson.loads(reply.body)
    return result


@pytest.fixture(params=sorted(SERVER_BACKENDS))
async def server(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[RunningServer]:
    url = SERVER_BACKENDS[request.param].format(tmp=tmp_path)
    async with running_server(Settings(backend=url)) as running:
        yield running


async def test_v1_requests_and_message_events_are_counted(server: RunningServer) -> None:
    async with Connection(server.url) as conn:
        for m in ("m1", "m2", "m3"):
            assert (await conn.request("PUT", f"/v1.0/a/q/{m}", b"body")).status == 201
        assert (await conn.request("PUT", "/v1.0/a/q/m1", b"again")).status == 204
        taken = await conn.request("POST", "/v1.0/a/q?limit=2&hide=60&detail=all")
        assert taken.status == 200 and len(orjson.loads(taken.body)) == 2
        assert (await conn.request("DELETE", "/v1.0/a/q/m1")).status == 204
        assert (await conn.request("GET", "/v1.0/a/q/nope")).status == 404
        assert (await conn.request("GET", "/v1.0/a/q?limit=0")).status == 400
        assert (await conn.request("GET", "/nope")).status == 404
        assert (await conn.request("PATCH", "/v1.0")).status == 405
        # One scrape: a depth scan is reused for a second, so an earlier one would show stale depths.
        after = await scrape(conn)
    assert requests(after, "put_message", 201) == 3
    assert requests(after, "put_message", 204) == 1
    assert requests(after, "update_messages", 200) == 1
    assert requests(after, "delete_message", 204) == 1
    assert requests(after, "get_message", 404) == 1
    assert requests(after, "get_messages", 400) == 1
    assert requests(after, "unmatched", 404) == 1
    assert requests(after, "unmatched", 405) == 1
    # The latency histogram counts every answered request once, in buckets that only grow.
    put = {"api": "v1", "operation": "put_message"}
    assert value(after, "burrow_request_duration_seconds_count", **put) == 4
    assert value(after, "burrow_request_duration_seconds_bucket", **put, le="+Inf") == 4
    buckets = [
        value(after, "burrow_request_duration_seconds_bucket", **put, le=repr(le)) for le in LATENCY_BOUNDS
    ]
    assert buckets == sorted(buckets)
    assert 0 < value(after, "burrow_request_duration_seconds_sum", **put) < 10

    assert value(after, "burrow_messages_sent_total") == 4  # three creates and a replacement
    assert value(after, "burrow_messages_delivered_total") == 2
    assert value(after, "burrow_messages_deleted_total") == 1
    # Left: m2 hidden by the take (a v1.0 take counts no receive: "delayed"), m3 visible.
    assert value(after, "burrow_queue_messages", account="a", queue="q", state="visible") == 1
    assert value(after, "burrow_queue_messages", account="a", queue="q", state="delayed") == 1
    assert value(after, "burrow_queue_messages", account="a", queue="q", state="in_flight") == 0
    assert value(after, "burrow_queue_scan_queues") == 1
    assert value(after, "burrow_connections") >= 1  # this one
    assert value(after, "burrow_long_poll_waiters") == 0
    assert value(after, "process_resident_memory_bytes") > 0
    if isinstance(server.engine.backend, SQLiteBackend):
        assert value(after, "burrow_storage_commits_total") >= 3
        commits = value(after, "burrow_storage_commit_seconds_count")
        assert commits >= 3 and value(after, "burrow_storage_commit_batch_size_count") == commits
        assert value(after, "burrow_storage_commit_batch_size_sum") >= commits  # one operation at least


async def test_sqs_requests_are_counted_by_action_and_dead_letters_too(server: RunningServer) -> None:
    async with Connection(server.url) as conn:
        dlq_url = (await sqs(conn, "CreateQueue", QueueName="dead"))["QueueUrl"]
        attributes = await sqs(conn, "GetQueueAttributes", QueueUrl=dlq_url, AttributeNames=["QueueArn"])
        arn = attributes["Attributes"]["QueueArn"]  # type: ignore[index]
        policy = json.dumps({"deadLetterTargetArn": arn, "maxReceiveCount": "1"})
        created = await sqs(conn, "CreateQueue", QueueName="work", Attributes={"RedrivePolicy": policy})
        src = created["QueueUrl"]
        await sqs(conn, "SendMessage", QueueUrl=src, MessageBody="poison")
        first = await sqs(conn, "ReceiveMessage", QueueUrl=src, VisibilityTimeout=0)
        assert len(first["Messages"]) == 1  # type: ignore[arg-type]
        second = await sqs(conn, "ReceiveMessage", QueueUrl=src, VisibilityTimeout=0)
        assert "Messages" not in second or not second["Messages"]  # moved to the dead-letter queue
        bogus = await conn.request(
            "POST", "/", b"{}", {"X-Amz-Target": "AmazonSQS.NoSuchThing", "Content-Type": SQS_JSON}
        )
        assert bogus.status == 400
        listed = await conn.request("GET", "/?Action=ListQueues&Version=2012-11-05")
        assert listed.status == 200
        after = await scrape(conn)
    assert requests(after, "CreateQueue", 200, api="sqs") == 2
    assert requests(after, "SendMessage", 200, api="sqs") == 1
    assert requests(after, "ReceiveMessage", 200, api="sqs") == 2
    assert requests(after, "ListQueues", 200, api="sqs") == 1  # the query protocol
    assert requests(after, "unmatched", 400, api="sqs") == 1  # not a label per made-up action
    assert "NoSuchThing" not in label_values(after, "burrow_requests_total", "operation")
    assert value(after, "burrow_messages_sent_total") == 1
    assert value(after, "burrow_messages_delivered_total") == 2  # both claims, the second then moved
    assert value(after, "burrow_messages_dead_lettered_total") == 1


async def test_long_poll_waiters_and_abandoned_requests(tmp_path: Path) -> None:
    async with running_server(Settings(backend="memory://")) as server, Connection(server.url) as conn:
        poller = Connection(server.url)
        await poller.connect()
        poll = asyncio.ensure_future(poller.request("GET", "/v1.0/a/q?wait=20"))
        for _ in range(200):
            if value(await scrape(conn), "burrow_long_poll_waiters") == 1:
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError("the long poll never showed as a waiter")
        poll.cancel()
        await poller.close()  # the client goes away: its handler is cancelled
        for _ in range(200):
            samples = await scrape(conn)
            if requests(samples, "get_messages", 499) == 1:
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError("the abandoned long poll was not counted as 499")
        assert value(samples, "burrow_long_poll_waiters") == 0

        # The same for an SQS long poll (ReceiveMessage with WaitTimeSeconds), counted by SQS.
        url = (await sqs(conn, "CreateQueue", QueueName="idle"))["QueueUrl"]
        body = orjson.dumps({"QueueUrl": url, "WaitTimeSeconds": 20})
        headers = {"X-Amz-Target": "AmazonSQS.ReceiveMessage", "Content-Type": SQS_JSON}
        poller = Connection(server.url)
        await poller.connect()
        poll = asyncio.ensure_future(poller.request("POST", "/", body, headers))
        for _ in range(200):
            if value(await scrape(conn), "burrow_long_poll_waiters") == 1:
                break
            await asyncio.sleep(0.01)
        poll.cancel()
        await poller.close()
        for _ in range(200):
            samples = await scrape(conn)
            if requests(samples, "ReceiveMessage", 499, api="sqs") == 1:
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError("the abandoned SQS long poll was not counted as 499")


async def test_only_the_deepest_queues_are_labelled(tmp_path: Path) -> None:
    settings = Settings(backend=f"sqlite:///{tmp_path}/burrow.db", metrics_top_queues=2)
    async with running_server(settings) as server, Connection(server.url) as conn:
        for depth, queue in enumerate(("q1", "q2", "q3", "q4"), start=1):
            for i in range(depth):  # every other one hidden
                reply = await conn.request("PUT", f"/v1.0/acct/{queue}/m{i}?hide={i % 2 * 60}", b"x")
                assert reply.status == 201
        samples = await scrape(conn)
    assert label_values(samples, "burrow_queue_messages", "queue") == {"q3", "q4"}
    assert value(samples, "burrow_queue_messages", account="acct", queue="q4", state="visible") == 2
    assert value(samples, "burrow_queue_messages", account="acct", queue="q4", state="delayed") == 2
    assert value(samples, "burrow_queue_messages", account="acct", queue="q3", state="visible") == 2
    assert value(samples, "burrow_queue_scan_queues") == 4
    assert value(samples, "burrow_queue_scan_truncated") == 0


async def test_depth_scan_is_bounded_and_survives_a_failed_store(tmp_path: Path) -> None:
    settings = Settings(backend=f"sqlite:///{tmp_path}/burrow.db", max_limit=2)
    async with running_server(settings) as server, Connection(server.url) as conn:
        for account in ("a1", "a2"):
            for queue in ("q1", "q2", "q3"):
                assert (await conn.request("PUT", f"/v1.0/{account}/{queue}/m", b"x")).status == 201
        # Pages of max_limit (2) across accounts, stopping at the bound.
        bounded = await DepthScanner(server.engine, top=10, limit=5).current()
        assert bounded is not None
        assert (bounded.scanned, bounded.truncated, bounded.failed) == (5, True, False)
        whole = await DepthScanner(server.engine, top=10, limit=100).current()
        assert whole is not None and (whole.scanned, whole.truncated) == (6, False)
        assert [(q.account, q.queue) for q in whole.deepest][:2] == [("a1", "q1"), ("a1", "q2")]

        backend = server.engine.backend
        assert isinstance(backend, SQLiteBackend)
        await backend.close()  # the store is gone: the other metrics are still served
        samples = await scrape(conn)
        assert value(samples, "burrow_queue_scan_failures_total") == 1
        assert requests(samples, "put_message", 201) == 6


async def test_metrics_off_counts_nothing(tmp_path: Path) -> None:
    async with running_server(Settings(backend="memory://", metrics="off")) as server:
        assert server.engine.counts is None
        async with Connection(server.url) as conn:
            assert (await conn.request("PUT", "/v1.0/a/q/m", b"x")).status == 201
            reply = await conn.request("GET", "/metrics")
            assert reply.status == 404
            assert "--metrics off" in orjson.loads(reply.body)["message"]
            assert (await conn.request("GET", "/health/ready")).status == 200


@pytest.mark.parametrize(
    "flags",
    [["--metrics", "maybe"], ["--metrics-top-queues", "1001"], ["--metrics-top-queues", "-1"]],
)
def test_bad_metrics_settings_are_refused(flags: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", *flags]) == 2
    assert "metrics" in capsys.readouterr().err


def test_settings_reach_the_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    out = capsys.readouterr().out
    for flag in ("--metrics ", "--metrics-top-queues", "--access-log"):
        assert flag in out


def _labels(samples: Mapping[tuple[str, frozenset[tuple[str, str]]], float]) -> set[str]:
    return {name for (_, labels) in samples for name, _ in labels}


async def test_label_names_are_bounded(server: RunningServer) -> None:
    """No label carries a message id or a request-chosen value: only these label names exist,
    and only ``account``/``queue`` of the bounded top-N depth gauge hold names."""
    async with Connection(server.url) as conn:
        for i in range(30):
            await conn.request("PUT", f"/v1.0/acct{i}/q/id-{i}", b"x")
            await conn.request("GET", f"/v1.0/acct{i}/q/missing-{i}")
        samples = await scrape(conn)
    assert _labels(samples) <= {"api", "operation", "status", "le", "account", "queue", "state"} | {
        "generation",  # python_gc_* (per GC generation)
        "implementation",  # python_info
        "major",
        "minor",
        "patchlevel",
        "version",
    }
    assert len(label_values(samples, "burrow_queue_messages", "account")) == 20  # metrics_top_queues
    assert not any("id-" in v or "missing-" in v for (_, labels) in samples for _, v in labels)


def test_latency_buckets_are_the_bisect_ones() -> None:
    """The compares that spare most requests a bisect call pick the same bucket (``le``: <=)."""
    values = [0.0, 1e-7, 29.9, 30.0, 30.1, 1e6]
    for bound in LATENCY_BOUNDS:
        values += [bound * 0.999, bound, bound * 1.001]
    for seconds in values:
        assert latency_bucket(seconds) == bisect_left(LATENCY_BOUNDS, seconds), seconds


def test_the_app_inlines_the_same_bucket_bounds() -> None:
    """App.__call__ inlines latency_bucket's compares (a call less per request): same bounds."""
    # Read from the source: a compiled App.__call__ has no code object to look into.
    tree = ast.parse((Path(routes.__file__).parent / "routes.py").read_text())
    (app,) = [node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "App"]
    (call,) = [n for n in app.body if isinstance(n, ast.AsyncFunctionDef) and n.name == "__call__"]
    constants = {node.value for node in ast.walk(call) if isinstance(node, ast.Constant)}
    assert set(LATENCY_BOUNDS[:4]) <= constants


async def test_expired_messages_are_counted_once_the_cleaner_removes_them(tmp_path: Path) -> None:
    """``burrow_messages_expired`` rises by the messages whose ttl ran out, on every backend,
    and not for deleted ones; the clock is moved by hand and the cleaner run once."""
    for name in sorted(SERVER_BACKENDS):
        url = SERVER_BACKENDS[name].format(tmp=tmp_path / name)
        (tmp_path / name).mkdir()
        clock = ManualClock()
        async with running_server(Settings(backend=url), clock) as server, Connection(server.url) as conn:
            before = value(await scrape(conn), "burrow_messages_expired_total")
            for m in ("m1", "m2", "m3"):
                assert (await conn.request("PUT", f"/v1.0/a/q/{m}?ttl=5", b"x")).status == 201
            assert (await conn.request("PUT", "/v1.0/a/q/later?ttl=50", b"x")).status == 201
            assert (await conn.request("DELETE", "/v1.0/a/q/m3")).status == 204
            clock.advance(10)
            await server.engine.clean()
            after = value(await scrape(conn), "burrow_messages_expired_total")
            assert after - before == 2, name
            clock.advance(100)
            await server.engine.clean()
            assert value(await scrape(conn), "burrow_messages_expired_total") - before == 3, name
            assert (await conn.request("GET", "/v1.0/a")).status == 404
