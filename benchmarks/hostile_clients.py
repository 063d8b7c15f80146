"""Hostile clients against a real server, for issue 12 (the HTTP layer bounded under hostile clients).

1. ``unread``: a ``burrow serve --backend memory://`` subprocess with ``--max-inflight-bytes
   --budget`` stores one message of ``--message-bytes`` (1 MiB); then ``--connections``
   connections (spread over ``--sources`` client addresses 127.0.0.x, each socket with a
   ``--rcvbuf`` receive buffer, as a remote client that does not read would give) each write
   ``--pipeline`` GETs of that message at once and never read. The server's RSS is sampled
   (``/proc``) for ``--hold`` seconds; reported: its peak growth over the RSS before the attack,
   against the budget, and how each connection was answered, from the first bytes it received
   (200 served, 503 refused, nothing yet, reset).
2. ``trailer_bytes``: one chunked POST whose trailer value is ``--trailer-bytes`` long (60 MB),
   written in one go: the status, the seconds to the answer, and the server CPU seconds
   (``/proc``, user + system) spent until it came.
3. ``trailer_fields``: the same with ``--trailer-fields`` distinct trailer fields.

Usage: ``.venv/bin/python benchmarks/hostile_clients.py`` (the issue's figures: 3,000
connections x 10 GETs of 1 MiB, a 60 MB trailer); ``--json FILE`` writes the results;
``--server-path DIR`` runs the server from another checkout (``--legacy`` then leaves out the
flags an older server does not know). ``tests/http/test_hostile.py`` runs a small version.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from burrow.client import SyncConnection, encode_request, path

ROOT = Path(__file__).resolve().parents[1]
READY = re.compile(r"listening on http://([0-9.]+):(\d+) ")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class Server:
    """``burrow serve`` in a subprocess; its log lines are kept."""

    def __init__(self, args: list[str], server_path: str | None) -> None:
        env = dict(os.environ)
        cwd = ROOT
        if server_path:
            env["PYTHONPATH"] = server_path
            cwd = Path(server_path)
        argv = [sys.executable, "-m", "burrow", "serve", "--backend", "memory://", "--port", "0", *args]
        self.proc = subprocess.Popen(argv, cwd=cwd, env=env, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        assert self.proc.stderr is not None
        deadline = time.monotonic() + 30
        while True:
            line = self.proc.stderr.readline()
            if not line:
                raise RuntimeError(f"server exited: {''.join(self.lines)}")
            self.lines.append(line)
            if match := READY.search(line):
                self.port = int(match.group(2))
                break
            if time.monotonic() > deadline:
                raise RuntimeError("server did not start")
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    def rss(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def cpu(self) -> float:
        with open(f"/proc/{self.proc.pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def raise_open_files(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def unread(args: argparse.Namespace) -> dict[str, Any]:
    flags = ["--max-connections", str(args.connections + 500)]
    if not args.legacy:
        flags += ["--max-inflight-bytes", str(args.budget), "--max-unsent-bytes", str(args.unsent)]
    server = Server(flags + args.server_arg, args.server_path)
    sockets: list[socket.socket] = []
    try:
        with SyncConnection(f"http://127.0.0.1:{server.port}", timeout=30) as conn:
            body = b"m" * args.message_bytes
            assert conn.request("PUT", path("hostile", "q", "m") + "?ttl=0", body).status == 201
        time.sleep(0.3)
        before = server.rss()
        request = encode_request("GET", path("hostile", "q", "m") + "?detail=body", host="127.0.0.1")
        started = time.monotonic()
        for i in range(args.connections):
            sock = socket.socket()
            if args.rcvbuf:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, args.rcvbuf)
            sock.bind((f"127.0.0.{2 + i % args.sources}", 0))
            sock.connect(("127.0.0.1", server.port))
            sock.sendall(request * args.pipeline)
            sockets.append(sock)
        opened = time.monotonic() - started
        peak = before
        while time.monotonic() - started < opened + args.hold:
            peak = max(peak, server.rss())
            time.sleep(0.1)
        after = server.rss()
        answers = {"served": 0, "refused": 0, "other": 0, "nothing": 0, "reset": 0}
        for sock in sockets:
            sock.setblocking(False)
            try:
                head = sock.recv(16)
            except BlockingIOError:
                answers["nothing"] += 1
                continue
            except ConnectionResetError:
                answers["reset"] += 1
                continue
            kind = {b"200": "served", b"503": "refused"}.get(head[9:12], "other")
            answers[kind] += 1
        still_open = sum(1 for sock in sockets if not closed_by_server(sock))
        return {
            "connections": args.connections,
            "pipeline": args.pipeline,
            "message_bytes": args.message_bytes,
            "budget_bytes": None if args.legacy else args.budget,
            "rss_before_bytes": before,
            "rss_peak_bytes": peak,
            "rss_end_bytes": after,
            "rss_growth_bytes": peak - before,
            "seconds_to_open": round(opened, 2),
            **answers,
            "open_at_end": still_open,
            "server_log": [line.rstrip() for line in server.lines[1:12]],
        }
    finally:
        for sock in sockets:
            sock.close()
        server.stop()


def closed_by_server(sock: socket.socket) -> bool:
    """Whether the server has closed (or reset) a non-blocking socket: read what is there."""
    try:
        while sock.recv(1 << 20):
            pass
    except BlockingIOError:
        return False
    except OSError:
        return True
    return True


def trailer(args: argparse.Namespace, trailer_section: bytes) -> dict[str, Any]:
    """Send one chunked POST with ``trailer_section`` after its last chunk; time the answer."""
    server = Server(args.server_arg, args.server_path)
    try:
        sock = socket.create_connection(("127.0.0.1", server.port))
        head = (
            b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n"
            % path("hostile", "q", "t").encode()
        )
        data = head + b"1\r\na\r\n0\r\n" + trailer_section + b"\r\n"

        def send() -> None:
            with contextlib.suppress(OSError):  # refused early and closed: the rest is not wanted
                sock.sendall(data)

        cpu = server.cpu()
        started = time.monotonic()
        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        sock.settimeout(120)
        received = b""
        try:
            while b"\r\n" not in received:
                more = sock.recv(4096)
                if not more:
                    break
                received += more
        except OSError as error:
            received = repr(error).encode()
        seconds = time.monotonic() - started
        spent = server.cpu() - cpu
        sock.close()
        sender.join(10)
        status = int(received[9:12]) if received.startswith(b"HTTP/1.1 ") else None
        return {
            "trailer_bytes": len(trailer_section),
            "status": status,
            "seconds": round(seconds, 3),
            "server_cpu_s": round(spent, 3),
            "first_line": received.split(b"\r\n", 1)[0].decode("latin-1"),
        }
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--connections", type=int, default=3000, help="connections that pipeline and never read [3000]")
    add("--pipeline", type=int, default=10, help="GETs each connection writes at once [10]")
    add("--message-bytes", type=int, default=1 << 20, help="size of the message they GET [1 MiB]")
    add("--budget", type=int, default=256 << 20, help="server --max-inflight-bytes [256 MiB, the default]")
    add("--unsent", type=int, default=262144, help="server --max-unsent-bytes [256 KiB, the default]")
    add("--rcvbuf", type=int, default=4096, help="client socket receive buffer (0: the system's) [4096]")
    add("--sources", type=int, default=0, help="client addresses to spread over [1 per 500 connections]")
    add("--hold", type=float, default=5.0, help="seconds to sample RSS after the connections are open [5]")
    add("--trailer-bytes", type=int, default=60_000_000, help="size of the huge trailer value [60 MB]")
    add("--trailer-fields", type=int, default=1_000_000, help="distinct trailer fields [1,000,000]")
    add("--skip", default="", help="comma list of cases to skip: unread, trailer_bytes, trailer_fields")
    add("--server-path", help="run the server from this checkout (PYTHONPATH and working directory)")
    add("--server-arg", action="append", default=[], help="extra server argument (repeatable)")
    add("--legacy", action="store_true", help="do not pass the issue-12 flags (an older server)")
    add("--json", metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args()
    args.sources = args.sources or max(1, -(-args.connections // 500))
    raise_open_files(args.connections + 1000)
    skip = set(filter(None, args.skip.split(",")))
    results: dict[str, Any] = {}
    if "unread" not in skip:
        results["unread"] = unread(args)
        r = results["unread"]
        budget = f"{r['budget_bytes'] / 2**20:.0f} MiB" if r["budget_bytes"] else "none"
        print(
            f"unread: {r['connections']} connections x {r['pipeline']} GETs of {r['message_bytes']} B,"
            f" budget {budget}: RSS {r['rss_before_bytes'] / 2**20:.0f} MiB before, peak"
            f" {r['rss_peak_bytes'] / 2**20:.0f} MiB (+{r['rss_growth_bytes'] / 2**20:.0f} MiB);"
            f" served {r['served']}, refused {r['refused']}, nothing {r['nothing']}, reset {r['reset']},"
            f" other {r['other']}; still open at the end {r['open_at_end']}"
        )
    if "trailer_bytes" not in skip:
        r = results["trailer_bytes"] = trailer(args, b"X-Huge: " + b"v" * args.trailer_bytes + b"\r\n")
        print(
            f"trailer of {r['trailer_bytes']} B: {r['first_line']!r} after {r['seconds']} s,"
            f" server CPU {r['server_cpu_s']} s"
        )
    if "trailer_fields" not in skip:
        fields = b"".join(b"X-F%d: v\r\n" % i for i in range(args.trailer_fields))
        r = results["trailer_fields"] = trailer(args, fields)
        r["fields"] = args.trailer_fields
        print(
            f"{args.trailer_fields} trailer fields ({r['trailer_bytes']} B): {r['first_line']!r} after"
            f" {r['seconds']} s, server CPU {r['server_cpu_s']} s"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
