"""The server's counters and their Prometheus exposition (``GET /metrics``).

The request path only adds to plain integers: a dict slot per (operation, status), a list slot
per latency bucket (found by bisect in a small fixed list), slotted attributes for message
events. The server runs on one event-loop thread, so none of that needs a lock. Prometheus
metric objects are built from these numbers only when ``/metrics`` is scraped
(:class:`Collector`); prometheus-client's own ``Counter.inc()`` / ``Histogram.observe()``
take a lock and look labels up on every call, which would cost the request path several
times more.

Every label set is bounded: operations and APIs are fixed lists, statuses are the few the
server answers, and queue names appear only for the ``metrics_top_queues`` deepest queues,
found by a scan at scrape time (:class:`DepthScanner`), never on the request path.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import math
import time
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from time import perf_counter
from typing import TYPE_CHECKING, Protocol

from prometheus_client import REGISTRY, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from burrow.core.model import Counts, Filter
from burrow.http.types import Request, Response

if TYPE_CHECKING:
    from burrow.accesslog import AccessLog
    from burrow.engine import Engine

log = logging.getLogger("burrow.metrics")

#: Upper bounds (seconds) of the request latency buckets: 100 us (an in-memory request) to
#: 30 s (a long poll runs up to ``max_wait``, 20 s by default).
LATENCY_BOUNDS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
#: Upper bounds (seconds) of the storage commit latency buckets.
COMMIT_BOUNDS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0)
#: Upper bounds of the storage commit batch size buckets (operations in one transaction).
BATCH_BOUNDS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

#: The ``api`` label: the burrow v1.0 API, the SQS API (both wire protocols), and the
#: operations endpoints (health, metrics, the OpenAPI document).
V1, SQS, OPS = "v1", "sqs", "ops"
#: The ``operation`` of a request no operation was found for: a path or method the route
#: table does not know (404, 405), an SQS action that does not exist.
UNMATCHED = "unmatched"
#: Statuses counted for requests that got no response of their own: the client went away
#: first (the handler was cancelled; nginx's 499), or the handler failed (the HTTP layer
#: answers 500).
CANCELLED = Response(499)
FAILED = Response(500)

#: Most queues one depth scan counts; a store with more is reported as truncated.
MAX_SCANNED_QUEUES = 10_000
#: Seconds a depth scan is reused for: scrapes closer together than this share one.
SCAN_REUSE_SECONDS = 1.0
#: Seconds a scrape waits for a depth scan (Prometheus gives a scrape 10 s by default).
SCAN_TIMEOUT = 5.0


class Histogram:
    """Observations counted per bucket (found by bisect), and their sum."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        #: One slot per bound, and a last one for values above every bound (+Inf).
        self.counts = [0] * (len(self.bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def buckets(self) -> list[tuple[str, float]]:
        """Cumulative ``(le, count)`` pairs, as Prometheus histograms have them."""
        return _cumulative(self.bounds, self.counts)


def _number(bound: float) -> str:
    return repr(float(bound))


def _cumulative(bounds: Sequence[float], counts: Sequence[int]) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = []
    running = 0
    for bound, count in zip((*bounds, math.inf), counts, strict=True):
        running += count
        out.append(("+Inf" if bound == math.inf else _number(bound), running))
    return out


def _latency_buckets() -> list[int]:
    return [0] * (len(LATENCY_BOUNDS) + 1)


def latency_bucket(seconds: float) -> int:
    """The index of the bucket of :data:`LATENCY_BOUNDS` that ``seconds`` falls in (``le``).

    What :meth:`burrow.api.routes.App.__call__` computes inline: compares first, as most
    requests take well under a millisecond, and a bisect call costs several compares.
    """
    return (
        0 if seconds <= 0.0001
        else 1 if seconds <= 0.00025
        else 2 if seconds <= 0.0005
        else 3 if seconds <= 0.001
        else bisect_left(LATENCY_BOUNDS, seconds)
    )  # fmt: skip


class OpStats:
    """The requests of one operation: by status, a latency histogram each, and their total time.

    One list of bucket counts per status answered (made on its first request), so a request
    costs one look-up and one addition for both its count and its latency.
    """

    __slots__ = ("api", "operation", "by_status", "total")

    def __init__(self, api: str, operation: str) -> None:
        self.api = api
        self.operation = operation
        #: Status -> requests per latency bucket (:func:`latency_bucket`).
        self.by_status: defaultdict[int, list[int]] = defaultdict(_latency_buckets)
        #: Seconds all of them took together (the histogram's sum).
        self.total = 0.0

    def statuses(self) -> list[tuple[int, int]]:
        """(status, requests) of every status answered, in order."""
        return [(status, sum(counts)) for status, counts in sorted(self.by_status.items())]

    def buckets(self) -> list[tuple[str, float]]:
        """The latency histogram of every status together, as cumulative ``(le, count)`` pairs."""
        merged = _latency_buckets()
        for counts in self.by_status.values():
            merged = [a + b for a, b in zip(merged, counts, strict=True)]
        return _cumulative(LATENCY_BOUNDS, merged)


class MessageCounts:
    """Message events the engine counts (plain attribute increments on its request path)."""

    __slots__ = ("sent", "delivered", "deleted", "dead_lettered", "moved")

    def __init__(self) -> None:
        #: Messages stored by a send: a v1.0 PUT (new or replacing), an SQS send (FIFO
        #: duplicates excluded).
        self.sent = 0
        #: Messages a take handed out hidden: SQS receives, v1.0 POSTs on a list with ``hide`` > 0.
        self.delivered = 0
        #: Messages deleted by a delete of one message or of a list (get-and-delete, purge).
        self.deleted = 0
        #: Messages moved to a dead-letter queue past their queue's maxReceiveCount.
        self.dead_lettered = 0
        #: Messages moved by an SQS message move task (a redrive out of a dead-letter queue).
        self.moved = 0


class ServerGauges(Protocol):
    """What the metrics read from the HTTP server (:class:`burrow.http.server.HttpServer`)."""

    @property
    def connections(self) -> int: ...

    @property
    def inflight_bytes(self) -> int: ...


@dataclass(frozen=True)
class QueueDepth:
    account: str
    queue: str
    counts: Counts

    @property
    def total(self) -> int:
        return self.counts.visible + self.counts.in_flight + self.counts.delayed


@dataclass(frozen=True)
class DepthScan:
    """The deepest queues found by one scan, and how the scan went."""

    deepest: list[QueueDepth]
    #: Queues counted.
    scanned: int
    #: The scan stopped at :data:`MAX_SCANNED_QUEUES`: deeper queues may be missing.
    truncated: bool
    #: The store failed during the scan (its queues are left out).
    failed: bool
    seconds: float


class DepthScanner:
    """Finds the ``top`` deepest queues with :meth:`Engine.count`, at scrape time only.

    Lists every account and queue a page (``max_limit``) at a time, up to
    :data:`MAX_SCANNED_QUEUES`, and counts each page's queues together (one store batch).
    Scrapes within :data:`SCAN_REUSE_SECONDS` of a scan reuse it, and concurrent scrapes
    share the one in progress, so no rate of scrapes makes the store do more.
    """

    def __init__(self, engine: Engine, top: int, limit: int = MAX_SCANNED_QUEUES) -> None:
        self.engine = engine
        self.top = top
        self.limit = limit
        self.failures = 0
        self._last: DepthScan | None = None
        self._last_at = -math.inf
        self._running: asyncio.Future[DepthScan] | None = None

    async def current(self) -> DepthScan | None:
        """The latest scan (a fresh one if the last is older than the reuse window); None if off.

        A scan that takes over :data:`SCAN_TIMEOUT` seconds (a store that hangs) is reported as
        failed and left to finish for later scrapes.
        """
        if self.top <= 0:
            return None
        if self._last is not None and time.monotonic() - self._last_at < SCAN_REUSE_SECONDS:
            return self._last
        running = self._running
        if running is None:
            running = self._running = asyncio.ensure_future(self._scan())
            running.add_done_callback(self._finished)
        # asyncio.wait cancels nothing: a scrape that times out, or whose client goes away,
        # leaves the scan to the others waiting on it.
        done, _ = await asyncio.wait((running,), timeout=SCAN_TIMEOUT)
        if not done:
            self.failures += 1
            return DepthScan([], 0, False, True, SCAN_TIMEOUT)
        return running.result()

    def _finished(self, fut: asyncio.Future[DepthScan]) -> None:
        self._running = None
        if not fut.cancelled() and fut.exception() is None:
            self._last, self._last_at = fut.result(), time.monotonic()

    async def _scan(self) -> DepthScan:
        started = perf_counter()
        engine, limit = self.engine, self.limit
        page = max(1, min(engine.settings.max_limit, limit))
        heap: list[tuple[int, str, str, Counts]] = []  # the deepest so far; smallest first
        scanned, truncated, failed = 0, False, False
        try:
            marker: str | None = None
            while not truncated:
                accounts = await engine.list_accounts(Filter(page, marker, False))
                for account in accounts:
                    queue_marker: str | None = None
                    while True:
                        if scanned >= limit:
                            truncated = True
                            break
                        size = min(page, limit - scanned)
                        queues = await engine.list_queues(account, Filter(size, queue_marker, False))
                        if not queues:
                            break
                        counts = await asyncio.gather(*(engine.count(account, q) for q in queues))
                        for queue, c in zip(queues, counts, strict=True):
                            item = (c.visible + c.in_flight + c.delayed, account, queue, c)
                            if len(heap) < self.top:
                                heapq.heappush(heap, item)
                            elif item[0] > heap[0][0]:
                                heapq.heapreplace(heap, item)
                        scanned += len(queues)
                        if len(queues) < size:
                            break
                        queue_marker = queues[-1]
                    if truncated:
                        break
                if len(accounts) < page:
                    break
                marker = accounts[-1]
        except Exception as error:  # the store failed: report what the other metrics can say
            log.warning("queue depth scan failed: %s", getattr(error, "message", None) or repr(error))
            failed = True
            self.failures += 1
        heap.sort(key=lambda item: (-item[0], item[1], item[2]))
        deepest = [QueueDepth(account, queue, c) for _, account, queue, c in heap]
        return DepthScan(deepest, scanned, truncated, failed, perf_counter() - started)


class Metrics:
    """The counters of one server, the request-path hook that feeds them, and the collector.

    ``counting`` off (``--metrics off``) leaves the request path without any counting or
    timing (what the overhead measurement compares against) and ``GET /metrics`` answers 404.
    """

    def __init__(self, engine: Engine, access_log: AccessLog | None = None) -> None:
        settings = engine.settings
        self.engine = engine
        self.counting = settings.metrics == "on"
        self.access_log = access_log
        self.ops: dict[tuple[str, str], OpStats] = {}
        #: The HTTP server carrying this App, once it is listening (:meth:`serving`).
        self.server: ServerGauges | None = None
        self.commit_seconds = Histogram(COMMIT_BOUNDS)
        self.commit_batch = Histogram(BATCH_BOUNDS)
        self.commit_hooked = False
        self.depths = DepthScanner(engine, settings.metrics_top_queues)
        self._collector = Collector(self)
        self.last_scan: DepthScan | None = None

    @property
    def observing(self) -> bool:
        """Whether requests need :meth:`observe` at all (counting, or an access log)."""
        return self.counting or self.access_log is not None

    def op(self, api: str, operation: str) -> OpStats:
        """The stats of one operation (made once, at start: the request path only looks them up)."""
        key = (api, operation)
        stats = self.ops.get(key)
        if stats is None:
            stats = self.ops[key] = OpStats(api, operation)
        return stats

    def observe(self, stats: OpStats, request: Request, response: Response, started: float) -> None:
        """Count one answered request (``started``: its dispatch's ``perf_counter()``).

        :meth:`burrow.api.routes.App.__call__` inlines the counting on its usual path (a call
        frame less per request): keep the two alike.
        """
        end = perf_counter()
        seconds = end - started
        if self.counting:
            stats.by_status[response.status][latency_bucket(seconds)] += 1
            stats.total += seconds
        access_log = self.access_log
        if access_log is not None:
            access_log.add(end, seconds, stats, request, response)

    def observe_commit(self, batch: int, seconds: float) -> None:
        """One storage transaction: ``batch`` operations committed in ``seconds`` (a backend hook)."""
        self.commit_batch.observe(batch)
        self.commit_seconds.observe(seconds)

    def hook_storage(self) -> None:
        """Have the backend report its commits, if it can (``observe_commits(callback)``)."""
        hook = getattr(self.engine.backend, "observe_commits", None)
        if self.counting and callable(hook):
            hook(self.observe_commit)
            self.commit_hooked = True

    async def exposition(self) -> bytes:
        """The Prometheus text exposition, with a depth scan at most :data:`SCAN_REUSE_SECONDS` old."""
        scan = await self.depths.current()
        # Nothing awaits between here and generate_latest: the scan read is the one exposed.
        self.last_scan = scan
        return generate_latest(self._collector)


class Collector:
    """Builds the metric families from the counters, at scrape time (a prometheus-client collector)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        m = self.metrics
        yield from self._requests(m.ops.values())
        yield from self._messages(m)
        yield from self._queues(m.last_scan, m.depths)
        yield from self._server(m)
        yield from self._storage(m)
        yield from self._access_log(m)
        # The process's own (CPU, memory, open files, GC, Python version): prometheus-client's
        # default registry holds its collectors for them, and nothing else in Burrow.
        yield from REGISTRY.collect()

    @staticmethod
    def _requests(ops: Iterable[OpStats]) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "burrow_requests",
            "Requests answered, by API, operation and HTTP status (499: the client went away first).",
            labels=["api", "operation", "status"],
        )
        latency = HistogramMetricFamily(
            "burrow_request_duration_seconds",
            "Time from a request's dispatch to its response (long polls included), by API and operation.",
            labels=["api", "operation"],
        )
        for stats in ops:
            answered = stats.statuses()
            for status, count in answered:
                requests.add_metric([stats.api, stats.operation, str(status)], count)
            if answered:
                latency.add_metric([stats.api, stats.operation], stats.buckets(), stats.total)
        yield requests
        yield latency

    @staticmethod
    def _messages(m: Metrics) -> Iterator[Metric]:
        counts = m.engine.counts
        if counts is not None:
            for name, what in (
                ("sent", "Messages stored by a send (v1.0 PUT, SQS send; FIFO duplicates excluded)."),
                ("delivered", "Messages handed out hidden by a take (SQS receive, v1.0 POST with hide > 0)."),
                ("deleted", "Messages deleted by a request (one message, a list, an SQS purge)."),
                ("dead_lettered", "Messages moved to a dead-letter queue past maxReceiveCount."),
                ("moved", "Messages moved by SQS message move tasks (redrive)."),
            ):
                yield CounterMetricFamily(f"burrow_messages_{name}", what, value=getattr(counts, name))
        expired = getattr(m.engine.backend, "expired", None)
        if type(expired) is int:
            yield CounterMetricFamily(
                "burrow_messages_expired",
                "Messages the cleaner removed because their ttl ran out.",
                value=expired,
            )
        yield GaugeMetricFamily(
            "burrow_long_poll_waiters",
            "Requests parked in a long poll (wait) right now.",
            value=m.engine.waiting,
        )

    @staticmethod
    def _queues(scan: DepthScan | None, scanner: DepthScanner) -> Iterator[Metric]:
        if scan is None:
            return
        depth = GaugeMetricFamily(
            "burrow_queue_messages",
            f"Messages of the {scanner.top} deepest queues by state (visible, in_flight, delayed),"
            " counted at scrape time.",
            labels=["account", "queue", "state"],
        )
        for q in scan.deepest:
            depth.add_metric([q.account, q.queue, "visible"], q.counts.visible)
            depth.add_metric([q.account, q.queue, "in_flight"], q.counts.in_flight)
            depth.add_metric([q.account, q.queue, "delayed"], q.counts.delayed)
        yield depth
        yield GaugeMetricFamily(
            "burrow_queue_scan_queues", "Queues the last depth scan counted.", value=scan.scanned
        )
        yield GaugeMetricFamily(
            "burrow_queue_scan_truncated",
            f"1 if the last depth scan stopped at its bound of {MAX_SCANNED_QUEUES} queues.",
            value=int(scan.truncated),
        )
        yield GaugeMetricFamily(
            "burrow_queue_scan_seconds", "How long the last depth scan took.", value=scan.seconds
        )
        yield CounterMetricFamily(
            "burrow_queue_scan_failures",
            "Depth scans the store failed (their queues are missing from burrow_queue_messages).",
            value=scanner.failures,
        )

    @staticmethod
    def _server(m: Metrics) -> Iterator[Metric]:
        server = m.server
        if server is None:
            return
        yield GaugeMetricFamily("burrow_connections", "Open client connections.", value=server.connections)
        yield GaugeMetricFamily(
            "burrow_inflight_bytes",
            "Request and response bytes in flight (counted against max_inflight_bytes).",
            value=server.inflight_bytes,
        )

    @staticmethod
    def _storage(m: Metrics) -> Iterator[Metric]:
        commits = getattr(m.engine.backend, "commits", None)
        if type(commits) is int:
            yield CounterMetricFamily(
                "burrow_storage_commits",
                "Storage transactions committed that contained writes.",
                value=commits,
            )
        if m.commit_hooked:
            seconds = HistogramMetricFamily(
                "burrow_storage_commit_seconds", "Time one storage transaction took, statements and COMMIT."
            )
            seconds.add_metric([], m.commit_seconds.buckets(), m.commit_seconds.total)
            batch = HistogramMetricFamily(
                "burrow_storage_commit_batch_size",
                "Operations committed together in one storage transaction.",
            )
            batch.add_metric([], m.commit_batch.buckets(), m.commit_batch.total)
            yield seconds
            yield batch

    @staticmethod
    def _access_log(m: Metrics) -> Iterator[Metric]:
        access_log = m.access_log
        if access_log is None:
            return
        yield CounterMetricFamily(
            "burrow_access_log_lines", "Access log lines written.", value=access_log.written
        )
        yield CounterMetricFamily(
            "burrow_access_log_dropped",
            "Access log lines dropped: over the pending bound, or lost to a write error.",
            value=access_log.dropped + access_log.lost,
        )
