"""The structured access log (``--access-log PATH``, or ``-`` for stderr): one JSON object a line.

Off the request path: a request only appends a tuple of values it already has to a bounded
deque (no formatting, no I/O, no lock beyond the deque's own atomic append); a background
thread wakes every :data:`FLUSH_SECONDS`, formats what is pending and writes it in one
``write``. When the writer falls behind (a slow disk, a stalled stderr pipe) and
:data:`MAX_PENDING` lines wait, further lines are dropped and counted
(``burrow_access_log_dropped_total``): requests never wait for the log.

A line (keys in this order)::

    {"time": "2024-05-01T12:00:00.123Z", "peer": "10.0.0.7:51234", "method": "POST",
     "path": "/v1.0/acme/jobs", "query": "limit=1&hide=60", "status": 200, "seconds": 0.000183,
     "request_bytes": 0, "response_bytes": 87, "api": "v1", "operation": "update_messages"}

``time`` is when the request was dispatched (UTC); ``path`` and ``query`` are as received
(percent-encoded); ``response_bytes`` counts the body only. A log file that is renamed or
removed (logrotate) is reopened at its path within one flush.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import threading
import time
from typing import TYPE_CHECKING

import orjson

from burrow.http.types import Request, Response

if TYPE_CHECKING:
    from burrow.metrics import OpStats

log = logging.getLogger("burrow.accesslog")

#: Seconds between the writer thread's flushes.
FLUSH_SECONDS = 0.1
#: Lines waiting for the writer above which new ones are dropped. Each holds references to
#: its request's method, path and query strings (the path and query at most ``max_url_bytes``
#: together), so the backlog is bounded in memory too.
MAX_PENDING = 16_384
#: Seconds between two log lines about failing writes.
_ERROR_LOG_SECONDS = 60.0
#: Write target meaning standard error.
STDERR = "-"

_Pending = tuple[float, float, "OpStats", str, str, str, str, int, int, int]


class AccessLog:
    """A JSON-lines access log written by a background thread from a bounded queue."""

    def __init__(
        self, target: str, max_pending: int = MAX_PENDING, flush_seconds: float = FLUSH_SECONDS
    ) -> None:
        if not target:
            raise ValueError("access log target must be a path or '-'")
        self.target = target
        self.max_pending = max_pending
        self.flush_seconds = flush_seconds
        #: Lines written, dropped over the bound (on the loop's thread), lost to write errors.
        self.written = 0
        self.dropped = 0
        self.lost = 0
        self._pending: collections.deque[_Pending] = collections.deque()
        self._fd = -1
        self._inode: tuple[int, int] | None = None
        self._last_error = -_ERROR_LOG_SECONDS
        self._stop = threading.Event()
        self._open()  # at start, so a bad path fails the server's start rather than its first flush
        self._thread = threading.Thread(target=self._run, name="burrow-access-log", daemon=True)
        self._thread.start()

    # -- the request path (the event loop's thread) ------------------------------------
    def add(self, end: float, seconds: float, stats: OpStats, request: Request, response: Response) -> None:
        """Queue one line; ``end`` is the response's ``perf_counter()``, ``seconds`` the time taken."""
        pending = self._pending
        if len(pending) < self.max_pending:
            pending.append(
                (
                    end,
                    seconds,
                    stats,
                    request.method,
                    request.path,
                    request.query,
                    request.peer,
                    response.status,
                    len(request.body),
                    len(response.body),
                )
            )
        else:
            self.dropped += 1

    async def aclose(self) -> None:
        """Write what is pending and stop the thread (without blocking the event loop)."""
        await asyncio.get_running_loop().run_in_executor(None, self.close)

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        if self._fd >= 0 and self.target != STDERR:
            os.close(self._fd)
        self._fd = -1

    # -- the writer thread --------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.wait(self.flush_seconds):
            self.flush()
        self.flush()

    def flush(self) -> None:
        """Format and write every pending line (on the writer thread)."""
        pending = self._pending
        count = len(pending)
        if not count:
            return
        # perf_counter readings to wall-clock time, with one offset for the batch.
        offset = time.time() - time.perf_counter()
        lines = []
        popleft = pending.popleft
        for _ in range(count):
            end, seconds, stats, method, path, query, peer, status, received, sent = popleft()
            lines.append(
                orjson.dumps(
                    {
                        "time": _timestamp(end - seconds + offset),
                        "peer": peer,
                        "method": method,
                        "path": path,
                        "query": query,
                        "status": status,
                        "seconds": round(seconds, 6),
                        "request_bytes": received,
                        "response_bytes": sent,
                        "api": stats.api,
                        "operation": stats.operation,
                    }
                )
            )
        lines.append(b"")
        try:
            self._reopen_if_moved()
            _write_all(self._fd, b"\n".join(lines))
        except OSError as error:
            self.lost += count
            now = time.monotonic()
            if now - self._last_error >= _ERROR_LOG_SECONDS:
                self._last_error = now
                log.error("access log: cannot write to %s (%d lines lost): %s", self.target, count, error)
        else:
            self.written += count

    def _open(self) -> None:
        if self.target == STDERR:
            self._fd = 2  # the process's standard error, whatever sys.stderr is now
            return
        fd = os.open(self.target, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = fd
        st = os.fstat(fd)
        self._inode = (st.st_dev, st.st_ino)

    def _reopen_if_moved(self) -> None:
        """Reopen the file if its path no longer names it (rotated or removed)."""
        if self.target == STDERR:
            return
        try:
            st = os.stat(self.target)
        except FileNotFoundError:
            self._open()
            return
        if (st.st_dev, st.st_ino) != self._inode:
            self._open()


def _timestamp(seconds: float) -> str:
    """RFC 3339 UTC with milliseconds: ``2024-05-01T12:00:00.123Z``."""
    whole = int(seconds)
    millis = min(999, int((seconds - whole) * 1000))
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{millis:03d}Z"


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
