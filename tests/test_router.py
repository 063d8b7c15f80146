"""The router (``burrow proxy``): what it adds to the API suites that also run through it.

Merged account and queue lists, long polls, byte-exact forwarding, SigV4 through the router
with real boto3, the connection pool's bound, servers going down and coming back (in
process, and as real processes killed under load), and the command line.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import boto3
import orjson
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from burrow.api.routes import App
from burrow.client import Connection, Reply
from burrow.config import Settings, load_settings
from burrow.hashing import Placement
from burrow.http.server import start_server
from burrow.router.cli import main as proxy_main
from burrow.testing.process import ServeProcess
from burrow.testing.router import ProxyProcess, RunningRouter, running_proxy, running_router
from burrow.testing.server import RunningServer, running_server

#: Response headers that differ by hop (the router writes its own framing).
FRAMING = {"date", "content-length", "connection"}


def placed_on(cluster: RunningRouter, server: RunningServer, avoid: Iterable[str] = ()) -> tuple[str, str]:
    """An (account, queue) that lives on ``server``. Ports are random, so placement is too: an
    account's subset need not include a given server, so accounts are searched as well."""
    for account in (f"acct{i}" for i in range(1000)):
        if server.url in cluster.router.placement.account_servers(account):
            for queue in (f"q{i}" for i in range(1000)):
                if queue not in avoid and cluster.server_of(account, queue) is server:
                    return account, queue
    raise AssertionError(f"nothing hashes to {server.url}")


def spread_account(cluster: RunningRouter) -> str:
    """An account whose queues live on more than one server."""
    return next(
        a for a in (f"acct{i}" for i in range(1000)) if len(cluster.router.placement.account_servers(a)) > 1
    )


def error(reply: Reply, status: int) -> str:
    assert reply.status == status, reply
    data = orjson.loads(reply.body)
    assert set(data) == {"error", "message"}
    return f"{data['error']}: {data['message']}"


async def server_lists(servers: list[RunningServer], target: str) -> list[list[str]]:
    """What each server lists at ``target`` (``[]`` for a 404), in the order given."""
    lists = []
    for server in servers:
        async with Connection(server.url) as conn:
            reply = await conn.request("GET", target + "?detail=id")
            lists.append(orjson.loads(reply.body) if reply.status == 200 else [])
    return lists


async def page_through(conn: Connection, target: str, limit: int) -> list[str]:
    names: list[str] = []
    while True:
        marker = f"&marker={names[-1]}" if names else ""
        reply = await conn.request("GET", f"{target}?detail=id&limit={limit}{marker}")
        if reply.status == 404:
            return names
        page = orjson.loads(reply.body)
        assert 1 <= len(page) <= limit
        names += page


# -- merged lists ---------------------------------------------------------------------------


async def test_account_and_queue_lists_merge_across_servers() -> None:
    async with running_router() as cluster, Connection(cluster.url) as conn:
        accounts = [f"acct{i}" for i in range(8)]
        for account in accounts:
            for q in range(10):
                assert (await conn.request("PUT", f"/v1.0/{account}/q{q}/m", b"x")).status == 201
        # Accounts: each server's list in turn (servers by URL), each account once, where first seen.
        by_url = sorted(cluster.servers, key=lambda s: s.url)  # accounts: servers by URL
        per_server = await server_lists(by_url, "/v1.0")
        assert sum(1 for names in per_server if names) > 1  # the accounts really are spread
        merged = list(dict.fromkeys(n for names in per_server for n in names))
        assert sorted(merged) == sorted(accounts)
        assert orjson.loads((await conn.request("GET", "/v1.0")).body) == merged
        assert await page_through(conn, "/v1.0", 3) == merged
        # Queues of one account: its subset's servers, each queue on exactly one.
        spread = next(a for a in accounts if len(cluster.router.placement.account_servers(a)) > 1)
        slots = cluster.router.placement.account_servers(spread)  # queues: by the account's slots
        per_server = await server_lists(
            [next(s for s in cluster.servers if s.url == u) for u in slots], f"/v1.0/{spread}"
        )
        assert sum(len(names) for names in per_server) == 10
        queues = [n for names in per_server for n in names]
        assert orjson.loads((await conn.request("GET", f"/v1.0/{spread}")).body) == queues
        for limit in (1, 4, 10):
            assert await page_through(conn, f"/v1.0/{spread}", limit) == queues
        got = await conn.request(
            "GET", f"/v1.0/{spread}?marker=nobody&limit=2&detail=all"
        )  # unknown: from the start
        assert orjson.loads(got.body) == [{"id": q} for q in queues[:2]]
        assert (await conn.request("GET", f"/v1.0/{spread}?detail=none")).status == 204
        assert "detail=body" in error(await conn.request("GET", f"/v1.0/{spread}?detail=body"), 400)
        # DELETE with a limit deletes the first names of the merged list, wherever they live.
        deleted = await conn.request("DELETE", f"/v1.0/{spread}?marker={queues[0]}&limit=3&detail=id")
        assert orjson.loads(deleted.body) == queues[1:4]
        assert orjson.loads((await conn.request("GET", f"/v1.0/{spread}")).body) == queues[:1] + queues[4:]
        deleted = await conn.request("DELETE", f"/v1.0?marker={merged[0]}&limit=2&detail=id")
        assert orjson.loads(deleted.body) == merged[1:3]
        for server in cluster.servers:  # gone from every server of their subsets
            async with Connection(server.url) as direct:
                for account in merged[1:3]:
                    assert (await direct.request("GET", f"/v1.0/{account}")).status == 404
        everything = orjson.loads((await conn.request("DELETE", "/v1.0?detail=id")).body)
        assert sorted(everything) == sorted([merged[0], *merged[3:]])
        assert "accounts" in error(await conn.request("GET", "/v1.0"), 404)
        assert "accounts" in error(await conn.request("DELETE", "/v1.0"), 404)


