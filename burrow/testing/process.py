"""A real ``burrow serve`` process for tests that kill, stop or restart it.

Readiness is the server's "listening on" log line, never a sleep; its stderr is read on
for the whole run (a full pipe would stall the server), and kept for error messages.
"""

from __future__ import annotations

import asyncio
import re
import signal
import sys

READY = re.compile(r"listening on http://([0-9.]+):(\d+) ")


class ServeProcess:
    """``python -m burrow serve ARGS`` (give ``--port 0`` for a free port); ``command="proxy"``
    runs the router the same way."""

    def __init__(self, *args: str, env: dict[str, str] | None = None, command: str = "serve") -> None:
        self.command = command
        self.args = args
        self.env = env
        self.proc: asyncio.subprocess.Process | None = None
        self.log: list[str] = []
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> str:
        """Start it and return its base URL once it listens."""
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "burrow",
            self.command,
            *self.args,
            env=self.env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        assert self.proc.stderr is not None
        while True:
            line = (await asyncio.wait_for(self.proc.stderr.readline(), 30)).decode(errors="replace")
            if not line:
                raise AssertionError(f"{self.command} exited before listening:\n" + "".join(self.log))
            self.log.append(line)
            if found := READY.search(line):
                break
        self._reader = asyncio.get_running_loop().create_task(self._read_rest())
        return f"http://{found.group(1)}:{found.group(2)}"

    async def _read_rest(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            self.log.append(line.decode(errors="replace"))

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    async def kill(self) -> None:
        """SIGKILL, and check that is how it ended."""
        self.signal(signal.SIGKILL)
        assert self.proc is not None
        if await self.proc.wait() != -signal.SIGKILL:
            raise AssertionError(f"server ended with {self.proc.returncode}, not by SIGKILL")
        if self._reader is not None:
            await self._reader

    async def stop(self) -> None:
        """SIGTERM, and check that it shut down cleanly (exit status 0) within 30 s."""
        self.signal(signal.SIGTERM)
        assert self.proc is not None
        if await asyncio.wait_for(self.proc.wait(), 30) != 0:
            raise AssertionError("server did not stop cleanly:\n" + "".join(self.log[-20:]))
        if self._reader is not None:
            await self._reader
