"""Commands to Redis, pipelined: what the event loop issues in one iteration shares a round trip.

Why not one ``await client.fcall(...)`` per operation: redis-py spends about 120 us of CPU
per command that way (connection checkout, timeout contexts, response callbacks), several
times what a whole Burrow request costs. Here every call of one loop iteration is packed
into one write on one connection (``FCALL`` commands the backend packed itself), and the
replies are read back in order by the connection's hiredis parser, so a busy server pays
a few microseconds per operation and one system call per batch.

* Connections are redis-py's (``Connection``/``SSLConnection``, or a Cluster node's):
  they handle TLS, AUTH and SELECT, and reconnect on their next use after a failure. A
  *lane* holds a node's connections; up to ``MAX_BATCHES`` batches are in flight per lane
  (each on a connection of its own), the rest wait for the next free connection.
* Each batch runs under one deadline (``timeout``, plus ``redis_wait_timeout`` when it
  waits for replicas). If the connection fails or the deadline passes, the connection is
  dropped and every call of the batch without a reply fails with
  :class:`~burrow.core.errors.StorageUnavailable`; nothing is retried that Redis may
  have run (no retries of writes), so a failure is never acknowledged twice or as a
  success. A write whose reply was lost may still have been applied (Redis cannot say).
* Replicas (``redis_wait_replicas``): a batch holding a write ends with ``WAIT n ms`` on
  the same connection; if fewer replicas acknowledged, every write of the batch fails
  with StorageUnavailable although the primary applied it (as the docstring of
  :class:`~burrow.backends.redis.backend.RedisBackend` says).
* Error replies that mean "not now" (OOM, READONLY, LOADING, BUSY, MASTERDOWN, ...)
  become StorageUnavailable; "Function not found" (a server restarted without
  persistence, a new node) loads the library on every primary and resends. On Cluster,
  ``MOVED`` refreshes the slot map and resends, ``ASK`` resends to the named node after
  ``ASKING``, ``TRYAGAIN``/``CLUSTERDOWN`` resend after a pause, a few times at most:
  those replies mean the command did not run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import AbstractConnection
from redis.crc import key_slot
from redis.exceptions import (
    AskError,
    ClusterDownError,
    MovedError,
    ReadOnlyError,
    RedisClusterException,
    RedisError,
    ResponseError,
    TryAgainError,
)

from burrow.core.errors import StorageUnavailable

log = logging.getLogger("burrow.redis")

#: Batches in flight per node (each on its own connection).
MAX_BATCHES = 8
#: Most calls packed into one batch.
BATCH_CALLS = 1024
#: Times a call is resent after a reply that says it did not run (NOSCRIPT, MOVED, ...).
RESENDS = 4
#: Error replies after which the store is unavailable for now, not broken.
UNAVAILABLE = (
    "OOM",
    "READONLY",
    "LOADING",
    "BUSY",
    "MASTERDOWN",
    "NOREPLICAS",
    "NOAUTH",
    "WRONGPASS",
    "NOPERM",
    "CLUSTERDOWN",
    "TRYAGAIN",
    "NOTBUSY",
    "UNBLOCKED",
)


def bulk(value: bytes) -> bytes:
    """One RESP bulk string."""
    return b"$%d\r\n%b\r\n" % (len(value), value)


def command(*args: bytes) -> bytes:
    """A RESP command from its arguments."""
    return b"*%d\r\n" % len(args) + b"".join(bulk(a) for a in args)


class Function:
    """One Redis function of the backend's library, and the head of its FCALL command."""

    __slots__ = ("head", "name")

    def __init__(self, name: str) -> None:
        self.name = name.encode()
        self.head = bulk(b"FCALL") + bulk(self.name) + bulk(b"1")


