"""The storage contract every backend implements.

A backend stores accounts -> queues -> messages and applies the rules of
:mod:`burrow.core.model`; it never reads a clock (``now`` is always an argument),
never applies defaults (the service turns ``ttl``/``hide`` into absolute deadlines)
and never waits (long polling lives in the service). One contract test suite
(``burrow.testing.contract``) runs unchanged against every implementation.

Rules every method keeps:

* Order is first insertion, for accounts, queues and messages. Replacing a message
  keeps its position. An account or queue exists exactly while it holds a message
  (hidden ones included); it appears with its first and disappears with its last.
* A message is *expired* when ``0 < expires <= now``; expired messages are invisible to
  every operation even before :meth:`Backend.clean` removes them.
* A message is *visible* when ``hidden_until <= now``. List operations skip hidden
  messages unless ``Filter.match_hidden``; single-message operations see them.
* Filters: start after ``marker`` (unknown marker = from the beginning), take at most
  ``limit`` matching items (None = all).
* Every method is atomic with respect to every other method on the same queue.
* A write method returns only once its change is committed as durably as the backend
  promises; if it cannot commit it raises :class:`~burrow.core.errors.StorageUnavailable`
  and the change is not visible.
* Methods return empty lists / None when nothing matched; turning that into a 404 is
  the service's job.
* ``Message.meta`` is opaque bytes stored and returned verbatim (a front end's own
  per-message data); PUT replaces it like the body. ``expect_hidden_until`` on the
  single-message writes is a compare-and-set: the write happens only if the stored
  ``hidden_until`` equals it, which lets a front end read, decide and write without
  a lock (SQS receives and receipt handles are built on it).
* Queue metadata (:meth:`Backend.set_queue_meta`) is a separate namespace for
  front ends whose queues exist while empty (SQS); it does not make a queue appear in
  :meth:`Backend.list_queues`, which lists only queues holding messages.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from burrow.core.model import Filter, Message, Update


class Backend(ABC):
    """Asynchronous storage of accounts, queues and messages."""

    #: The URL scheme this backend was opened from, for logs.
    url: str = ""

    async def open(self) -> None:
        """Prepare the store (create schema, recover state). Called once before use."""

    async def close(self) -> None:
        """Flush and release everything. No method is called afterwards."""

    # -- accounts ---------------------------------------------------------------
    @abstractmethod
    async def list_accounts(self, filter: Filter, now: float) -> list[str]:
        """Names of accounts, in order."""

    @abstractmethod
    async def delete_accounts(self, filter: Filter, now: float) -> list[str]:
        """Delete the matched accounts with everything in them; return their names."""

    # -- queues -----------------------------------------------------------------
    @abstractmethod
    async def list_queues(self, account: str, filter: Filter, now: float) -> list[str]:
        """Names of the account's queues, in order."""

    @abstractmethod
    async def delete_queues(self, account: str, filter: Filter, now: float) -> list[str]:
        """Delete the matched queues with all their messages; return their names."""

    # -- message lists ----------------------------------------------------------
    @abstractmethod
    async def get_messages(self, account: str, queue: str, filter: Filter, now: float) -> list[Message]:
        """The matched messages, in order."""

    @abstractmethod
    async def update_messages(
        self, account: str, queue: str, filter: Filter, update: Update, now: float
    ) -> list[Message]:
        """Set new deadlines on the matched messages; return them as updated."""

    @abstractmethod
    async def delete_messages(self, account: str, queue: str, filter: Filter, now: float) -> list[Message]:
        """Delete the matched messages; return them as they were."""

    # -- one message ------------------------------------------------------------
    @abstractmethod
    async def get_message(self, account: str, queue: str, message: str, now: float) -> Message | None:
        """The message, hidden or not; None if absent or expired."""

    @abstractmethod
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
        """Create the message, or replace body, deadlines and meta keeping its position.

        Returns True when it was created (an expired message counts as absent).
        """

    @abstractmethod
    async def update_message(
        self,
        account: str,
        queue: str,
        message: str,
        update: Update,
        now: float,
        expect_hidden_until: float | None = None,
    ) -> Message | None:
        """Set new deadlines (and meta) on one message; return it as updated.

        None if absent, or if ``expect_hidden_until`` is given and differs from the
        stored value (then nothing changes).
        """

    @abstractmethod
    async def delete_message(
        self, account: str, queue: str, message: str, now: float, expect_hidden_until: float | None = None
    ) -> Message | None:
        """Delete one message; return it as it was. None if absent or the expectation fails."""

    # -- queue metadata ---------------------------------------------------------
    @abstractmethod
    async def get_queue_meta(self, account: str, queue: str) -> bytes | None:
        """A front end's stored metadata for the queue, or None."""

    @abstractmethod
    async def set_queue_meta(self, account: str, queue: str, meta: bytes | None) -> None:
        """Store (or with None, remove) the queue's metadata. New entries go last in order."""

    @abstractmethod
    async def list_queue_meta(self, account: str) -> list[tuple[str, bytes]]:
        """(queue, metadata) for every queue of the account that has metadata, in creation order."""

    # -- housekeeping -----------------------------------------------------------
    @abstractmethod
    async def clean(self, now: float) -> list[tuple[str, str]]:
        """Remove expired messages and the queues and accounts left empty.

        Returns the (account, queue) pairs in which a message has become visible
        since the previous call (its hide ran out), so the service can wake waiters.
        """

    async def count_messages(self) -> int:
        """Total stored messages (expired but not yet cleaned included); for stats and tests."""
        total = 0
        for account in await self.list_accounts(Filter(), 0.0):
            for queue in await self.list_queues(account, Filter(), 0.0):
                total += len(await self.get_messages(account, queue, Filter(match_hidden=True), 0.0))
        return total
