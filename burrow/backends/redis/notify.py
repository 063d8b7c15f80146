"""Long-poll wake-ups across processes over Redis pub/sub (:class:`RedisNotifier`).

Every Burrow process sharing a Redis store parks its own long polls in a
:class:`~burrow.notify.LocalNotifier` (composition: the herd rule and waiter order are
its own). An event is delivered to this process's waiters at once, and sent to Redis for
the others: ``PUBLISH`` on a server, ``SPUBLISH`` (sharded pub/sub) on Cluster, where the
channel carries the queue's hash tag and so lives on the queue's shard.

Subscriptions, and why not one pattern
    A process subscribes only to the channels of queues it has waiters on (one channel
    per queue), on ONE pub/sub connection (one per shard node on Cluster). A single
    ``PSUBSCRIBE prefix:*`` would be simpler but costs more where it matters: every
    process would receive, and parse in Python, every event of every queue (each PUT
    publishes one), so the receive cost would grow with the total write rate times the
    number of processes instead of with the events somebody here waits for; and sharded
    pub/sub has no pattern form, so Cluster would need non-sharded ``PUBLISH``, which
    every node broadcasts to every other node. A channel is subscribed when a queue gets
    its first local waiter and unsubscribed ``linger`` seconds after its last one left
    (a worker re-parking right after an answer keeps it).

No lost wake-ups
    A subscription takes a round trip, and an event published before Redis confirmed it
    is not delivered. So every confirmation (the first one, and each after a reconnect)
    wakes the channel's local waiters once: they retry, and find what they missed. When
    the pub/sub connection drops (Redis restart, ``CLIENT KILL``, a failover), it is
    reconnected with backoff and every wanted channel resubscribed, so an outage costs
    each waiter one retry, never a long poll stuck until its deadline. An idle connection
    is checked with a PING every ``ping_interval`` seconds (half-open TCP). The pub/sub
    connections are this module's own (asyncio streams, replies parsed by hiredis), not
    redis-py's ``PubSub``, which reconnects and resubscribes silently: the notifier must
    know when that happens, to wake its waiters.

Publishing never blocks a request
    ``publish`` is called from synchronous engine code: it wakes local waiters and puts
    the event in a bounded per-queue buffer (events for one queue coalesce: their
    ``visible`` counts add up, an unknown count wins); a background task sends the buffer
    in pipelined batches. Over ``max_pending`` queues, new events are dropped and counted
    (``dropped``: a long poll elsewhere that needed one waits for the next event or its
    deadline); a Redis error is logged and counted (``publish_errors``) and the batch
    retried after a backoff, never raised into the request.

Herds
    An event carries ``visible``; every process that receives it wakes its readers and at
    most ``visible`` of its takers (oldest first). With P processes waiting on a queue, up
    to P x visible takers may wake for one event: that is the bound (the losers re-park).

Wire format
    Channel: ``burrow:<prefix>:<db>:ev:{<tag>}:<digest>``, where ``<digest>`` is 80 bits
    of BLAKE2b of the account and queue (names may hold any UTF-8 but control characters;
    the digest is fixed-length and needs no escaping; a collision only wakes a few waiters
    that find nothing) and ``<tag>`` is the queue's hash tag (by default the digest
    itself). Message: ``<sender>|<visible>`` (``visible`` empty when unknown), where
    ``<sender>`` identifies the notifier that sent it, so a process skips its own events.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import random
import socket
import ssl
from collections.abc import Callable, Iterable
from typing import Any

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection

from burrow.notify import LocalNotifier, Notifier, QueueKey

log = logging.getLogger("burrow.notify")

AnyRedis = aioredis.Redis | RedisCluster

#: Events for this many distinct queues may wait to be published; more are dropped.
MAX_PENDING = 10_000
#: Channels per pipelined batch.
BATCH = 512
BACKOFF_MIN = 0.05
BACKOFF_MAX = 2.0
CONNECT_TIMEOUT = 5.0
#: Seconds one batch may take, the client's own retries included, before it is given up
#: and retried after a backoff (so a batch stuck in an outage does not hold back new events).
SEND_TIMEOUT = 2.0


class RedisNotifier(Notifier):
    """A :class:`~burrow.notify.Notifier` whose events reach every process sharing the store."""

    def __init__(
        self,
        connect: Callable[[], AnyRedis],
        prefix: str = "",
        tag: Callable[[str, str], str] | None = None,
        *,
        linger: float = 2.0,
        ping_interval: float = 30.0,
        max_pending: int = MAX_PENDING,
    ) -> None:
        """Build it; nothing connects before :meth:`start`.

        ``connect``: returns a new ``redis.asyncio.Redis`` (one server: ``PUBLISH``) or
        ``redis.asyncio.cluster.RedisCluster`` (``SPUBLISH``), e.g. ``lambda:
        Redis.from_url(url)``. Called once, in :meth:`start`; the notifier owns that
        client (publishes through it, closes it in :meth:`close`) and opens its pub/sub
        connections with the client's connection settings (host/port or unix socket,
        username/password, TLS; a ``credential_provider`` is not supported).
        ``prefix``: the store's key namespace, so deployments sharing one Redis do not
        wake each other (the client's database number is added: pub/sub ignores it).
        ``tag``: ``(account, queue) -> hash tag`` (without braces; no ``}``) that the
        backend's keys for that queue use, so a queue's events go to the shard holding
        it; by default a digest of the names.
        ``linger``: seconds a channel stays subscribed after its last waiter left.
        ``ping_interval``: seconds of silence after which a pub/sub connection is
        PINGed (and dropped if the next interval brings nothing either).
        ``max_pending``: queues whose events may wait to be published; more are dropped.
        """
        self._connect = connect
        self._prefix = _escape(prefix)
        self._tag = tag
        self.linger = linger
        self.ping_interval = ping_interval
        self.max_pending = max_pending
        #: Identifies this notifier's messages (a process skips its own).
        self.sender = os.urandom(6).hex().encode()
        self._local = LocalNotifier()
        self._client: AnyRedis | None = None
        self._cluster = False
        self._base = ""
        self._running = False
        # Publishing: queue -> visible (None: unknown), sent by _publish_forever.
        self._pending: dict[QueueKey, int | None] = {}
        self._publish_ready = asyncio.Event()
        # Subscribing: wanted channel -> the queues it serves (more than one only on a collision).
        self._channels: dict[bytes, set[QueueKey]] = {}
        self._names: dict[QueueKey, bytes] = {}  # queue -> channel, for the queues in _channels
        self._idle: dict[bytes, float] = {}  # wanted channel without local waiters -> since
        self._changed: set[bytes] = set()  # channels whose link assignment needs a look
        self._assigned: dict[bytes, _Link] = {}
        self._links: dict[str, _Link] = {}
        self._dirty = asyncio.Event()
        self._refresh = False  # Cluster: reread the slot map before the next assignment
        self._tasks: list[asyncio.Task[None]] = []
        # Counters (for operators and tests).
        self.published = 0
        self.dropped = 0
        self.publish_errors = 0
        self.received = 0  # events from other notifiers
        self.echoes = 0  # this notifier's own events, come back (skipped)
        self.reconnects = 0

    # -- lifecycle ----------------------------------------------------------------------
    async def start(self) -> None:
        client = self._client = self._connect()
        loop = asyncio.get_running_loop()
        if isinstance(client, RedisCluster):
            self._cluster = True
            try:
                await client.initialize()
            except BaseException:
                await client.aclose()
                self._client = None
                raise
            self._base = f"burrow:{self._prefix}:0:ev:"
        else:
            pool = client.connection_pool
            self._base = f"burrow:{self._prefix}:{int(pool.connection_kwargs.get('db') or 0)}:ev:"
            self._link("main", _endpoint(pool.connection_class, pool.connection_kwargs))
        self._running = True
        self._tasks = [
            loop.create_task(self._publish_forever(), name="burrow-notify-publish"),
            loop.create_task(self._reconcile_forever(), name="burrow-notify-subscribe"),
        ]

    async def close(self) -> None:
        running, self._running = self._running, False
        if (
            running and self._pending and self._client is not None
        ):  # best effort: the last events of a shutdown
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    await self._send(self._pending)
        self._pending = {}
        # Cancel until done, not once: redis-py's commands run under asyncio.wait_for, which on
        # Python 3.11 can swallow a cancel that arrives as the command completes (CPython
        # gh-86296), and the task would carry on.
        tasks = [*self._tasks, *(link.task for link in self._links.values())]
        while pending := [task for task in tasks if not task.done()]:
            for task in pending:
                task.cancel()
            await asyncio.wait(pending, timeout=0.1)
        await asyncio.gather(*tasks, return_exceptions=True)  # collects their outcomes
        self._tasks = []
        self._links.clear()
        self._assigned.clear()
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # -- the Notifier interface ---------------------------------------------------------
    def subscribe(self, key: QueueKey, waiter: asyncio.Future[None], taker: bool) -> None:
        first = not self._local.watching(key)
        self._local.subscribe(key, waiter, taker)
        if first and self._running:
            channel = self._names.get(key)
            if channel is None:
                channel = self._names[key] = self.channel(key)
            keys = self._channels.get(channel)
            if keys is None:
                self._channels[channel] = {key}
                self._changed.add(channel)
                self._dirty.set()
            else:
                keys.add(key)
                self._idle.pop(channel, None)

    def unsubscribe(self, key: QueueKey, waiter: asyncio.Future[None]) -> None:
        self._local.unsubscribe(key, waiter)
        if self._local.watching(key) or not self._running:
            return
        channel = self._names.get(key)
        if channel is None or channel in self._idle:
            return
        if not any(self._local.watching(k) for k in self._channels[channel]):
            # The reconciler looks every `linger` seconds (a poll re-parking right away, as
            # the engine does after each wake-up, costs nothing more than this).
            self._idle[channel] = asyncio.get_running_loop().time()
            if self.linger <= 0:
                self._dirty.set()

    def publish(self, key: QueueKey, visible: int | None = None) -> None:
        self._local.publish(key, visible)
        if not self._running:
            return
        pending = self._pending
        if key in pending:
            before = pending[key]
            pending[key] = None if before is None or visible is None else before + visible
        elif len(pending) >= self.max_pending:
            self.dropped += 1
            return
        else:
            pending[key] = visible
            self._publish_ready.set()

    def wake_all(self) -> None:
        self._local.wake_all()

    @property
    def waiting(self) -> int:
        return self._local.waiting

    def has_waiters(self) -> bool:
        return True  # waiters in other processes may need any event

    # -- names --------------------------------------------------------------------------
    def channel(self, key: QueueKey) -> bytes:
        """The pub/sub channel of a queue's events."""
        account, queue = key
        name = f"{account}\0{queue}".encode(errors="surrogatepass")
        digest = hashlib.blake2b(name, digest_size=10).hexdigest()
        if self._tag is None:
            return f"{self._base}{{{digest}}}".encode()
        tag = self._tag(account, queue)
        return f"{self._base}{{{tag}}}:{digest}".encode(errors="surrogatepass")

    # -- publishing ---------------------------------------------------------------------
    async def _publish_forever(self) -> None:
        backoff = BACKOFF_MIN
        while True:
            await self._publish_ready.wait()
            self._publish_ready.clear()
            batch, self._pending = self._pending, {}
            try:
                async with asyncio.timeout(SEND_TIMEOUT):
                    await self._send(batch)
                backoff = BACKOFF_MIN
            except Exception as exc:  # a Redis outage must not end the task
                self.publish_errors += 1
                log.warning("publishing %d events failed (retrying in %.2fs): %s", len(batch), backoff, exc)
                for key, visible in batch.items():  # back in the buffer, within its bound
                    self._requeue(key, visible)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
                self._publish_ready.set()

    def _requeue(self, key: QueueKey, visible: int | None) -> None:
        pending = self._pending
        if key in pending:
            before = pending[key]
            pending[key] = None if before is None or visible is None else before + visible
        elif len(pending) >= self.max_pending:
            self.dropped += 1
        else:
            pending[key] = visible

    async def _send(self, batch: dict[QueueKey, int | None]) -> None:
        client = self._client
        assert client is not None
        command = "SPUBLISH" if self._cluster else "PUBLISH"
        sender = self.sender + b"|"
        items = list(batch.items())
        for start in range(0, len(items), BATCH):
            async with client.pipeline(transaction=False) as pipe:
                for key, visible in items[start : start + BATCH]:
                    message = sender if visible is None else sender + str(visible).encode()
                    pipe.execute_command(command, self._names.get(key) or self.channel(key), message)
                await pipe.execute()
            self.published += min(BATCH, len(items) - start)

    # -- subscribing --------------------------------------------------------------------
    async def _reconcile_forever(self) -> None:
        """Keep the links' channels equal to the wanted ones (the only place that changes them)."""
        loop = asyncio.get_running_loop()
        while True:
            timeout = None
            if self._idle:
                timeout = max(0.0, min(self._idle.values()) + self.linger - loop.time())
            elif self._channels and self.linger > 0:
                timeout = self.linger  # a wanted channel may go idle meanwhile
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._dirty.wait()
            self._dirty.clear()
            try:
                await self._reconcile(loop.time())
            except Exception as exc:  # e.g. the slot map could not be read: try again soon
                log.warning("pub/sub subscriptions not updated (retrying): %s", exc)
                await asyncio.sleep(BACKOFF_MAX)
                self._dirty.set()

    async def _reconcile(self, now: float) -> None:
        for channel, since in list(self._idle.items()):
            if now - since >= self.linger:
                del self._idle[channel]
                for key in self._channels.pop(channel):
                    self._names.pop(key, None)
                self._changed.add(channel)
        if self._refresh:
            assert isinstance(self._client, RedisCluster)
            await self._client.nodes_manager.initialize()
            self._refresh = False
            self._changed.update(self._channels)
            self._changed.update(self._assigned)
        changed, self._changed = self._changed, set()
        failed: Exception | None = None
        for channel in changed:
            link = self._assigned.get(channel)
            try:
                target = self._link_for(channel) if channel in self._channels else None
            except Exception as exc:  # Cluster: its slot is not covered (yet): look again later
                self._changed.add(channel)
                self._refresh = True
                failed = exc
                continue
            if link is target:
                continue
            if link is not None:
                link.remove(channel)
                del self._assigned[channel]
            if target is not None:
                target.add(channel)
                self._assigned[channel] = target
        if self._cluster:  # a node that has nothing to listen to any more: hang up
            for name, link in list(self._links.items()):
                if not link.want:
                    link.task.cancel()
                    del self._links[name]
        if failed is not None:
            raise failed

    def _link_for(self, channel: bytes) -> _Link:
        if not self._cluster:
            return self._links["main"]
        assert isinstance(self._client, RedisCluster)
        # The channel's bytes, exactly: it hashes what it is given, like the server.
        node = self._client.get_node_from_key(channel)  # type: ignore[arg-type]
        if node is None:
            raise RuntimeError(f"no node serves {channel!r}")
        link = self._links.get(node.name)
        if link is None:
            link = self._link(node.name, _endpoint(node.connection_class, node.connection_kwargs))
        return link

    def _link(self, name: str, endpoint: _Endpoint) -> _Link:
        link = self._links[name] = _Link(self, name, endpoint, self._cluster)
        return link

    # -- what links report ---------------------------------------------------------------
    def _confirmed(self, channel: bytes) -> None:
        """Subscribed: wake the channel's waiters once (an event before this was missed)."""
        for key in self._channels.get(channel, ()):
            self._local.publish(key)

    def _message(self, channel: bytes, data: bytes) -> None:
        sender, _, count = data.partition(b"|")
        if sender == self.sender:
            self.echoes += 1
            return  # delivered locally when it was published
        try:
            visible = int(count) if count else None
        except ValueError:
            log.debug("ignoring a malformed event on %r: %r", channel, data)
            return
        self.received += 1
        for key in self._channels.get(channel, ()):
            self._local.publish(key, visible)

    def _lost(self, link: _Link, channel: bytes) -> None:
        """The server dropped a subscription (its slot moved): reread the map and resubscribe."""
        if self._assigned.get(channel) is link:
            del self._assigned[channel]
        self._changed.add(channel)
        self._refresh = self._cluster
        self._dirty.set()

    def _down(self, link: _Link) -> None:
        """A link lost its connection; on Cluster its node may be gone: reread the map."""
        if self._cluster:
            self._refresh = True
            self._dirty.set()


