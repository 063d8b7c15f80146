"""``RedisBackend``: the storage contract as Redis functions, one per operation (see ``scripts``)."""

from __future__ import annotations

import asyncio
import logging
import re
import struct
from collections.abc import Iterable, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import AbstractConnection, Connection, SSLConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from burrow.backends.base import Backend
from burrow.backends.redis import scripts
from burrow.backends.redis.keys import Keys, decode, encode, tag
from burrow.backends.redis.link import ClusterLink, Function, Link, ServerLink, bulk, command
from burrow.backends.redis.url import RedisTarget, parse
from burrow.config import Settings
from burrow.core.errors import StorageUnavailable
from burrow.core.model import Counts, Filter, Message, Sent, Update
from burrow.notify import Notifier
from burrow.quotas import Usage

#: Record layout (see ``scripts``): tag byte, seq, the deadlines stored, then the extras.
_DOUBLE = struct.Struct("<d")
_EXTRAS = struct.Struct("<ddIHI")
#: Seconds of wake-up history kept before a cleaner window's start, so a cleaner looking
#: back a little further than its last pass still finds the deadlines (as the memory store).
UNHIDE_KEEP = 120
#: Expired messages one cleaner call deletes from an account (a few ms of Redis's time).
CLEAN_BUDGET = 1000
#: Calls per account per cleaner pass; what is left waits for the next pass.
CLEAN_ROUNDS = 20
#: Accounts with a due deadline visited per cleaner pass.
CLEAN_ACCOUNTS = 1000
#: A FIFO group name is stored with a 2-byte length.
MAX_GROUP_BYTES = 0xFFFF

_ONE, _ZERO, _EMPTY = b"1", b"0", b""
log = logging.getLogger("burrow.redis")
_GLOB_SPECIAL = re.compile(rb"([*?\[\]\\])")


def _num(value: float) -> bytes:
    return b"%r" % (value,)


def _message(mid: str, rec: bytes) -> Message:
    """A stored record as a :class:`Message`."""
    tag = rec[0]
    at = 9
    expires = hidden = 0.0
    if tag & 1:
        expires = _DOUBLE.unpack_from(rec, at)[0]
        at += 8
    if tag & 2:
        hidden = _DOUBLE.unpack_from(rec, at)[0]
        at += 8
    if tag < 4:
        return Message(mid, rec[at:], expires, hidden)
    first, sequence, receives, glen, mlen = _EXTRAS.unpack_from(rec, at)
    at += _EXTRAS.size
    meta_at = at + glen
    return Message(
        mid,
        rec[meta_at + mlen :],
        expires,
        hidden,
        rec[meta_at : meta_at + mlen],
        receives,
        first,
        decode(rec[at:meta_at]),
        int(sequence),
    )


def _messages(flat: Sequence[bytes]) -> list[Message]:
    return [_message(decode(flat[i]), flat[i + 1]) for i in range(0, len(flat), 2)]


def _filter_args(filter: Filter) -> tuple[bytes, bytes, bytes]:
    marker = filter.marker
    limit = filter.limit
    return (
        _ZERO if marker is None else _ONE,
        _EMPTY if marker is None else encode(marker),
        _EMPTY if limit is None else b"%d" % max(limit, 0),
    )


def _optional(value: float | None) -> tuple[bytes, bytes]:
    return (_ZERO, _EMPTY) if value is None else (_ONE, _num(value))


def _update_args(update: Update) -> tuple[bytes, ...]:
    meta = update.meta
    return (
        *_optional(update.expires),
        *_optional(update.hidden_until),
        _ZERO if meta is None else _ONE,
        _EMPTY if meta is None else meta,
    )


