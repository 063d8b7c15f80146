"""Where a request's CPU goes, by layer: HTTP parsing, dispatch, engine, store.

In one process, without sockets (the kernel's share is what the echo server costs per request
in a ``burrow bench`` run of the same machine), for each workload (``put``, ``get_message``,
``take``, ``delete``, as in ``burrow bench``) it runs N operations at each layer:

* ``store``  — the ``MemoryBackend`` call the request ends in;
* ``engine`` — the ``Engine`` call the v1 front end makes (includes the store);
* ``http``   — the request's bytes through ``HttpProtocol`` to a handler that returns a
  constant response (parsing, the protocol, serializing: no routing, no engine);
* ``full``   — the same bytes through ``HttpProtocol`` and the real ``App``.

Per request: store = S, engine = E - S, parsing = H, dispatch (routing, v1 front end, names and
parameters, JSON) = F - H - E. It prints ns per operation of each phase (perf_counter: noisy on
a shared machine), and calls ``os.getppid()`` before each phase and once at the end, so that

    valgrind --tool=callgrind --dump-before=getppid --callgrind-out-file=cg.%p \\
        .venv/bin/python benchmarks/hotpath_profile.py --n 2000 --callgrind cg

writes one dump per phase; ``--callgrind PREFIX`` then reads them back (run it under valgrind
with that prefix) and prints instructions per operation, which are repeatable on a loaded
machine. Which build runs is printed first (``BURROW_PURE_PYTHON=1`` for pure Python).
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import os
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import burrow
from burrow.api.routes import App
from burrow.backends.memory import MemoryBackend
from burrow.config import Settings
from burrow.core.model import Filter, Update
from burrow.engine import Engine
from burrow.http.protocol import HttpProtocol, ServerState
from burrow.http.types import Request, Response

BODY = b"x" * 100
HEAD = b"Host: bench\r\nUser-Agent: wrk\r\n"
TAKE = b"POST /v1.0/bench/q?limit=1&hide=60&detail=all HTTP/1.1\r\n" + HEAD + b"Content-Length: 0\r\n\r\n"
WORKLOADS = ("put", "get_message", "take", "delete")
PHASES = ("store", "engine", "http", "full")


class Sink(asyncio.Transport):
    """A transport that takes every write and counts the bytes: the protocol without a socket."""

    def __init__(self) -> None:
        super().__init__()
        self.written = 0
        self.closed = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += len(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.closed = True


def ids(prefix: str, n: int) -> list[str]:
    return [f"{prefix}{i:015d}" for i in range(n)]


def request(workload: str, mid: str) -> bytes:
    if workload == "put":
        return f"PUT /v1.0/bench/q/{mid} HTTP/1.1\r\n".encode() + HEAD + b"Content-Length: 100\r\n\r\n" + BODY
    if workload == "get_message":
        return f"GET /v1.0/bench/q/{mid} HTTP/1.1\r\n".encode() + HEAD + b"\r\n"
    if workload == "delete":
        return f"DELETE /v1.0/bench/q/{mid} HTTP/1.1\r\n".encode() + HEAD + b"\r\n"
    return TAKE


class Run:
    """One workload's phases over one engine and store."""

    def __init__(self, workload: str, n: int) -> None:
        self.workload, self.n = workload, n
        self.settings = Settings(backend="memory://")  # the defaults `burrow bench` serves with
        self.backend = MemoryBackend()
        self.engine = Engine(self.backend, self.settings)
        self.app = App(self.engine)

    async def prefill(self, names: list[str]) -> None:
        for mid in names:
            await self.engine.put_message("bench", "q", mid, BODY, 3600, 0)

    async def store(self, names: list[str]) -> None:
        b, now, w = self.backend, self.engine.now(), self.workload
        take, hide = Filter(limit=1), Update(hidden_until=now + 60)
        for mid in names:
            if w == "put":
                await b.put_message("bench", "q", mid, BODY, now + 3600, 0.0, now, b"")
            elif w == "get_message":
                await b.get_message("bench", "q", mid, now)
            elif w == "delete":
                await b.delete_message("bench", "q", mid, now)
            else:
                await b.update_messages("bench", "q", take, hide, now)

    async def engine_phase(self, names: list[str]) -> None:
        e, w = self.engine, self.workload
        take = Filter(limit=1)
        for mid in names:
            if w == "put":
                await e.put_message("bench", "q", mid, BODY, None, None)
            elif w == "get_message":
                await e.get_message("bench", "q", mid)
            elif w == "delete":
                await e.delete_message("bench", "q", mid)
            else:
                await e.update_messages("bench", "q", take, None, 60)

    async def through(self, handler: Callable[[Request], Awaitable[Response]], wire: list[bytes]) -> int:
        state = ServerState(handler, self.settings, asyncio.get_running_loop())
        protocol = HttpProtocol(state)
        sink = Sink()
        protocol.connection_made(sink)
        for data in wire:
            protocol.data_received(data)
        protocol.connection_lost(None)
        return sink.written