async def test_lists_are_capped_and_bounded_as_on_a_server() -> None:
    settings = Settings(backend="memory://", max_limit=4)
    async with running_router(settings) as cluster, Connection(cluster.url) as conn:
        for q in range(9):
            await conn.request("PUT", f"/v1.0/a/queue{q}/m", b"x")
        reply = await conn.request("GET", "/v1.0/a")
        assert len(orjson.loads(reply.body)) == 4
        assert reply.headers["x-burrow-truncated"] == "true"
        assert reply.headers["x-burrow-next-marker"] == orjson.loads(reply.body)[-1]
        assert "x-burrow-truncated" not in (await conn.request("GET", "/v1.0/a?limit=4")).headers
        assert (await conn.request("DELETE", "/v1.0/a")).status == 204  # deletes are not capped
        assert (await conn.request("GET", "/v1.0/a")).status == 404


# -- forwarding ------------------------------------------------------------------------------


async def test_long_poll_through_the_router_is_woken_by_a_put_through_it() -> None:
    async with (
        running_router(Settings(backend="memory://", max_wait=10)) as cluster,
        Connection(cluster.url) as waiter,
        Connection(cluster.url) as producer,
    ):
        started = time.monotonic()
        task = asyncio.create_task(waiter.request("POST", "/v1.0/a/jobs?wait=10&limit=1&hide=30&detail=id"))
        while cluster.engine.waiting < 1:
            await asyncio.sleep(0.005)
        assert (await producer.request("PUT", "/v1.0/a/jobs/j1", b"work")).status == 201
        reply = await task
        assert (reply.status, reply.json()) == (200, ["j1"])
        assert time.monotonic() - started < 5


async def test_a_client_giving_up_on_a_long_poll_releases_it_on_the_server() -> None:
    async with running_router(Settings(backend="memory://", max_wait=10)) as cluster:
        upstream = cluster.router.upstreams[cluster.server_of("a", "jobs").url]
        conn = await Connection(cluster.url).connect()
        await conn.send(b"GET /v1.0/a/jobs?wait=10 HTTP/1.1\r\nHost: x\r\n\r\n")
        while cluster.engine.waiting < 1:
            await asyncio.sleep(0.005)
        await conn.close()
        for _ in range(200):
            if cluster.engine.waiting == 0 and upstream.connections == 0:
                break
            await asyncio.sleep(0.01)
        assert (cluster.engine.waiting, upstream.connections) == (0, 0)


