"""The installed ``burrow`` command's client side (``burrow put|get|take|...``), run as a
subprocess against a real server: each command and alias, ``--json``, bodies on stdin, exit
statuses, several servers, and ``watch`` until SIGINT."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from burrow import Client
from burrow.client.cli import EXIT_ERROR, EXIT_NOT_FOUND, EXIT_OK, EXIT_USAGE
from burrow.hashing import Placement
from burrow.testing.server import RunningServer
from tests.test_client_library import spread_account, threaded_server


def _command() -> str:
    beside = Path(sys.executable).with_name("burrow")
    found = str(beside) if beside.exists() else shutil.which("burrow")
    if found is None:
        pytest.skip("the burrow command is not installed (pip install -e .)")
    return found


BURROW = _command()


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    with threaded_server() as running:
        yield running


@pytest.fixture
def client(server: RunningServer) -> Iterator[Client]:
    with Client(server.url) as c:
        yield c
        for account in c.accounts(limit=1000):
            c.account(account).delete()


def _env(url: str, account: str | None = "acme") -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BURROW_")}
    env["BURROW_URL"] = url
    if account is not None:
        env["BURROW_ACCOUNT"] = account
    return env


def burrow(
    server: RunningServer | str, *args: str, stdin: bytes = b"", account: str | None = "acme"
) -> subprocess.CompletedProcess[bytes]:
    url = server if isinstance(server, str) else server.url
    return subprocess.run(
        [BURROW, *args], input=stdin, capture_output=True, env=_env(url, account), timeout=60, check=False
    )


def lines(result: subprocess.CompletedProcess[bytes]) -> list[str]:
    return result.stdout.decode().splitlines()


def test_put_get_and_the_output_formats(server: RunningServer, client: Client) -> None:
    # ttl 0 (never expires): what is printed does not depend on how long the commands took
    assert lines(burrow(server, "put", "jobs", "a", "hello world", "--ttl", "0")) == ["created a"]
    assert lines(burrow(server, "put", "jobs", "a", "hello again", "--ttl", "0")) == ["replaced a"]
    assert burrow(server, "put", "jobs", "bin", "--ttl", "0", stdin=b"\xff\x00").returncode == EXIT_OK
    text = burrow(server, "create_message", "jobs", "text", "--ttl", "0", stdin=b"two\nlines\t\x1b")
    assert text.returncode == EXIT_OK
    burrow(server, "put", "jobs", "mark", "base64:not really", "--hide", "0", "--ttl", "0")
    q = client.queue("acme", "jobs")
    assert q.get("bin").body == b"\xff\x00" and q.get("text").body == b"two\nlines\t\x1b"

    plain = lines(burrow(server, "get", "jobs"))  # not a terminal: tab-separated, one line each
    assert plain == [
        "a\t0\t0\thello again",
        "bin\t0\t0\tbase64:/wA=",
        "text\t0\t0\ttwo\\nlines\\t\\x1b",
        "mark\t0\t0\t\\x62ase64:not really",
    ]
    records = [json.loads(line) for line in lines(burrow(server, "get", "jobs", "--json", "--limit", "2"))]
    assert records == [
        {"id": "a", "ttl": 0, "hide": 0, "body": "hello again"},
        {"id": "bin", "ttl": 0, "hide": 0, "body": "/wA=", "body_encoding": "base64"},
    ]
    assert burrow(server, "get", "jobs", "bin", "--raw").stdout == b"\xff\x00"
    assert lines(burrow(server, "get_message", "jobs", "text")) == ["text\t0\t0\ttwo\\nlines\\t\\x1b"]
    assert [r.split("\t")[0] for r in lines(burrow(server, "get_messages", "jobs", "--marker", "bin"))] == [
        "text",
        "mark",
    ]


def test_a_table_on_a_terminal(server: RunningServer, client: Client) -> None:
    q = client.queue("acme", "shown")
    q.put("a", "short", ttl=0)
    q.put("long-id", "x" * 200, ttl=0)
    q.put("bin", b"\xff", ttl=0)
    leader, follower = os.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 60, 0, 0))  # 60 columns
    try:
        proc = subprocess.run([BURROW, "get", "shown"], stdout=follower, env=_env(server.url), timeout=60)
        os.close(follower)
        out = b""
        with contextlib.suppress(OSError):  # EIO once everything written was read
            while chunk := os.read(leader, 65536):
                out += chunk
    finally:
        os.close(leader)
    assert proc.returncode == EXIT_OK
    table = out.decode().replace("\r\n", "\n").splitlines()
    assert table[:2] == ["ID       TTL  HIDE  BODY", "a        0    0     short"]
    assert (
        table[2].startswith("long-id  0    0     xxx") and table[2].endswith("\u2026") and len(table[2]) == 60
    )
    assert table[3] == "bin      0    0     base64:/w=="


def test_take_update_delete(server: RunningServer, client: Client) -> None:
    q = client.queue("acme", "work")
    for id in ("m1", "m2", "m3"):
        q.put(id, id, ttl=0)
    taken = lines(burrow(server, "take", "work", "--hide", "60", "--limit", "2"))
    assert [t.split("\t")[:3] for t in taken] == [["m1", "0", "60"], ["m2", "0", "60"]]
    assert [m.id for m in q.list()] == ["m3"]
    assert lines(burrow(server, "update", "work", "m1", "--hide", "0", "--ttl", "50")) == ["m1\t50\t0"]
    updated = json.loads(burrow(server, "update_message", "work", "m2", "--ttl", "40", "--json").stdout)
    assert updated["id"] == "m2" and updated["ttl"] == 40 and 50 < updated["hide"] <= 60
    assert lines(burrow(server, "update_messages", "work", "--ttl", "30")) == ["updated 2 messages"]
    assert lines(burrow(server, "delete", "work", "m1")) == ["deleted m1"]
    assert lines(burrow(server, "delete_message", "work", "m3", "--json")) == ['{"id":"m3","deleted":true}']
    assert burrow(server, "delete_messages", "work").returncode == EXIT_NOT_FOUND  # m2 is hidden
    assert lines(burrow(server, "delete", "work", "--match-hidden", "--json")) == ['{"deleted":1}']


def test_queues_accounts_and_their_deletion(server: RunningServer, client: Client) -> None:
    for account, queue in (("acme", "q1"), ("acme", "q2"), ("acme", "q3"), ("zeta", "q"), ("omega", "q")):
        client.queue(account, queue).put("m", "x", hide=100)
    assert lines(burrow(server, "queues")) == ["q1", "q2", "q3"]
    assert lines(burrow(server, "get_queues", "--limit", "1", "--marker", "q1", "--json")) == ['{"id":"q2"}']
    assert lines(burrow(server, "accounts", account=None)) == ["acme", "zeta", "omega"]
    assert lines(burrow(server, "get_accounts", "--limit", "1", account=None)) == ["acme"]
    assert lines(burrow(server, "delete_queues", "q1", "nope")) == ["deleted queue q1 (1 messages)"]
    assert lines(burrow(server, "delete_queues")) == ["deleted 2 queues"]
    assert burrow(server, "queues").returncode == EXIT_NOT_FOUND
    refused = burrow(server, "delete_accounts", account=None)
    assert refused.returncode == EXIT_USAGE and b"ACCOUNT" in refused.stderr
    assert lines(burrow(server, "delete_accounts", "zeta", "omega", account=None)) == [
        "deleted account zeta (1 queues)",
        "deleted account omega (1 queues)",
    ]
    assert burrow(server, "accounts", account=None).returncode == EXIT_NOT_FOUND


def test_exit_statuses_and_error_lines(server: RunningServer, client: Client) -> None:
    missing = burrow(server, "get", "jobs", "nope")
    assert missing.returncode == EXIT_NOT_FOUND
    assert missing.stderr.decode() == "burrow: message 'nope' not found in queue 'jobs' of account 'acme'\n"
    empty = burrow(server, "take", "jobs", "--hide", "5")
    assert empty.returncode == EXIT_NOT_FOUND and empty.stdout == b"" and empty.stderr.count(b"\n") == 1
    assert burrow(server, "take", "jobs").returncode == EXIT_USAGE  # --hide is required
    assert burrow(server, "get", "jobs", "--limit", "x").returncode == EXIT_USAGE
    assert burrow(server, "get", "jobs", "m", "--limit", "3").returncode == EXIT_USAGE
    assert burrow(server, "update", "jobs", "m").returncode == EXIT_USAGE  # neither --ttl nor --hide
    bad = burrow(server, "put", "jobs", "m", "x", "--ttl", "-1")  # the server's 400
    assert bad.returncode == EXIT_USAGE and bad.stderr.startswith(b"burrow: ttl must be an integer")
    no_account = burrow(server, "get", "jobs", account=None)
    assert no_account.returncode == EXIT_USAGE and b"BURROW_ACCOUNT" in no_account.stderr
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    down = burrow(f"http://127.0.0.1:{port}", "queues")
    assert down.returncode == EXIT_ERROR and down.stderr.startswith(b"burrow: ConnectionRefusedError")
    assert burrow(server, "get", "--help").returncode == EXIT_OK


def test_url_flag_and_several_servers(server: RunningServer) -> None:
    with threaded_server() as other, Client([server.url, other.url]) as hashing:
        urls = f"{server.url},{other.url}"
        account = spread_account(Placement([server.url, other.url], 3))
        for n in range(8):  # --url beats BURROW_URL (a dead address here), --account BURROW_ACCOUNT
            put = burrow("http://127.0.0.1:1", "put", "--url", urls, "--account", account, f"q{n}", "m", "x")
            assert put.returncode == EXIT_OK
        listed = lines(burrow(urls, "queues", account=account))
        assert sorted(listed) == [f"q{n}" for n in range(8)]
        assert listed == hashing.account(account).queues()  # merged in the library's order
        with Client(server.url) as first, Client(other.url) as second:
            assert first.account(account).queues() and second.account(account).queues()  # spread over both
        assert lines(burrow(urls, "delete_queues", account=account)) == ["deleted 8 queues"]


def test_watch_prints_new_messages_until_sigint(server: RunningServer, client: Client) -> None:
    q = client.queue("acme", "watched")
    q.put("old", "before")
    proc = subprocess.Popen(
        [BURROW, "watch", "watched", "--json", "--wait", "20"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env(server.url),
    )
    try:
        assert proc.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(proc.stdout, selectors.EVENT_READ)

            def next_line() -> dict[str, object]:
                assert selector.select(30), "watch printed nothing"
                line = proc.stdout.readline()  # type: ignore[union-attr]
                assert line, proc.stderr.read() if proc.stderr else b""
                result: dict[str, object] = json.loads(line)
                return result

            first = next_line()
            assert (first["id"], first["body"]) == ("old", "before")
            time.sleep(0.2)  # now parked in its long poll
            q.put("new", "after")
            assert next_line()["id"] == "new"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == EXIT_OK
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
