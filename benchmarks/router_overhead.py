"""Requests/s and latency through ``burrow proxy`` against direct access to the same server.

Each (workload, target) run gets a fresh memory server; "router" puts a router with that one
server as its only server in front of it, so the difference is the router's hop alone. Runs
alternate direct/router and repeat; wrk (keep-alive, no pipelining) drives the load and
reports p50/p99. CPU per request is read from /proc for the server and the router.

    .venv/bin/python benchmarks/router_overhead.py [--duration 3] [--repeat 3] [--connections 32]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys

from burrow.bench.loadgen import run_python, run_wrk
from burrow.bench.procs import ServerProcess, process_cpu_seconds, start_burrow
from burrow.bench.workloads import WORKLOADS

ALL_CPUS: tuple[int, ...] = tuple(sorted(os.sched_getaffinity(0)))


def start_router(server: ServerProcess) -> ServerProcess:
    argv = [sys.executable, "-m", "burrow", "proxy", "--host", "127.0.0.1", "--port", "0",
            "--servers", f"http://127.0.0.1:{server.port}"]  # fmt: skip
    return ServerProcess(argv, None, "router")


def prefill(server: ServerProcess, queue: str, n: int) -> None:
    fill = run_python(server, f"fill:{queue}", {"n": n}, processes=1, connections=1, depth=100,
                      duration=math.inf, cpus=ALL_CPUS, ok=(201,))  # fmt: skip
    assert fill.requests == n and not fill.bad, fill


def one_run(workload: str, target: str, duration: float, connections: int, consume: int) -> dict[str, float]:
    w = WORKLOADS[workload]
    with start_burrow("memory://", None) as server:
        router = start_router(server) if target == "router" else None
        try:
            params: dict[str, int] = {}
            for queue, n in w.fills:
                prefill(server, queue, n)
                params["n" if queue == "q" else "nread"] = n
            if w.consumes:
                prefill(server, "q", consume)
                params["n"] = consume
            front = router or server
            s0 = process_cpu_seconds(server.proc.pid)
            r0 = process_cpu_seconds(router.proc.pid) if router else 0.0
            result = run_wrk(front, workload, params, connections=connections, duration=duration,
                             cpus=ALL_CPUS, mode="concurrent")  # fmt: skip
            s1 = process_cpu_seconds(server.proc.pid)
            r1 = process_cpu_seconds(router.proc.pid) if router else 0.0
        finally:
            if router is not None:
                router.stop()
    n = max(result.requests, 1)
    return {
        "rps": result.rps,
        "p50_ms": result.p50_ms or 0.0,
        "p99_ms": result.p99_ms or 0.0,
        "bad": result.bad,
        "server_us_per_req": (s1 - s0) / n * 1e6,
        "router_us_per_req": (r1 - r0) / n * 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--consume", type=int, default=60_000, help="messages prefilled for take/delete")
    parser.add_argument("--workloads", default="put,get_message,take,delete")
    args = parser.parse_args()
    results: dict[str, dict[str, list[dict[str, float]]]] = {}
    for workload in args.workloads.split(","):
        for _ in range(args.repeat):
            for target in ("direct", "router"):
                r = one_run(workload, target, args.duration, args.connections, args.consume)
                results.setdefault(workload, {}).setdefault(target, []).append(r)
                print(workload, target, json.dumps({k: round(v, 2) for k, v in r.items()}), file=sys.stderr)
    print("| workload | direct req/s | router req/s | ratio | direct p50/p99 ms | router p50/p99 ms |"
          " server CPU µs/req (direct, routed) | router CPU µs/req |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for workload, by in results.items():
        m = {(t, k): statistics.median(run[k] for run in by[t]) for t in by for k in by[t][0]}
        d, rt = m["direct", "rps"], m["router", "rps"]
        print(
            f"| {workload} | {d:,.0f} | {rt:,.0f} | {rt / d:.2f}"
            f" | {m['direct', 'p50_ms']:.2f} / {m['direct', 'p99_ms']:.2f}"
            f" | {m['router', 'p50_ms']:.2f} / {m['router', 'p99_ms']:.2f}"
            f" | {m['direct', 'server_us_per_req']:.0f}, {m['router', 'server_us_per_req']:.0f}"
            f" | {m['router', 'router_us_per_req']:.0f} |"
        )


if __name__ == "__main__":
    main()
