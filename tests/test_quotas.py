"""Per-account quotas (queues, messages, bytes, long-poll waiters) through a real server over
a real socket, on several backends, with boto3 for SQS.

Over a quota a create (or a long poll) gets 429 ``quota_exceeded`` with ``Retry-After``
(SQS: ``RequestThrottled``, or ``OverLimit`` for queues); nothing changes, other tenants are
not affected, and the account is served again as soon as its usage drops.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
from botocore.exceptions import ClientError

from burrow.client import Connection
from burrow.client.wire import Reply
from burrow.config import Settings
from burrow.quotas import Quota
from burrow.testing.backends import SERVER_BACKENDS
from burrow.testing.process import ServeProcess
from burrow.testing.server import RunningServer, running_server
from tests.boto import sqs_client

BACKENDS = ["memory", "sqlite-file", "redis"]


@pytest.fixture(params=BACKENDS)
async def server(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[RunningServer]:
    url = SERVER_BACKENDS[request.param].format(tmp=tmp_path)
    async with running_server(Settings(backend=url, clean_interval=0.1)) as running:
        yield running


def refused(reply: Reply, quota: str) -> None:
    assert reply.status == 429, (reply.status, reply.body)
    assert reply.headers["retry-after"] == "1"
    error = orjson.loads(reply.body)
    assert error["error"] == "quota_exceeded"
    assert f"its quota of {quota}" in error["message"] or f"its quota is {quota}" in error["message"]


async def put(conn: Connection, path: str, body: bytes = b"x", query: str = "") -> Reply:
    return await conn.request("PUT", f"/v1.0/{path}{query}", body)


async def test_messages_quota(server: RunningServer) -> None:
    server.engine.set_quotas({"acme": Quota(messages=3)})
    sqs = sqs_client(server.url, "acme")
    async with Connection(server.url) as conn:
        assert (await put(conn, "acme/q/m1")).status == 201
        assert (await put(conn, "acme/q/m2")).status == 201
        assert (await put(conn, "acme/q/short", query="?ttl=1")).status == 201
        refused(await put(conn, "acme/q/m4"), "3")
        refused(await put(conn, "acme/other/m4"), "3")  # the quota is the account's, not a queue's
        assert (await put(conn, "acme/q/m1", b"replaced")).status == 204  # a replacement adds none
        for i in range(10):  # another tenant is not affected
            assert (await put(conn, f"free/q/m{i}")).status == 201
        queue_url = (await asyncio.to_thread(sqs.create_queue, QueueName="jobs"))["QueueUrl"]
        with pytest.raises(ClientError) as error:
            await asyncio.to_thread(sqs.send_message, QueueUrl=queue_url, MessageBody="over")
        assert error.value.response["Error"]["Code"] == "RequestThrottled"
        batch = await asyncio.to_thread(
            sqs.send_message_batch,
            QueueUrl=queue_url,
            Entries=[{"Id": "a", "MessageBody": "1"}, {"Id": "b", "MessageBody": "2"}],
        )
        assert [f["Code"] for f in batch["Failed"]] == ["RequestThrottled", "RequestThrottled"]
        # nothing changed: the stored messages are the ones accepted
        listed = await conn.request("GET", "/v1.0/acme/q?detail=body&match_hidden=true")
        assert orjson.loads(listed.body) == ["replaced", "x", "x"]
        assert (await conn.request("GET", "/v1.0/acme/other")).status == 404
        # a delete makes room at once
        assert (await conn.request("DELETE", "/v1.0/acme/q/m2")).status == 204
        sent = await asyncio.to_thread(sqs.send_message, QueueUrl=queue_url, MessageBody="fits")
        assert sent["MessageId"]
        refused(await put(conn, "acme/q/m5"), "3")
        # so does expiry, once the cleaner removed it and the usage is read again (within 1 s)
        deadline = time.monotonic() + 5
        while (reply := await put(conn, "acme/q/after-expiry")).status == 429:
            assert time.monotonic() < deadline, "expiry did not make room"
            await asyncio.sleep(0.1)
        assert reply.status == 201
        # a receive takes nothing away: the messages are still stored
        received = await asyncio.to_thread(sqs.receive_message, QueueUrl=queue_url)
        assert len(received["Messages"]) == 1
        refused(await put(conn, "acme/q/m6"), "3")
        # quotas lifted (a credentials reload): no limit
        server.engine.set_quotas({})
        assert (await put(conn, "acme/q/m6")).status == 201
        await conn.request("DELETE", "/v1.0")
    await asyncio.to_thread(sqs.delete_queue, QueueUrl=queue_url)


async def test_bytes_quota(server: RunningServer) -> None:
    server.engine.set_quotas({"acme": Quota(bytes=1000)})
    async with Connection(server.url) as conn:
        assert (await put(conn, "acme/q/a", b"a" * 600)).status == 201
        refused(await put(conn, "acme/q/b", b"b" * 600), "1000 bytes")
        assert (await put(conn, "acme/q/c", b"c" * 400)).status == 201  # exactly at the quota
        refused(await put(conn, "acme/q/d", b"d"), "1000 bytes")
        assert (await put(conn, "acme/q/a", b"a" * 300)).status == 204  # a smaller replacement fits
        assert (await put(conn, "free/q/big", b"f" * 100_000)).status == 201
        taken = await conn.request("POST", "/v1.0/acme/q?limit=1&hide=60&detail=id")
        assert orjson.loads(taken.body) == ["a"]
        assert (await conn.request("DELETE", "/v1.0/acme/q/c")).status == 204
        assert (await put(conn, "acme/q/b", b"b" * 600)).status == 201
        listed = await conn.request("GET", "/v1.0/acme/q?detail=attributes&match_hidden=true")
        assert [m["id"] for m in orjson.loads(listed.body)] == ["a", "b"]
        await conn.request("DELETE", "/v1.0")


async def test_queues_quota(server: RunningServer) -> None:
    server.engine.set_quotas({"acme": Quota(queues=2)})
    sqs = sqs_client(server.url, "acme")
    async with Connection(server.url) as conn:
        assert (await put(conn, "acme/q1/m")).status == 201
        await asyncio.to_thread(sqs.create_queue, QueueName="q2")  # an SQS queue counts while empty
        refused(await put(conn, "acme/q3/m"), "2")
        with pytest.raises(ClientError) as error:
            await asyncio.to_thread(sqs.create_queue, QueueName="q3")
        assert error.value.response["Error"]["Code"] == "OverLimit"
        assert (await put(conn, "acme/q1/m2")).status == 201  # an existing queue takes more
        assert (await put(conn, "acme/q2/m")).status == 201  # the SQS queue's name, from v1.0
        for i in range(5):
            assert (await put(conn, f"free/q{i}/m")).status == 201
        assert (await conn.request("GET", "/v1.0/acme?detail=id")).body == b'["q1","q2"]'
        assert (await conn.request("DELETE", "/v1.0/acme/q1")).status == 204  # its messages: it is gone
        deadline = time.monotonic() + 1
        while (reply := await put(conn, "acme/q3/m")).status == 429:  # seen within 0.1 s
            assert time.monotonic() < deadline, "the emptied queue was still counted"
            await asyncio.sleep(0.02)
        assert reply.status == 201
        refused(await put(conn, "acme/q4/m"), "2")
        await conn.request("DELETE", "/v1.0")
    for name in ("q2",):
        url = (await asyncio.to_thread(sqs.get_queue_url, QueueName=name))["QueueUrl"]
        await asyncio.to_thread(sqs.delete_queue, QueueUrl=url)


async def test_waiters_quota(server: RunningServer) -> None:
    server.engine.set_quotas({"acme": Quota(waiters=1)})
    sqs = sqs_client(server.url, "acme")
    queue_url = (await asyncio.to_thread(sqs.create_queue, QueueName="jobs"))["QueueUrl"]
    async with Connection(server.url) as first, Connection(server.url) as conn:
        parked = asyncio.ensure_future(first.request("GET", "/v1.0/acme/q?wait=10"))
        while server.engine.waiting < 1:
            await asyncio.sleep(0.01)
        refused(await conn.request("GET", "/v1.0/acme/q?wait=10"), "1")
        refused(await conn.request("POST", "/v1.0/acme/other?wait=10&hide=30"), "1")
        with pytest.raises(ClientError) as error:
            await asyncio.to_thread(sqs.receive_message, QueueUrl=queue_url, WaitTimeSeconds=10)
        assert error.value.response["Error"]["Code"] == "RequestThrottled"
        # a poll that does not wait, or finds a message at once, never parks: not refused
        assert (await conn.request("GET", "/v1.0/acme/q")).status == 404
        # another tenant parks as many as it likes
        async with contextlib.AsyncExitStack() as stack:
            more = [await stack.enter_async_context(Connection(server.url)) for _ in range(3)]
            others = [asyncio.ensure_future(c.request("GET", "/v1.0/free/q?wait=10")) for c in more]
            while server.engine.waiting < 4:
                await asyncio.sleep(0.01)
            assert (await put(conn, "free/q/m")).status == 201  # wakes them all (they only read)
            assert [(await task).status for task in others] == [200, 200, 200]
        assert (await put(conn, "acme/q/m")).status == 201  # wakes the parked poll
        assert (await parked).status == 200
        # the waiter is gone: the account may park again
        while server.engine.waiting:
            await asyncio.sleep(0.01)
        again = asyncio.ensure_future(first.request("POST", "/v1.0/acme/q?wait=10&hide=30&detail=id"))
        while server.engine.waiting < 1 and not again.done():
            await asyncio.sleep(0.01)
        assert (await again).status == 200  # the message was there: taken at once
        parked = asyncio.ensure_future(first.request("GET", "/v1.0/acme/q?wait=10"))
        while server.engine.waiting < 1:
            await asyncio.sleep(0.01)
        refused(await conn.request("GET", "/v1.0/acme/q?wait=10"), "1")
        assert (await conn.request("POST", "/v1.0/acme/q/m?hide=0")).status == 204  # unhide: a wake-up
        assert (await parked).status == 200
        await conn.request("DELETE", "/v1.0")
    await asyncio.to_thread(sqs.delete_queue, QueueUrl=queue_url)


async def test_quotas_from_the_credentials_file_and_its_reload(tmp_path: Path) -> None:
    """End to end: ``burrow serve --credentials FILE`` enforces ``[accounts.NAME.quotas]`` and
    takes new values on SIGHUP."""
    token, other = "acme-token-0123456789", "free-token-0123456789"
    credentials = tmp_path / "credentials.toml"

    def write(messages: int) -> None:
        credentials.write_text(
            f'[accounts.acme]\ntokens = ["{token}"]\n[accounts.acme.quotas]\nmessages = {messages}\n'
            f'bytes = "1K"\n[accounts.free]\ntokens = ["{other}"]\n'
        )
        credentials.chmod(0o600)

    write(2)
    server = ServeProcess("--backend", "memory://", "--port", "0", "--credentials", str(credentials))
    url = await server.start()
    acme = {"authorization": f"Bearer {token}"}
    try:
        async with Connection(url) as conn:
            for m in ("m1", "m2"):
                assert (await conn.request("PUT", f"/v1.0/acme/q/{m}", b"x", acme)).status == 201
            refused(await conn.request("PUT", "/v1.0/acme/q/m3", b"x", acme), "2")
            refused(await conn.request("PUT", "/v1.0/acme/q/m1", b"x" * 2000, acme), "1024 bytes")
            for m in ("m1", "m2", "m3"):  # the other tenant has no quotas
                reply = await conn.request("PUT", f"/v1.0/free/q/{m}", b"x", {"x-auth-token": other})
                assert reply.status == 201
            write(3)
            server.signal(signal.SIGHUP)
            deadline = time.monotonic() + 10
            while (reply := await conn.request("PUT", "/v1.0/acme/q/m3", b"x", acme)).status == 429:
                assert time.monotonic() < deadline, "the reloaded quota was not applied"
                await asyncio.sleep(0.05)
            assert reply.status == 201
            refused(await conn.request("PUT", "/v1.0/acme/q/m4", b"x", acme), "3")
    finally:
        await server.stop()
