"""The processes under test: start a Burrow or echo server, pin it, await readiness, measure it.

CPU time and memory are read from ``/proc`` (the benchmark pins processes with
``sched_setaffinity``, so it is Linux-only anyway), so ``burrow bench`` needs nothing beyond a
plain install.
"""

from __future__ import annotations

import collections
import json
import os
import re
import resource
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

from burrow.client import SyncConnection

_READY = re.compile(r"listening on http://([^:\s]+):(\d+)")
_TICK = os.sysconf("SC_CLK_TCK")  # the unit of /proc's CPU times
_PAGE = os.sysconf("SC_PAGE_SIZE")


def raise_nofile(wanted: int = 1 << 20) -> int:
    """Raise this process's RLIMIT_NOFILE soft limit towards ``wanted`` (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


@dataclass(frozen=True)
class Placement:
    """Which CPUs the server and the load generator run on."""

    server: tuple[int, ...]
    client: tuple[int, ...]

    @classmethod
    def split(cls) -> Placement:
        """Server on the first CPU this process may use, load generator on the rest (shared if only one)."""
        cpus = sorted(os.sched_getaffinity(0))
        return cls((cpus[0],), tuple(cpus[1:]) or (cpus[0],))

    def describe(self) -> str:
        return f"server on CPU {_cpus(self.server)}, load generator on CPU {_cpus(self.client)}"


def _cpus(cpus: tuple[int, ...]) -> str:
    return ",".join(map(str, cpus))


def pin(pid: int, cpus: tuple[int, ...]) -> None:
    """Restrict a process to ``cpus`` (sched_setaffinity)."""
    os.sched_setaffinity(pid, cpus)


def _busy(cpus: tuple[int, ...]) -> float:
    """CPU seconds spent not idle on ``cpus`` since boot (all processes), from ``/proc/stat``."""
    wanted = {f"cpu{cpu}" for cpu in cpus}
    total = 0
    with open("/proc/stat") as fh:
        for line in fh:
            name, *ticks = line.split()
            if name in wanted:
                # user nice system idle iowait irq softirq steal [guest guest_nice, already in user]
                user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, ticks[:8])
                total += user + nice + system + irq + softirq + steal
    return total / _TICK


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds process ``pid`` has used (``/proc/PID/stat``)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
    return (int(fields[11]) + int(fields[12])) / _TICK


def process_rss(pid: int) -> int:
    """Resident memory of process ``pid`` in bytes (``/proc/PID/statm``)."""
    with open(f"/proc/{pid}/statm") as fh:
        return int(fh.read().split()[1]) * _PAGE


@dataclass(frozen=True)
class CpuUse:
    """CPU use over a window, as fractions of one CPU (server) or of all the CPUs named."""

    server: float
    server_cpus_busy: float
    client_cpus_busy: float
    wall: float


class CpuWindow:
    """Measures the server's CPU, and how busy the server's and the generator's CPUs were overall."""

    def __init__(self, server: ServerProcess, client_cpus: tuple[int, ...]) -> None:
        self.server, self.client_cpus = server, client_cpus
        self.t0 = time.perf_counter()
        self.cpu0 = server.cpu_seconds()
        self.busy0 = _busy(server.cpus), _busy(client_cpus)

    def stop(self) -> CpuUse:
        wall = max(time.perf_counter() - self.t0, 1e-9)
        server = self.server.cpu_seconds() - self.cpu0
        busy_server = (_busy(self.server.cpus) - self.busy0[0]) / wall / len(self.server.cpus)
        busy_client = (_busy(self.client_cpus) - self.busy0[1]) / wall / len(self.client_cpus)
        return CpuUse(server / wall, busy_server, busy_client, wall)


