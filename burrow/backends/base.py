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
  :meth:`Backend.list_queues`, which lists only queues holding messages. Its writes
  can be compare-and-set (:meth:`Backend.swap_queue_meta`), so several processes
  sharing a store update one document without a lock.
* Per-message data beside the deadlines (``Message.receives``, ``first_received``,
  ``group``, ``sequence``) is kept by every write except a replacing
  :meth:`Backend.put_message`, which resets it (a replaced message is a new message
  in the old position). :meth:`Backend.claim` is the only operation that counts a
  receive; :meth:`Backend.send_message` the only one that sets group and sequence.
* A queue's FIFO state (its sequence counter and deduplication records) lives with
  its queue metadata and is removed when the metadata is removed; deduplication
  records stop counting at their ``dedup_until`` and :meth:`Backend.clean` drops them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from burrow.core.errors import NotSupported
from burrow.core.model import Counts, Filter, Message, Sent, Update
from burrow.notify import Notifier
from burrow.quotas import Usage


@dataclass(frozen=True, slots=True)
class BackupResult:
    """What an online backup wrote (:meth:`Backend.backup`)."""

    path: str
    bytes: int
    seconds: float
    #: Older backups removed to keep ``keep`` of them.
    removed: tuple[str, ...]


class Backend(ABC):
    """Asynchronous storage of accounts, queues and messages."""

    #: The URL scheme this backend was opened from, for logs.
    url: str = ""
    #: Messages :meth:`clean` removed because their ``ttl`` ran out, since this backend was
    #: made (in this process; the metric ``burrow_messages_expired``). Deletes, purges and
    #: replacements are not counted.
    expired: int = 0

    async def open(self) -> None:
        """Prepare the store (create schema, recover state). Called once before use."""

    async def close(self) -> None:
        """Flush and release everything. No method is called afterwards."""

    def notifier(self) -> Notifier | None:
        """The notifier that carries this store's events to every process sharing it.

        None (the default) means the store lives in one process, and the engine wakes
        waiters with a :class:`~burrow.notify.LocalNotifier`. A shared store (Redis)
        returns one that publishes across processes.
        """
        return None

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
        self,
        account: str,
        queue: str,
        message: str,
        now: float,
        expect_hidden_until: float | None = None,
        expect_receives: int | None = None,
    ) -> Message | None:
        """Delete one message; return it as it was.

        None if absent, or if an expectation is given and fails (then nothing changes):
        ``expect_hidden_until`` against the stored deadline, ``expect_receives`` against
        ``Message.receives`` (an SQS receipt handle names the receive it came from).
        """

    # -- worker operations (SQS receive, FIFO send, dead-letter moves) -----------
    @abstractmethod
    async def claim(
        self, account: str, queue: str, limit: int, hidden_until: float, now: float, fifo: bool = False
    ) -> list[Message]:
        """Take up to ``limit`` visible messages in order and hide them until ``hidden_until``.

        Each taken message gets ``receives + 1`` and, on its first claim,
        ``first_received = now``; they are returned as updated. One atomic call, so two
        claims never take the same message and a receive is one round trip.

        With ``fifo`` the queue's messages are taken by group (``Message.group``, ""
        being a group too): a group is *blocked* while any of its unexpired messages is
        hidden, and a blocked group gives nothing. Visible messages of unblocked groups
        are taken in queue order, so one claim may take several consecutive messages of
        a group. Backends find unblocked groups without reading the whole queue.
        """

    @abstractmethod
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
        """Create a message with the queue's next sequence number, deduplicated (FIFO sends).

        If ``dedup`` is given and a record for it is live (its ``dedup_until`` > now),
        nothing is stored and the earlier send's id and sequence come back with
        ``created=False``. Otherwise the message is created (last in order; ``message``
        is a new id) with ``group`` and ``sequence`` = the queue's counter + 1 (counters
        start at 1 and never go back while the queue's metadata exists), and ``dedup``,
        when given, is recorded until ``dedup_until``. Atomic as one call.
        """

    @abstractmethod
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
        """Move one message to another queue (dead-letter redrive, move tasks).

        Deletes it from (account, queue) if it is there, unexpired and (when given) its
        ``receives`` equals ``expect_receives``, and creates it in (to_account,
        to_queue) under the same id, last in order (replacing a message of that id
        there), visible, with ``expires``, the same body, group and sequence, ``meta``
        when given (else the old meta), and ``receives`` as given (a dead-letter move
        keeps the count of the deliveries made) with ``first_received`` kept, or,
        with ``receives`` None or 0, both reset to 0 (a fresh start). Returns the message as stored at the
        destination, or None when nothing moved. Atomic where the backend can do it;
        a backend that cannot copies first and deletes second (a crash between leaves
        two copies, never none) and says so in its docstring.
        """

    @abstractmethod
    async def count(self, account: str, queue: str, now: float) -> Counts:
        """The queue's messages by state, without reading every message."""

    # -- queue metadata ---------------------------------------------------------
    @abstractmethod
    async def get_queue_meta(self, account: str, queue: str) -> bytes | None:
        """A front end's stored metadata for the queue, or None."""

    @abstractmethod
    async def set_queue_meta(self, account: str, queue: str, meta: bytes | None) -> None:
        """Store (or with None, remove) the queue's metadata. New entries go last in order."""

    @abstractmethod
    async def swap_queue_meta(
        self, account: str, queue: str, expect: bytes | None, meta: bytes | None
    ) -> bool:
        """Compare-and-set: store ``meta`` (None removes) only if the stored value equals ``expect``.

        ``expect`` None means "absent". Returns whether the write happened. A new entry
        goes last in order; a replaced one keeps its place.
        """

    @abstractmethod
    async def list_queue_meta(self, account: str) -> list[tuple[str, bytes]]:
        """(queue, metadata) for every queue of the account that has metadata, in creation order."""

    # -- housekeeping -----------------------------------------------------------
    @abstractmethod
    async def clean(self, now: float, since: float) -> list[tuple[str, str]]:
        """Remove expired messages (and dedup records) and the queues and accounts left empty.

        Returns the (account, queue) pairs holding a message whose hide ran out in
        ``(since, now]``, so the engine can wake waiters. The answer depends only on the
        stored deadlines, not on earlier calls, so several cleaners may share a store; a
        pair may be reported up to one pass late (at ``now`` of the next call), never
        missed while its message is still hidden-then-visible and unexpired.
        """

    async def usage(self, account: str, now: float, with_bytes: bool = False) -> Usage:
        """What ``account`` holds, for its quotas: queue names (holding messages or with queue
        metadata), stored messages and, with ``with_bytes``, their bodies' bytes.

        Expired messages not yet cleaned may be counted. Backends answer without reading
        message bodies where they can; this default reads every message (any backend).
        """
        queues = set(await self.list_queues(account, Filter(), now))
        found = Usage(queues | {name for name, _ in await self.list_queue_meta(account)})
        for queue in queues:
            messages = await self.get_messages(account, queue, Filter(match_hidden=True), now)
            found.messages += len(messages)
            if with_bytes:
                found.bytes += sum(len(m.body) for m in messages)
        return found

    async def backup(self, directory: str, keep: int) -> BackupResult:
        """Copy the store, online, into a new file in ``directory`` (or the store's default
        place when empty), keeping the newest ``keep`` backups there. Only stores with a file
        of their own do this (SQLite); the others raise NotSupported."""
        raise NotSupported(
            "online backups are made by the SQLite backend; this server's store has no file to copy"
            " (Redis: use its own persistence, AOF or BGSAVE)"
        )

    async def count_messages(self) -> int:
        """Total stored messages (expired but not yet cleaned included); for stats and tests."""
        total = 0
        for account in await self.list_accounts(Filter(), 0.0):
            for queue in await self.list_queues(account, Filter(), 0.0):
                total += len(await self.get_messages(account, queue, Filter(match_hidden=True), 0.0))
        return total
