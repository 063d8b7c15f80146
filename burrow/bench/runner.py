"""``burrow bench``: the 2011 experiment (echo baseline, pipelined and many-connection modes), memory
per stored message, and long-poll wake latency; progress per step, a summary table, optional JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from burrow import __version__
from burrow.bench.loadgen import CONTENDED, LoadResult, run_python, run_wrk, wrk_path, wrk_version
from burrow.bench.measure import LongPollResult, MemoryResult, measure_longpoll, measure_memory
from burrow.bench.procs import Placement, ServerProcess, raise_nofile, start_burrow, start_echo
from burrow.bench.workloads import ECHO, WORKLOADS, Workload

MODES = ("concurrent", "pipelined")
#: Margin on the expected rate when sizing the prefill of workloads that consume messages.
PREFILL_MARGIN = 1.3


@dataclass
class Config:
    duration: float
    connections: int
    pipeline: int
    clients: int
    workloads: list[str]
    modes: list[str]
    generator: str
    backend: str
    memory_messages: int
    longpoll_waiters: int
    skip_memory: bool
    skip_longpoll: bool
    skip_throughput: bool
    max_prefill: int
    json_file: str | None


def parse_args(argv: Sequence[str]) -> Config:
    parser = argparse.ArgumentParser(
        prog="burrow bench",
        description="Benchmark Burrow against an echo baseline (server pinned to one CPU, load "
        "generator on the others), then memory per message and long-poll wake latency. "
        "See benchmarks/README.md.",
    )
    add = parser.add_argument
    add("--duration", type=float, default=None, help="seconds per workload and mode [5; --quick: 1]")
    add("--connections", type=int, default=100, help="keep-alive connections in concurrent mode [100]")
    add("--pipeline", type=int, default=100, help="requests in flight per connection in pipelined mode [100]")
    add("--clients", type=int, default=2, help="client processes in pipelined mode, one connection each [2]")
    add("--workloads", default=",".join(WORKLOADS), help=f"comma list of: {', '.join(WORKLOADS)} [all]")
    add("--modes", default=",".join(MODES), help="concurrent (wrk-style, no pipelining), pipelined [both]")
    add(
        "--generator",
        choices=("auto", "wrk", "python"),
        default="auto",
        help="concurrent-mode load generator: wrk when installed (auto), or the Python one [auto]",
    )
    add("--backend", default="memory://", help="storage URL of the server under test [memory://]")
    add(
        "--memory-messages",
        type=int,
        default=None,
        help="messages for the memory run [1000000; --quick: 20000]",
    )
    add("--longpoll-waiters", type=int, default=None, help="concurrent long polls [10000; --quick: 1000]")
    add(
        "--max-prefill",
        type=int,
        default=2_000_000,
        help="cap on messages stored before a consuming workload",
    )
    add("--skip-memory", action="store_true", help="skip the memory measurement")
    add("--skip-longpoll", action="store_true", help="skip the long-poll measurement")
    add("--skip-throughput", action="store_true", help="skip the req/s workloads")
    add("--quick", action="store_true", help="smoke run: short durations and small counts (~45 s)")
    add("--json", dest="json_file", metavar="FILE", help="also write all results as JSON to FILE")
    args = parser.parse_args(list(argv))
    workloads = [w for w in args.workloads.split(",") if w]
    modes = [m for m in args.modes.split(",") if m]
    for name in workloads:
        if name not in WORKLOADS:
            parser.error(f"unknown workload {name!r}; choose from {', '.join(WORKLOADS)}")
    for mode in modes:
        if mode not in MODES:
            parser.error(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
    for name in ("connections", "pipeline", "clients"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    quick = args.quick
    return Config(
        duration=args.duration if args.duration is not None else (1.0 if quick else 5.0),
        connections=args.connections,
        pipeline=args.pipeline,
        clients=args.clients,
        workloads=workloads,
        modes=modes,
        generator=args.generator,
        backend=args.backend,
        memory_messages=args.memory_messages or (20_000 if quick else 1_000_000),
        longpoll_waiters=args.longpoll_waiters or (1000 if quick else 10_000),
        skip_memory=args.skip_memory,
        skip_longpoll=args.skip_longpoll,
        skip_throughput=args.skip_throughput,
        max_prefill=args.max_prefill,
        json_file=args.json_file,
    )


def machine_info() -> dict[str, Any]:
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as fh:
            model = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), model)
    except OSError:
        pass
    try:
        from importlib.metadata import version

        uv = version("uvloop")
    except Exception:
        uv = "absent"
    return {
        "cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "python": platform.python_version(),
        "uvloop": uv,
        "wrk": wrk_version(),
        "burrow": __version__,
        "kernel": platform.release(),
    }


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Bench:
    """Runs the plan and keeps the results."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.placement = Placement.split()
        self.results: list[LoadResult] = []
        self.memory: MemoryResult | None = None
        self.longpoll: LongPollResult | None = None
        self.use_wrk = config.generator == "wrk" or (config.generator == "auto" and wrk_path() is not None)
        if config.generator == "wrk" and wrk_path() is None:
            raise SystemExit("burrow bench: --generator wrk but wrk is not installed (apt-get install wrk)")

    def generator_for(self, mode: str) -> str:
        if mode == "pipelined":
            return (
                f"python, {self.config.clients} processes x 1 connection x {self.config.pipeline} in flight"
            )
        if self.use_wrk:
            return f"wrk, {len(self.placement.client)} thread(s), {self.config.connections} connections"
        return f"python, {self.config.connections} connections x 1 in flight (wrk not used)"

    def load(
        self, server: ServerProcess, workload: Workload, mode: str, params: dict[str, int]
    ) -> LoadResult:
        c = self.config
        if mode == "concurrent" and self.use_wrk:
            return run_wrk(
                server, workload.name, params, connections=c.connections, duration=c.duration,
                cpus=self.placement.client, mode=mode,
            )  # fmt: skip
        pipelined = mode == "pipelined"
        return run_python(
            server,
            workload.name,
            params,
            processes=c.clients if pipelined else max(1, min(c.clients, len(self.placement.client)) * 2),
            connections=c.clients if pipelined else c.connections,
            depth=c.pipeline if pipelined else 1,
            duration=c.duration,
            cpus=self.placement.client,
            ok=workload.ok,
            mode=mode,
        )

    def prefill(self, server: ServerProcess, queue: str, n: int) -> float:
        if n <= 0:
            return 0.0
        fill = run_python(
            server, f"fill:{queue}", {"n": n}, processes=self.config.clients, connections=self.config.clients,
            depth=100, duration=math.inf, cpus=self.placement.client, ok=(201,),
        )  # fmt: skip
        if fill.bad or fill.requests != n:
            raise RuntimeError(f"prefill of {queue}: {fill.requests}/{n} sent, statuses {fill.statuses}")
        return fill.elapsed

    def expected_rps(self, mode: str, echo: LoadResult | None) -> float:
        """A generous guess of a consuming workload's rate: the best single-message rate seen so far."""
        seen = {r.workload: r.rps for r in self.results if r.mode == mode and r.workload != "echo"}
        similar = [rps for name, rps in seen.items() if name not in ("root", "take")]
        floor = echo.rps / 2 if echo else 50_000.0  # the 0.6x target, less a margin for a busy machine
        if similar and not (mode == "concurrent" and self.use_wrk):
            return max(similar)  # the Python generator stops a delete run at the last prefilled id
        return max([*similar, floor])

    def throughput(self) -> None:
        c = self.config
        for mode in c.modes:
            say(f"== {mode} mode: {self.generator_for(mode)}; {self.placement.describe()}")
            with start_echo(self.placement.server) as echo_server:
                say(f"  echo baseline ({echo_server.log[-1] if echo_server.log else ''}) ...")
                echo = self.load(echo_server, ECHO, mode, {})
            self._record(echo, None)
            for name in c.workloads:
                workload = WORKLOADS[name]
                with start_burrow(c.backend, self.placement.server) as server:
                    params: dict[str, int] = {}
                    stored = 0
                    took = 0.0
                    for queue, n in workload.fills:
                        took += self.prefill(server, queue, n)
                        params["n" if queue == "q" else "nread"] = n
                        stored += n
                    if workload.consumes:
                        want = self.expected_rps(mode, echo) * math.ceil(c.duration) * workload.consumes
                        n = min(c.max_prefill, int(want * PREFILL_MARGIN) + 1000)
                        took += self.prefill(server, "q", n)
                        params["n"] = n
                        stored += n
                    if stored:
                        say(f"  {name}: prefilled {stored:,} messages in {took:.1f}s")
                    server.wait_idle(timeout=3.0)
                    result = self.load(server, workload, mode, params)
                    result.prefill = stored
                    if not server.alive():
                        result.notes.append("server died")
                    elif workload.consumes and result.bad:
                        result.notes.append("queue may have run dry (raise --max-prefill)")
                self._record(result, echo)

    def _record(self, result: LoadResult, echo: LoadResult | None) -> None:
        if echo is not None and echo.rps:
            result.ratio = result.rps / echo.rps
        if result.generator_bound:
            result.notes.append("generator-bound")
        if result.other_cpu > CONTENDED:
            result.notes.append(f"other processes took {result.other_cpu:.0%} of the server CPU")
        if result.other_gen_cpu > CONTENDED:
            result.notes.append(f"other processes took {result.other_gen_cpu:.0%} of the generator CPU")
        self.results.append(result)
        ratio = f", {result.ratio:.2f}x echo" if result.ratio is not None else ""
        bad = f", {result.bad:,} unexpected" if result.bad else ""
        say(
            f"  {result.workload:<12} {result.rps:>10,.0f} req/s{ratio} (server CPU {result.server_cpu:.0%},"
            f" generator CPU {result.gen_cpu:.0%}{bad}) {'; '.join(result.notes)}".rstrip()
        )

    def run(self) -> int:
        c = self.config
        say(f"burrow bench: backend {c.backend}, {c.duration:g}s per workload; {self.placement.describe()}")
        if not self.use_wrk and "concurrent" in c.modes:
            say("  note: wrk not found; concurrent mode uses the Python generator, which saturates early")
        start = time.monotonic()
        if not c.skip_throughput:
            self.throughput()
        if not c.skip_memory:
            say(f"== memory: {c.memory_messages:,} messages of 16-byte id + 100-byte body, fresh server")
            self.memory = measure_memory(c.backend, c.memory_messages, self.placement, processes=c.clients)
            m = self.memory
            say(
                f"  {m.bytes_per_message:.1f} bytes/message (RSS {m.rss_before / 2**20:.1f} -> "
                f"{m.rss_after / 2**20:.1f} MiB; {m.stored:,} stored; PUT {m.put_rps:,.0f} req/s)"
            )
        if not c.skip_longpoll:
            say(f"== long-poll: {c.longpoll_waiters:,} waiters on as many queues, then one PUT each")
            self.longpoll = measure_longpoll(c.backend, c.longpoll_waiters, self.placement)
            lp = self.longpoll
            say(
                f"  woke {lp.woken:,}/{lp.waiters:,}: p50 {lp.p50_ms:.2f} ms, p99 {lp.p99_ms:.2f} ms, "
                f"max {lp.max_ms:.2f} ms after the PUT's response ({lp.bytes_per_waiter:,.0f} bytes/waiter)"
            )
        say(f"done in {time.monotonic() - start:.0f}s")
        print(self.summary())
        if c.json_file:
            with open(c.json_file, "w") as fh:
                json.dump(self.as_dict(), fh, indent=2)
                fh.write("\n")
        failed = any("server died" in r.notes for r in self.results)
        return 1 if failed else 0

    def summary(self) -> str:
        lines: list[str] = []
        if self.results:
            lines += [
                "| workload | mode | generator | req/s | x echo | server CPU | req/CPU-s | gen CPU "
                "| unexpected | p99 ms | notes |",
                "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
            ]
        for r in self.results:
            ratio = f"{r.ratio:.2f}" if r.ratio is not None else "1.00" if r.workload == "echo" else "-"
            p99 = f"{r.p99_ms:.2f}" if r.p99_ms is not None else "-"
            lines.append(
                f"| {r.workload} | {r.mode} | {r.generator} | {r.rps:,.0f} | {ratio} | {r.server_cpu:.0%} "
                f"| {r.per_cpu:,.0f} | {r.gen_cpu:.0%} | {r.bad:,} | {p99} | {'; '.join(r.notes)} |"
            )
        if self.memory is not None:
            m = self.memory
            lines += [
                "",
                f"memory ({m.backend}): {m.bytes_per_message:.1f} bytes per stored message "
                f"({m.messages:,} messages of 16-byte id + 100-byte body; RSS {m.rss_before / 2**20:.1f} -> "
                f"{m.rss_after / 2**20:.1f} MiB; {m.stored:,} counted back)",
            ]
        if self.longpoll is not None:
            lp = self.longpoll
            lines += [
                "",
                f"long-poll: {lp.waiters:,} waiters held, {lp.woken:,} woken; wake latency after the PUT's "
                f"response p50 {lp.p50_ms:.2f} ms, p99 {lp.p99_ms:.2f} ms, max {lp.max_ms:.2f} ms "
                f"(from the PUT's send: p50 {lp.send_p50_ms:.2f}, p99 {lp.send_p99_ms:.2f} ms); "
                f"{lp.bytes_per_waiter:,.0f} bytes per waiter",
            ]
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {
            "machine": machine_info(),
            "config": vars(self.config),
            "placement": {"server": self.placement.server, "client": self.placement.client},
            "throughput": [r.as_dict() for r in self.results],
            "memory": self.memory.as_dict() if self.memory else None,
            "longpoll": self.longpoll.as_dict() if self.longpoll else None,
        }


def main(argv: list[str]) -> int:
    """Entry point of ``burrow bench`` (and ``python -m burrow.bench``)."""
    if argv[:1] == ["--"]:
        argv = argv[1:]
    config = parse_args(argv)
    raise_nofile()
    bench = Bench(config)
    affinity = os.sched_getaffinity(0)
    os.sched_setaffinity(0, bench.placement.client)  # keep the orchestrator off the server's CPU
    try:
        info = machine_info()
        say(
            f"machine: {info['cpus']} CPUs ({info['cpu_model']}), Python {info['python']}, "
            f"uvloop {info['uvloop']}, wrk {info['wrk']}"
        )
        return bench.run()
    finally:
        os.sched_setaffinity(0, affinity)
