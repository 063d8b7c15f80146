"""Memory per stored message and long-poll wake latency, each on a fresh server process."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

from burrow.bench.loadgen import run_python
from burrow.bench.procs import Control, Placement, close_client, start_burrow
from burrow.bench.workloads import ACCOUNT, BODY, prefill_id


@dataclass
class MemoryResult:
    """RSS growth of the server after storing ``messages`` messages (16-byte id, 100-byte body)."""

    backend: str
    messages: int
    stored: int
    rss_before: int
    rss_after: int
    put_seconds: float
    put_rps: float
    bad: int

    @property
    def bytes_per_message(self) -> float:
        return (self.rss_after - self.rss_before) / max(self.messages, 1)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "bytes_per_message": self.bytes_per_message}


def measure_memory(
    backend: str, messages: int, placement: Placement, *, processes: int = 2, depth: int = 100
) -> MemoryResult:
    """Fresh server; RSS; PUT ``messages`` messages to one queue (pipelined); RSS once idle; count them."""
    assert len(prefill_id("mem", 0)) == 16 and len(BODY) == 100
    with start_burrow(backend, placement.server) as server:
        server.wait_idle()
        before = server.rss()
        fill = run_python(
            server,
            "fill:mem",
            {"n": messages},
            processes=processes,
            connections=processes,
            depth=depth,
            duration=math.inf,
            cpus=placement.client,
            ok=(201,),
            mode="pipelined",
        )
        server.wait_idle(timeout=5.0)  # let the server settle (no way to ask it to collect garbage)
        after = server.rss()
        with Control(server.port) as control:
            stored = control.count_messages(ACCOUNT, "mem")
    return MemoryResult(backend, messages, stored, before, after, fill.elapsed, fill.rps, fill.bad)


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (``p`` in 0..100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass
class LongPollResult:
    """``waiters`` long polls held at once, then woken one create at a time."""

    waiters: int
    woken: int
    early: int
    connect_seconds: float
    register_seconds: float
    rss_idle: int
    rss_waiting: int
    wake_seconds: float
    put_statuses: dict[str, int]
    waiter_statuses: dict[str, int]
    #: Latency from the waking PUT's response to the waiter's response (ms); negative = waiter first.
    p50_ms: float
    p99_ms: float
    max_ms: float
    #: Latency from sending the PUT to the waiter's response (ms): an upper bound including the PUT.
    send_p50_ms: float
    send_p99_ms: float

    @property
    def bytes_per_waiter(self) -> float:
        return (self.rss_waiting - self.rss_idle) / max(self.waiters, 1)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "bytes_per_waiter": self.bytes_per_waiter}


def measure_longpoll(backend: str, waiters: int, placement: Placement, wait: int = 60) -> LongPollResult:
    """One server holds ``waiters`` ``GET /v1.0/bench/lp<i>?wait=N`` (one queue each); PUTs wake them."""
    limit = str(waiters + 100)  # the waiters all come from one address
    extra = ["--max-wait", str(wait), "--max-connections", limit, "--max-connections-per-client", limit]
    with start_burrow(backend, placement.server, *extra) as server:
        server.wait_idle()
        rss_idle = server.rss()
        proc = subprocess.Popen(
            [sys.executable, "-m", "burrow.bench.client"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )
        try:
            assert proc.stdin is not None and proc.stdout is not None
            config = {"mode": "longpoll", "port": server.port, "waiters": waiters, "wait": wait}
            proc.stdin.write(json.dumps({**config, "cpus": list(placement.client)}) + "\n")
            proc.stdin.flush()
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError("long-poll client failed to connect")
            connected = float(json.loads(line)["connected_s"])
            t0 = time.monotonic()
            server.wait_idle()  # every GET parsed and parked: the server has nothing left to do
            registered = time.monotonic() - t0
            rss_waiting = server.rss()
            proc.stdin.write("go\n")
            proc.stdin.flush()
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError("long-poll client died")
            data = json.loads(line)
        finally:
            close_client(proc, 30)
    reply, send = data["from_reply_ms"], data["from_send_ms"]
    return LongPollResult(
        waiters=waiters,
        woken=int(data["woken"]),
        early=int(data["early"]),
        connect_seconds=connected,
        register_seconds=registered,
        rss_idle=rss_idle,
        rss_waiting=rss_waiting,
        wake_seconds=float(data["wake_seconds"]),
        put_statuses=data["put_statuses"],
        waiter_statuses=data["waiter_statuses"],
        p50_ms=percentile(reply, 50),
        p99_ms=percentile(reply, 99),
        max_ms=max(reply) if reply else math.nan,
        send_p50_ms=percentile(send, 50),
        send_p99_ms=percentile(send, 99),
    )
