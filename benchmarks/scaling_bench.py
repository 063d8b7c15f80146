"""Does ``burrow serve --workers N`` scale? Worker-cycle throughput in five deployments, one run.

The load is the worker cycle: ``PUT`` a 100-byte message, take one (``POST ?limit=1&hide=30
&detail=all``), ``DELETE`` the id the take returned. Each connection works on a queue of its
own (account ``s<stream>``, queue ``q``), so queues spread over workers the way many tenants
would. Connections are callback-driven and pipelined (``burrow.bench.client.LoadConnection``,
``--depth`` requests in flight each), spread over ``--clients`` generator processes.

Deployments (each fresh, measured for ``--seconds``):

* ``a``: ``memory://``, one process: the baseline every ratio is against;
* ``b``: Redis, one process;
* ``c``: Redis, ``--workers 2`` (SO_REUSEPORT: both on one port);
* ``d``: ``memory://``, ``--workers N`` behind the router (``burrow proxy``);
* ``e``: the same N memory servers addressed directly, each connection to the server
  :class:`burrow.hashing.Placement` gives its queue (client-side hashing, no router).

Reported per deployment: requests/s (all three kinds), cycles/s (DELETEs answered 204), the
ratio to ``a`` measured in the same run, CPU (seconds per wall second; 1.0 = one core) of the
server processes (the supervisor and all its children), of ``redis-server`` and of the load
generator, of everything else on the machine meanwhile (``other CPU``: the machine's busy
time from ``/proc/stat`` less the processes above; this machine is shared), requests per
CPU-second of the server processes plus ``redis-server`` (``req/CPU-s``, the figure least
disturbed by that noise), and responses that were not 2xx. The machine: ``lscpu``'s model name and the CPUs.

Cores: ``--placement shared`` (the default) lets every process use every CPU, which is the only
way more than one worker can help on a 2-CPU machine (the generator competes for the same
CPUs, so figures are per machine, not per server core); ``--placement split`` pins the server
processes to the first CPU and the generator to the others (``sched_setaffinity``, inherited by
a supervisor's children), the ``burrow bench`` arrangement. ``redis-server`` is never pinned
(it is not this script's process).

Usage: ``.venv/bin/python benchmarks/scaling_bench.py [--seconds 30] [--workers 2]
[--modes a,b,c,d,e] [--redis redis://127.0.0.1:6379/0] [--json FILE]``. Redis deployments are
skipped, with a note, when no Redis answers. Exit status 0 when every deployment ran, 1 when
one failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import re
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

from burrow import __version__
from burrow.bench.client import LoadConnection, Stats, drive
from burrow.bench.procs import ServerProcess, close_client, process_cpu_seconds, raise_nofile
from burrow.bench.workloads import BODY, template
from burrow.client import SyncConnection, encode_request
from burrow.config import Settings
from burrow.hashing import Placement
from burrow.http.server import run

_ID = re.compile(rb'"id":\s*"([^"]+)"')
_SERVERS = re.compile(r"mode=router servers=(\S+)")
MODES = "abcde"


# -- the load (runs in generator subprocesses: this script with --client) ---------------------


class Cycle:
    """One connection's worker cycle on its own queue: PUT, take, and DELETE of what it took."""

    wants_body = True

    def __init__(self, account: str) -> None:
        self.put, self.put_tail = template("PUT", f"/v1.0/{account}/q/m", BODY)
        self.take = encode_request("POST", f"/v1.0/{account}/q?limit=1&hide=30&detail=all")
        self.delete, self.delete_tail = template("DELETE", f"/v1.0/{account}/q/")
        self.counter = 0
        self.pending: list[bytes] = []
        self.put_next = True

    def request(self) -> bytes | None:
        if self.pending:
            return self.delete + self.pending.pop() + self.delete_tail
        self.put_next = not self.put_next
        if not self.put_next:
            self.counter += 1
            return b"%s%012d%s" % (self.put, self.counter, self.put_tail)
        return self.take

    def response(self, code: bytes, body: bytes) -> None:
        if code == b"200" and (found := _ID.search(body)):
            self.pending.append(found.group(1))


def _same(conn: LoadConnection) -> LoadConnection:
    return conn