async def constant(request: Request) -> Response:
    return Response(200, b'{"ok":true}', "application/json")


def mark() -> None:
    """Where callgrind dumps (--dump-before=getppid): one dump per phase."""
    os.getppid()


async def main(args: argparse.Namespace) -> list[tuple[str, str, float]]:
    n = args.n
    timings: list[tuple[str, str, float]] = []
    for workload in args.workloads.split(","):
        run = Run(workload, n)
        await run.engine.start()
        # every phase gets fresh ids (put) or a prefilled set of its own (get, delete, take)
        sets = {phase: ids(f"{phase[0]}{workload[:2]}", n) for phase in PHASES}
        if workload != "put":
            for names in sets.values():
                await run.prefill(names)
        await run.store(ids("warm", 200))  # warm-up: first-call costs out of the phases
        wires = {phase: [request(workload, mid) for mid in sets[phase]] for phase in ("http", "full")}
        for phase in PHASES:
            mark()
            start = time.perf_counter_ns()
            if phase == "store":
                await run.store(sets[phase])
            elif phase == "engine":
                await run.engine_phase(sets[phase])
            else:
                handler = constant if phase == "http" else run.app
                written = await run.through(handler, wires[phase])
                assert written > 0
            timings.append((workload, phase, (time.perf_counter_ns() - start) / n))
        mark()
        await run.engine.stop()
    return timings


def split(per: dict[str, float]) -> dict[str, float]:
    """Per-layer costs from the phase totals (see the module docstring)."""
    return {
        "parsing": per["http"],
        "dispatch": per["full"] - per["http"] - per["engine"],
        "engine": per["engine"] - per["store"],
        "store": per["store"],
        "total": per["full"],
    }


def callgrind_phases(prefix: str) -> list[int]:
    """Instructions of each dump part, in order (the parts between the getppid marks)."""
    parts = []

    def order(path: str) -> tuple[int, int]:  # PREFIX.PID.K in dump order; PREFIX.PID (at exit) last
        numbers = [int(x) for x in path[len(prefix) + 1 :].split(".")]
        return numbers[0], numbers[1] if len(numbers) > 1 else 1 << 30

    dumps = [p for p in glob.glob(prefix + ".*") if re.fullmatch(r"\d+(\.\d+)?", p[len(prefix) + 1 :])]
    for path in sorted(dumps, key=order):
        with open(path) as f:
            text = f.read()
        found = re.search(r"^(?:summary|totals): (\d+)", text, re.M)
        parts.append(int(found.group(1)) if found else 0)
    return parts


def report(title: str, rows: dict[str, dict[str, float]], unit: str) -> None:
    print(f"\n{title} ({unit} per request)")
    print(f"{'workload':12} {'parsing':>9} {'dispatch':>9} {'engine':>9} {'store':>9} {'total':>9}")
    for workload, per in rows.items():
        s = split(per)
        layers = ("parsing", "dispatch", "engine", "store", "total")
        print(f"{workload:12} " + " ".join(f"{s[k]:9.0f}" for k in layers))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20000, help="operations per phase")
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--callgrind", metavar="PREFIX", help="read callgrind dumps PREFIX.* afterwards")
    args = parser.parse_args()
    print(f"build={burrow.BUILD} n={args.n}")
    timings = asyncio.run(main(args))
    rows: dict[str, dict[str, float]] = {}
    for workload, phase, ns in timings:
        rows.setdefault(workload, {})[phase] = ns
    report("perf_counter", rows, "ns")
    if args.callgrind:
        parts = callgrind_phases(args.callgrind)
        # dumps: startup (before the first mark), then per workload its 4 phases and the gap to
        # the next workload's first mark (setup); pick the phases by position.
        per_workload = len(PHASES) + 1
        counts: dict[str, dict[str, float]] = {}
        phases = parts[1:]
        for i, workload in enumerate(args.workloads.split(",")):
            chunk = phases[i * per_workload : i * per_workload + len(PHASES)]
            counts[workload] = {phase: chunk[j] / args.n for j, phase in enumerate(PHASES)}
        report("callgrind", counts, "instructions")