class ServerProcess:
    """A server subprocess (Burrow or echo) that logged its address; measured through ``/proc``."""

    def __init__(
        self, argv: list[str], cpus: tuple[int, ...] | None, what: str, timeout: float = 30.0
    ) -> None:
        self.what = what
        self.argv = argv
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        self.cpus = tuple(cpus) if cpus is not None else tuple(sorted(os.sched_getaffinity(0)))
        if cpus is not None:
            pin(self.proc.pid, cpus)
        self.log: collections.deque[str] = collections.deque(maxlen=200)
        self.host, self.port = self._await_ready(timeout)
        self._drain = threading.Thread(target=self._drain_stderr, daemon=True)
        self._drain.start()

    def _await_ready(self, timeout: float) -> tuple[str, int]:
        assert self.proc.stderr is not None
        deadline = time.monotonic() + timeout
        # readline blocks, so a watchdog kills a server that neither logs readiness nor exits.
        timer = threading.Timer(timeout, self.proc.kill)
        timer.start()
        try:
            for line in self.proc.stderr:
                self.log.append(line.rstrip())
                found = _READY.search(line)
                if found:
                    return found.group(1), int(found.group(2))
                if time.monotonic() > deadline:
                    break
        finally:
            timer.cancel()
        self.proc.kill()
        self.proc.wait()
        self.proc.stderr.close()
        raise RuntimeError(f"{self.what} did not become ready: {' | '.join(self.log)}")

    def _drain_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.append(line.rstrip())

    def cpu_seconds(self) -> float:
        """User + system CPU seconds the server process has used so far."""
        return process_cpu_seconds(self.proc.pid)

    def rss(self) -> int:
        return process_rss(self.proc.pid)

    def window(self, client_cpus: tuple[int, ...]) -> CpuWindow:
        """Start measuring CPU use (see :class:`CpuWindow`)."""
        return CpuWindow(self, client_cpus)

    def wait_idle(self, quiet: float = 0.05, window: float = 0.2, timeout: float = 10.0) -> float:
        """Wait until the server's CPU use over ``window`` s drops under ``quiet`` (a fraction of one CPU).

        Returns the time waited (at most ``timeout``).
        """
        start = time.monotonic()
        before = self.cpu_seconds()
        while time.monotonic() - start < timeout:
            time.sleep(window)
            now = self.cpu_seconds()
            if now - before < quiet * window:
                break
            before = now
        return time.monotonic() - start

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, then SIGKILL after ``timeout``; return the exit status."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._drain.join(5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        return int(self.proc.returncode)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def close_client(proc: subprocess.Popen[str], timeout: float) -> None:
    """End a load-generator client: close its stdin (its signal to finish), wait up to
    ``timeout`` seconds, kill it if it is still running, and close its stdout."""
    if proc.stdin is not None:
        proc.stdin.close()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def start_burrow(backend: str, cpus: tuple[int, ...] | None, *extra: str) -> ServerProcess:
    """``python -m burrow serve --backend URL --host 127.0.0.1 --port 0``, emptied and ready."""
    argv = [
        sys.executable,
        "-m",
        "burrow",
        "serve",
        "--backend",
        backend,
        "--host",
        "127.0.0.1",
        "--port",
        "0",
    ]
    server = ServerProcess([*argv, *extra], cpus, f"burrow ({backend})")
    try:
        with Control(server.port) as control:
            control.request("DELETE", "/v1.0")  # a file backend may hold a previous run's messages
            control.request("GET", "/")  # warm up lazy paths before any measurement
    except BaseException:
        server.stop()
        raise
    return server


def start_echo(cpus: tuple[int, ...] | None) -> ServerProcess:
    """The echo baseline (``python -m burrow.bench.echo``)."""
    return ServerProcess([sys.executable, "-m", "burrow.bench.echo", "--port", "0"], cpus, "echo server")


class Control(SyncConnection):
    """A keep-alive HTTP client for setup and checks (not for load)."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 60.0) -> None:
        super().__init__(host=host, port=port, timeout=timeout)

    def count_messages(self, account: str, queue: str) -> int:
        """Count a queue's messages, hidden ones included, paging by marker."""
        total, marker = 0, ""
        while True:
            path = f"/v1.0/{account}/{queue}?detail=id&match_hidden=true&limit=1000"
            reply = self.request("GET", path + (f"&marker={marker}" if marker else ""))
            if reply.status == 404:
                return total
            if reply.status != 200:
                raise RuntimeError(f"GET {path}: {reply.status} {reply.body[:200]!r}")
            ids = json.loads(reply.body)
            total += len(ids)
            marker = ids[-1]
