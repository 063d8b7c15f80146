"""Burrow's durable modes against RabbitMQ, one load client, one run (issue 14).

The workload is a work queue at its simplest: ``--pairs`` producers and as many consumers,
100-byte messages, each producer sending one message at a time and each consumer taking
one message at a time and then deleting it:

* Burrow (a ``burrow serve`` process started here, one per target): a producer PUTs a
  message with a unique id and waits for its 201; a consumer POSTs
  ``?limit=1&hide=30&wait=1&detail=id`` (take one and hide it, long-polling up to 1 s) and
  then DELETEs the id it got. Every producer and consumer has its own keep-alive connection.
* RabbitMQ (``--amqp``, default ``amqp://guest:guest@127.0.0.1:5672/``, a server that is
  already running): a durable queue, persistent messages; a producer publishes on a channel
  in confirm mode and waits for the broker's confirm of each message; a consumer consumes
  with ``prefetch_count=1`` and acknowledges each message. Every producer and consumer has
  its own connection. (This is RabbitMQ's fast path: deliveries are pushed, where Burrow's
  consumers ask for each message.)

Targets (``--targets``, comma-separated): ``burrow:MODE`` (``--fsync MODE``: ``batch``,
``always``, ``never``; ``burrow:batch:0.002`` also sets ``--fsync-interval``;
``burrow:memory`` is the memory backend, for the cost of everything but the storage),
``burrow:MODE@DIR`` (the server from the Burrow source tree DIR, for before/after
comparisons: any extra setting must exist there), and ``rabbitmq``. All Burrow servers run at
once; rounds go round-robin over every (pairs, target), so a busy machine hits all of them
alike. Each round uses a new queue. The median round is reported.

Reported per target and pair count: messages consumed end to end per second (a message
counts when its DELETE or ack was answered or sent), ``x base`` (against the first target
in the same run), the server's CPU per message (user + system of the whole server process,
from ``/proc/PID/stat``; for RabbitMQ the ``beam.smp`` process), and for Burrow how that CPU
splits between its event-loop thread and its other threads (``/proc/PID/task/*/stat``), and
the load client's own CPU per message.

Usage: ``.venv/bin/pip install -e '.[rabbitmq]'``, then
``.venv/bin/python benchmarks/rabbitmq_bench.py --pairs 1,8 --rounds 5 --seconds 5``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

READY = re.compile(r"listening on http://([0-9.]+):(\d+) ")
BODY = b"b" * 100
TICK = os.sysconf("SC_CLK_TCK")


# -- CPU accounting -----------------------------------------------------------------------


def _stat_cpu(path: Path) -> float:
    fields = path.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def process_cpu(pid: int) -> float:
    """User + system seconds of a whole process (all its threads, dead ones included)."""
    return _stat_cpu(Path(f"/proc/{pid}/stat"))


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds per thread, keyed by name (the main thread is ``loop``; others by their comm)."""
    out: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = "loop" if task.name == str(pid) else (task / "comm").read_text().strip()
            out[name] = out.get(name, 0.0) + _stat_cpu(task / "stat")
        except OSError:
            continue  # the thread ended meanwhile
    return out


def find_process(comm: str) -> int:
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if (proc / "comm").read_text().strip() == comm:
                    return int(proc.name)
            except OSError:
                continue
    raise RuntimeError(f"no {comm} process found (is the server running on this machine?)")


def client_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# -- targets --------------------------------------------------------------------------------


@dataclass
class Round:
    seconds: float
    consumed: int
    produced: int
    server_cpu: float
    client_cpu: float
    threads: dict[str, float] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.consumed / self.seconds


class Target:
    """One system under test: started once, then driven for a round at a time."""

    name: str
    pid: int

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    def threads(self) -> dict[str, float]:
        return {}

    async def round(self, tag: str, pairs: int, seconds: float) -> Round:
        """Drive ``pairs`` producers and consumers for ``seconds`` on a new queue ``tag``."""
        counts = {"produced": 0, "consumed": 0}
        await self.prepare(tag)
        stop = asyncio.Event()
        workers = [self.producer(tag, i, stop, counts) for i in range(pairs)]
        workers += [self.consumer(tag, stop, counts) for _ in range(pairs)]
        tasks = [asyncio.ensure_future(w) for w in workers]
        await asyncio.sleep(min(0.5, seconds / 5))  # connections up, queue flowing
        base = dict(counts)
        cpu0, client0, threads0, t0 = process_cpu(self.pid), client_cpu(), self.threads(), time.monotonic()
        await asyncio.sleep(seconds)
        cpu1, client1, threads1, t1 = process_cpu(self.pid), client_cpu(), self.threads(), time.monotonic()
        done = dict(counts)
        stop.set()
        await asyncio.gather(*tasks)
        await self.cleanup(tag)
        return Round(
            t1 - t0,
            done["consumed"] - base["consumed"],
            done["produced"] - base["produced"],
            cpu1 - cpu0,
            client1 - client0,
            {k: v - threads0.get(k, 0.0) for k, v in threads1.items()},
        )

    async def prepare(self, tag: str) -> None:
        pass

    async def cleanup(self, tag: str) -> None:
        pass

    async def producer(self, tag: str, n: int, stop: asyncio.Event, counts: dict[str, int]) -> None:
        raise NotImplementedError

    async def consumer(self, tag: str, stop: asyncio.Event, counts: dict[str, int]) -> None:
        raise NotImplementedError


