"""Storage budgets: ``--max-memory`` (memory backend) and ``--max-disk`` (SQLite), through real
servers over real sockets, with boto3 for SQS.

At the budget a create gets 507 ``insufficient_storage`` (SQS: ``ServiceUnavailable``) naming
the budget; reads, takes and deletes keep working, nothing stored is lost, another tenant's
messages stay readable, and creates resume once deletes or expiry free room.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import orjson
import pytest
from botocore.exceptions import ClientError

from burrow.backends import open_backend
from burrow.backends.memory import MemoryBackend, default_max_memory
from burrow.cli import build_parser
from burrow.client import Connection
from burrow.config import Settings, load_settings, parse_bytes
from burrow.core.model import Filter
from burrow.testing.process import ServeProcess
from burrow.testing.server import running_server
from tests.boto import sqs_client

CHUNK = b"x" * 65536
T = 1_000_000.0


async def fill(
    conn: Connection, account: str, queue: str, prefix: str = "m", limit: int = 1000
) -> tuple[list[str], bytes]:
    """PUT 64 KiB messages until one is refused; the ids stored and the refusal's body."""
    stored: list[str] = []
    for i in range(limit):
        reply = await conn.request("PUT", f"/v1.0/{account}/{queue}/{prefix}{i}?ttl=0", CHUNK)
        if reply.status != 201:
            assert reply.status == 507, reply.body
            return stored, reply.body
        stored.append(f"{prefix}{i}")
    raise AssertionError(f"{limit} messages of 64 KiB were all accepted")


async def check_at_budget(url: str, budget_flag: str, expiring: bool) -> None:
    """The behaviour at a reached budget, the same for both backends."""
    sqs = sqs_client(url, "tenant")
    queue_url = (await asyncio.to_thread(sqs.create_queue, QueueName="jobs"))["QueueUrl"]
    async with Connection(url) as conn:
        assert (await conn.request("PUT", "/v1.0/other/q/keep", b"another tenant's")).status == 201
        if expiring:  # a big message that expires in a second frees room without any delete
            assert (await conn.request("PUT", "/v1.0/a/q/short?ttl=1", CHUNK * 4)).status == 201
        stored, refusal = await fill(conn, "a", "q")
        assert len(stored) >= 4
        error = orjson.loads(refusal)
        assert error["error"] == "insufficient_storage"
        assert budget_flag in error["message"] and "budget" in error["message"]
        # the budget is the server's: every tenant's creates are refused, SQS ones included
        assert (await conn.request("PUT", "/v1.0/other/q/new", CHUNK)).status == 507
        with pytest.raises(ClientError) as refused:
            await asyncio.to_thread(sqs.send_message, QueueUrl=queue_url, MessageBody="x" * 200_000)
        assert refused.value.response["Error"]["Code"] == "ServiceUnavailable"
        assert budget_flag in refused.value.response["Error"]["Message"]
        assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
        # reads, takes and deletes work; nothing stored was lost
        listed = await conn.request("GET", "/v1.0/a/q?detail=id&match_hidden=true")
        assert listed.status == 200
        assert [m for m in orjson.loads(listed.body) if m != "short"] == stored
        one = await conn.request("GET", f"/v1.0/a/q/{stored[-1]}?detail=body")
        assert one.status == 200 and one.body == CHUNK
        assert (await conn.request("GET", "/v1.0/other/q/keep?detail=body")).body == b"another tenant's"
        taken = await conn.request("POST", "/v1.0/a/q?limit=1&hide=60&detail=id")
        assert taken.status == 200 and orjson.loads(taken.body) in (["short"], [stored[0]])
        received = await asyncio.to_thread(sqs.receive_message, QueueUrl=queue_url)
        assert "Messages" not in received
        if expiring:  # room comes back by itself once the big message (4 chunks) expires
            for _ in range(100):
                await asyncio.sleep(0.05)
                if (await conn.request("PUT", "/v1.0/a/q/e?ttl=0", CHUNK)).status == 201:
                    break
            else:
                raise AssertionError("no room after the expiring message expired")
            more, _ = await fill(conn, "a", "q", "e-")
            assert 2 <= len(more) <= 4
            stored += ["e", *more]
        # deletes free room: creates resume, over both APIs
        assert (await conn.request("DELETE", f"/v1.0/a/q/{stored[1]}")).status == 204
        assert (await conn.request("DELETE", f"/v1.0/a/q/{stored[2]}")).status == 204
        assert (await conn.request("PUT", "/v1.0/a/q/after-delete", CHUNK)).status == 201
        sent = await asyncio.to_thread(sqs.send_message, QueueUrl=queue_url, MessageBody="hello")
        assert sent["MessageId"]
        listed = await conn.request("GET", "/v1.0/a/q?detail=id&match_hidden=true")
        expect = [m for m in stored if m not in (stored[1], stored[2])] + ["after-delete"]
        assert [m for m in orjson.loads(listed.body) if m != "short"] == expect


async def test_memory_budget_from_the_flag_refuses_creates_and_keeps_everything_else() -> None:
    server = ServeProcess(
        "--backend", "memory://", "--port", "0", "--max-memory", "1M", "--clean-interval", "0.1"
    )
    url = await server.start()
    try:
        await check_at_budget(url, "--max-memory", expiring=True)
    finally:
        await server.stop()
    assert any("--max-memory 1048576 bytes" in line for line in server.log)


