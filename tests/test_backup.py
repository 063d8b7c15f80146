"""Online SQLite backups through a real ``burrow serve`` (docs/operations.md "Backups").

``POST /backup`` copies the running store with SQLite's backup API while writes go on.
Checked: every message acknowledged before the backup began is in the copy, the copy
passes ``integrity_check``, a server started on the copy serves those messages, writes
made during the backup all succeed, old backups are pruned to ``--backup-keep``, and a
backend without backups answers 501.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import orjson

from burrow.client import Connection
from burrow.testing.process import ServeProcess


async def test_backup_while_writing_then_restore(tmp_path: Path) -> None:
    db = tmp_path / "live.db"
    backups = tmp_path / "backups"
    server = ServeProcess(
        "--port", "0", "--backend", f"sqlite:///{db}", "--backup-dir", str(backups), "--backup-keep", "2"
    )
    url = await server.start()
    try:
        body = b"x" * 2000
        async with Connection(url) as conn:
            for i in range(3000):  # a database of some megabytes, so the copy takes several steps
                assert (await conn.request("PUT", f"/v1.0/a/q/m{i}?ttl=0", body)).status == 201
        acked_during: list[int] = []

        async def write_during() -> None:
            async with Connection(url) as conn:
                for i in range(3000, 3400):
                    reply = await conn.request("PUT", f"/v1.0/a/q/m{i}?ttl=0", body)
                    assert reply.status == 201, reply.body
                    acked_during.append(i)

        async with Connection(url) as conn:
            writer = asyncio.create_task(write_during())
            await asyncio.sleep(0.01)
            reply = await conn.request("POST", "/backup")
            await writer
        assert reply.status == 200, reply.body
        result = orjson.loads(reply.body)
        path = Path(result["path"])
        assert path.parent == backups and path.is_file() and result["bytes"] == path.stat().st_size
        assert not list(backups.glob("*.partial"))
        copy = sqlite3.connect(path)
        assert copy.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        copy.close()
        assert len(acked_during) == 400
    finally:
        await server.stop()

    # A server on the copy has every message acknowledged before the backup began.
    restored = tmp_path / "restored.db"
    restored.write_bytes(path.read_bytes())
    server = ServeProcess("--port", "0", "--backend", f"sqlite:///{restored}")
    url = await server.start()
    try:
        async with Connection(url) as conn:
            for i in range(0, 3000, 97):
                reply = await conn.request("GET", f"/v1.0/a/q/m{i}?detail=body")
                assert (reply.status, reply.body) == (200, body), i
            ids: set[str] = set()
            marker = ""
            while True:  # every id, a page of up to 1000 at a time
                listed = await conn.request("GET", f"/v1.0/a/q?detail=id&limit=1000{marker}")
                if listed.status == 404:
                    break
                page = orjson.loads(listed.body)
                ids.update(page)
                marker = f"&marker={page[-1]}"
            assert {f"m{i}" for i in range(3000)} <= ids
    finally:
        await server.stop()


async def test_backups_are_pruned_to_keep(tmp_path: Path) -> None:
    backups = tmp_path / "b"
    server = ServeProcess(
        "--port", "0", "--backend", f"sqlite:///{tmp_path / 'x.db'}", "--backup-dir", str(backups),
        "--backup-keep", "2",
    )  # fmt: skip
    url = await server.start()
    try:
        made = []
        async with Connection(url) as conn:
            assert (await conn.request("PUT", "/v1.0/a/q/m", b"hello")).status == 201
            for _ in range(4):
                reply = await conn.request("POST", "/backup")
                assert reply.status == 200, reply.body
                made.append(orjson.loads(reply.body)["path"])
                await asyncio.sleep(0.002)  # backup names are unique per millisecond
        assert len(set(made)) == 4
        assert sorted(str(p) for p in backups.iterdir()) == sorted(made[-2:])
    finally:
        await server.stop()


async def test_backup_on_memory_backend_is_501(tmp_path: Path) -> None:
    server = ServeProcess("--port", "0", "--backend", "memory://")
    url = await server.start()
    try:
        async with Connection(url) as conn:
            reply = await conn.request("POST", "/backup")
            assert reply.status == 501
            assert orjson.loads(reply.body)["error"] == "not_implemented"
            assert (await conn.request("GET", "/backup")).status == 405
    finally:
        await server.stop()