class Http:
    """A minimal keep-alive HTTP/1.1 client: prebuilt requests, Content-Length framing only."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, host: str, port: int) -> Http:
        return cls(*await asyncio.open_connection(host, port))

    async def request(self, head: bytes, body: bytes = b"") -> tuple[int, bytes]:
        self.writer.write(head + body)
        raw = await self.reader.readuntil(b"\r\n\r\n")
        at = raw.lower().find(b"content-length:")
        length = int(raw[at + 15 : raw.index(b"\r\n", at)]) if at >= 0 else 0
        return int(raw[9:12]), await self.reader.readexactly(length) if length else b""

    def close(self) -> None:
        self.writer.close()


def head(method: str, target: str, length: int = 0) -> bytes:
    return f"{method} {target} HTTP/1.1\r\nhost: bench\r\ncontent-length: {length}\r\n\r\n".encode()


class Burrow(Target):
    def __init__(self, spec: str, tmp: Path, index: int) -> None:
        self.name = spec
        mode, _, src = spec.removeprefix("burrow:").partition("@")
        fsync, _, interval = mode.partition(":")
        self.src = Path(src).resolve() if src else Path(__file__).resolve().parent.parent
        self.args = ["--fsync", fsync] + (["--fsync-interval", interval] if interval else [])
        self.backend = f"sqlite:///{tmp / f'burrow-{index}.db'}"
        if fsync == "memory":
            self.args, self.backend = [], "memory://"
        self.proc: asyncio.subprocess.Process | None = None
        self.host, self.port = "127.0.0.1", 0

    async def start(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(self.src)}
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "burrow",
            "serve",
            "--backend",
            self.backend,
            "--port",
            "0",
            *self.args,
            cwd=self.src,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        self.pid = self.proc.pid
        assert self.proc.stderr is not None
        while True:
            line = (await asyncio.wait_for(self.proc.stderr.readline(), 30)).decode(errors="replace")
            if not line:
                raise RuntimeError(f"{self.name}: the server exited before listening")
            found = READY.search(line)
            if found:
                self.host, self.port = found.group(1), int(found.group(2))
                return

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            await self.proc.wait()

    def threads(self) -> dict[str, float]:
        return thread_cpu(self.pid)

    async def cleanup(self, tag: str) -> None:
        conn = await Http.open(self.host, self.port)
        await conn.request(head("DELETE", f"/v1.0/bench/{tag}?match_hidden=true&detail=none"))
        conn.close()

    async def producer(self, tag: str, n: int, stop: asyncio.Event, counts: dict[str, int]) -> None:
        conn = await Http.open(self.host, self.port)
        prefix = f"/v1.0/bench/{tag}/p{n:03x}"
        i = 0
        while not stop.is_set():
            status, _ = await conn.request(head("PUT", f"{prefix}{i:012x}", len(BODY)), BODY)
            i += 1
            if status == 201:
                counts["produced"] += 1
        conn.close()

    async def consumer(self, tag: str, stop: asyncio.Event, counts: dict[str, int]) -> None:
        conn = await Http.open(self.host, self.port)
        take = head("POST", f"/v1.0/bench/{tag}?limit=1&hide=30&wait=1&detail=id")
        while not stop.is_set():
            status, body = await conn.request(take)
            if status != 200:
                continue
            status, _ = await conn.request(head("DELETE", f"/v1.0/bench/{tag}/{body[2:-2].decode()}"))
            if 200 <= status < 300:
                counts["consumed"] += 1
        conn.close()


class RabbitMQ(Target):
    def __init__(self, url: str) -> None:
        self.name = "rabbitmq"
        self.url = url

    async def start(self) -> None:
        import aio_pika  # the optional extra: pip install -e '.[rabbitmq]'

        self.aio_pika: Any = aio_pika
        self.pid = find_process("beam.smp")
        self.admin = await aio_pika.connect(self.url)
        self.admin_channel = await self.admin.channel()

    async def stop(self) -> None:
        await self.admin.close()

    async def prepare(self, tag: str) -> None:
        await self.admin_channel.declare_queue(tag, durable=True)

    async def cleanup(self, tag: str) -> None:
        await self.admin_channel.queue_delete(tag)

    async def producer(self, tag: str, n: int, stop: asyncio.Event, counts: dict[str, int]) -> None:
        aio_pika = self.aio_pika
        conn = await aio_pika.connect(self.url)
        channel = await conn.channel(publisher_confirms=True)
        exchange = channel.default_exchange
        while not stop.is_set():
            message = aio_pika.Message(BODY, delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
            await exchange.publish(message, routing_key=tag)  # returns once confirmed
            counts["produced"] += 1
        await conn.close()

    async def consumer(self, tag: str, stop: asyncio.Event, counts: dict[str, int]) -> None:
        conn = await self.aio_pika.connect(self.url)
        channel = await conn.channel()
        await channel.set_qos(prefetch_count=1)
        queue = await channel.declare_queue(tag, durable=True)

        async def on_message(message: Any) -> None:
            await message.ack()
            counts["consumed"] += 1

        consumer_tag = await queue.consume(on_message)
        await stop.wait()
        await queue.cancel(consumer_tag)
        await conn.close()


# -- the run -------------------------------------------------------------------------------


def make_targets(specs: list[str], amqp: str, tmp: Path) -> list[Target]:
    targets: list[Target] = []
    for i, spec in enumerate(specs):
        if spec == "rabbitmq":
            targets.append(RabbitMQ(amqp))
        elif spec.startswith("burrow:"):
            targets.append(Burrow(spec, tmp, i))
        else:
            raise SystemExit(f"unknown target {spec!r}: burrow:MODE[:INTERVAL][@DIR] or rabbitmq")
    return targets


def machine() -> str:
    """``lscpu``'s model name and the CPU count, for the record."""
    model = "unknown CPU"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    return f"{model}, {os.cpu_count()} CPUs"


