"""``burrow.Client``: the blocking Python client of the burrow v1.0 API.

It runs the operations of :mod:`burrow.client.api` over :class:`~burrow.client.pool.SyncPool`
connections; a fan-out (an account's queues over several servers) sends its requests one
after the other. One client is safe to share between threads.

Why the project's own HTTP client and not httpx: both keep connections alive, but against the
same server on the same machine (``docs/client.md``: the script, the command, the figures) a
PUT+GET cycle on one connection ran ~5,500 requests/s through ``Client`` against ~900 through
``httpx.Client`` (httpx 0.29), and ~3,200 through ``AsyncClient`` against ~460 through
``httpx.AsyncClient``; the bare connections this library wraps did ~7,600 (blocking) and ~4,100
(asyncio). Burrow's
requests are tiny, so the HTTP client's own cost per request is the throughput. This layer is a
few hundred lines over the sans-I/O code the tests and benchmarks already exercise, and adds
no dependency.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from types import TracebackType
from typing import Self, TypeVar, overload

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
from burrow.client.pool import DEFAULT_SIZE, SyncPool
from burrow.core.errors import NotFound

__all__ = ["Account", "Client", "Queue"]

log = logging.getLogger("burrow.client")
T = TypeVar("T")


class Client:
    """A client of one Burrow server (``Client(url)``) or of several (``Client([url, ...])``),
    over which queues are placed by client-side hashing (:class:`burrow.hashing.Placement`,
    ``subset_size`` servers per account), as ``burrow proxy`` places them.

    ``timeout``: seconds to wait for a response (a long poll's ``wait`` is added);
    ``connect_timeout``: seconds to connect, or to wait for a free connection when all
    ``max_connections`` of a server are in use; ``token``: sent as ``Authorization: Bearer``
    with every request (servers with auth on, docs/operations.md "Auth and tenants").
    """

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
            s: SyncPool(s, max_connections, timeout, connect_timeout, token) for s in self.servers.all
        }

    def queue(self, account: str, name: str) -> Queue:
        return Queue(self, account, name)

    def account(self, name: str) -> Account:
        return Account(self, name)

    def accounts(self, limit: int | None = None, marker: str | None = None) -> list[str]:
        """Account names (of every server, merged; see :func:`burrow.client.api.list_accounts`).
        Without ``limit``, at most one page of the server's (``--max-limit``)."""
        return self.run(list_accounts(self.servers, limit, marker))

    def run(self, operation: Operation[T]) -> T:
        """Run one operation of :mod:`burrow.client.api`: send what it asks, return its result."""
        pools = self.pools
        try:
            batch = next(operation)
            while True:
                batch = operation.send([pools[request.server].exchange(request) for request in batch])
        except StopIteration as done:
            result: T = done.value
            return result

    def close(self) -> None:
        for pool in self.pools.values():
            pool.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class Account:
    """One account: its queues (listed over every server that may hold them) and their deletion."""

    def __init__(self, client: Client, name: str) -> None:
        self.client, self.name = client, name
        self._calls = AccountCalls(client.servers, name)

    def queue(self, name: str) -> Queue:
        return Queue(self.client, self.name, name)

    def queues(self, limit: int | None = None, marker: str | None = None) -> list[str]:
        """Queue names; ``[]`` when the account has none. Without ``limit``, at most one page."""
        return self.client.run(self._calls.queues(limit, marker))

    def delete(self) -> int:
        """Delete every queue of the account, hidden messages too; how many queues were deleted."""
        return self.client.run(self._calls.delete())


class Queue:
    """One queue. Nothing is created here: a queue exists while it holds a message."""

    def __init__(self, client: Client, account: str, name: str) -> None:
        self.client, self.account, self.name = client, account, name
        self._calls = QueueCalls(client.servers, account, name)
        self._run = client.run

    def put(self, id: str, body: bytes | str, ttl: int | None = None, hide: int | None = None) -> bool:
        """Create or replace message ``id`` (a str body is sent as UTF-8); True if it was created.
        A missing ``ttl``/``hide`` takes the server's default."""
        return self._run(self._calls.put(id, body, ttl, hide))

    def get(self, id: str) -> Message:
        """The message, hidden or not; :class:`~burrow.core.errors.NotFound` if there is none."""
        return self._run(self._calls.get(id))

    def list(
        self, limit: int | None = None, marker: str | None = None, match_hidden: bool = False, wait: int = 0
    ) -> Messages:
        """Messages in order, without hiding them; ``[]`` when none match (after ``wait`` seconds).
        Without ``limit``, at most one page (``--max-limit``, 1000): continue from the last id."""
        return self._run(self._calls.list(limit, marker, match_hidden, wait))

    def take(self, limit: int = 1, hide: int = 30, wait: int = 0) -> Messages:
        """Get and hide up to ``limit`` visible messages for ``hide`` seconds, atomically (a worker
        deletes each when done); ``[]`` when none came within ``wait`` seconds."""
        return self._run(self._calls.take(limit, hide, wait))

    def take_and_delete(self, limit: int = 1, wait: int = 0) -> Messages:
        """Get and delete up to ``limit`` visible messages atomically (at-most-once delivery)."""
        return self._run(self._calls.take(limit, 0, wait, delete=True))

    @overload
    def update(self, id: str, *, ttl: int | None = None, hide: int | None = None) -> MessageAttributes: ...

    @overload
    def update(
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

    def update(
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
        """Set ``ttl`` and/or ``hide`` of message ``id`` (its new attributes; NotFound if it is
        not there), or of the matched messages (how many; hidden ones only with ``match_hidden``)."""
        check_update(ttl, hide)
        check_one(id, limit=limit, marker=marker, match_hidden=match_hidden, wait=wait)
        if id is not None:
            return self._run(self._calls.update_one(id, ttl, hide))
        return self._run(self._calls.update_many(ttl, hide, limit, marker, match_hidden, wait))

    @overload
    def delete(self, id: str) -> None: ...

    @overload
    def delete(
        self,
        id: None = None,
        *,
        limit: int | None = None,
        marker: str | None = None,
        match_hidden: bool = False,
        wait: int = 0,
    ) -> int: ...

    def delete(
        self,
        id: str | None = None,
        *,
        limit: int | None = None,
        marker: str | None = None,
        match_hidden: bool = False,
        wait: int = 0,
    ) -> int | None:
        """Delete message ``id`` (NotFound if it is not there), or the matched messages and
        return how many. As in the API, a matched delete skips hidden messages unless
        ``match_hidden``: ``delete(match_hidden=True)`` empties the queue."""
        check_one(id, limit=limit, marker=marker, match_hidden=match_hidden, wait=wait)
        if id is not None:
            return self._run(self._calls.delete_one(id))
        return self._run(self._calls.delete_many(limit, marker, match_hidden, wait))

    def watch(
        self,
        marker: str | None = None,
        wait: int = 20,
        match_hidden: bool = False,
        stop: threading.Event | None = None,
    ) -> Iterator[Message]:
        """Every message of the queue, then each new one as it arrives (long polls of ``wait``
        seconds after the last id seen), without hiding or deleting them: a fan-out reader.
        Ends when ``stop`` is set (checked between polls) or the caller stops iterating."""
        watcher = Watcher(self._calls, marker, match_hidden, wait)
        while stop is None or not stop.is_set():
            yield from watcher.new(self._run(watcher.poll()))

    def work(
        self,
        func: Callable[[Message], object],
        *,
        hide: int = 30,
        wait: int = 20,
        limit: int = 1,
        stop: threading.Event | None = None,
    ) -> int:
        """A worker loop: take up to ``limit`` messages (hidden for ``hide`` seconds, long polls of
        ``wait``), call ``func`` on each, delete it when ``func`` returns. When ``func`` raises,
        the exception is logged and the message left to reappear when its hide runs out.

        Runs until ``stop`` is set: the message in hand is finished, those taken but not started
        are released (hide=0), no more are taken; a long poll in progress ends first (within
        ``wait`` seconds). Transient failures (server unreachable, 503) are logged and retried
        after a growing delay (0.5 s to 10 s). Returns how many messages were done and deleted.
        """
        stop = stop or threading.Event()
        backoff, done = Backoff(), 0
        while not stop.is_set():
            try:
                messages = self.take(limit, hide, wait)
            except TRANSIENT as error:
                delay = backoff.delay()
                log.warning(
                    "%s/%s: take failed (%s); retrying in %.1f s",
                    self.account,
                    self.name,
                    describe(error),
                    delay,
                )
                stop.wait(delay)
                continue
            backoff.reset()
            for n, message in enumerate(messages):
                if stop.is_set():
                    self._release(messages[n:])
                    break
                try:
                    func(message)
                except Exception:
                    log.exception(
                        "%s/%s: message %r failed; it reappears when its hide runs out",
                        self.account,
                        self.name,
                        message.id,
                    )
                    continue
                done += self._finish(message)
        return done

    def _finish(self, message: Message) -> int:
        try:
            self.delete(message.id)
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

    def _release(self, messages: Messages) -> None:
        for message in messages:
            try:
                self.update(message.id, hide=0)
            except (NotFound, *TRANSIENT) as error:
                log.warning(
                    "%s/%s: message %r not released (%s)",
                    self.account,
                    self.name,
                    message.id,
                    describe(error),
                )