class _Endpoint:
    """Where and how a pub/sub connection connects (taken from redis-py's connection settings)."""

    def __init__(self, kwargs: dict[str, Any], tls: ssl.SSLContext | None, path: str | None) -> None:
        self.host = str(kwargs.get("host", "localhost"))
        self.port = int(kwargs.get("port", 6379))
        self.path = path
        self.username: str | None = kwargs.get("username")
        self.password: str | None = kwargs.get("password")
        self.tls = tls

    async def open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.path is not None:
            return await asyncio.open_unix_connection(self.path)
        reader, writer = await asyncio.open_connection(
            self.host, self.port, ssl=self.tls, server_hostname=self.host if self.tls else None
        )
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        return reader, writer

    def __str__(self) -> str:
        return self.path or f"{self.host}:{self.port}"


def _endpoint(connection_class: type[Any], kwargs: dict[str, Any]) -> _Endpoint:
    tls = None
    if issubclass(connection_class, SSLConnection):
        tls = connection_class(**kwargs).ssl_context.get()
    path = kwargs.get("path") if issubclass(connection_class, UnixDomainSocketConnection) else None
    return _Endpoint(kwargs, tls, path)


class _Link:
    """One pub/sub connection to one Redis node, kept subscribed to ``want`` until cancelled."""

    def __init__(self, owner: RedisNotifier, name: str, endpoint: _Endpoint, sharded: bool) -> None:
        self.owner = owner
        self.name = name
        self.endpoint = endpoint
        self.sharded = sharded
        #: Channels this link should be subscribed to.
        self.want: set[bytes] = set()
        self._sent: set[bytes] = set()  # subscribed on the current connection (or asked to be)
        self._leaving: dict[bytes, int] = {}  # unsubscribes sent, not yet confirmed
        self._writer: asyncio.StreamWriter | None = None
        self.task = asyncio.get_running_loop().create_task(self._run(), name=f"burrow-notify-{name}")

    def add(self, channel: bytes) -> None:
        self.want.add(channel)
        if self._writer is not None and channel not in self._sent:
            self._subscribe([channel])

    def remove(self, channel: bytes) -> None:
        self.want.discard(channel)
        if self._writer is not None and channel in self._sent:
            self._sent.discard(channel)
            self._leaving[channel] = self._leaving.get(channel, 0) + 1
            self._command(b"SUNSUBSCRIBE" if self.sharded else b"UNSUBSCRIBE", channel)

    def _subscribe(self, channels: Iterable[bytes]) -> None:
        channels = list(channels)
        self._sent.update(channels)
        if self.sharded:  # one slot per SSUBSCRIBE (else CROSSSLOT)
            for channel in channels:
                self._command(b"SSUBSCRIBE", channel)
        else:
            for start in range(0, len(channels), BATCH):
                self._command(b"SUBSCRIBE", *channels[start : start + BATCH])

    def _command(self, *args: bytes) -> None:
        assert self._writer is not None
        self._writer.write(_encode(args))

    async def _run(self) -> None:
        backoff = BACKOFF_MIN
        down_since: float | None = None
        loop = asyncio.get_running_loop()
        while True:
            writer = None
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT):
                    reader, writer = await self.endpoint.open()
                    parser = hiredis.Reader()
                    await self._handshake(reader, writer, parser)
                if down_since is not None:
                    self.owner.reconnects += 1
                    log.info(
                        "pub/sub connection to %s back after %.1fs", self.endpoint, loop.time() - down_since
                    )
                down_since, backoff = None, BACKOFF_MIN
                self._writer = writer
                self._subscribe(self.want)
                await self._read(reader, parser)
            except (OSError, EOFError, TimeoutError, hiredis.HiredisError, _ServerError) as exc:
                if down_since is None:
                    down_since = loop.time()
                    log.warning("pub/sub connection to %s lost (reconnecting): %r", self.endpoint, exc)
            except Exception:  # a bug must not leave this process deaf for good
                down_since = loop.time() if down_since is None else down_since
                log.exception("pub/sub connection to %s failed (reconnecting)", self.endpoint)
            finally:
                self._writer = None
                self._sent.clear()
                self._leaving.clear()
                if writer is not None:
                    writer.close()
            self.owner._down(self)
            await asyncio.sleep(backoff * random.uniform(0.5, 1.0))
            backoff = min(backoff * 2, BACKOFF_MAX)

    async def _handshake(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, parser: hiredis.Reader
    ) -> None:
        commands: list[tuple[bytes, ...]] = []
        if self.endpoint.password is not None:
            auth = (
                (self.endpoint.username, self.endpoint.password)
                if self.endpoint.username
                else (self.endpoint.password,)
            )
            commands.append((b"AUTH", *(part.encode() for part in auth)))
        commands.append((b"CLIENT", b"SETNAME", b"burrow-notify-" + self.owner.sender))
        for command in commands:
            writer.write(_encode(command))
        for command in commands:
            reply = await _reply(reader, parser)
            if isinstance(reply, hiredis.ReplyError):
                raise _ServerError(f"{command[0].decode()} failed: {reply}")

    async def _read(self, reader: asyncio.StreamReader, parser: hiredis.Reader) -> None:
        """Dispatch what arrives until the connection ends; PING when it is quiet."""
        interval = self.owner.ping_interval
        pinged = False
        while True:
            try:
                async with asyncio.timeout(interval):
                    data = await reader.read(65536)
            except TimeoutError:
                if pinged:
                    raise TimeoutError(f"no answer to PING in {interval}s") from None
                self._command(b"PING")
                pinged = True
                continue
            if not data:
                raise EOFError("connection closed by the server")
            pinged = False
            parser.feed(data)
            while (reply := parser.gets()) is not False:
                self._dispatch(reply)

    def _dispatch(self, reply: Any) -> None:
        if isinstance(reply, hiredis.ReplyError):
            raise _ServerError(str(reply))
        if not isinstance(reply, list) or len(reply) < 2:
            return  # +PONG (a PING while subscribed to nothing)
        kind, channel = reply[0], reply[1]
        if kind in (b"message", b"smessage"):
            self.owner._message(channel, reply[2])
        elif kind in (b"subscribe", b"ssubscribe"):
            if channel in self._sent:  # else left again before this confirmation arrived
                self.owner._confirmed(channel)
        elif kind in (b"unsubscribe", b"sunsubscribe"):
            leaving = self._leaving.get(channel, 0)
            if leaving > 1:
                self._leaving[channel] = leaving - 1
            elif leaving == 1:
                del self._leaving[channel]
            elif channel in self._sent:  # unasked: the slot moved to another node
                self._sent.discard(channel)
                self.want.discard(channel)
                self.owner._lost(self, channel)


class _ServerError(Exception):
    """Redis answered a pub/sub connection with an error (the connection is then renewed)."""


async def _reply(reader: asyncio.StreamReader, parser: hiredis.Reader) -> Any:
    while (reply := parser.gets()) is False:
        data = await reader.read(65536)
        if not data:
            raise EOFError("connection closed by the server")
        parser.feed(data)
    return reply


def _encode(args: Iterable[bytes]) -> bytes:
    """A command in RESP (an array of bulk strings)."""
    parts = list(args)
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        out.append(b"$%d\r\n%s\r\n" % (len(part), part))
    return b"".join(out)


def _escape(text: str) -> str:
    """``text`` without braces (they would make a hash tag), ``%`` or control characters."""
    return "".join(f"%{ord(c):02X}" if c in "{}%" or ord(c) < 32 or ord(c) == 127 else c for c in text)
