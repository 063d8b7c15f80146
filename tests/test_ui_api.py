"""The dashboard's server side through a real server over a real socket: the page and its files
(content types, ETag revalidation, a strict Content-Security-Policy, no inline script), the JSON
the page reads (``/ui-api``: overview, account, queue) with every bound it states, SQS attributes
computed by the SQS front end's own code (checked against boto3), and auth: the files are
public, the JSON takes the caller's token and shows a tenant only its own account.

The browser side (the page in chromium) is tests/test_ui.py.
"""

from __future__ import annotations

import asyncio
import base64
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import boto3
import orjson
import pytest

from burrow.client import Connection
from burrow.config import Settings
from burrow.testing.server import RunningServer, running_server
from burrow.ui.api import (
    ACCOUNT_QUEUES_COUNTED,
    ACCOUNTS_PAGE,
    CSP,
    MESSAGES_PAGE,
    MESSAGES_PAGE_MAX,
    OVERVIEW_COUNTED,
    PREVIEW_BINARY_BYTES,
    PREVIEW_CHARS,
    QUEUE_NAMES_MAX,
    QUEUES_PAGE_MAX,
)

ADMIN, ACME, ACME_READ, BETA = (
    "admin-token-0123456789",
    "acme-token-0123456789",
    "acme-read-0123456789",
    "beta-token-0123456789",
)


@pytest.fixture
async def server() -> AsyncIterator[RunningServer]:
    async with running_server(Settings(backend="memory://")) as running:
        yield running


def sqs_client(url: str, key: str = "acme") -> Any:
    return boto3.client(
        "sqs", endpoint_url=url, region_name="us-east-1", aws_access_key_id=key, aws_secret_access_key="x"
    )


def path(*names: str) -> str:
    return "/".join(quote(n, safe="") for n in names)


async def get_json(conn: Connection, target: str, token: str | None = None) -> Any:
    reply = await conn.request("GET", target, b"", {"Authorization": f"Bearer {token}"} if token else None)
    assert reply.status == 200, (target, reply.status, reply.body)
    assert reply.headers["content-type"] == "application/json"
    assert reply.headers["cache-control"] == "no-store"
    return orjson.loads(reply.body)


async def put(conn: Connection, account: str, queue: str, message: str, body: bytes, query: str = "") -> None:
    reply = await conn.request("PUT", f"/v1.0/{path(account, queue, message)}{query}", body)
    assert reply.status == 201, reply.body


# -- the page and its files -------------------------------------------------------------------


async def test_page_and_files_have_types_etags_and_a_strict_csp(server: RunningServer) -> None:
    async with Connection(server.url) as conn:
        page = await conn.request("GET", "/ui")
        assert page.status == 200
        assert page.headers["content-type"] == "text/html; charset=utf-8"
        html = page.body.decode()
        # Every file the page names is served, with its type and the same security headers.
        named = re.findall(r'(?:src|href)="(/ui/[^"]+)"', html)
        assert {"/ui/app.js", "/ui/style.css"} <= set(named)
        imported = re.findall(
            r"from '\./([a-z]+\.js)'", (await conn.request("GET", "/ui/app.js")).body.decode()
        )
        assert {"api.js", "chart.js", "dom.js"} <= set(imported)
        types = {
            "js": "text/javascript; charset=utf-8",
            "css": "text/css; charset=utf-8",
            "svg": "image/svg+xml",
        }
        for target in ["/ui", *named, *(f"/ui/{name}" for name in imported)]:
            reply = await conn.request("GET", target)
            assert reply.status == 200, target
            if target != "/ui":
                assert reply.headers["content-type"] == types[target.rsplit(".", 1)[1]], target
            assert reply.headers["content-security-policy"] == CSP
            assert reply.headers["x-content-type-options"] == "nosniff"
            assert reply.headers["cache-control"] == "no-cache"
            etag = reply.headers["etag"]
            again = await conn.request("GET", target, b"", {"If-None-Match": etag})
            assert again.status == 304 and again.body == b"" and again.headers["etag"] == etag
            changed = await conn.request("GET", target, b"", {"If-None-Match": '"other"'})
            assert changed.status == 200 and changed.body == reply.body
        assert "script-src 'self'" in CSP and "default-src 'none'" in CSP and "unsafe" not in CSP
        missing = await conn.request("GET", "/ui/nothing.js")
        assert missing.status == 404 and orjson.loads(missing.body)["error"] == "not_found"
        assert (await conn.request("POST", "/ui")).status == 405
        assert (await conn.request("GET", "/ui-api?detail=all")).status == 400


