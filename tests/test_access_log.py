"""The JSON-lines access log: written off the request path by a real server (in-process and
``burrow serve --access-log``), parseable line by line, bounded (drop and count), rotatable."""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from burrow.accesslog import AccessLog
from burrow.client import Connection
from burrow.config import Settings
from burrow.http.types import Request, Response
from burrow.metrics import OpStats
from burrow.testing.process import ServeProcess
from burrow.testing.server import running_server

KEYS = [
    "time",
    "peer",
    "method",
    "path",
    "query",
    "status",
    "seconds",
    "request_bytes",
    "response_bytes",
    "api",
    "operation",
]


async def lines_of(path: Path, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    """The log's lines once it has at least ``count`` (the writer flushes every 0.1 s)."""
    deadline = time.monotonic() + timeout
    while True:
        text = path.read_text() if path.exists() else ""
        lines = text.splitlines()
        if len(lines) >= count or time.monotonic() > deadline:
            assert text.endswith("\n") or not text, "a line was written in pieces"
            return [json.loads(line) for line in lines]
        await asyncio.sleep(0.05)


async def test_every_request_is_one_json_line(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    started = datetime.datetime.now(datetime.UTC)
    async with running_server(Settings(backend="memory://", access_log=str(log))) as server:
        async with Connection(server.url) as conn:
            assert (await conn.request("PUT", "/v1.0/acme/jobs/j%201?ttl=60", b"hello")).status == 201
            taken = await conn.request("POST", "/v1.0/acme/jobs?limit=1&hide=30&detail=all")
            assert taken.status == 200
            assert (await conn.request("GET", "/v1.0/acme/nope")).status == 404
            headers = {"X-Amz-Target": "AmazonSQS.ListQueues", "Content-Type": "application/x-amz-json-1.0"}
            assert (await conn.request("POST", "/", b"{}", headers)).status == 200
            assert (await conn.request("GET", "/health/live")).status == 200
            host, port = conn.sockname
        lines = await lines_of(log, 5)
        async with Connection(server.url) as conn:
            exposition = (await conn.request("GET", "/metrics")).body.decode()
    assert len(lines) == 5
    written = {s.name: s.value for f in text_string_to_metric_families(exposition) for s in f.samples}
    assert written["burrow_access_log_lines_total"] >= 5
    assert written["burrow_access_log_dropped_total"] == 0
    for line in lines:
        assert list(line) == KEYS  # the documented keys, in order
        assert line["peer"] == f"{host}:{port}"
        assert 0 <= line["seconds"] < 5
        at = datetime.datetime.fromisoformat(line["time"].replace("Z", "+00:00"))
        assert started - datetime.timedelta(seconds=1) <= at <= datetime.datetime.now(datetime.UTC)
    put, take, missing, sqs, health = lines
    assert put["method"] == "PUT" and put["status"] == 201
    assert (put["path"], put["query"]) == ("/v1.0/acme/jobs/j%201", "ttl=60")  # as received
    assert (put["request_bytes"], put["response_bytes"]) == (5, 0)
    assert (put["api"], put["operation"]) == ("v1", "put_message")
    assert (take["operation"], take["status"]) == ("update_messages", 200)
    assert take["response_bytes"] == len(taken.body)
    assert (missing["operation"], missing["status"]) == ("get_messages", 404)
    assert (sqs["api"], sqs["operation"], sqs["status"]) == ("sqs", "ListQueues", 200)
    assert (health["api"], health["operation"]) == ("ops", "health")
    assert [line["time"] for line in lines] == sorted(line["time"] for line in lines)


async def test_serve_writes_it_to_stderr_with_dash() -> None:
    """``burrow serve --access-log -``: the real command line, lines on standard error."""
    server = ServeProcess("--backend", "memory://", "--port", "0", "--access-log", "-")
    url = await server.start()
    try:
        async with Connection(url) as conn:
            assert (await conn.request("PUT", "/v1.0/a/q/m", b"x")).status == 201
            assert (await conn.request("GET", "/v1.0/a/q/m?detail=body")).status == 200
        deadline = time.monotonic() + 10
        while True:
            records = [json.loads(line) for line in server.log if line.startswith("{")]
            if len(records) >= 2 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
    finally:
        await server.stop()
    assert [(r["method"], r["status"], r["operation"]) for r in records] == [
        ("PUT", 201, "put_message"),
        ("GET", 200, "get_message"),
    ]
    assert records[1]["response_bytes"] == 1


async def test_serve_refuses_a_log_it_cannot_open(tmp_path: Path) -> None:
    unwritable = str(tmp_path / "missing-directory" / "access.log")
    server = ServeProcess("--backend", "memory://", "--port", "0", "--access-log", unwritable)
    with pytest.raises(AssertionError, match="exited before listening"):
        await server.start()
    assert server.proc is not None and await server.proc.wait() == 1
    assert any("cannot open the access log" in line for line in server.log)


async def test_a_rotated_log_is_reopened(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    settings = Settings(backend="memory://", access_log=str(log))
    async with running_server(settings) as server, Connection(server.url) as conn:
        assert (await conn.request("GET", "/")).status == 200
        assert len(await lines_of(log, 1)) == 1
        log.rename(tmp_path / "access.log.1")  # what logrotate does
        assert (await conn.request("GET", "/v1.0")).status == 404
        rotated = await lines_of(log, 1)
    assert [line["operation"] for line in rotated] == ["list_accounts"]
    assert len((tmp_path / "access.log.1").read_text().splitlines()) == 1


def _request(i: int) -> tuple[Request, Response]:
    return Request("GET", f"/v1.0/a/q/{i}", peer="127.0.0.1:1"), Response(200, b"x")


def test_over_the_bound_lines_are_dropped_and_counted(tmp_path: Path) -> None:
    """A writer that cannot keep up never makes a request wait: what is over the bound is dropped."""
    path = tmp_path / "access.log"
    log = AccessLog(str(path), max_pending=3, flush_seconds=3600)  # a writer that never catches up
    stats = OpStats("v1", "get_message")
    try:
        for i in range(10):
            request, response = _request(i)
            log.add(time.perf_counter(), 0.001, stats, request, response)
        assert (log.dropped, len(log._pending)) == (7, 3)
    finally:
        log.close()  # the last flush writes what was kept
    kept = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    assert [line["path"] for line in kept] == ["/v1.0/a/q/0", "/v1.0/a/q/1", "/v1.0/a/q/2"]
    assert log.written == 3


def test_a_failing_write_loses_its_lines_not_the_server(tmp_path: Path) -> None:
    if not os.path.exists("/dev/full"):
        pytest.skip("needs /dev/full (Linux) to fail writes")
    log = AccessLog("/dev/full", flush_seconds=3600)
    stats = OpStats("v1", "get_message")
    try:
        request, response = _request(1)
        log.add(time.perf_counter(), 0.001, stats, request, response)
    finally:
        log.close()
    assert (log.written, log.lost) == (0, 1)