async def test_sqlite_disk_budget_refuses_creates_and_keeps_everything_else(tmp_path: Path) -> None:
    settings = Settings(backend=f"sqlite:///{tmp_path}/b.db", max_disk=2 << 20, clean_interval=0.1)
    async with running_server(settings) as server:
        await check_at_budget(server.url, "--max-disk", expiring=True)


async def test_sqlite_disk_budget_survives_a_restart(tmp_path: Path) -> None:
    """The budget counts the pages in use, so a full database reopened is still full, and pages
    freed before the restart are used again after it."""
    settings = Settings(backend=f"sqlite:///{tmp_path}/b.db", max_disk=1 << 20)
    async with running_server(settings) as server, Connection(server.url) as conn:
        stored, _ = await fill(conn, "a", "q")
    async with running_server(settings) as server, Connection(server.url) as conn:
        assert (await conn.request("PUT", "/v1.0/a/q/more", CHUNK)).status == 507
        assert (await conn.request("DELETE", "/v1.0/a/q")).status == 204
        again, _ = await fill(conn, "a", "q")
        assert abs(len(again) - len(stored)) <= 1
    assert os.path.getsize(tmp_path / "b.db") < 2 << 20


async def test_memory_store_counts_every_byte_it_holds_and_gives_it_all_back() -> None:
    """The memory backend's tally across every kind of write (inline and out-of-line records,
    replacements, claims, FIFO sends with dedup records, moves, metadata, expiry) comes back to
    exactly nothing once everything is gone, and never passes the budget."""
    b = MemoryBackend(max_bytes=4 << 20)
    await b.open()
    big = b"B" * 20000  # past the inline limit: stored out of line
    for i in range(50):
        await b.put_message(
            "a", f"q{i % 3}", f"m{i}", big if i % 5 == 0 else b"small", T + 10 * (i % 4), 0.0, T
        )
    await b.put_message("a", "q0", "m0", b"now small", 0.0, 0.0, T, b"meta")  # big -> small
    await b.put_message("a", "q1", "m1", big, 0.0, 0.0, T, b"meta")  # small -> big
    assert await b.claim("a", "q1", 5, T + 30, T)
    await b.set_queue_meta("s", "fifo", b"attributes")
    for i in range(10):
        await b.send_message("s", "fifo", f"f{i}", b"body", 0.0, 0.0, T, b"m", "g", f"d{i}", T + 300)
    assert await b.move_message("a", "q2", "m2", "s", "dlq", 0.0, T, receives=1) is not None
    assert 10 * len(big) < b.stored < 10 * len(big) + 20_000  # 10 big bodies, the rest small
    await b.clean(T + 25, T)  # expiry: the messages with ttl 10 and 20 go
    assert b.expired > 0
    await b.delete_accounts(Filter(), T + 25)
    await b.set_queue_meta("s", "fifo", None)
    await b.clean(T + 400, T + 25)
    assert b.stored == 0
    # and at the budget, a create is refused without being stored
    small = MemoryBackend(max_bytes=100_000)
    stored = 0
    with pytest.raises(Exception, match="--max-memory budget of 100000 bytes"):
        for i in range(100):
            await small.put_message("a", "q", f"m{i}", b"y" * 10_000, 0.0, 0.0, T)
            stored += 1
    assert 8 <= stored < 10 and small.stored <= 100_000
    assert await small.count_messages() == stored


def test_memory_default_is_a_quarter_of_physical_memory_shared_by_workers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    one = default_max_memory()
    assert one == max(64 << 20, physical // 4)
    assert 64 << 20 <= one <= physical
    assert default_max_memory(4) == max(64 << 20, physical // 16)
    with caplog.at_level(logging.INFO, logger="burrow.backends"):
        backend = open_backend("memory://", Settings())
    assert isinstance(backend, MemoryBackend) and backend.max_bytes == one
    assert f"--max-memory {one} bytes" in caplog.text and "a quarter of physical memory" in caplog.text
    backend = open_backend("memory://", Settings(max_memory=5 << 20))
    assert isinstance(backend, MemoryBackend) and backend.max_bytes == 5 << 20


def test_byte_sizes_accept_suffixes_in_flags_environment_and_file(tmp_path: Path) -> None:
    assert parse_bytes("512M") == 512 << 20
    assert parse_bytes("1g") == 1 << 30
    assert parse_bytes("64KiB") == 64 << 10
    assert parse_bytes(" 100 ") == 100 and parse_bytes("100B") == 100 and parse_bytes(7) == 7
    for bad in ("", "12Q", "-1", "1.5G", "M", "1 GB GB"):
        with pytest.raises(ValueError, match="byte size"):
            parse_bytes(bad)
    assert load_settings(environ={"BURROW_MAX_MEMORY": "512M"}).max_memory == 512 << 20
    config = tmp_path / "burrow.toml"
    config.write_text('max_disk = "2G"\nmax_memory = 1048576\nmax_body_bytes = "1M"\n')
    settings = load_settings(config_file=str(config), environ={})
    assert (settings.max_disk, settings.max_memory, settings.max_body_bytes) == (2 << 30, 1 << 20, 1 << 20)
    args = build_parser().parse_args(["serve", "--max-memory", "512M", "--max-disk", "10G"])
    assert (args.max_memory, args.max_disk) == (512 << 20, 10 << 30)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--max-memory", "lots"])
    with pytest.raises(ValueError, match="setting max_disk"):
        load_settings(environ={"BURROW_MAX_DISK": "2T"})
    with pytest.raises(ValueError, match="max_memory must be"):
        Settings(max_memory=-1).validate()
    assert Settings().max_memory == 0 and Settings().max_disk == 0  # the defaults: see the docs
