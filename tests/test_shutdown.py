"""Shutdown keeps its promise: on SIGTERM, parked long polls are answered before connections close.

A real ``burrow serve`` process gets long polls through both APIs (a v1.0 take with
``wait`` and an SQS ReceiveMessage with ``WaitTimeSeconds``), then SIGTERM. Each poll
must come back with its normal "nothing there" answer (v1.0: 404; SQS: an empty
receive), not a reset connection, and the process must exit 0.
"""

from __future__ import annotations

import asyncio
import re
import signal
import sys

import orjson

from burrow.client import Connection

READY = re.compile(r"listening on http://([0-9.]+):(\d+) ")


async def _started() -> tuple[asyncio.subprocess.Process, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "burrow",
        "serve",
        "--backend",
        "memory://",
        "--port",
        "0",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    while True:
        line = (await asyncio.wait_for(proc.stderr.readline(), 30)).decode(errors="replace")
        assert line, "server exited before listening"
        found = READY.search(line)
        if found:
            return proc, f"http://{found.group(1)}:{found.group(2)}"


async def test_sigterm_answers_parked_long_polls() -> None:
    proc, url = await _started()
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
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(v1_poll, 10) == 404
        assert await asyncio.wait_for(sqs_poll, 10) == (200, {})
        assert loop.time() - start < 5
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