class RedisBackend(Backend):
    """Accounts, queues and messages in Redis or a Redis Cluster, shared by any number of
    Burrow processes (see the package docstring)."""

    def __init__(self, target: RedisTarget, settings: Settings | None = None) -> None:
        settings = settings or Settings()
        self.target = target
        self.url = target.url.split("?", 1)[0] if target.password is None else target.describe()
        self.keys = Keys(target.prefix, target.cluster)
        self.wait_replicas = settings.redis_wait_replicas
        self.wait_timeout = settings.redis_wait_timeout
        name, source = scripts.library()
        self.library = source.encode()
        self._functions = {op: Function(f"{name}_{op}") for op in scripts.BODIES}
        self._global = {op: Function(f"{name}_g_{op}") for op in scripts.GLOBAL_BODIES}
        self._link: Link | None = None

    @classmethod
    def from_url(cls, url: str, settings: Settings) -> RedisBackend:
        return cls(parse(url), settings)

    # -- connections ---------------------------------------------------------------------
    def _connection(self, host: str, port: int) -> AbstractConnection:
        """One connection to a single server, reading without a timeout of its own: every
        batch on it runs under the link's deadline."""
        target = self.target
        kwargs: dict[str, Any] = target.connection_kwargs()
        cls = SSLConnection if target.tls else Connection
        return cls(
            host=host,
            port=port,
            db=target.db,
            socket_timeout=None,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
            **kwargs,
        )

    def _cluster(self, socket_timeout: float | None) -> RedisCluster:
        target = self.target
        return RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in target.nodes],
            socket_timeout=socket_timeout,
            ssl=target.tls,
            retry=Retry(NoBackoff(), 0),
            **target.connection_kwargs(),  # type: ignore[arg-type]
        )

    def client(self) -> aioredis.Redis | RedisCluster:
        """A new ordinary redis-py client for this store (the notifier's, tools')."""
        target = self.target
        if target.cluster:
            return self._cluster(target.timeout)
        host, port = target.nodes[0]
        return aioredis.Redis(
            host=host,
            port=port,
            db=target.db,
            ssl=target.tls,
            socket_timeout=target.timeout,
            **target.connection_kwargs(),  # type: ignore[arg-type]
        )

    async def open(self) -> None:
        target = self.target
        if target.cluster:
            self._link = ClusterLink(
                self._cluster(None),
                target.describe(),
                target.timeout,
                self.wait_replicas,
                self.wait_timeout,
                self.library,
            )
        else:
            host, port = target.nodes[0]
            self._link = ServerLink(
                lambda: self._connection(host, port),
                target.describe(),
                target.timeout,
                self.wait_replicas,
                self.wait_timeout,
                self.library,
            )
        await self._warm()

    async def _warm(self) -> None:
        """Load the functions (and the Cluster's slot map) now, so the first requests need one
        round trip each. Best effort: a store that is down answers 503 until it is back,
        and a node without the functions gets them on first use."""
        link = self._linked()
        try:
            async with asyncio.timeout(self.target.timeout):
                await link.broadcast(link.load_library)
        except Exception as exc:  # any failure only delays the loading
            log.warning(
                "%s not reachable at start (%s); requests get 503 until it is", self.target.describe(), exc
            )

    async def close(self) -> None:
        link, self._link = self._link, None
        if link is not None:
            await link.close()

    def notifier(self) -> Notifier | None:
        from burrow.backends.redis.notify import RedisNotifier

        return RedisNotifier(self.client, self.target.prefix, lambda account, queue: tag(account))

    # -- calls ----------------------------------------------------------------------------
    def _linked(self) -> Link:
        link = self._link
        if link is None:
            raise StorageUnavailable(f"storage unavailable: the {self.target.describe()} store is not open")
        return link

    async def _run(
        self, name: str, account: str, queue: str, args: Iterable[bytes], write: bool = True
    ) -> Any:
        """Run one account script; returns its result after applying its deltas (Cluster)."""
        a, head, _ = self.keys.block(account, queue)
        encoded = [b"$%d\r\n%b\r\n" % (len(arg), arg) for arg in args]
        reply = await self._linked().call(
            self._functions[name], head + b"".join(encoded), 5 + len(encoded), a.slot, write
        )
        if reply[1]:
            await self._apply(reply[1])
        return reply[0]

    async def _run_global(self, name: str, args: Iterable[bytes], write: bool = False) -> Any:
        encoded = [bulk(arg) for arg in args]
        keys = self.keys
        return await self._linked().call(
            self._global[name],
            keys.global_head() + b"".join(encoded),
            2 + len(encoded),
            keys.global_slot,
            write,
        )

    async def _apply(self, deltas: list[list[Any]]) -> None:
        """Cluster: tell the global index what the account scripts published."""
        args: list[bytes] = []
        for delta in deltas:
            args.extend(part if isinstance(part, bytes) else b"%d" % part for part in delta)
        await self._run_global("apply", args, write=True)

    async def _hget(self, slot: int, key: bytes, field: bytes) -> bytes | None:
        reply: bytes | None = await self._linked().call(None, command(b"HGET", key, field), 0, slot, False)
        return reply

    # -- accounts ---------------------------------------------------------------------------
    async def list_accounts(self, filter: Filter, now: float) -> list[str]:
        names = await self._run_global("accounts", _filter_args(filter))
        return [decode(n) for n in names]

    async def delete_accounts(self, filter: Filter, now: float) -> list[str]:
        names = await self.list_accounts(filter, now)
        await asyncio.gather(*(self._run("queues", a, "", (_ZERO, _EMPTY, _EMPTY, _ONE)) for a in names))
        return names

    # -- queues -----------------------------------------------------------------------------
    async def list_queues(self, account: str, filter: Filter, now: float) -> list[str]:
        names = await self._run("queues", account, "", (*_filter_args(filter), _ZERO), write=False)
        return [decode(n) for n in names]

    async def delete_queues(self, account: str, filter: Filter, now: float) -> list[str]:
        names = await self._run("queues", account, "", (*_filter_args(filter), _ONE))
        return [decode(n) for n in names]

    # -- message lists -----------------------------------------------------------------------
    async def get_messages(self, account: str, queue: str, filter: Filter, now: float) -> list[Message]:
        args = (*_filter_args(filter), _ONE if filter.match_hidden else _ZERO, _num(now), b"get")
        return _messages(await self._run("list", account, queue, args, write=False))

    async def update_messages(
        self, account: str, queue: str, filter: Filter, update: Update, now: float
    ) -> list[Message]:
        args = (*_filter_args(filter), _ONE if filter.match_hidden else _ZERO, _num(now), b"update")
        return _messages(await self._run("list", account, queue, (*args, *_update_args(update))))

    async def delete_messages(self, account: str, queue: str, filter: Filter, now: float) -> list[Message]:
        args = (*_filter_args(filter), _ONE if filter.match_hidden else _ZERO, _num(now), b"delete")
        return _messages(await self._run("list", account, queue, args))

    # -- one message -------------------------------------------------------------------------
    async def get_message(self, account: str, queue: str, message: str, now: float) -> Message | None:
        a, _, data = self.keys.block(account, queue)
        rec = await self._hget(a.slot, data, encode(message))
        if rec is None:
            return None
        found = _message(message, rec)
        return None if 0 < found.expires <= now else found

    async def put_message(
        self,
        account: str,
        queue: str,
        message: str,
        body: bytes,
        expires: float,
        hidden_until: float,
        now: float,
        meta: bytes = b"",
    ) -> bool:
        args = (encode(message), body, _num(expires), _num(hidden_until), _num(now), meta)
        return bool(await self._run("put", account, queue, args))

    async def update_message(
        self,
        account: str,
        queue: str,
        message: str,
        update: Update,
        now: float,
        expect_hidden_until: float | None = None,
    ) -> Message | None:
        args = (encode(message), _num(now), *_optional(expect_hidden_until), *_update_args(update))
        rec = await self._run("update", account, queue, args)
        return None if rec is None else _message(message, rec)

    async def delete_message(
        self,
        account: str,
        queue: str,
        message: str,
        now: float,
        expect_hidden_until: float | None = None,
        expect_receives: int | None = None,
    ) -> Message | None:
        receives = (_ZERO, _EMPTY) if expect_receives is None else (_ONE, b"%d" % expect_receives)
        args = (encode(message), _num(now), *_optional(expect_hidden_until), *receives)
        rec = await self._run("delete", account, queue, args)
        return None if rec is None else _message(message, rec)

    # -- worker operations ---------------------------------------------------------------------
    async def claim(
        self, account: str, queue: str, limit: int, hidden_until: float, now: float, fifo: bool = False
    ) -> list[Message]:
        if limit <= 0:
            return []
        args = (b"%d" % limit, _num(hidden_until), _num(now), _ONE if fifo else _ZERO)
        return _messages(await self._run("claim", account, queue, args))

    async def send_message(
        self,
        account: str,
        queue: str,
        message: str,
        body: bytes,
        expires: float,
        hidden_until: float,
        now: float,
        meta: bytes,
        group: str,
        dedup: str | None,
        dedup_until: float,
    ) -> Sent:
        raw_group = encode(group)
        if len(raw_group) > MAX_GROUP_BYTES:
            raise ValueError(f"message group longer than {MAX_GROUP_BYTES} bytes")
        args = (
            encode(message),
            body,
            _num(expires),
            _num(hidden_until),
            _num(now),
            meta,
            raw_group,
            _ZERO if dedup is None else _ONE,
            _EMPTY if dedup is None else encode(dedup),
            _num(dedup_until),
        )
        mid, sequence, created = await self._run("send", account, queue, args)
        return Sent(decode(mid), int(sequence), bool(created))

    async def move_message(
        self,
        account: str,
        queue: str,
        message: str,
        to_account: str,
        to_queue: str,
        expires: float,
        now: float,
        meta: bytes | None = None,
        receives: int | None = None,
        expect_receives: int | None = None,
    ) -> Message | None:
        """Atomic (one script) on a single server and, on Cluster, within an account (or
        between accounts whose tags share a slot). Across Cluster slots it copies first
        and deletes second: a crash between leaves two copies, never none; if the source
        changed meanwhile (a claim took it), the copy is taken back and nothing moves."""
        keys = self.keys
        src, dst = keys.account(account), keys.account(to_account)
        tail = (
            _num(expires),
            _num(now),
            _ZERO if meta is None else _ONE,
            _EMPTY if meta is None else meta,
            _ZERO if receives is None else _ONE,
            _EMPTY if receives is None else b"%d" % receives,
        )
        mid = encode(message)
        if src.slot == dst.slot:
            expect = (_ZERO, _EMPTY) if expect_receives is None else (_ONE, b"%d" % expect_receives)
            args = (mid, dst.prefix, dst.raw, encode(to_queue), *tail, *expect)
            rec = await self._run("move", account, queue, args)
            return None if rec is None else _message(message, rec)
        _, _, data = keys.block(account, queue)
        old = await self._hget(src.slot, data, mid)
        if old is None:
            return None
        found = _message(message, old)
        if 0 < found.expires <= now or (expect_receives is not None and found.receives != expect_receives):
            return None
        rec = await self._run("move_in", to_account, to_queue, (mid, old, *tail))
        if await self._run("delete_if", account, queue, (mid, old, _num(now))):
            return _message(message, rec)
        await self._run("delete_if", to_account, to_queue, (mid, rec, _num(now)))
        return None

    async def count(self, account: str, queue: str, now: float) -> Counts:
        visible, in_flight, delayed = await self._run("count", account, queue, (_num(now),), write=False)
        return Counts(visible, in_flight, delayed)

    # -- queue metadata ------------------------------------------------------------------------
    async def get_queue_meta(self, account: str, queue: str) -> bytes | None:
        a = self.keys.account(account)
        return await self._hget(a.slot, a.meta, encode(queue))

    async def set_queue_meta(self, account: str, queue: str, meta: bytes | None) -> None:
        await self._meta(account, queue, None, meta, swap=False)

    async def swap_queue_meta(
        self, account: str, queue: str, expect: bytes | None, meta: bytes | None
    ) -> bool:
        return await self._meta(account, queue, expect, meta, swap=True)

    async def _meta(
        self, account: str, queue: str, expect: bytes | None, meta: bytes | None, swap: bool
    ) -> bool:
        args = (
            _ONE if swap else _ZERO,
            _ZERO if expect is None else _ONE,
            _EMPTY if expect is None else expect,
            _ZERO if meta is None else _ONE,
            _EMPTY if meta is None else meta,
        )
        return bool(await self._run("meta", account, queue, args))

    async def list_queue_meta(self, account: str) -> list[tuple[str, bytes]]:
        flat = await self._run("meta_list", account, "", (), write=False)
        return [(decode(flat[i]), flat[i + 1]) for i in range(0, len(flat), 2)]

    # -- housekeeping --------------------------------------------------------------------------
    async def clean(self, now: float, since: float) -> list[tuple[str, str]]:
        """A global call (which accounts are due, which had hides run out), then one call per
        such account, all in one round trip; an account with more expired messages than
        one call's budget is called again (Redis serves others between calls), up to
        CLEAN_ROUNDS times per pass."""
        keep = b"%d" % UNHIDE_KEEP
        due, woken, old = await self._run_global(
            "clean", (_num(now), _num(since), keep, b"%d" % CLEAN_ACCOUNTS), write=True
        )
        accounts = [decode(a) for a in dict.fromkeys([*due, *woken, *old])]
        args = (_num(now), _num(since), keep, b"%d" % CLEAN_BUDGET)
        found: dict[tuple[str, str], None] = {}
        for _ in range(CLEAN_ROUNDS):
            reports = await asyncio.gather(*(self._run("clean", a, "", args) for a in accounts))
            for account, (queues, _, expired) in zip(accounts, reports, strict=True):
                self.expired += expired
                for queue in queues:
                    found[account, decode(queue)] = None
            accounts = [a for a, (_, more, _) in zip(accounts, reports, strict=True) if more]
            if not accounts:
                break
        return list(found)

    async def usage(self, account: str, now: float, with_bytes: bool = False) -> Usage:
        """One function call: queue names and messages cost O(queues); ``with_bytes`` adds a pass
        over the account's records inside Redis (so the engine asks at most once a second)."""
        names, messages, size = await self._run(
            "usage", account, "", (_ONE if with_bytes else _ZERO,), write=False
        )
        return Usage({decode(n) for n in names}, int(messages), int(size))

    async def count_messages(self) -> int:
        accounts = await self.list_accounts(Filter(), 0.0)
        sizes = await asyncio.gather(*(self._run("size", a, "", (), write=False) for a in accounts))
        return sum(int(n) for n in sizes)

    # -- administration ------------------------------------------------------------------------
    async def delete_everything(self) -> int:
        """Delete every key under this store's prefix, on every node; returns how many.

        For tests and for tearing a deployment down; not atomic (run it with no Burrow
        process using the prefix).
        """
        pattern = _GLOB_SPECIAL.sub(rb"\\\1", self.keys.prefix) + b"{*"
        client = self.client()
        deleted = 0
        try:
            keys = [key async for key in client.scan_iter(match=pattern, count=1000)]
            for key in keys:  # one by one: on Cluster they live in many slots
                deleted += int(await client.unlink(key))
        finally:
            await client.aclose()
        return deleted
