"""A private ``redis-server`` process for tests that crash, stop and restart Redis.

:class:`RedisProcess` runs one standalone server with the configuration a test gives
(``{"appendonly": "yes", "appendfsync": "always"}``) in a directory of the test's, on a
free port that it keeps across restarts, so clients reconnect to the same address and
find what the server persisted there. Readiness is an answered ``PING`` (not ``LOADING``:
the data set is loaded), polled against a deadline; nothing sleeps blindly. Everything is
async, so a test's event loop (and a fault proxy on it) keeps running meanwhile.
"""

from __future__ import annotations

import asyncio
import random
import signal
import socket
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import redis.asyncio as aioredis
from redis import exceptions as redis_errors
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

__all__ = ["RedisProcess"]

HOST = "127.0.0.1"
#: Ports are drawn below the kernel's usual ephemeral range (32768+), so no outgoing
#: connection takes the port while the server is down, and above the ports
#: :mod:`burrow.testing.redis_cluster` uses.
PORT_RANGE = (23000, 32000)
START_TIMEOUT = 30.0


class RedisProcess:
    """One ``redis-server`` (see the module docstring); ``async with RedisProcess(dir, config)``.

    ``config``: redis.conf directives as name -> value, over the defaults (no RDB
    snapshots, no AOF, bound to 127.0.0.1, files and log in ``directory``).
    """

    def __init__(self, directory: Path, config: Mapping[str, str] | None = None) -> None:
        self.directory = directory
        self.config = {"save": "", "appendonly": "no", **(config or {})}
        self.port = 0
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        """The storage URL of database 0."""
        return f"redis://{HOST}:{self.port}/0"

    @property
    def logfile(self) -> Path:
        return self.directory / "redis.log"

    def log_tail(self, size: int = 2000) -> str:
        try:
            return self.logfile.read_text(errors="replace")[-size:]
        except OSError:
            return ""

    async def start(self) -> Self:
        """Start it: on a new free port the first time, on the same port after a stop or kill."""
        if self.proc is not None and self.proc.returncode is None:
            return self
        self.directory.mkdir(parents=True, exist_ok=True)
        first = self.port == 0
        for _ in range(5 if first else 1):  # a port taken between the probe and the bind: another
            if first:
                self.port = _free_port()
            if await self._spawn():
                return self
        raise RuntimeError(f"redis-server did not start on port {self.port}:\n{self.log_tail()}")

    async def _spawn(self) -> bool:
        args = ["--port", str(self.port), "--bind", HOST, "--dir", str(self.directory)]
        args += ["--logfile", str(self.logfile)]
        for name, value in self.config.items():
            args += [f"--{name}", value]
        self.proc = await asyncio.create_subprocess_exec(
            "redis-server",
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while not await self.pings():
            if self.proc.returncode is not None:
                return False
            if time.monotonic() > deadline:
                await self.kill()
                raise RuntimeError(
                    f"redis-server on port {self.port} did not answer PING:\n{self.log_tail()}"
                )
            await asyncio.sleep(0.01)
        return True

    async def pings(self) -> bool:
        """Whether it answers PING now (a server still loading its data does not)."""
        try:
            return bool(await self.command("PING", timeout=1.0))
        except (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError):  # LOADING too
            return False

    async def command(self, *args: Any, timeout: float = 5.0) -> Any:
        """Run one command on a connection of its own (``CLIENT KILL`` ..., ``INFO``)."""
        async with aioredis.Redis(
            host=HOST,
            port=self.port,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),  # an answer about now, not after redis-py's retries
        ) as client:
            return await client.execute_command(*args)  # type: ignore[no-untyped-call]

    async def kill(self) -> None:
        """SIGKILL: a crash. What it had not written (and, per ``appendfsync``, synced) is gone."""
        await self._end(signal.SIGKILL)

    async def stop(self) -> None:
        """SIGTERM: a clean shutdown (Redis writes its AOF/RDB as configured)."""
        await self._end(signal.SIGTERM)

    async def restart(self, kill: bool = True) -> None:
        await (self.kill() if kill else self.stop())
        await self.start()

    async def _end(self, signum: int) -> None:
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        proc.send_signal(signum)
        try:
            await asyncio.wait_for(proc.wait(), 30)
        except TimeoutError:
            proc.kill()
            await proc.wait()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.kill()


def _free_port() -> int:
    candidates = list(range(*PORT_RANGE))
    random.shuffle(candidates)
    for port in candidates[:1000]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((HOST, port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port for redis-server")