class Call:
    """One command waiting for its reply: a function call (``function`` set; ``tail`` is
    its key and arguments, ``n`` of them, already RESP-encoded) or a plain command
    (``tail`` is the whole command)."""

    __slots__ = ("function", "future", "n", "resends", "slot", "tail", "write")

    def __init__(
        self,
        function: Function | None,
        tail: bytes,
        n: int,
        slot: int,
        write: bool,
        future: asyncio.Future[Any],
    ) -> None:
        self.function = function
        self.tail = tail
        self.n = n
        self.slot = slot
        self.write = write
        self.future = future
        self.resends = 0

    def packed(self) -> bytes:
        function = self.function
        if function is None:
            return self.tail
        return b"*%d\r\n" % (self.n + 3) + function.head + self.tail


Acquire = Callable[[], AbstractConnection]
Release = Callable[[AbstractConnection], None]


class Lane:
    """One node's connections and the calls waiting for one."""

    __slots__ = ("acquire", "busy", "name", "release", "waiting")

    def __init__(self, name: str, acquire: Acquire, release: Release) -> None:
        self.name = name
        self.acquire = acquire
        self.release = release
        self.waiting: deque[Call] = deque()
        self.busy = 0


class Link:
    """Sends calls in batches (see the module docstring); subclasses route them to lanes."""

    def __init__(
        self,
        describe: str,
        timeout: float,
        wait_replicas: int = 0,
        wait_timeout: float = 1.0,
        library: bytes = b"",
    ) -> None:
        self.describe = describe
        #: FUNCTION LOAD of the backend's library, sent when a node says it lacks a function.
        self.load_library = command(b"FUNCTION", b"LOAD", library) if library else b""
        self._unloaded: list[Call] = []
        self._loading: asyncio.Task[None] | None = None
        self.timeout = timeout
        self.wait_replicas = wait_replicas
        self.wait_timeout = wait_timeout
        # WAIT's timeout is whole milliseconds, and 0 would mean "for ever".
        self._wait_command = command(
            b"WAIT", b"%d" % wait_replicas, b"%d" % max(1, round(wait_timeout * 1000))
        )
        self._pending: list[Call] = []
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- submitting --------------------------------------------------------------------
    def call(
        self, function: Function | None, tail: bytes, n: int, slot: int, write: bool
    ) -> asyncio.Future[Any]:
        """Queue one call for this iteration's batch; the future gets its reply."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if self._closed:
            future.set_exception(
                StorageUnavailable(f"storage unavailable: the {self.describe} store is closed")
            )
            return future
        self._pending.append(Call(function, tail, n, slot, write, future))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return future

    def _resubmit(self, call: Call) -> None:
        call.resends += 1
        self._resubmit_now(call)

    def _resubmit_now(self, call: Call) -> None:
        self._pending.append(call)
        if not self._scheduled and self._loop is not None:
            self._scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        pending, self._pending = self._pending, []
        self.dispatch(pending)

    def dispatch(self, calls: list[Call]) -> None:
        """Hand calls to their lanes (subclasses route them)."""
        raise NotImplementedError

    async def broadcast(self, packed: bytes) -> list[Any]:
        """Run one plain command on every primary (FUNCTION LOAD); their replies, error
        replies as exceptions (a failure to reach one raises)."""
        raise NotImplementedError

    def _pump(self, lane: Lane) -> None:
        """Start batches on the lane while it has calls waiting and connections to spare."""
        while lane.waiting and lane.busy < MAX_BATCHES:
            try:
                conn = lane.acquire()
            except (RedisError, OSError) as exc:
                self._fail(list(lane.waiting), exc)
                lane.waiting.clear()
                return
            batch = [lane.waiting.popleft() for _ in range(min(len(lane.waiting), BATCH_CALLS))]
            lane.busy += 1
            task = asyncio.get_running_loop().create_task(self._run(lane, conn, batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    # -- one batch -------------------------------------------------------------------------
    async def _run(self, lane: Lane, conn: AbstractConnection, calls: list[Call]) -> None:
        waits = self.wait_replicas > 0 and any(c.write for c in calls)
        replies: list[Any] = []
        acked = self.wait_replicas
        try:
            async with asyncio.timeout(self.timeout + (self.wait_timeout if waits else 0.0)):
                if conn.is_connected and await _stale(conn):
                    await conn.disconnect()
                if not conn.is_connected:
                    await conn.connect()  # type: ignore[no-untyped-call]
                payload = [c.packed() for c in calls]
                if waits:
                    payload.append(self._wait_command)
                # One buffer: a transport's writelines() of many small ones costs far more.
                await conn.send_packed_command(b"".join(payload), check_health=False)
                read = _reader(conn)
                for _ in calls:
                    replies.append(await read())
                if waits:
                    acked = int(await read())
        except BaseException as exc:
            with contextlib.suppress(Exception):
                await conn.disconnect(nowait=True)
            self._finish(lane, conn)
            if isinstance(exc, asyncio.CancelledError):
                self._fail(calls, exc)
                raise
            self.on_connection_error(lane, exc)
            answered = list(zip(calls, replies, strict=False))
            if waits:  # no replica confirmed anything of this batch
                self._fail([c for c, _ in answered if c.write], exc)
                answered = [(c, r) for c, r in answered if not c.write]
            self._fail(calls[len(replies) :], exc)
        else:
            self._finish(lane, conn)
            answered = list(zip(calls, replies, strict=True))
        for call, reply in answered:
            if call.future.done():
                continue
            if call.write and acked < self.wait_replicas:
                call.future.set_exception(
                    StorageUnavailable(
                        f"storage unavailable: {self.describe} applied the write but only {acked} of"
                        f" {self.wait_replicas} replicas confirmed it within {self.wait_timeout:g}s"
                        " (it may be lost in a failover)"
                    )
                )
            elif isinstance(reply, ResponseError):
                self.on_error_reply(call, reply)
            else:
                call.future.set_result(reply)

    def _finish(self, lane: Lane, conn: AbstractConnection) -> None:
        lane.busy -= 1
        lane.release(conn)
        if lane.waiting and not self._closed:
            self._pump(lane)

    def on_error_reply(self, call: Call, error: ResponseError) -> None:
        """An error reply: resend what did not run, turn "not now" into StorageUnavailable."""
        message = str(error)
        if message.startswith("Function not found") and call.function is not None and call.resends < RESENDS:
            call.resends += 1
            self._unloaded.append(call)
            if self._loading is None and self.load_library:
                self._loading = asyncio.get_running_loop().create_task(self._load())
            return
        code = getattr(error, "status_code", None) or message.split(" ", 1)[0]
        if code in UNAVAILABLE:
            call.future.set_exception(StorageUnavailable(f"storage unavailable: {self.describe}: {message}"))
            return
        if message.startswith("unknown command 'FCALL'"):
            message = "Burrow needs Redis 7.0 or later (Redis Functions)"
            call.future.set_exception(StorageUnavailable(f"storage unavailable: {self.describe}: {message}"))
            return
        call.future.set_exception(error)

    async def _load(self) -> None:
        """Load the library on every primary (a restarted or new node lacks it), then resend."""
        try:
            replies = await self.broadcast(self.load_library)
            failed = [r for r in replies if isinstance(r, BaseException) and "already exists" not in str(r)]
            if failed:
                raise failed[0]
        except Exception as exc:
            held, self._unloaded = self._unloaded, []
            self._fail(held, exc)
        else:
            held, self._unloaded = self._unloaded, []
            for call in held:
                self._resubmit_now(call)
        finally:
            self._loading = None

    def on_connection_error(self, lane: Lane, error: BaseException) -> None:
        """A batch failed on its connection (subclasses refresh their view of the nodes)."""

    def _fail(self, calls: list[Call], error: BaseException) -> None:
        if not calls:
            return
        if isinstance(error, TimeoutError | asyncio.TimeoutError):
            reason = f"no answer within {self.timeout:g}s"
        else:
            reason = str(error) or type(error).__name__
        unavailable = StorageUnavailable(f"storage unavailable: {self.describe}: {reason}")
        for call in calls:
            if not call.future.done():
                call.future.set_exception(unavailable)
        log.debug("redis batch failed: %s", reason)

    # -- lifecycle ---------------------------------------------------------------------
    async def close(self) -> None:
        """Fail what waits, let the batches in flight end, then drop every connection."""
        self._closed = True
        self._fail(self._pending, RuntimeError("the store is closed"))
        self._pending = []
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=self.timeout + self.wait_timeout)
        await self.disconnect()

    async def disconnect(self) -> None:
        raise NotImplementedError


def _reader(conn: AbstractConnection) -> Callable[[], Awaitable[Any]]:
    """Read one reply; an error reply comes back as its ResponseError, not raised.

    The connection's parser directly when it has one (hiredis: a buffered reply costs one
    call, where ``read_response`` adds three layers and formats the address per reply)."""
    read: Callable[[], Awaitable[Any]] | None = getattr(getattr(conn, "_parser", None), "read_response", None)
    if read is not None:
        return read

    async def fallback() -> Any:
        try:
            return await conn.read_response()
        except ResponseError as exc:
            return exc

    return fallback


async def _stale(conn: AbstractConnection) -> bool:
    """Whether an idle connection was closed by the server (a restart, CLIENT KILL, a
    timeout) or holds unread bytes: a command sent on it would fail, or read a stray reply.
    No system call: the event loop has already seen the close."""
    try:
        return bool(await conn.can_read())
    except (OSError, RedisError):
        return True


class ServerLink(Link):
    """One Redis server: one lane of up to MAX_BATCHES connections."""

    def __init__(
        self,
        make_connection: Callable[[], AbstractConnection],
        describe: str,
        timeout: float,
        wait_replicas: int = 0,
        wait_timeout: float = 1.0,
        library: bytes = b"",
    ) -> None:
        super().__init__(describe, timeout, wait_replicas, wait_timeout, library)
        self._make = make_connection
        self._free: list[AbstractConnection] = []
        self._all: list[AbstractConnection] = []
        self._lane = Lane("main", self._acquire, self._free.append)

    def _acquire(self) -> AbstractConnection:
        if self._free:
            return self._free.pop()
        conn = self._make()
        self._all.append(conn)
        return conn

    def dispatch(self, calls: list[Call]) -> None:
        self._lane.waiting.extend(calls)
        self._pump(self._lane)

    async def broadcast(self, packed: bytes) -> list[Any]:
        try:
            return [await self.call(None, packed, 0, 0, False)]
        except ResponseError as exc:
            return [exc]

    async def disconnect(self) -> None:
        for conn in self._all:
            with contextlib.suppress(Exception):
                await conn.disconnect()
        self._all.clear()
        self._free.clear()


class ClusterLink(Link):
    """A Redis Cluster: a lane per primary node, calls routed by their slot.

    redis-py's :class:`RedisCluster` keeps the slot map and the nodes' connections; this
    only reads them. The map is loaded on first use and refreshed after ``MOVED`` or a
    connection failure (at most once per ``REFRESH_INTERVAL``).
    """

    REFRESH_INTERVAL = 0.5

    def __init__(
        self,
        cluster: RedisCluster,
        describe: str,
        timeout: float,
        wait_replicas: int = 0,
        wait_timeout: float = 1.0,
        library: bytes = b"",
    ) -> None:
        super().__init__(describe, timeout, wait_replicas, wait_timeout, library)
        self.cluster = cluster
        self._lanes: dict[str, Lane] = {}
        self._ready = False
        self._refreshing: asyncio.Task[None] | None = None
        self._held: list[Call] = []
        self._last_refresh = -1e9

    @staticmethod
    def slot(key: bytes) -> int:
        return int(key_slot(key))

    def _lane(self, node: ClusterNode) -> Lane:
        lane = self._lanes.get(node.name)
        if lane is None:
            release: Release = node.release  # type: ignore[assignment]
            lane = self._lanes[node.name] = Lane(node.name, node.acquire_connection, release)
        return lane

    def dispatch(self, calls: list[Call]) -> None:
        if not self._ready:
            self._held.extend(calls)
            self.refresh()
            return
        touched: dict[str, Lane] = {}
        manager = self.cluster.nodes_manager
        for call in calls:
            try:
                node = manager.get_node_from_slot(call.slot)
            except (RedisClusterException, RedisError, IndexError, KeyError) as exc:
                self._fail([call], exc)
                self.refresh()
                continue
            lane = self._lane(node)
            lane.waiting.append(call)
            touched[lane.name] = lane
        for lane in touched.values():
            self._pump(lane)

    async def broadcast(self, packed: bytes) -> list[Any]:
        if not self._ready:
            async with asyncio.timeout(self.timeout):
                await self.cluster.initialize()
            self._ready = True
        loop = asyncio.get_running_loop()
        futures = []
        for node in self.cluster.get_primaries():
            future: asyncio.Future[Any] = loop.create_future()
            lane = self._lane(node)
            lane.waiting.append(Call(None, packed, 0, -1, False, future))
            futures.append(future)
            self._pump(lane)
        replies = await asyncio.gather(*futures, return_exceptions=True)
        for reply in replies:
            if isinstance(reply, BaseException) and not isinstance(reply, ResponseError):
                raise reply
        return list(replies)

    def refresh(self, force: bool = False) -> None:
        """Reload the slot map in the background (calls arriving meanwhile are held)."""
        if self._refreshing is not None or self._closed:
            return
        loop = asyncio.get_running_loop()
        if not force and self._ready and loop.time() - self._last_refresh < self.REFRESH_INTERVAL:
            return
        self._last_refresh = loop.time()
        self._refreshing = loop.create_task(self._load())

    async def _load(self) -> None:
        try:
            async with asyncio.timeout(self.timeout):
                if self._ready:
                    await self.cluster.nodes_manager.initialize()
                else:
                    await self.cluster.initialize()
            self._ready = True
        except Exception as exc:  # the cluster is unreachable: fail what waits for it
            self._ready = self._ready and bool(self.cluster.nodes_manager.slots_cache)
            held, self._held = self._held, []
            self._fail(held, exc)
        finally:
            self._refreshing = None
        held, self._held = self._held, []
        if held:
            self.dispatch(held)

    def on_error_reply(self, call: Call, error: ResponseError) -> None:
        if call.resends < RESENDS:
            if isinstance(error, MovedError):
                self._held.append(call)
                call.resends += 1
                self.refresh(force=True)
                return
            if isinstance(error, AskError):
                call.resends += 1
                task = asyncio.get_running_loop().create_task(self._asking(call, error))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
                return
            if isinstance(error, TryAgainError | ClusterDownError):
                assert self._loop is not None
                self._loop.call_later(0.05 * (call.resends + 1), self._resubmit, call)
                return
        if isinstance(error, ReadOnlyError):  # a failover demoted the node: reread the map
            self.refresh()
        super().on_error_reply(call, error)

    async def _asking(self, call: Call, error: AskError) -> None:
        """Send one call to the node an ``ASK`` reply named, after ``ASKING``."""
        node = self.cluster.nodes_manager.get_node(error.host, error.port)
        if node is None:
            self._fail([call], error)
            return
        conn = node.acquire_connection()
        try:
            async with asyncio.timeout(self.timeout):
                await conn.send_packed_command([command(b"ASKING"), call.packed()], check_health=False)
                read = _reader(conn)
                await read()
                reply = await read()
                if isinstance(reply, ResponseError):
                    self.on_error_reply(call, reply)
                    return
            if not call.future.done():
                call.future.set_result(reply)
        except BaseException as exc:
            with contextlib.suppress(Exception):
                await conn.disconnect(nowait=True)
            self._fail([call], exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
        finally:
            node.release(conn)

    def on_connection_error(self, lane: Lane, error: BaseException) -> None:
        self.refresh()

    async def disconnect(self) -> None:
        if self._refreshing is not None:
            self._refreshing.cancel()
            with contextlib.suppress(BaseException):
                await self._refreshing
        self._fail(self._held, RuntimeError("the store is closed"))
        self._held = []
        with contextlib.suppress(Exception):
            await self.cluster.aclose()