async def run_client(config: dict[str, Any]) -> dict[str, Any]:
    """Connect every stream to its target, say ready, await go, run for the duration, report."""
    loop = asyncio.get_running_loop()
    stats = Stats()
    depth: int = config["depth"]
    dones: list[asyncio.Future[None]] = []
    conns: list[LoadConnection] = []
    for account, host, port in config["streams"]:
        done: asyncio.Future[None] = loop.create_future()
        conn = LoadConnection(Cycle(account), depth, stats, done)
        await loop.create_connection(functools.partial(_same, conn), host, port)
        dones.append(done)
        conns.append(conn)
    return await drive(conns, dones, stats, config["duration"])


def client_main() -> int:
    config = json.loads(sys.stdin.readline())
    if config.get("cpus"):
        os.sched_setaffinity(0, config["cpus"])
    raise_nofile()
    print(json.dumps(run(run_client(config))), flush=True)
    return 0


# -- the deployments ---------------------------------------------------------------------------


@dataclass
class Result:
    mode: str
    title: str
    processes: int
    requests: int = 0
    elapsed: float = 0.0
    rps: float = 0.0
    cycles_per_s: float = 0.0
    server_cpu: float = 0.0
    redis_cpu: float | None = None
    #: CPU used meanwhile by every other process on the machine (a shared machine's noise).
    other_cpu: float = 0.0
    generator_cpu: float = 0.0
    not_2xx: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    ratio: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def per_cpu(self) -> float:
        """Requests per CPU-second of the server processes and redis-server: the figure least
        disturbed by other processes taking CPU."""
        cpu = self.server_cpu + (self.redis_cpu or 0.0)
        return self.rps / cpu if cpu > 0 else 0.0


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (``/proc/PID/task/*/children``)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as fh:
                    todo.extend(int(child) for child in fh.read().split())
        except OSError:
            continue
    return found


def cpu_of(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):  # it exited meanwhile
            total += process_cpu_seconds(pid)
    return total


def machine_busy() -> float:
    """CPU seconds all CPUs have spent not idle since boot (``/proc/stat``)."""
    with open("/proc/stat") as fh:
        # cpu user nice system idle iowait irq softirq steal ...
        user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fh.readline().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def redis_pid(url: str) -> int | None:
    """The ``redis-server`` process behind ``url`` (``INFO server``), or None when none answers."""
    try:
        import redis
    except ImportError:
        return None
    try:
        client = redis.Redis.from_url(url.split("?", 1)[0], socket_timeout=2)
        try:
            return int(client.info("server")["process_id"])
        finally:
            client.close()
    except (redis.RedisError, OSError, KeyError, ValueError):
        return None


def start_server(argv: list[str], cpus: tuple[int, ...] | None, what: str) -> ServerProcess:
    base = [sys.executable, "-m", "burrow", "serve", "--host", "127.0.0.1", "--port", "0"]
    return ServerProcess([*base, *argv], cpus, what, timeout=60.0)


def load(
    server: ServerProcess,
    streams: list[tuple[str, str, int]],
    args: argparse.Namespace,
    client_cpus: tuple[int, ...] | None,
    redis: int | None,
) -> tuple[list[dict[str, Any]], float, float | None, float]:
    """Run the generators against ``streams``; (their results, and CPU per wall second of the
    server processes, of redis-server, and of the whole machine)."""
    shares = [streams[i :: args.clients] for i in range(args.clients)]
    procs: list[subprocess.Popen[str]] = []
    try:
        for share in shares:
            proc = subprocess.Popen(
                [sys.executable, __file__, "--client"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                env=dict(os.environ, PYTHONUNBUFFERED="1"),
            )
            procs.append(proc)
            config = {"streams": share, "depth": args.depth, "duration": args.seconds}
            if client_cpus:
                config["cpus"] = list(client_cpus)
            assert proc.stdin is not None
            proc.stdin.write(json.dumps(config) + "\n")
            proc.stdin.flush()
        for proc in procs:
            assert proc.stdout is not None
            if (line := proc.stdout.readline().strip()) != "ready":
                raise RuntimeError(f"load generator failed to start: {line!r}")
        pids = process_tree(server.proc.pid)
        t0, server0, busy0 = time.perf_counter(), cpu_of(pids), machine_busy()
        redis0 = cpu_of([redis]) if redis else 0.0
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        results = []
        for proc in procs:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError(f"load generator died; server log: {list(server.log)[-5:]}")
            results.append(json.loads(line))
        wall = time.perf_counter() - t0
        server_cpu = (cpu_of(pids) - server0) / wall
        redis_cpu = (cpu_of([redis]) - redis0) / wall if redis else None
        busy = (machine_busy() - busy0) / wall
    finally:
        for proc in procs:
            close_client(proc, 10)
    return results, server_cpu, redis_cpu, busy


def measure(
    mode: str, args: argparse.Namespace, cpus: tuple[tuple[int, ...], tuple[int, ...]] | None
) -> Result:
    redis_url = f"{args.redis}{'&' if '?' in args.redis else '?'}prefix=scaling-{uuid.uuid4().hex[:10]}"
    n = args.workers
    deployments: dict[str, tuple[str, list[str], int]] = {
        "a": ("memory://, 1 process", ["--backend", "memory://"], 1),
        "b": ("Redis, 1 process", ["--backend", redis_url], 1),
        "c": ("Redis, --workers 2 (SO_REUSEPORT)", ["--backend", redis_url, "--workers", "2"], 2),
        "d": (f"memory://, --workers {n}, via router", ["--backend", "memory://", "--workers", str(n)], n),
        "e": (f"memory://, {n} servers, client hashing", ["--backend", "memory://", "--workers", str(n)], n),
    }
    title, argv, processes = deployments[mode]
    result = Result(mode, title, processes)
    redis = None
    if mode in "bc":
        redis = redis_pid(args.redis)
        if redis is None:
            result.notes.append(f"skipped: no Redis answers at {args.redis}")
            return result
    server_cpus, client_cpus = cpus if cpus else (None, None)
    accounts = [f"s{i:04d}" for i in range(args.connections)]
    with start_server(argv, server_cpus, title) as server:
        if mode == "e":
            line = next((x for x in server.log if _SERVERS.search(x)), "")
            found = _SERVERS.search(line)
            if found is None:
                raise RuntimeError("the supervisor did not announce its servers")
            placement = Placement(found.group(1).split(","), Settings().subset_size)
            streams = []
            for account in accounts:
                host, _, port = placement.server_for(account, "q").removeprefix("http://").rpartition(":")
                streams.append((account, host, int(port)))
        else:
            streams = [(account, server.host, server.port) for account in accounts]
        results, server_cpu, redis_cpu, busy = load(server, streams, args, client_cpus, redis)
        if mode in "bc":
            with SyncConnection(host=server.host, port=server.port, timeout=60) as control:
                control.request("DELETE", "/v1.0")  # only this run's keys (its own prefix)
    statuses: dict[str, int] = {}
    for r in results:
        for status, count in r["statuses"].items():
            statuses[status] = statuses.get(status, 0) + count
    result.elapsed = max(float(r["elapsed"]) for r in results)
    result.requests = sum(int(r["responses"]) for r in results)
    result.rps = result.requests / result.elapsed
    result.cycles_per_s = statuses.get("204", 0) / result.elapsed
    result.server_cpu = server_cpu
    result.redis_cpu = redis_cpu
    result.generator_cpu = sum(float(r["cpu"]) for r in results) / result.elapsed
    result.other_cpu = max(0.0, busy - server_cpu - (redis_cpu or 0.0) - result.generator_cpu)
    result.statuses = statuses
    result.not_2xx = sum(c for s, c in statuses.items() if not s.startswith("2"))
    result.notes.extend(sorted({e for r in results for e in r["errors"]}))
    return result


# -- report -------------------------------------------------------------------------------------


def cpu_model() -> str:
    out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    for line in out.splitlines():
        name, _, value = line.partition(":")
        if name.strip() == "Model name":
            return value.strip()
    return "unknown"


def table(results: list[Result]) -> str:
    head = (
        "| deployment | processes | req/s | cycles/s | x (a) | server CPU | redis CPU | generator CPU"
        " | other CPU | req/CPU-s | not 2xx | notes |"
    )
    rows = [head, "|" + "---|" * 2 + "---:|" * 9 + "---|"]
    for r in results:
        if not r.requests:
            rows.append(f"| ({r.mode}) {r.title} | {r.processes} |" + " - |" * 9 + f" {'; '.join(r.notes)} |")
            continue
        ratio = f"{r.ratio:.2f}" if r.ratio is not None else "-"
        redis = f"{r.redis_cpu:.2f}" if r.redis_cpu is not None else "-"
        rows.append(
            f"| ({r.mode}) {r.title} | {r.processes} | {r.rps:,.0f} | {r.cycles_per_s:,.0f} | {ratio} |"
            f" {r.server_cpu:.2f} | {redis} | {r.generator_cpu:.2f} | {r.other_cpu:.2f} | {r.per_cpu:,.0f} |"
            f" {r.not_2xx} |"
            f" {'; '.join(r.notes)} |"
        )
    return "\n".join(rows)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add("--seconds", type=float, default=30.0, help="measured seconds per deployment [30]")
    add("--workers", type=int, default=2, help="N of deployments d and e [2]")
    add("--modes", default=MODES, help="deployments to run, letters of abcde [abcde]")
    add("--connections", type=int, default=64, help="connections, each with a queue of its own [64]")
    add("--depth", type=int, default=8, help="requests in flight per connection [8]")
    add("--clients", type=int, default=2, help="load generator processes [2]")
    add(
        "--placement",
        choices=("shared", "split"),
        default="shared",
        help="CPU placement (see above) [shared]",
    )
    add("--redis", default="redis://127.0.0.1:6379/0", help="Redis for deployments b and c")
    add("--json", metavar="FILE", help="also write every figure here")
    args = parser.parse_args(argv)
    if not set(args.modes) <= set(MODES) or not args.modes:
        parser.error(f"--modes takes letters of {MODES}")
    if args.connections < 1 or args.depth < 1 or args.clients < 1 or args.workers < 2:
        parser.error("--connections, --depth and --clients must be >= 1, --workers >= 2")
    args.clients = min(args.clients, args.connections)
    return args


def main(argv: list[str]) -> int:
    if argv[:1] == ["--client"]:
        return client_main()
    args = parse_args(argv)
    raise_nofile()
    cpus = sorted(os.sched_getaffinity(0))
    placement = None
    if args.placement == "split" and len(cpus) > 1:
        placement = ((cpus[0],), tuple(cpus[1:]))
        where = f"server processes on CPU {cpus[0]}, generator on CPU {','.join(map(str, cpus[1:]))}"
    else:
        where = f"every process on any of CPUs {','.join(map(str, cpus))} (not pinned)"
    print(
        f"burrow {__version__} scaling benchmark: {cpu_model()}, {len(cpus)} CPUs; {where};"
        " redis-server unpinned"
    )
    print(
        f"worker cycle (PUT, take hide=30, DELETE); {args.connections} connections x depth {args.depth},"
        f" {args.clients} generator processes, {args.seconds:g} s per deployment",
        flush=True,
    )
    results: list[Result] = []
    failed = False
    for mode in args.modes:
        try:
            result = measure(mode, args, placement)
        except Exception as error:
            failed = True
            result = Result(mode, mode, 0, notes=[f"failed: {error}"])
        results.append(result)
        if result.requests:
            print(
                f"  ({mode}) {result.title}: {result.rps:,.0f} req/s, {result.cycles_per_s:,.0f} cycles/s,"
                f" server CPU {result.server_cpu:.2f}, other processes {result.other_cpu:.2f}",
                flush=True,
            )
        else:
            print(f"  ({mode}) {result.title}: {'; '.join(result.notes)}", flush=True)
    base = next((r for r in results if r.mode == "a" and r.requests), None)
    for r in results:
        if base is not None and r.requests:
            r.ratio = r.rps / base.rps
    print()
    print(table(results))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(
                {
                    "cpu_model": cpu_model(),
                    "cpus": cpus,
                    "placement": where,
                    "args": vars(args),
                    "results": [{**asdict(r), "per_cpu": r.per_cpu} for r in results],
                },
                fh,
                indent=2,
            )
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