async def test_the_page_has_no_inline_script_style_or_handler(server: RunningServer) -> None:
    """What the CSP forbids is not in the page either: it would not run, and must not be needed."""
    async with Connection(server.url) as conn:
        html = (await conn.request("GET", "/ui")).body.decode()
    scripts = re.findall(r"<script\b([^>]*)>(.*?)</script>", html, re.S)
    assert scripts and all('src="/ui/' in attrs and body.strip() == "" for attrs, body in scripts)
    assert not re.search(r"<style\b|\sstyle=|\son[a-z]+=|javascript:", html, re.I)


async def test_sqs_requests_on_dashboard_paths_still_reach_sqs(server: RunningServer) -> None:
    """``/ui/{asset}`` and ``/ui-api/{account}`` shadow queue URLs of accounts ``ui`` and ``ui-api``."""
    headers = {"X-Amz-Target": "AmazonSQS.ListQueues", "Content-Type": "application/x-amz-json-1.0"}
    async with Connection(server.url) as conn:
        for target in ("/ui/app.js", "/ui-api/acme"):
            reply = await conn.request("POST", target, b"{}", headers)
            assert reply.status == 200, reply.body
            assert reply.headers["content-type"] == "application/x-amz-json-1.0"


# -- overview and account ---------------------------------------------------------------------


async def test_overview_lists_accounts_with_totals_and_message_counters(server: RunningServer) -> None:
    async with Connection(server.url) as conn:
        empty = await get_json(conn, "/ui-api")
        assert empty["accounts"] == [] and empty["next_marker"] is None
        assert empty["who"] == {"auth": False, "admin": True, "account": None, "write": True}
        for i in range(3):
            await put(conn, "acme", "jobs", f"m{i}", b"x")
        await put(conn, "acme", "mail", "m", b"x", "?hide=60")
        await put(conn, "beta", "q", "m", b"x")
        data = await get_json(conn, "/ui-api")
    rows = {row["name"]: row for row in data["accounts"]}
    assert rows["acme"] == {
        "name": "acme",
        "queues": 2,
        "more_queues": False,
        "visible": 3,
        "in_flight": 0,
        "delayed": 1,
    }
    assert rows["beta"]["visible"] == 1
    assert data["messages"]["sent"] == 5 and data["messages"]["deleted"] == 0
    assert data["sampled_at"] > empty["sampled_at"]
    # Dashboard requests are counted as operations endpoints', under their handlers' names.
    async with Connection(server.url) as conn:
        metrics = (await conn.request("GET", "/metrics")).body.decode()
    assert 'burrow_requests_total{api="ops",operation="dashboard_overview",status="200"} 2.0' in metrics


async def test_overview_bounds_accounts_and_counted_queues(server: RunningServer) -> None:
    async with Connection(server.url) as conn:
        names = [f"acct-{i:02d}" for i in range(ACCOUNTS_PAGE + 1)]
        for queue in range(ACCOUNT_QUEUES_COUNTED + 1):  # the first account: one queue too many
            await put(conn, names[0], f"q{queue:03d}", "m", b"x")
        for name in names[1:]:
            await put(conn, name, "q", "m", b"x")
        first = await get_json(conn, "/ui-api")
        assert [row["name"] for row in first["accounts"]] == names[:ACCOUNTS_PAGE]
        assert first["next_marker"] == names[ACCOUNTS_PAGE - 1]
        # OVERVIEW_COUNTED shared among the page's accounts: the big one counted in part, and says so.
        share = OVERVIEW_COUNTED // ACCOUNTS_PAGE
        big = first["accounts"][0]
        assert (big["queues"], big["visible"], big["more_queues"]) == (share, share, True)
        assert first["accounts"][1]["more_queues"] is False
        second = await get_json(conn, f"/ui-api?marker={names[ACCOUNTS_PAGE - 1]}")
        assert [row["name"] for row in second["accounts"]] == names[ACCOUNTS_PAGE:]
        assert second["next_marker"] is None
        # Alone on its page, an account is counted up to ACCOUNT_QUEUES_COUNTED queues.
        assert (await conn.request("DELETE", f"/v1.0?marker={names[0]}")).status == 204
        alone = (await get_json(conn, "/ui-api"))["accounts"]
        assert [(r["name"], r["queues"], r["more_queues"]) for r in alone] == [
            (names[0], ACCOUNT_QUEUES_COUNTED, True)
        ]
        too_long = await conn.request("GET", "/ui-api?marker=" + "m" * 257)
        assert too_long.status == 400 and "marker" in orjson.loads(too_long.body)["message"]


