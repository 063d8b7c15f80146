"""``burrow.AsyncClient``: the asyncio Python client of the burrow v1.0 API.

The same operations as :class:`burrow.Client` (:mod:`burrow.client.api`, one copy), as
coroutines over :class:`~burrow.client.pool.AsyncPool` connections; a fan-out sends its
requests at once. A client belongs to the event loop it is first used on. Why this client
and not httpx: see :mod:`burrow.client.sync_client`.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from types import TracebackType
from typing import Any, Self, TypeVar, overload

from burrow.client.api import (
    DEFAULT_URL,
    TRANSIENT,
    AccountCalls,
    Backoff,
    Message,
    MessageAttributes,
    Messages,
    Operation,
    QueueCalls,
    Servers,
    Watcher,
    check_one,
    check_update,
    describe,
    list_accounts,
)
from burrow.client.async_pool import AsyncPool
from burrow.client.pool import DEFAULT_SIZE
from burrow.client.wire import Reply
from burrow.core.errors import NotFound

__all__ = ["AsyncAccount", "AsyncClient", "AsyncQueue"]

log = logging.getLogger("burrow.client")
T = TypeVar("T")


class AsyncClient:
    """The asyncio twin of :class:`burrow.Client`: same arguments, same methods, awaited.
    Close it with :meth:`aclose` or ``async with``."""

    def __init__(
        self,
        url: str | Sequence[str] = DEFAULT_URL,
        *,
        subset_size: int = 3,
        timeout: float | None = 30.0,
        connect_timeout: float = 10.0,
        max_connections: int = DEFAULT_SIZE,
        token: str | None = None,
    ) -> None:
        self.servers = Servers(url, subset_size)
        self.pools = {
            s: AsyncPool(s, max_connections, timeout, connect_timeout, token) for s in self.servers.all
        }

    def queue(self, account: str, name: str) -> AsyncQueue:
        return AsyncQueue(self, account, name)

    def account(self, name: str) -> AsyncAccount:
        return AsyncAccount(self, name)

    async def accounts(self, limit: int | None = None, marker: str | None = None) -> list[str]:
        """Account names of every server, merged (see :meth:`burrow.Client.accounts`)."""
        return await self.run(list_accounts(self.servers, limit, marker))

    async def run(self, operation: Operation[T]) -> T:
        """Run one operation of :mod:`burrow.client.api`; a batch of requests goes out at once."""
        pools = self.pools
        try:
            batch = next(operation)
            while True:
                replies: list[Reply]
                if len(batch) == 1:
                    replies = [await pools[batch[0].server].exchange(batch[0])]
                else:
                    replies = list(await asyncio.gather(*(pools[r.server].exchange(r) for r in batch)))
                batch = operation.send(replies)
        except StopIteration as done:
            result: T = done.value
            return result

    async def aclose(self) -> None:
        for pool in self.pools.values():
            await pool.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


class AsyncAccount:
    """One account (see :class:`burrow.client.sync_client.Account`)."""

    def __init__(self, client: AsyncClient, name: str) -> None:
        self.client, self.name = client, name
        self._calls = AccountCalls(client.servers, name)

    def queue(self, name: str) -> AsyncQueue:
        return AsyncQueue(self.client, self.name, name)

    async def queues(self, limit: int | None = None, marker: str | None = None) -> list[str]:
        return await self.client.run(self._calls.queues(limit, marker))

    async def delete(self) -> int:
        return await self.client.run(self._calls.delete())


class AsyncQueue:
    """One queue (see :class:`burrow.client.sync_client.Queue` for what each method does)."""

    def __init__(self, client: AsyncClient, account: str, name: str) -> None:
        self.client, self.account, self.name = client, account, name
        self._calls = QueueCalls(client.servers, account, name)
        self._run = client.run

    async def put(self, id: str, body: bytes | str, ttl: int | None = None, hide: int | None = None) -> bool:
        return await self._run(self._calls.put(id, body, ttl, hide))

    async def get(self, id: str) -> Message:
        return await self._run(self._calls.get(id))

    async def list(
        self, limit: int | None = None, marker: str | None = None, match_hidden: bool = False, wait: int = 0
    ) -> Messages:
        return await self._run(self._calls.list(limit, marker, match_hidden, wait))

    async def take(self, limit: int = 1, hide: int = 30, wait: int = 0) -> Messages:
        return await self._run(self._calls.take(limit, hide, wait))

    async def take_and_delete(self, limit: int = 1, wait: int = 0) -> Messages:
        return await self._run(self._calls.take(limit, 0, wait, delete=True))

    @overload
    async def update(
        self, id: str, *, ttl: int | None = None, hide: int | None = None
    ) -> MessageAttributes: ...

    @overload
    async def update(
        self,
        id: None = None,
        *,
        ttl: int | None = None,
        hide: int | None = None,
        limit: int | None = None,
        marker: str | None = None,
        match_hidden: bool = False,
        wait: int = 0,
    ) -> int: ...

    async def update(
        self,
        id: str | None = None,
        *,
        ttl: int | None = None,
        hide: int | None = None,
        limit: int | None = None,
        marker: str | None = None,
        match_hidden: bool = False,
        wait: int = 0,
    ) -> MessageAttributes | int:
        check_update(ttl, hide)
        check_one(id, limit=limit, marker=marker, match_hidden=match_hidden, wait=wait)
        if id is not None:
            return await self._run(self._calls.update_one(id, ttl, hide))
        return await self._run(self._calls.update_many(ttl, hide, limit, marker, match_hidden, wait))

    @overload
    async def delete(self, id: str) -> None: ...

    @overload
    async def delete(
        self,
        id: None = None,
        *,
        limit: int | None = None,
        marker: str | None = None,
        match_hidden: bool = False,
        wait: int = 0,
    ) -> int: ...

    async def delete(
        self,
        id: str | None = None,
        *,
        limit: int | None = None,
        marker: str | None = None,
        match_hidden: bool = False,
        wait: int = 0,
    ) -> int | None:
        check_one(id, limit=limit, marker=marker, match_hidden=match_hidden, wait=wait)
        if id is not None:
            return await self._run(self._calls.delete_one(id))
        return await self._run(self._calls.delete_many(limit, marker, match_hidden, wait))

    async def watch(
        self,
        marker: str | None = None,
        wait: int = 20,
        match_hidden: bool = False,
        stop: asyncio.Event | None = None,
    ) -> AsyncIterator[Message]:
        """``async for message in queue.watch()``: as :meth:`burrow.Client.queue().watch`; setting
        ``stop`` also ends a long poll in progress."""
        watcher = Watcher(self._calls, marker, match_hidden, wait)
        while stop is None or not stop.is_set():
            messages = await _unless(stop, self._run(watcher.poll()))
            if messages is None:
                return
            for message in watcher.new(messages):
                yield message

    async def work(
        self,
        func: Callable[[Message], object],
        *,
        hide: int = 30,
        wait: int = 20,
        limit: int = 1,
        stop: asyncio.Event | None = None,
    ) -> int:
        """The worker loop of :meth:`burrow.Client.queue().work`; ``func`` may be a coroutine
        function. Setting ``stop`` also ends a long poll in progress at once (a message the
        server took for it meanwhile reappears after ``hide``)."""
        stop = stop or asyncio.Event()
        backoff, done = Backoff(), 0
        while not stop.is_set():
            try:
                messages = await _unless(stop, self.take(limit, hide, wait))
            except TRANSIENT as error:
                delay = backoff.delay()
                log.warning(
                    "%s/%s: take failed (%s); retrying in %.1f s",
                    self.account,
                    self.name,
                    describe(error),
                    delay,
                )
                await _unless(stop, asyncio.sleep(delay))
                continue
            if messages is None:
                break
            backoff.reset()
            for n, message in enumerate(messages):
                if stop.is_set():
                    await self._release(messages[n:])
                    break
                try:
                    result = func(message)
                    if inspect.isawaitable(result):
                        await result
                except Exception:
                    log.exception(
                        "%s/%s: message %r failed; it reappears when its hide runs out",
                        self.account,
                        self.name,
                        message.id,
                    )
                    continue
                done += await self._finish(message)
        return done

    async def _finish(self, message: Message) -> int:
        try:
            await self.delete(message.id)
        except NotFound:
            log.warning(
                "%s/%s: message %r was gone when done (its hide ran out first?)",
                self.account,
                self.name,
                message.id,
            )
        except TRANSIENT as error:
            log.warning(
                "%s/%s: message %r done but not deleted (%s); it will reappear",
                self.account,
                self.name,
                message.id,
                describe(error),
            )
            return 0
        return 1

    async def _release(self, messages: Messages) -> None:
        for message in messages:
            try:
                await self.update(message.id, hide=0)
            except (NotFound, *TRANSIENT) as error:
                log.warning(
                    "%s/%s: message %r not released (%s)",
                    self.account,
                    self.name,
                    message.id,
                    describe(error),
                )


async def _unless(stop: asyncio.Event | None, work: Coroutine[Any, Any, T]) -> T | None:
    """``work``'s result, or None if ``stop`` is set first (then ``work`` is cancelled)."""
    if stop is None:
        return await work
    task = asyncio.ensure_future(work)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait((task, stopped), return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        task.cancel()
        raise
    finally:
        stopped.cancel()
    if not task.done():
        task.cancel()
    try:
        return await task  # its result if it finished before the cancellation took effect
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise  # we are cancelled ourselves
        return None
