"""``burrow serve --workers N``: real supervisor processes, their workers and router.

Each test runs the real command (``python -m burrow serve --workers N``) and talks to it over
sockets: requests are served, a worker killed with SIGKILL comes back (and says so in the
log), SIGTERM leaves no process behind, bad configurations fail fast with a reason, SQLite
workers keep their data across a restart of the whole command, and on Redis every worker
serves the one shared store. The Redis tests skip when no Redis answers on 127.0.0.1:6379,
unless ``BURROW_REQUIRE_SERVICES=1`` (CI), where that fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from burrow.backends.memory import default_max_memory
from burrow.client import Connection
from burrow.config import Settings
from burrow.hashing import Placement
from burrow.supervisor import MAX_FAILED_STARTS, backend_kind, describe_exit, redact, worker_backend
from burrow.testing.process import ServeProcess

REDIS = ("127.0.0.1", 6379)
#: A child's ready line as the supervisor logs it: ``worker-1 (pid 123) ready at http://...``.
_CHILD_READY = re.compile(r"(worker-\d+|router) \(pid (\d+)\) ready at (http://\S+)")
_SERVERS = re.compile(r"mode=router servers=(\S+)")


class Workers(ServeProcess):
    """``burrow serve --workers N ...``, with what its log says about its children."""

    def children(self) -> dict[str, tuple[int, str]]:
        """Each child's latest (pid, url), from the supervisor's "ready at" lines."""
        found: dict[str, tuple[int, str]] = {}
        for line in self.log:
            if match := _CHILD_READY.search(line):
                found[match.group(1)] = (int(match.group(2)), match.group(3))
        return found

    def all_pids(self) -> set[int]:
        return {int(m.group(2)) for line in self.log if (m := _CHILD_READY.search(line))}

    def servers(self) -> list[str]:
        """The router's server list, as the supervisor announced it."""
        for line in self.log:
            if match := _SERVERS.search(line):
                return match.group(1).split(",")
        raise AssertionError("no servers= in the log:\n" + "".join(self.log))

    async def wait_for_log(self, pattern: str, timeout: float = 30.0) -> re.Match[str]:
        """The first log line matching ``pattern``, waiting for it to be logged."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.log:
                if match := regex.search(line):
                    return match
            await asyncio.sleep(0.05)
        raise AssertionError(f"no log line matches {pattern!r}:\n" + "".join(self.log[-30:]))


def gone(pid: int) -> bool:
    """The process no longer exists (reaped; ours are never left as zombies of someone else)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


async def stop_and_check_no_orphans(server: Workers) -> None:
    pids = server.all_pids()
    assert pids, "no children were logged"
    await server.stop()
    assert "stopped" in server.log[-1], server.log[-5:]
    left = [pid for pid in pids if not gone(pid)]
    assert not left, f"children still running after the supervisor stopped: {left}"


@contextlib.asynccontextmanager
async def running(*args: str) -> AsyncIterator[tuple[Workers, str]]:
    server = Workers(*args)
    url = await server.start()
    try:
        yield server, url
    finally:
        if server.proc is not None and server.proc.returncode is None:
            server.proc.kill()
            await server.proc.wait()
            for pid in server.all_pids():  # a failed test must not leave workers behind either
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


async def failing(*args: str, timeout: float = 30.0) -> tuple[int, str, float]:
    """Run ``burrow serve ARGS`` that must fail: (exit status, its stderr, seconds taken)."""
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "burrow",
        "serve",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        _, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"burrow serve {' '.join(args)} did not exit within {timeout} s") from None
    return int(proc.returncode or 0), err.decode(errors="replace"), time.monotonic() - started


