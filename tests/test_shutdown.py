"""Shutdown keeps its promise: on SIGTERM, parked long polls are answered before connections close.

A real ``burrow serve`` process gets long polls through both APIs (a v1.0 take with
``wait`` and an SQS ReceiveMessage with ``WaitTimeSeconds``), then SIGTERM. Each poll
must come back with its normal "nothing there" answer (v1.0: 404; SQS: an empty
receive), not a reset connection, and the process must exit 0.
"""

from __future__ import annotations

import asyncio

import orjson

from burrow.client import Connection
from burrow.testing.process import ServeProcess


async def test_sigterm_answers_parked_long_polls() -> None:
    server = ServeProcess("--backend", "memory://", "--port", "0")
    url = await server.start()
    try:
        async with Connection(url) as setup:
            created = await setup.request(
                "POST",
                "/",
                orjson.dumps({"QueueName": "jobs"}),
                {"x-amz-target": "AmazonSQS.CreateQueue", "content-type": "application/x-amz-json-1.0"},
            )
            assert created.status == 200, created
            queue_url = orjson.loads(created.body)["QueueUrl"]

        async def v1_take() -> int:
            async with Connection(url) as conn:
                return (await conn.request("POST", "/v1.0/acme/jobs?limit=1&hide=30&wait=20")).status

        async def sqs_receive() -> tuple[int, object]:
            async with Connection(url) as conn:
                reply = await conn.request(
                    "POST",
                    "/",
                    orjson.dumps({"QueueUrl": queue_url, "WaitTimeSeconds": 20}),
                    {
                        "x-amz-target": "AmazonSQS.ReceiveMessage",
                        "content-type": "application/x-amz-json-1.0",
                    },
                )
                return reply.status, orjson.loads(reply.body)

        v1_poll, sqs_poll = asyncio.create_task(v1_take()), asyncio.create_task(sqs_receive())
        await asyncio.sleep(0.5)  # let both park (they wait up to 20 s otherwise)
        assert not v1_poll.done() and not sqs_poll.done()
        loop = asyncio.get_running_loop()
        start = loop.time()
        stopping = asyncio.create_task(server.stop())  # SIGTERM; exit status 0 within 30 s
        assert await asyncio.wait_for(v1_poll, 10) == 404
        assert await asyncio.wait_for(sqs_poll, 10) == (200, {})
        assert loop.time() - start < 5
        await stopping
    finally:
        if server.proc is not None and server.proc.returncode is None:
            await server.kill()
