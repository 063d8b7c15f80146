"""Drive a load: the Python generator (client subprocesses) or wrk, with server CPU measured around it."""

from __future__ import annotations

import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from typing import Any

from burrow.bench.procs import ServerProcess, close_client, pin
from burrow.bench.workloads import lua_script

#: Below this server CPU share while the generator is (nearly) saturated, the generator is the bottleneck.
SERVER_BUSY = 0.85
GENERATOR_BUSY = 0.80
#: Above this share of the server's CPU taken by other processes, a result is flagged as disturbed.
CONTENDED = 0.10


@dataclass
class LoadResult:
    """One measured run of one workload in one mode."""

    workload: str
    mode: str
    generator: str
    requests: int
    elapsed: float
    rps: float
    #: Responses whose status is not what the workload expects, plus socket errors and timeouts.
    bad: int
    #: Server CPU seconds per wall second over the run (1.0 = one core saturated).
    server_cpu: float
    #: Generator CPU seconds per wall second, divided by the CPUs it may use.
    gen_cpu: float
    #: Share of the server's CPU used by other processes meanwhile (a shared machine's noise).
    other_cpu: float = 0.0
    #: Share of the generator's CPUs used by other processes meanwhile.
    other_gen_cpu: float = 0.0
    statuses: dict[str, int] = field(default_factory=dict)
    p50_ms: float | None = None
    p99_ms: float | None = None
    prefill: int = 0
    ratio: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def per_cpu(self) -> float:
        """Requests per server CPU-second: robust to other processes taking the server's CPU."""
        return self.rps / self.server_cpu if self.server_cpu > 0 else 0.0

    @property
    def generator_bound(self) -> bool:
        return self.server_cpu < SERVER_BUSY and self.gen_cpu >= GENERATOR_BUSY

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["generator_bound"] = self.generator_bound
        data["per_cpu"] = self.per_cpu
        return data


def wrk_path() -> str | None:
    return shutil.which("wrk")


def wrk_version() -> str:
    path = wrk_path()
    if path is None:
        return "absent"
    out = subprocess.run([path, "-v"], capture_output=True, text=True, check=False)
    text = (out.stdout or out.stderr).split("[")[0].strip()
    return text.removeprefix("wrk ") or "unknown"


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_python(
    server: ServerProcess,
    workload: str,
    params: dict[str, int],
    *,
    processes: int,
    connections: int,
    depth: int,
    duration: float,
    cpus: tuple[int, ...],
    ok: tuple[int, ...] = (),
    mode: str = "",
) -> LoadResult:
    """Run ``processes`` client subprocesses, ``connections`` each, ``depth`` requests in flight each.

    ``connections`` is the total, spread over the processes. With ``duration=math.inf`` the scripts'
    own ends (prefills) stop the run.
    """
    processes = max(1, min(processes, connections))
    shares = [connections // processes + (1 if i < connections % processes else 0) for i in range(processes)]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    clients: list[subprocess.Popen[str]] = []
    try:
        base = 0
        for share in shares:
            proc = subprocess.Popen(
                [sys.executable, "-m", "burrow.bench.client"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                env=env,
            )
            clients.append(proc)
            config = {
                "mode": "load",
                "port": server.port,
                "workload": workload,
                "params": params,
                "connections": share,
                "depth": depth,
                "duration": duration if math.isfinite(duration) else 1e9,
                "stream_base": base,
                "streams": connections,
                "cpus": list(cpus),
            }
            base += share
            assert proc.stdin is not None
            proc.stdin.write(json.dumps(config) + "\n")
            proc.stdin.flush()
        for proc in clients:
            assert proc.stdout is not None
            line = proc.stdout.readline().strip()
            if line != "ready":
                raise RuntimeError(f"load generator failed to start ({workload}): {line!r}")
        window = server.window(cpus)
        for proc in clients:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        results: list[dict[str, Any]] = []
        for proc in clients:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError(f"load generator died ({workload}); server log: {list(server.log)[-5:]}")
            results.append(json.loads(line))
        use = window.stop()
    finally:
        for proc in clients:
            close_client(proc, 10)
    if not any(r["responses"] for r in results):
        errors = sorted({e for r in results for e in r["errors"]})
        raise RuntimeError(f"no responses for {workload}: {errors}; server log: {list(server.log)[-5:]}")
    statuses: dict[str, int] = {}
    for result in results:
        for status, count in result["statuses"].items():
            statuses[status] = statuses.get(status, 0) + count
    requests = sum(int(r["responses"]) for r in results)
    elapsed = max(float(r["elapsed"]) for r in results)
    bad = sum(count for status, count in statuses.items() if ok and int(status) not in ok)
    notes = sorted({e for r in results for e in r["errors"]})
    gen_cpu = sum(float(r["cpu"]) for r in results) / elapsed / len(cpus)
    return LoadResult(
        workload=workload,
        mode=mode,
        generator="python",
        requests=requests,
        elapsed=elapsed,
        rps=requests / elapsed,
        bad=bad + len(notes),
        server_cpu=use.server,
        gen_cpu=gen_cpu,
        other_cpu=max(0.0, use.server_cpus_busy - use.server / len(server.cpus)),
        other_gen_cpu=max(0.0, use.client_cpus_busy - gen_cpu),
        statuses=statuses,
        notes=notes,
    )


def run_wrk(
    server: ServerProcess,
    workload: str,
    params: dict[str, int],
    *,
    connections: int,
    duration: float,
    cpus: tuple[int, ...],
    mode: str = "",
) -> LoadResult:
    """wrk with one thread per generator CPU and ``connections`` keep-alive connections, no pipelining."""
    path = wrk_path()
    if path is None:
        raise RuntimeError("wrk is not installed")
    threads = len(cpus)
    seconds = max(1, math.ceil(duration))
    with tempfile.NamedTemporaryFile("w", suffix=".lua", prefix=f"burrow-{workload}-", delete=False) as fh:
        fh.write(lua_script(workload, params, threads))
        script = fh.name
    try:
        argv = [path, f"-t{threads}", f"-c{max(connections, threads)}", f"-d{seconds}s", "--timeout", "10s"]
        argv += ["-s", script, f"http://{server.host}:{server.port}/"]
        children0 = _children_cpu()
        window = server.window(cpus)
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        pin(proc.pid, cpus)
        out, err = proc.communicate(timeout=seconds + 60)
        use = window.stop()
        gen_cpu = (_children_cpu() - children0) / use.wall / threads
    finally:
        os.unlink(script)
    line = next((x for x in out.splitlines() if x.startswith("BENCHJSON ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {err.strip() or out.strip()}")
    data = json.loads(line[len("BENCHJSON ") :])
    elapsed = data["duration_us"] / 1e6
    errors = {k: int(data[k]) for k in ("connect", "read", "write", "timeout") if data[k]}
    notes = [f"socket errors {errors}"] if errors else []
    if "Non-2xx" in out and not data["status"]:
        notes.append("wrk reported non-2xx")
    return LoadResult(
        workload=workload,
        mode=mode,
        generator="wrk",
        requests=int(data["requests"]),
        elapsed=elapsed,
        rps=data["requests"] / elapsed,
        bad=int(data["status"]) + sum(errors.values()),
        server_cpu=use.server,
        gen_cpu=gen_cpu,
        other_cpu=max(0.0, use.server_cpus_busy - use.server / len(server.cpus)),
        other_gen_cpu=max(0.0, use.client_cpus_busy - gen_cpu),
        statuses={"4xx/5xx": int(data["status"])},
        p50_ms=data["p50_us"] / 1e3,
        p99_ms=data["p99_us"] / 1e3,
        notes=notes,
    )