async def test_responses_come_back_byte_for_byte() -> None:
    # A small response budget, so that a list is cut short and says so in its headers.
    async with (
        running_router(Settings(backend="memory://", max_response_bytes=400)) as cluster,
        Connection(cluster.url) as conn,
    ):
        for i in range(6):
            await conn.request("PUT", f"/v1.0/a/q/m{i}", bytes(range(i * 40, i * 40 + 40)))
        direct = Connection(cluster.server_of("a", "q").url)
        checks = [
            ("GET", "/v1.0/a/q?detail=all", b""),
            ("GET", "/v1.0/a/q/m3?detail=body", b""),
            ("GET", "/v1.0/a/q/m3?detail=id", b""),
            ("GET", "/v1.0/a/q/nothing", b""),
            ("POST", "/v1.0/a/q/m1?bogus=1", b""),
            ("PATCH", "/v1.0/a/q/m1", b"x"),
            ("GET", "/v1.0/a/q?marker=m4&detail=attributes", b""),
        ]
        try:
            for method, target, body in checks:
                routed, straight = (
                    await conn.request(method, target, body),
                    await direct.request(method, target, body),
                )
                assert routed.status == straight.status and routed.body == straight.body, target
                assert [f for f in routed.fields if f[0] not in FRAMING] == [
                    f for f in straight.fields if f[0] not in FRAMING
                ], target
        finally:
            await direct.close()
        listed = await conn.request("GET", "/v1.0/a/q?detail=all")
        assert listed.headers["x-burrow-truncated"] == "true"  # the case above did check headers
        assert (await conn.request("GET", "/v1.0/a/q/m3?detail=body")).body == bytes(range(120, 160))