async def test_account_lists_v1_and_sqs_queues_by_name_in_pages(server: RunningServer) -> None:
    sqs = sqs_client(server.url)
    await asyncio.to_thread(sqs.create_queue, QueueName="empty-sqs")
    await asyncio.to_thread(sqs.create_queue, QueueName="f.fifo", Attributes={"FifoQueue": "true"})
    async with Connection(server.url) as conn:
        for queue, count in (("charlie", 1), ("alpha", 2), ("bravo/x", 3)):
            for i in range(count):
                await put(conn, "acme", queue, f"m{i}", b"x")
        data = await get_json(conn, "/ui-api/acme")
        assert [q["name"] for q in data["queues"]] == ["alpha", "bravo/x", "charlie", "empty-sqs", "f.fifo"]
        rows = {q["name"]: q for q in data["queues"]}
        assert rows["bravo/x"] == {
            "name": "bravo/x",
            "visible": 3,
            "in_flight": 0,
            "delayed": 0,
            "sqs": False,
        }
        assert rows["empty-sqs"] == {
            "name": "empty-sqs",
            "visible": 0,
            "in_flight": 0,
            "delayed": 0,
            "sqs": True,
            "fifo": False,
        }
        assert rows["f.fifo"]["fifo"] is True
        assert data["next_marker"] is None and data["truncated"] is False
        # Paging by name.
        seen, marker = [], ""
        while True:
            page = await get_json(conn, f"/ui-api/acme?limit=2&marker={quote(marker)}")
            seen += [q["name"] for q in page["queues"]]
            if page["next_marker"] is None:
                break
            marker = page["next_marker"]
        assert seen == [q["name"] for q in data["queues"]]
        assert (await get_json(conn, "/ui-api/nobody"))["queues"] == []
        for bad in ("limit=0", f"limit={QUEUES_PAGE_MAX + 1}", "limit=x", "limit=1&limit=2", "wait=1"):
            reply = await conn.request("GET", f"/ui-api/acme?{bad}")
            assert reply.status == 400, bad
            assert orjson.loads(reply.body)["error"] == "bad_request"


async def test_account_sorts_at_most_queue_names_max_names(server: RunningServer) -> None:
    async with Connection(server.url) as conn:
        for i in range(QUEUE_NAMES_MAX + 1):
            await put(conn, "big", f"q{i:04d}", "m", b"x")
        data = await get_json(conn, f"/ui-api/big?limit={QUEUES_PAGE_MAX}")
    assert data["truncated"] is True
    assert len(data["queues"]) == QUEUES_PAGE_MAX and data["next_marker"] == f"q{QUEUES_PAGE_MAX - 1:04d}"


# -- one queue -----------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["memory://", "sqlite:///{tmp}/burrow.db"])
async def test_queue_pages_messages_with_receives_and_previews(backend: str, tmp_path: Path) -> None:
    settings = Settings(backend=backend.format(tmp=tmp_path))
    async with running_server(settings) as server, Connection(server.url) as conn:
        sqs = sqs_client(server.url)
        url = (await asyncio.to_thread(sqs.create_queue, QueueName="work"))["QueueUrl"]
        for i in range(3):
            await asyncio.to_thread(sqs.send_message, QueueUrl=url, MessageBody=f"sqs {i}")
        got = await asyncio.to_thread(sqs.receive_message, QueueUrl=url, MaxNumberOfMessages=1)
        received = got["Messages"][0]["MessageId"]
        await put(conn, "acme", "work", "long", ("é" * 300).encode())
        await put(conn, "acme", "work", "binary", bytes(range(256)) * 2)
        await put(conn, "acme", "work", "later", b"<img src=x onerror=alert(1)>", "?hide=90&ttl=500")
        for i in range(MESSAGES_PAGE + 2):
            await put(conn, "acme", "work", f"n{i:02d}", b"n")

        data = await get_json(conn, "/ui-api/acme/work")
        assert data["counts"] == {"visible": 2 + 3 + MESSAGES_PAGE + 2 - 1, "in_flight": 1, "delayed": 1}
        assert len(data["messages"]) == MESSAGES_PAGE and data["next_marker"] == data["messages"][-1]["id"]
        by_id = {m["id"]: m for m in data["messages"]}
        first = by_id[received]
        assert first["receives"] == 1 and first["hide"] > 0 and first["body"] == "sqs 0"
        long = by_id["long"]
        assert long["body"] == "é" * PREVIEW_CHARS and long["body_cut"] is True and long["bytes"] == 600
        binary = by_id["binary"]
        assert binary["body_encoding"] == "base64" and binary["body_cut"] is True
        assert base64.b64decode(binary["body"]) == (bytes(range(256)) * 2)[:PREVIEW_BINARY_BYTES]
        later = by_id["later"]
        assert later["body"] == "<img src=x onerror=alert(1)>" and later["body_cut"] is False
        assert 0 < later["hide"] <= 90 and 0 < later["ttl"] <= 500 and later["receives"] == 0

        # Every message once, hidden ones included, across pages.
        ids, marker = [], ""
        while True:
            page = await get_json(conn, f"/ui-api/acme/work?limit=7&marker={quote(marker)}")
            assert len(page["messages"]) <= 7
            ids += [m["id"] for m in page["messages"]]
            if page["next_marker"] is None:
                break
            marker = page["next_marker"]
        assert len(ids) == len(set(ids)) == 3 + 3 + MESSAGES_PAGE + 2

        counts_only = await get_json(conn, "/ui-api/acme/work?limit=0")
        assert counts_only["messages"] == [] and counts_only["next_marker"] is None
        assert counts_only["counts"] == data["counts"]
        assert (await conn.request("GET", f"/ui-api/acme/work?limit={MESSAGES_PAGE_MAX + 1}")).status == 400
        nothing = await get_json(conn, "/ui-api/acme/none")
        assert nothing["messages"] == [] and nothing["sqs"] is None
        assert nothing["counts"] == {"visible": 0, "in_flight": 0, "delayed": 0}