def free_port_run(count: int) -> int:
    """A port P with P..P+count free right now (bound and released), for a fixed ``--port``."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = int(probe.getsockname()[1])
        if base + count > 65535:
            continue
        socks: list[socket.socket] = []
        try:
            for port in range(base, base + count + 1):
                sock = socket.socket()
                socks.append(sock)
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise AssertionError("no run of free ports found")


# -- the layout, without processes -----------------------------------------------------------


def test_each_sqlite_worker_has_its_own_stable_file(tmp_path: Path) -> None:
    default = Settings(data_dir=str(tmp_path))
    assert worker_backend(default, 1) == f"sqlite:///{tmp_path.resolve()}/worker-1/burrow.db"
    assert worker_backend(default, 12) == f"sqlite:///{tmp_path.resolve()}/worker-12/burrow.db"
    cases = {
        "sqlite:///rel/q.db": "sqlite:///rel/q-2.db",
        "sqlite:////abs/dir/q.db": "sqlite:////abs/dir/q-2.db",
        "sqlite:////abs/dir.d/queue": "sqlite:////abs/dir.d/queue-2",
        "sqlite:///a.b.db": "sqlite:///a.b-2.db",
        "sqlite://:memory:": "sqlite://:memory:",
        "memory://": "memory://",
    }
    for url, expected in cases.items():
        assert worker_backend(Settings(backend=url), 2) == expected, url
    urls = {worker_backend(Settings(backend="sqlite:///q.db"), i) for i in range(1, 101)}
    assert len(urls) == 100


def test_backend_kind_decides_the_layout() -> None:
    shared = (
        "redis://h:6379/0",
        "rediss://h/1?prefix=x",
        "redis+cluster://h1:7000,h2:7001",
        "rediss+cluster://h:1",
    )
    for url in shared:
        assert backend_kind(url) == "shared"
    for url in ("memory://", "sqlite:///q.db", "sqlite://:memory:"):
        assert backend_kind(url) == "in-process"
    with pytest.raises(ValueError, match="schemes"):
        backend_kind("postgres://db")
    assert redact("redis://user:secret@h:6379/0?prefix=p") == "redis://user:***@h:6379/0?prefix=p"
    assert redact("redis://h:6379/0") == "redis://h:6379/0"
    assert describe_exit(1) == "exited with status 1"
    assert describe_exit(-signal.SIGKILL) == "killed by SIGKILL"


# -- bad configurations fail fast -------------------------------------------------------------


async def test_bad_configurations_fail_fast_with_a_reason(tmp_path: Path) -> None:
    status, err, seconds = await failing("--workers", "3", "--port", "65534", "--backend", "memory://")
    assert status == 2 and "past 65535" in err, err
    status, err, _ = await failing("--workers", "2", "--backend", "nosuch://x")
    assert status == 2 and "schemes" in err, err
    # A store that cannot be opened: every worker fails at once; nothing is retried forever.
    (tmp_path / "file").write_text("not a directory")
    bad = f"sqlite:///{tmp_path}/file/q.db"
    status, err, seconds = await failing("--workers", "2", "--port", "0", "--backend", bad)
    assert status == 1, err
    assert re.search(r"worker-\d failed to start: exited with status 1: .*cannot open backend", err), err
    assert seconds < 20, f"took {seconds:.1f} s to give up"


async def test_a_worker_port_in_use_fails_fast() -> None:
    base = free_port_run(2)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", base + 1))  # worker-1's port
        taken.listen()
        status, err, seconds = await failing("--workers", "2", "--port", str(base), "--backend", "memory://")
    assert status == 1, err
    assert "worker-1 failed to start" in err and "cannot listen" in err, err
    assert seconds < 20


async def test_a_shared_port_in_use_fails_before_any_worker_starts() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        status, err, _ = await failing(
            "--workers", "2", "--port", str(port), "--backend", "redis://127.0.0.1:6379/0"
        )
    assert status == 1, err
    assert f"cannot listen on 127.0.0.1:{port}" in err, err
    assert "[worker-" not in err  # refused before starting anything


# -- in-process backends behind the router ----------------------------------------------------


async def put(conn: Connection, path: str, body: bytes) -> None:
    reply = await conn.request("PUT", path, body)
    assert reply.status in (201, 204), (path, reply.status, reply.body)


async def test_router_mode_serves_restarts_a_killed_worker_and_stops_cleanly() -> None:
    async with running("--workers", "2", "--port", "0", "--backend", "memory://") as (server, url):
        children = server.children()
        assert set(children) == {"worker-1", "worker-2", "router"}
        # The default memory budget is shared by the workers, not taken by each.
        budget = await server.wait_for_log(r"memory store: --max-memory (\d+) bytes")
        assert int(budget.group(1)) == default_max_memory(2)
        servers = server.servers()
        assert servers == [children["worker-1"][1], children["worker-2"][1]]
        assert url not in servers
        placement = Placement(servers, Settings().subset_size)
        async with Connection(url, timeout=10) as conn:
            for i in range(20):
                await put(conn, f"/v1.0/acct{i}/jobs/m{i}", b"body %d" % i)
            for i in range(20):
                reply = await conn.request("GET", f"/v1.0/acct{i}/jobs/m{i}?detail=body")
                assert (reply.status, reply.body) == (200, b"body %d" % i)
        # A client that hashes finds each queue on the worker the router chose.
        holders = {placement.server_for(f"acct{i}", "jobs") for i in range(20)}
        assert holders == set(servers), "20 accounts should use both workers"
        for i in range(20):
            async with Connection(placement.server_for(f"acct{i}", "jobs"), timeout=10) as direct:
                reply = await direct.request("GET", f"/v1.0/acct{i}/jobs/m{i}?detail=body")
                assert (reply.status, reply.body) == (200, b"body %d" % i)

        old_pid, worker_url = children["worker-1"]
        os.kill(old_pid, signal.SIGKILL)
        await server.wait_for_log(rf"worker-1 \(pid {old_pid}\) killed by SIGKILL after")
        match = await server.wait_for_log(rf"worker-1 \(pid (?!{old_pid}\))(\d+)\) ready at (\S+)")
        assert match.group(2) == worker_url, "a restarted worker must keep its port"
        assert server.proc is not None and server.proc.returncode is None
        # Service continues: every queue (on either worker) takes new messages via the router,
        # once the router's health check (every second) has seen the worker back.
        async with Connection(url, timeout=10) as conn:
            deadline = time.monotonic() + 15
            for i in range(20):
                while (
                    reply := await conn.request("PUT", f"/v1.0/acct{i}/jobs/after{i}", b"again")
                ).status == 503:
                    assert time.monotonic() < deadline, f"still 503 after the restart: {reply.body!r}"
                    await asyncio.sleep(0.1)
                assert reply.status == 201, (reply.status, reply.body)
                reply = await conn.request("GET", f"/v1.0/acct{i}/jobs/after{i}?detail=body")
                assert (reply.status, reply.body) == (200, b"again")
        await stop_and_check_no_orphans(server)


async def test_sqlite_workers_keep_their_data_across_a_restart(tmp_path: Path) -> None:
    base = free_port_run(2)
    args = ("--workers", "2", "--port", str(base), "--data-dir", str(tmp_path), "--fsync", "always")
    async with running(*args) as (server, url):
        assert url == f"http://127.0.0.1:{base}"
        async with Connection(url, timeout=10) as conn:
            for i in range(20):
                await put(conn, f"/v1.0/acct{i}/jobs/m{i}?ttl=0", b"kept %d" % i)
        await stop_and_check_no_orphans(server)
    for i in (1, 2):
        assert (tmp_path / f"worker-{i}" / "burrow.db").stat().st_size > 0
    async with running(*args) as (server, url):
        async with Connection(url, timeout=10) as conn:
            for i in range(20):
                reply = await conn.request("GET", f"/v1.0/acct{i}/jobs/m{i}?detail=body")
                assert (reply.status, reply.body) == (200, b"kept %d" % i)
            reply = await conn.request("GET", "/v1.0")
            assert reply.status == 200
            assert sorted(json.loads(reply.body)) == sorted(f"acct{i}" for i in range(20))
        await stop_and_check_no_orphans(server)


async def test_a_worker_that_cannot_restart_makes_the_supervisor_give_up(tmp_path: Path) -> None:
    args = ("--workers", "2", "--port", "0", "--data-dir", str(tmp_path))
    async with running(*args) as (server, _):
        pid = server.children()["worker-1"][0]
        # Its store cannot be reopened: its directory is now a file (the running worker keeps its
        # open files). Every restart fails; after MAX_FAILED_STARTS in a row the command gives up.
        (tmp_path / "worker-1").rename(tmp_path / "moved")
        (tmp_path / "worker-1").write_text("in the way")
        started = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        assert server.proc is not None
        status = await asyncio.wait_for(server.proc.wait(), 60)
        seconds = time.monotonic() - started
        log = "".join(server.log)
        assert status == 1, log[-2000:]
        assert f"worker-1 (pid {pid}) killed by SIGKILL" in log
        assert (
            len(re.findall(r"worker-1 failed to start \(exited with status 1", log)) == MAX_FAILED_STARTS - 1
        )
        assert re.search(
            rf"giving up: worker-1 failed to start {MAX_FAILED_STARTS} times in a row: exited with status 1:"
            r" .*cannot open backend",
            log,
        ), log[-2000:]
        assert seconds < 40
        left = [p for p in server.all_pids() if not gone(p)]
        assert not left, f"children left running: {left}"


# -- a shared store (Redis): every worker on one port -----------------------------------------


def redis_or_skip() -> None:
    try:
        with socket.create_connection(REDIS, timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            if sock.recv(16).startswith(b"+PONG"):
                return
            reason = "Redis on 127.0.0.1:6379 did not answer PING"
    except OSError as error:
        reason = f"no Redis on 127.0.0.1:6379 ({error})"
    if os.environ.get("BURROW_REQUIRE_SERVICES") == "1":
        pytest.fail(reason + " and BURROW_REQUIRE_SERVICES=1")
    pytest.skip(reason)


def socket_owners(pids: set[int], server_port: int) -> dict[int, int]:
    """Client port -> pid of the worker holding the server side of that connection (loopback)."""
    inode_pid: dict[str, int] = {}
    for pid in pids:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inode_pid[target[8:-1]] = pid
    owners: dict[int, int] = {}
    with open("/proc/net/tcp") as fh:
        for line in fh.readlines()[1:]:
            parts = line.split()
            local, remote, inode = parts[1], parts[2], parts[9]
            if int(local.split(":")[1], 16) == server_port and inode in inode_pid:
                owners[int(remote.split(":")[1], 16)] = inode_pid[inode]
    return owners


async def connections_by_worker(url: str, pids: set[int], count: int) -> dict[int, list[Connection]]:
    """Open ``count`` connections (each answered once) and group them by the worker serving them."""
    conns = [Connection(url, timeout=10) for _ in range(count)]
    for conn in conns:
        assert (await conn.request("GET", "/")).status == 200
    owners = socket_owners(pids, int(url.rsplit(":", 1)[1]))
    grouped: dict[int, list[Connection]] = {}
    for conn in conns:
        grouped.setdefault(owners[conn.sockname[1]], []).append(conn)
    return grouped


async def test_redis_workers_share_one_port_and_one_store() -> None:
    redis_or_skip()
    prefix = f"burrow-test-workers-{uuid.uuid4().hex[:12]}"
    backend = f"redis://127.0.0.1:6379/0?prefix={prefix}"
    async with running("--workers", "2", "--port", "0", "--backend", backend) as (server, url):
        children = server.children()
        assert set(children) == {"worker-1", "worker-2"}
        assert {u for _, u in children.values()} == {url}, "both workers listen on the public port"
        pids = {pid for pid, _ in children.values()}
        grouped = await connections_by_worker(url, pids, 24)
        try:
            assert set(grouped) == pids, f"24 connections all went to one worker: {grouped.keys()}"
            a, b = (grouped[pid][0] for pid in sorted(pids))
            # Written through one worker, read (and long-polled) through the other.
            await put(a, "/v1.0/shared/jobs/one", b"hello")
            reply = await b.request("GET", "/v1.0/shared/jobs/one?detail=body")
            assert (reply.status, reply.body) == (200, b"hello")
            waiter = asyncio.ensure_future(b.request("GET", "/v1.0/shared/wake?wait=10&detail=body"))
            await asyncio.sleep(0.3)  # let the long poll park on its worker
            await put(a, "/v1.0/shared/wake/two", b"wake up")
            started = time.monotonic()
            reply = await asyncio.wait_for(waiter, 10)
            assert (reply.status, reply.body) == (200, b'["wake up"]'), reply.body
            assert time.monotonic() - started < 5, "the other worker's long poll was not woken"

            # SIGKILL one worker: the other keeps serving, and the killed one comes back on the port.
            victim = children["worker-1"][0]
            os.kill(victim, signal.SIGKILL)
            await server.wait_for_log(rf"worker-1 \(pid {victim}\) killed by SIGKILL")
            await server.wait_for_log(rf"worker-1 \(pid (?!{victim}\))\d+\) ready at")
            fresh = {pid for pid, _ in server.children().values()}
            assert len(fresh) == 2 and victim not in fresh
            grouped2 = await connections_by_worker(url, fresh, 24)
            try:
                assert set(grouped2) == fresh
                for conns in grouped2.values():
                    reply = await conns[0].request("GET", "/v1.0/shared/jobs/one?detail=body")
                    assert (reply.status, reply.body) == (200, b"hello")
            finally:
                for conns in grouped2.values():
                    for conn in conns:
                        await conn.close()
            async with Connection(url, timeout=10) as conn:
                assert (await conn.request("DELETE", "/v1.0/shared")).status in (204, 404)
        finally:
            for conns in grouped.values():
                for conn in conns:
                    await conn.close()
        await stop_and_check_no_orphans(server)


async def test_children_follow_a_killed_supervisor() -> None:
    """SIGKILL cannot be handled, so the children must notice themselves (PR_SET_PDEATHSIG)."""
    async with running("--workers", "2", "--port", "0", "--backend", "memory://") as (server, _):
        pids = server.all_pids()
        await server.kill()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not all(gone(pid) for pid in pids):
            await asyncio.sleep(0.05)
        assert all(gone(pid) for pid in pids), [pid for pid in pids if not gone(pid)]