async def test_requests_and_answers_pass_through_unchanged() -> None:
    """A recording server shows what reaches a server: the request's method, target, body and
    headers as sent (hop-by-hop ones aside); and its answer comes back as it gave it."""
    seen: list[bytes] = []
    answer = b"\x00\xffbinary\r\n"

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while head := await reader.readuntil(b"\r\n\r\n"):
            if head.startswith(b"GET / "):  # health checks
                writer.write(b'HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\n["v1.0"]')
                continue
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            seen.append(head + await reader.readexactly(length))
            writer.write(
                b"HTTP/1.1 202 Accepted\r\nContent-Type: application/x-odd\r\nX-Burrow-Truncated: true\r\n"
                b"Retry-After: 7\r\nx-amzn-RequestId: Ab-1\r\ncontent-length: %d\r\n\r\n%s"
                % (len(answer), answer)
            )

    recorder = await asyncio.start_server(record, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{recorder.sockets[0].getsockname()[1]}"
    try:
        async with (
            running_proxy(Settings(servers=url)) as (_, http),
            Connection(f"http://127.0.0.1:{http.port}") as conn,
        ):
            body = bytes(range(256))
            headers = {
                "Host": "queues.example:8080",
                "Authorization": "AWS4-HMAC-SHA256 Credential=k/20250101/us-east-1/sqs/aws4_request,"
                " SignedHeaders=host, Signature=ab",
                "X-Amz-Date": "20250101T000000Z",
                "X-Auth-Token": "t0k3n",
                "Content-Type": "application/x-www-form-urlencoded; charset=utf-8",
                "Connection": "keep-alive, X-Hop",
                "X-Hop": "only to the router",
                "TE": "trailers",
            }
            reply = await conn.request("POST", "/v1.0/a%2Fb/q/m?hide=5&detail=all", body, headers)
            assert (reply.status, reply.body) == (202, answer)
            assert [f for f in reply.fields if f[0] not in FRAMING] == [
                ("content-type", "application/x-odd"),
                ("x-burrow-truncated", "true"),
                ("retry-after", "7"),
                ("x-amzn-requestid", "Ab-1"),
            ]
    finally:
        recorder.close()
        await recorder.wait_closed()
    (request,) = seen
    head, _, sent = request.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST /v1.0/a%2Fb/q/m?hide=5&detail=all HTTP/1.1" and sent == body
    fields = dict(line.split(": ", 1) for line in lines[1:])
    assert fields == {
        "host": "queues.example:8080",
        "authorization": headers["Authorization"],
        "x-amz-date": "20250101T000000Z",
        "x-auth-token": "t0k3n",
        "content-type": "application/x-www-form-urlencoded; charset=utf-8",
        "Content-Length": "256",
    }


async def test_requests_share_pooled_keep_alive_connections_and_survive_their_closing() -> None:
    # Servers close idle connections after 0.2 s; the router's pool notices, or retries once.
    quick = Settings(backend="memory://", idle_timeout=0.2)
    async with running_server(quick) as server, running_proxy(Settings(servers=server.url)) as (router, http):
        upstream = router.upstreams[server.url]
        async with Connection(f"http://127.0.0.1:{http.port}") as conn:
            for i in range(50):
                assert (await conn.request("PUT", f"/v1.0/a/q/m{i}", b"x")).status == 201
            assert upstream.connections == 1  # one connection carried all 50
            await asyncio.sleep(0.5)
            assert (await conn.request("GET", "/v1.0/a/q/m7?detail=id")).body == b"m7"


# -- bounds and failures -----------------------------------------------------------------------


async def test_an_exhausted_pool_answers_503_at_once() -> None:
    async with running_router(Settings(backend="memory://", max_wait=10), pool_size=1) as cluster:
        held = cluster.servers[0]
        account, queue = placed_on(cluster, held)
        same = f"/v1.0/{account}/{placed_on(cluster, held, avoid=[queue])[1]}"
        other = "/v1.0/{}/{}/m".format(*placed_on(cluster, cluster.servers[1]))
        async with Connection(cluster.url) as waiter, Connection(cluster.url) as conn:
            task = asyncio.create_task(waiter.request("GET", f"/v1.0/{account}/{queue}?wait=10&detail=id"))
            while cluster.engine.waiting < 1:
                await asyncio.sleep(0.005)
            started = time.monotonic()
            busy = await conn.request("GET", same)
            assert "service_unavailable" in error(busy, 503) and "busy" in busy.body.decode()
            assert busy.headers["retry-after"] == "1" and time.monotonic() - started < 1
            assert (await conn.request("PUT", other, b"x")).status == 201  # another server's pool
            async with Connection(held.url) as direct:  # wake the long poll on its server
                await direct.request("PUT", f"/v1.0/{account}/{queue}/m", b"x")
            assert (await task).json() == ["m"]
            assert (await conn.request("GET", same)).status == 404  # its server answers again


def _sqs_client(url: str, access: str = "testing", secret: str = "testing") -> Any:
    return boto3.client(
        "sqs",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id=access,
        aws_secret_access_key=secret,
        config=Config(retries={"total_max_attempts": 1}, read_timeout=10),
    )


async def test_a_down_server_fails_exactly_its_queues_until_a_health_check_brings_it_back() -> None:
    async with running_router(health_interval=0.05, health_timeout=0.5) as cluster:
        victim = cluster.servers[0]
        account, queue = placed_on(cluster, victim)
        mine = f"/v1.0/{account}/{queue}"
        safe = "/v1.0/{}/{}/m".format(*placed_on(cluster, cluster.servers[1]))
        sqs = _sqs_client(cluster.url, access=account)  # the access key is the account
        sqs_queue = await asyncio.to_thread(lambda: sqs.create_queue(QueueName=queue)["QueueUrl"])
        async with Connection(cluster.url) as conn:
            await conn.request("PUT", f"{mine}/kept", b"before")
            await victim.http.close()  # the server stops listening (its store stays as it is)
            started = time.monotonic()
            assert victim.url in error(await conn.request("GET", f"{mine}/kept"), 503)
            for _ in range(20):  # marked down: refused without trying
                assert (await conn.request("GET", f"{mine}/kept")).status == 503
            assert time.monotonic() - started < 1
            assert (await conn.request("PUT", safe, b"x")).status == 201
            assert victim.url in error(await conn.request("GET", "/v1.0"), 503)  # it spans the victim
            with pytest.raises(ClientError) as failed:
                await asyncio.to_thread(sqs.send_message, QueueUrl=sqs_queue, MessageBody="x")
            assert failed.value.response["Error"]["Code"] == "ServiceUnavailable"
            assert failed.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
            query = f"Action=SendMessage&QueueUrl={sqs_queue}&MessageBody=x".encode()
            xml = await conn.request(
                "POST", "/", query, {"Content-Type": "application/x-www-form-urlencoded"}
            )
            assert xml.status == 503 and b"<Code>ServiceUnavailable</Code>" in xml.body
            assert (
                await conn.request("GET", f"/v1.0/{account}")
            ).status == 503  # its subset spans the victim
            # The router's own probes: alive, not ready while a server is down, and no metrics.
            assert (await conn.request("GET", "/health/live")).status == 200
            assert victim.url in error(await conn.request("GET", "/health/ready"), 503)
            assert (await conn.request("GET", "/metrics")).status == 404

            settings = victim.engine.settings.replace(host="127.0.0.1", port=victim.port)
            victim.http = await start_server(App(victim.engine), settings)  # back, same port
            try:
                for _ in range(200):
                    reply = await conn.request("GET", f"{mine}/kept?detail=body")
                    if reply.status != 503:
                        break
                    await asyncio.sleep(0.02)
                assert (reply.status, reply.body) == (200, b"before")
                assert (await conn.request("GET", "/health/ready")).status == 200
                await asyncio.to_thread(sqs.send_message, QueueUrl=sqs_queue, MessageBody="after")
            finally:
                await victim.http.close()


async def test_a_server_that_stops_answering_is_timed_out() -> None:
    """A server that accepts requests and never answers them: each fails after max_wait +
    body_timeout, with a 503 saying the request may have been applied."""

    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while head := await reader.readuntil(b"\r\n\r\n"):
            if head.startswith(b"GET / "):  # health checks pass: it looks alive
                writer.write(b'HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\n["v1.0"]')

    hung = await asyncio.start_server(hang, "127.0.0.1", 0)
    port = hung.sockets[0].getsockname()[1]
    try:
        routed = Settings(servers=f"http://127.0.0.1:{port}", max_wait=1, body_timeout=0.3)
        async with (
            running_proxy(routed, health_interval=0.1) as (_, http),
            Connection(f"http://127.0.0.1:{http.port}") as conn,
        ):
            started = time.monotonic()
            message = error(await conn.request("PUT", "/v1.0/a/q/m", b"x"), 503)
            assert "no response within 1.3 s" in message and "may have been applied" in message
            assert 1.2 < time.monotonic() - started < 5
    finally:
        hung.close()
        await hung.wait_closed()


# -- SQS through the router ------------------------------------------------------------------------


async def test_sigv4_verified_sqs_through_the_router() -> None:
    settings = Settings(backend="memory://", sqs_credentials="alice:a-secret,bob:b-secret")
    async with running_router(settings) as cluster:

        def scenario() -> None:
            alice = _sqs_client(cluster.url, "alice", "a-secret")
            names = [f"jobs{i}" for i in range(8)]
            urls = [alice.create_queue(QueueName=n)["QueueUrl"] for n in names]
            assert {cluster.server_of("alice", n).url for n in names} == set(
                cluster.router.placement.account_servers("alice")
            )  # every server of alice's subset holds some (one to three servers: random ports)
            assert urls == [f"{cluster.url}/alice/{n}" for n in names]  # URLs name the router (Host kept)
            for url in urls:
                alice.send_message(QueueUrl=url, MessageBody="signed " + url)
                (m,) = alice.receive_message(QueueUrl=url, WaitTimeSeconds=1)["Messages"]
                assert m["Body"] == "signed " + url
                alice.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
            assert alice.list_queues()["QueueUrls"] == sorted(urls)  # one signed request, every server
            pages, token = [], None
            while True:
                page = alice.list_queues(MaxResults=3, **({"NextToken": token} if token else {}))
                pages += page.get("QueueUrls", [])
                token = page.get("NextToken")
                if not token:
                    break
            assert pages == sorted(urls)
            assert alice.list_queues(QueueNamePrefix="jobs1")["QueueUrls"] == [urls[1]]
            with pytest.raises(ClientError) as denied:
                _sqs_client(cluster.url, "bob", "b-secret").send_message(QueueUrl=urls[0], MessageBody="x")
            assert denied.value.response["Error"]["Code"] == "AccessDenied"
            with pytest.raises(ClientError) as forged:
                _sqs_client(cluster.url, "alice", "wrong").send_message(QueueUrl=urls[0], MessageBody="x")
            assert forged.value.response["Error"]["Code"] == "SignatureDoesNotMatch"
            with pytest.raises(ClientError) as forged:  # fanned out, still verified by every server
                _sqs_client(cluster.url, "alice", "wrong").list_queues()
            assert forged.value.response["Error"]["Code"] == "SignatureDoesNotMatch"

        await asyncio.to_thread(scenario)


async def test_a_dead_letter_queue_must_share_its_source_queues_server() -> None:
    async with running_router() as cluster:
        account = spread_account(cluster)
        first, second = cluster.router.placement.account_servers(account)[:2]

        def on(server: str, prefix: str) -> str:
            return next(
                n
                for n in (f"{prefix}{i}" for i in range(1000))
                if cluster.server_of(account, n).url == server
            )

        def scenario() -> None:
            sqs = _sqs_client(cluster.url, access=account)
            source, dlq = on(first, "src"), on(second, "dlq")
            sqs.create_queue(QueueName=dlq)
            policy = json.dumps(
                {"deadLetterTargetArn": f"arn:aws:sqs:us-east-1:{account}:{dlq}", "maxReceiveCount": 1}
            )
            with pytest.raises(ClientError) as refused:
                sqs.create_queue(QueueName=source, Attributes={"RedrivePolicy": policy})
            assert refused.value.response["Error"]["Code"] == "InvalidParameterValue"
            assert "Dead letter target does not exist" in refused.value.response["Error"]["Message"]
            # With a hash tag the two live together, and redrive works.
            together = f"{source}--dlq"
            assert cluster.server_of(account, together) is cluster.server_of(account, source)
            tagged_dlq = sqs.create_queue(QueueName=together)["QueueUrl"]
            policy = json.dumps(
                {"deadLetterTargetArn": f"arn:aws:sqs:us-east-1:{account}:{together}", "maxReceiveCount": 1}
            )
            url = sqs.create_queue(QueueName=source, Attributes={"RedrivePolicy": policy})["QueueUrl"]
            sqs.send_message(QueueUrl=url, MessageBody="poison")
            sqs.receive_message(QueueUrl=url, VisibilityTimeout=0)
            assert "Messages" not in sqs.receive_message(QueueUrl=url)  # moved on the second receive
            assert sqs.receive_message(QueueUrl=tagged_dlq)["Messages"][0]["Body"] == "poison"
            assert sqs.list_dead_letter_source_queues(QueueUrl=tagged_dlq)["queueUrls"] == [url]

        await asyncio.to_thread(scenario)


# -- real processes ----------------------------------------------------------------------------------


async def _listed(url: str, account: str, queue: str) -> set[str]:
    """Every message id of a queue, paging through it."""
    ids: list[str] = []
    async with Connection(url, timeout=10) as conn:
        while True:
            marker = f"&marker={ids[-1]}" if ids else ""
            reply = await conn.request("GET", f"/v1.0/{account}/{queue}?detail=id&match_hidden=true{marker}")
            if reply.status == 404:
                return set(ids)
            ids += reply.json()


async def test_a_killed_server_fails_only_its_queues_and_loses_nothing_acknowledged(tmp_path: Path) -> None:
    servers = [
        ServeProcess("--backend", f"sqlite:///{tmp_path}/s{i}.db", "--host", "127.0.0.1", "--port", "0")
        for i in range(3)
    ]
    proxy: ProxyProcess | None = None
    try:
        urls = list(await asyncio.gather(*(s.start() for s in servers)))
        proxy = ProxyProcess("--servers", ",".join(urls), "--host", "127.0.0.1", "--port", "0")
        url = await proxy.start()
        placement = Placement(urls)  # what the proxy computes: the test knows where each queue is
        account = next(a for a in (f"load{i}" for i in range(100)) if len(placement.account_servers(a)) > 1)
        victim = placement.account_servers(account)[0]
        queues = [f"q{i}" for i in range(12)]
        doomed = {q for q in queues if placement.server_for(account, q) == victim}
        assert doomed and doomed != set(queues)
        acked: dict[str, set[str]] = defaultdict(set)
        after_kill: dict[str, list[tuple[int, float]]] = defaultdict(list)
        killed = asyncio.Event()
        stop = asyncio.Event()

        async def produce(queue: str) -> None:
            async with Connection(url, timeout=30) as conn:
                i = 0
                while not stop.is_set():
                    started = time.monotonic()
                    reply = await conn.request("PUT", f"/v1.0/{account}/{queue}/m{i}", b"payload")
                    if reply.status == 201:
                        acked[queue].add(f"m{i}")
                    if killed.is_set():
                        after_kill[queue].append((reply.status, time.monotonic() - started))
                    i += 1

        producers = [asyncio.create_task(produce(q)) for q in queues]
        await asyncio.sleep(1.0)
        await servers[urls.index(victim)].kill()
        await asyncio.sleep(0.3)  # requests in flight at the kill settle
        killed.set()
        await asyncio.sleep(1.5)
        stop.set()
        await asyncio.gather(*producers)
        for queue in queues:
            statuses = {status for status, _ in after_kill[queue]}
            if queue in doomed:
                assert statuses == {503}, (queue, statuses)
                assert max(took for _, took in after_kill[queue]) < 0.5  # failing fast, not waiting
            else:
                assert statuses == {201}, (queue, statuses)
                assert len(after_kill[queue]) > 5
        # Back on its file and port: its queues work again, and kept everything acknowledged.
        index = urls.index(victim)
        servers[index] = ServeProcess(
            "--backend",
            f"sqlite:///{tmp_path}/s{index}.db",
            "--host",
            "127.0.0.1",
            "--port",
            victim.rsplit(":", 1)[1],
        )
        assert await servers[index].start() == victim
        probe = sorted(doomed)[0]
        async with Connection(url, timeout=10) as conn:
            for _ in range(100):
                if (await conn.request("PUT", f"/v1.0/{account}/{probe}/after", b"x")).status == 201:
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("the restarted server's queues never came back")
        for queue in queues:
            assert acked[queue], queue
            assert acked[queue] <= await _listed(url, account, queue), queue
        await proxy.stop()  # SIGTERM: a clean exit (status 0)
        proxy = None
    finally:
        if proxy is not None and proxy.proc is not None and proxy.proc.returncode is None:
            await proxy.kill()
        for server in servers:
            if server.proc is not None and server.proc.returncode is None:
                await server.kill()


# -- command line ------------------------------------------------------------------------------------


async def test_proxy_takes_its_servers_from_a_config_file_list(tmp_path: Path) -> None:
    async with running_server() as one, running_server() as two:
        config = tmp_path / "burrow.toml"
        config.write_text(  # a file shared with servers: "backend" is theirs, and accepted here
            '[burrow]\nhost = "127.0.0.1"\nport = 0\nbackend = "memory://"\n'
            f'servers = ["{one.url}", "{two.url}"]\n'
        )
        proxy = ProxyProcess("--config", str(config))
        url = await proxy.start()
        try:
            accounts = [f"a{i}" for i in range(8)]
            async with Connection(url) as conn:
                for account in accounts:
                    for q in range(4):
                        assert (await conn.request("PUT", f"/v1.0/{account}/q{q}/m", b"x")).status == 201
                listed = orjson.loads((await conn.request("GET", "/v1.0/a0")).body)
                assert sorted(listed) == [f"q{q}" for q in range(4)]
                assert sorted(orjson.loads((await conn.request("GET", "/v1.0")).body)) == accounts
            for server in (one, two):  # both servers of the file hold some
                async with Connection(server.url) as direct:
                    assert (await direct.request("GET", "/v1.0")).status == 200
        finally:
            await proxy.stop()


def test_servers_setting_as_a_toml_list(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('servers = ["http://h1:8080", "http://h2:8080/"]\n')
    assert load_settings(config_file=str(config), environ={}).server_urls() == [
        "http://h1:8080",
        "http://h2:8080",
    ]
    config.write_text("servers = [1, 2]\n")
    with pytest.raises(ValueError, match="servers"):
        load_settings(config_file=str(config), environ={})


@pytest.mark.parametrize(
    ("args", "status", "says"),
    [
        ([], 2, "no servers"),
        (["--subset-size", "0", "--servers", "http://h:1"], 2, "subset_size"),
        (["--servers", "h1:8080"], 1, "bad --servers"),
        (["--servers", "https://h1:8080"], 1, "bad --servers"),
    ],
)
def test_bad_proxy_settings_exit_with_the_reason(
    args: list[str],
    status: int,
    says: str,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert proxy_main(["--port", "0", "--config", os.devnull, *args]) == status
    assert says in capsys.readouterr().err + caplog.text


async def test_http_10_without_host_gets_the_routers_own_address() -> None:
    """SQS queue URLs are made from the Host header; a client that sends none gets the router's."""
    async with running_router() as cluster:
        body = b"Action=CreateQueue&QueueName=hostless"
        conn = await Connection(cluster.url).connect()
        await conn.send(
            b"POST / HTTP/1.0\r\nContent-Type: application/x-www-form-urlencoded\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        reply = (await conn.read_to_eof(timeout=10)).decode()
        await conn.close()
    assert f"<QueueUrl>{cluster.url}/{Settings().sqs_default_account}/hostless</QueueUrl>" in reply