async def test_sqs_attributes_are_what_get_queue_attributes_says(server: RunningServer) -> None:
    sqs = sqs_client(server.url)
    attributes = {"VisibilityTimeout": "45", "DelaySeconds": "2", "FifoQueue": "true"}
    url = (await asyncio.to_thread(sqs.create_queue, QueueName="orders.fifo", Attributes=attributes))[
        "QueueUrl"
    ]
    await asyncio.to_thread(
        sqs.send_message, QueueUrl=url, MessageBody="a", MessageGroupId="g", MessageDeduplicationId="d"
    )
    expected = (await asyncio.to_thread(sqs.get_queue_attributes, QueueUrl=url, AttributeNames=["All"]))[
        "Attributes"
    ]
    async with Connection(server.url) as conn:
        data = await get_json(conn, "/ui-api/acme/orders.fifo?limit=0")
        await put(conn, "acme", "plain", "m", b"x")
        plain = await get_json(conn, "/ui-api/acme/plain?limit=0")
    assert data["sqs"] == expected
    assert data["sqs"]["VisibilityTimeout"] == "45" and data["fifo"] is True
    assert plain["sqs"] is None and plain["fifo"] is False


# -- auth -------------------------------------------------------------------------------------


async def test_with_auth_the_files_are_public_and_the_json_takes_a_token(tmp_path: Path) -> None:
    credentials = tmp_path / "credentials.toml"
    credentials.write_text(
        f'admin_tokens = ["{ADMIN}"]\n'
        f'[accounts.acme]\ntokens = ["{ACME}"]\nread_tokens = ["{ACME_READ}"]\n'
        f'[accounts.beta]\ntokens = ["{BETA}"]\n'
    )
    settings = Settings(backend="memory://", credentials=str(credentials))
    async with running_server(settings) as server, Connection(server.url) as conn:
        for token, account in ((ACME, "acme"), (BETA, "beta")):
            reply = await conn.request(
                "PUT",
                f"/v1.0/{account}/secret-{account}/m",
                b"beta-body",
                {"Authorization": f"Bearer {token}"},
            )
            assert reply.status == 201
        for target in ("/ui", "/ui/app.js", "/ui/style.css"):
            assert (await conn.request("GET", target)).status == 200, target
        for target in ("/ui-api", "/ui-api/acme", "/ui-api/acme/secret-acme"):
            refused = await conn.request("GET", target)
            assert refused.status == 401, target

        mine = await get_json(conn, "/ui-api", ACME)
        assert mine["who"] == {"auth": True, "admin": False, "account": "acme", "write": True}
        assert [row["name"] for row in mine["accounts"]] == ["acme"]
        assert mine["messages"] is None  # server-wide figures are the admin's
        assert (await get_json(conn, "/ui-api/acme/secret-acme", ACME))["messages"][0]["id"] == "m"
        for target in ("/ui-api/beta", "/ui-api/beta/secret-beta", "/ui-api?marker=beta"):
            reply = await conn.request("GET", target, b"", {"Authorization": f"Bearer {ACME}"})
            if target.startswith("/ui-api?"):  # the overview: still only acme
                assert [r["name"] for r in orjson.loads(reply.body)["accounts"]] == ["acme"]
                continue
            assert reply.status == 403, target
            assert b"secret-beta" not in reply.body and b"beta-body" not in reply.body

        read_only = await get_json(conn, "/ui-api/acme", ACME_READ)
        assert read_only["who"]["write"] is False
        admin = await get_json(conn, "/ui-api", ADMIN)
        assert admin["who"]["admin"] is True and admin["messages"]["sent"] == 2
        assert [row["name"] for row in admin["accounts"]] == ["acme", "beta"]