async def run_all(args: argparse.Namespace) -> None:
    print(f"machine: {machine()}", flush=True)
    pairs_list = [int(p) for p in args.pairs.split(",")]
    with tempfile.TemporaryDirectory(prefix="burrow-rabbit-bench-") as name:
        targets = make_targets(args.targets.split(","), args.amqp, Path(name))
        for target in targets:
            await target.start()
        results: dict[tuple[int, str], list[Round]] = {}
        try:
            for r in range(args.rounds):
                for pairs in pairs_list:
                    for target in targets:
                        got = await target.round(f"r{r}p{pairs}x{os.getpid()}", pairs, args.seconds)
                        results.setdefault((pairs, target.name), []).append(got)
                        if args.verbose:
                            print(
                                f"  round {r} {pairs} pairs {target.name}: {got.rate:.0f} msg/s", flush=True
                            )
        finally:
            for target in targets:
                await target.stop()
    report(results, pairs_list, [t.name for t in targets], args)


def report(
    results: dict[tuple[int, str], list[Round]],
    pairs_list: list[int],
    names: list[str],
    args: argparse.Namespace,
) -> None:
    print(f"\n{args.rounds} rounds of {args.seconds:g} s each, round-robin; median round by msg/s")
    print(
        f"{'pairs':>5} {'target':28} {'msg/s':>8} {'x base':>7} {'srv ms/msg':>10} {'x base':>7}"
        f" {'client ms/msg':>13}  server threads ms/msg; all rounds msg/s"
    )
    for pairs in pairs_list:
        base_rate = base_cpu = 0.0
        for name in names:
            rounds = results[(pairs, name)]
            med = sorted(rounds, key=lambda x: x.rate)[len(rounds) // 2]
            per = max(med.consumed, 1)
            cpu_ms = 1000 * med.server_cpu / per
            if not base_rate:
                base_rate, base_cpu = med.rate, cpu_ms
            threads = ", ".join(
                f"{k} {1000 * v / per:.3f}" for k, v in sorted(med.threads.items()) if v > 0.005
            )
            spread = ", ".join(f"{x.rate:.0f}" for x in rounds)
            print(
                f"{pairs:>5} {name:28} {med.rate:8.0f} {med.rate / base_rate:7.2f} {cpu_ms:10.3f}"
                f" {cpu_ms / base_cpu if base_cpu else 0:7.2f} {1000 * med.client_cpu / per:13.3f}"
                f"  {threads or '-'}; {spread}"
            )
    print(
        "cross-round median of msg/s per target: "
        + "; ".join(
            f"{p}p {n} {statistics.median(x.rate for x in results[(p, n)]):.0f}"
            for p in pairs_list
            for n in names
        )
    )


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--targets",
        default="rabbitmq,burrow:batch,burrow:always,burrow:never",
        help="comma-separated; the first is the base of the ratios [%(default)s]",
    )
    parser.add_argument("--pairs", default="1,8", help="producer/consumer pair counts [%(default)s]")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per target and pair count [3]")
    parser.add_argument("--seconds", type=float, default=3.0, help="measured seconds per round [3]")
    parser.add_argument("--amqp", default="amqp://guest:guest@127.0.0.1:5672/", help="RabbitMQ URL")
    parser.add_argument("--verbose", action="store_true", help="print every round")
    return parser.parse_args(argv)


def main() -> None:
    args = parse()
    try:
        import uvloop
    except ImportError:
        asyncio.run(run_all(args))
    else:
        uvloop.run(run_all(args))


if __name__ == "__main__":
    main()
