"""The operations endpoints: health probes, Prometheus metrics and the OpenAPI document.

They live outside the queue API (no account in their paths) and are marked ``ops`` in the
route table, so authentication, when it comes, can leave them open to probes and scrapers.
Each is cheap: ``/health/live`` touches nothing, ``/health/ready`` makes one store round
trip (a count of one queue), ``/metrics`` reads counters and at most one bounded queue scan
a second (:class:`burrow.metrics.DepthScanner`).
"""

from __future__ import annotations

import asyncio
import logging

import orjson
from prometheus_client import CONTENT_TYPE_LATEST

from burrow.api.openapi import document
from burrow.api.v1 import JSON, NO_PARAMS, Params
from burrow.core.errors import NotFound
from burrow.engine import Engine
from burrow.http.types import Request, Response
from burrow.metrics import Metrics

log = logging.getLogger("burrow.api.ops")

#: Seconds ``/health/ready`` waits for the store before answering 503.
READY_TIMEOUT = 2.0
#: The queue ``/health/ready`` counts: any name does; the round trip is the point.
PROBE_ACCOUNT, PROBE_QUEUE = "burrow-health", "ready"
OK = Response(200, orjson.dumps({"status": "ok"}), JSON)


def _unavailable(code: str, message: str) -> Response:
    return Response(503, orjson.dumps({"error": code, "message": message}), JSON, [("retry-after", "1")])


class OpsApi:
    """Handlers of the ``ops`` routes of :mod:`burrow.api.routes`."""

    def __init__(self, engine: Engine, metrics: Metrics) -> None:
        self.engine = engine
        self._metrics = metrics
        self._openapi: Response | None = None

    async def health(self, request: Request, check: str) -> Response:
        Params(request.query, NO_PARAMS, 0)  # no parameters: a 400 names the stray one
        if check == "live":
            return OK
        if check != "ready":
            raise NotFound(f"no health check {check[:40]!r}; the checks are /health/live and /health/ready")
        return await self._ready()

    async def _ready(self) -> Response:
        """200 once the store answered a read; 503 while it fails, is slow, or the server is stopping."""
        engine = self.engine
        if engine.draining:
            return _unavailable("unavailable", "not ready: the server is shutting down")
        # A Task and asyncio.wait rather than wait_for: a handler's first step runs outside a Task.
        probe = asyncio.ensure_future(engine.count(PROBE_ACCOUNT, PROBE_QUEUE))
        done, _ = await asyncio.wait((probe,), timeout=READY_TIMEOUT)
        if not done:
            probe.cancel()
            return _unavailable(
                "storage_unavailable", f"not ready: the store did not answer in {READY_TIMEOUT:g}s"
            )
        error = probe.exception()
        if error is not None:
            log.debug("readiness probe failed: %r", error)
            reason = getattr(error, "message", None) or f"{type(error).__name__}: {error}"
            return _unavailable("storage_unavailable", f"not ready: {reason}"[:500])
        return OK

    async def metrics(self, request: Request) -> Response:
        Params(request.query, NO_PARAMS, 0)
        if not self._metrics.counting:
            raise NotFound("metrics are off on this server (--metrics off)")
        return Response(200, await self._metrics.exposition(), CONTENT_TYPE_LATEST)

    async def backup(self, request: Request) -> Response:
        """``POST /backup``: an online copy of the store (docs/operations.md "Backups")."""
        Params(request.query, NO_PARAMS, 0)
        result = await self.engine.backup()
        log.info("backup written: %s (%d bytes, %.2f s)", result.path, result.bytes, result.seconds)
        body = {"path": result.path, "bytes": result.bytes, "seconds": round(result.seconds, 3)}
        return Response(200, orjson.dumps({**body, "removed": list(result.removed)}), JSON)

    async def openapi(self, request: Request) -> Response:
        Params(request.query, NO_PARAMS, 0)
        if self._openapi is None:  # built on first use, then served as is
            body = orjson.dumps(document(self.engine.settings))
            self._openapi = Response(200, body, JSON)
        return self._openapi
