"""What the SQS benchmarks share: boto3-shaped JSON 1.0 requests, bounded and with clear errors,
a report of the server's state and log when something fails, and the machine's CPU model.

Imported by ``benchmarks/fifo_scaling.py`` and ``benchmarks/sqs_contention.py`` (run as scripts,
their own directory is on the import path).
"""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable
from contextlib import suppress
from types import FrameType
from typing import Any

import orjson

from burrow.bench.procs import ServerProcess
from burrow.client import Connection, Reply

ACCOUNT = "bench"
#: boto3-shaped SigV4 header; the server runs in dev mode (no credentials), so the signature is
#: not checked, and the access key in the credential scope names the account (``bench``).
AUTH = (
    f"AWS4-HMAC-SHA256 Credential={ACCOUNT}/20260101/us-east-1/sqs/aws4_request, "
    "SignedHeaders=content-type;host;x-amz-date;x-amz-target, Signature=" + "0" * 64
)
#: A request without a response for this long is reported as a hung server.
REQUEST_TIMEOUT = 30.0


class BenchError(Exception):
    """A request failed (error status, bad response, timeout or lost connection)."""


# -- machine and server ---------------------------------------------------------------------


def cpu_model() -> str:
    """``lscpu``'s "Model name" (falling back to /proc/cpuinfo)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10, check=False).stdout
        for line in out.splitlines():
            name, _, value = line.partition(":")
            if name.strip() == "Model name":
                return value.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return "unknown"


_STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ ")


def server_report(server: ServerProcess, since: list[str] | None = None, lines: int = 30) -> str:
    """Whether the server is still running, and the end of its log (tracebacks land there): only
    what came after the ``since`` snapshot of ``server.log``, with repeated messages collapsed."""
    state = "running" if server.alive() else f"exited with status {server.proc.returncode}"
    log = list(server.log)
    if since:
        last = since[-1]
        at = max((i for i, line in enumerate(log) if line == last), default=-1)
        log = log[at + 1 :]
    collapsed: list[tuple[str, int]] = []
    for line in log:
        if "listening on" in line:
            continue
        key = _STAMP.sub("", line)
        if collapsed and _STAMP.sub("", collapsed[-1][0]) == key:
            collapsed[-1] = (collapsed[-1][0], collapsed[-1][1] + 1)
        else:
            collapsed.append((line, 1))
    text = f"server {state}; "
    if not collapsed:
        return text + "nothing in its log"
    shown = [f"    {line}" + (f"  (x{n})" if n > 1 else "") for line, n in collapsed[-lines:]]
    return text + "its log:\n" + "\n".join(shown)


def _exit_on_signal(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds the ``with`` blocks: the server is stopped


def install_signal_handlers() -> None:
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _exit_on_signal)


# -- requests ---------------------------------------------------------------------------------


def snippet(body: bytes) -> str:
    return body[:300].decode("utf-8", "replace")


async def request(
    conn: Connection,
    method: str,
    target: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    what: str = "",
) -> Reply:
    """One request on ``conn``, bounded by :data:`REQUEST_TIMEOUT`; failures become :class:`BenchError`."""
    what = what or f"{method} {target}"
    try:
        async with asyncio.timeout(REQUEST_TIMEOUT):
            return await conn.request(method, target, body=body, headers=headers)
    except TimeoutError:
        raise BenchError(f"{what}: no response within {REQUEST_TIMEOUT:.0f} s") from None
    except Exception as exc:  # refused, reset, closed early, unparsable: whatever the client raises
        with suppress(Exception):
            await conn.close()
        raise BenchError(f"{what}: connection failed ({type(exc).__name__}: {exc})") from exc


_DATE: list[Any] = [0, ""]


def sqs_headers(action: str) -> dict[str, str]:
    """The headers boto3 sends for the AWS JSON 1.0 protocol."""
    second = int(time.time())
    if _DATE[0] != second:
        _DATE[:] = [second, time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(second))]
    return {
        "Content-Type": "application/x-amz-json-1.0",
        "X-Amz-Target": f"AmazonSQS.{action}",
        "X-Amz-Date": str(_DATE[1]),
        "Authorization": AUTH,
    }


async def sqs(conn: Connection, action: str, params: dict[str, Any]) -> dict[str, Any]:
    """One SQS JSON 1.0 call; a non-200 answer is a :class:`BenchError` with the SQS error."""
    reply = await request(conn, "POST", "/", orjson.dumps(params), sqs_headers(action), f"SQS {action}")
    if reply.status != 200:
        raise BenchError(f"SQS {action}: HTTP {reply.status}: {snippet(reply.body)}")
    try:
        data = orjson.loads(reply.body) if reply.body else {}
    except orjson.JSONDecodeError:
        raise BenchError(f"SQS {action}: response is not JSON: {snippet(reply.body)}") from None
    if not isinstance(data, dict):
        raise BenchError(f"SQS {action}: response is not a JSON object: {snippet(reply.body)}")
    return data


def batch_failures(action: str, data: dict[str, Any], expected: int) -> None:
    """Raise if a batch call reports failed entries or fewer successes than entries sent."""
    failed = data.get("Failed") or []
    ok = data.get("Successful") or []
    if failed or len(ok) != expected:
        raise BenchError(f"SQS {action}: {len(ok)} of {expected} entries succeeded; failed: {failed[:3]}")


async def in_parallel(
    url: str, connections: int, jobs: int, job: Callable[[Connection, int], Awaitable[None]]
) -> None:
    """Run ``job(conn, i)`` for i in range(jobs) over ``connections`` connections; first error wins."""
    next_job = 0

    async def worker() -> None:
        nonlocal next_job
        async with Connection(url) as conn:
            while next_job < jobs:
                i, next_job = next_job, next_job + 1
                await job(conn, i)

    tasks = [asyncio.create_task(worker()) for _ in range(max(1, min(connections, jobs)))]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
