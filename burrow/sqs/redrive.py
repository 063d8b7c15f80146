"""Dead-letter queue redrive: StartMessageMoveTask, ListMessageMoveTasks, CancelMessageMoveTask.

A task moves the visible messages of a dead-letter queue to a destination queue, or,
without one, back to the queue each message came from (its DeadLetterQueueSourceArn).
Each message moves with the store's atomic *move*, conditional on its receive count,
so a message is never lost and one claimed by a receiver meanwhile is left alone.
Moved messages start fresh: receive count 0, retention counted from the move.

Task records are stored, not kept in process memory: the latest ones of a source
queue are one document in the store's queue metadata under ``<queue>#moves``,
changed by compare-and-set. Every process sees them, and they survive a restart. A
task runs in the process that started it, which refreshes the record's heartbeat
after every batch; a RUNNING task whose heartbeat is older than :data:`STALE_MS`
(its process died or was restarted) is taken over by the next process that lists
the source's tasks or starts one there. Cancelling marks the record; the runner,
wherever it is, stops at its next batch.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import orjson

from burrow.core.model import Filter
from burrow.engine import Engine
from burrow.sqs.errors import SqsError, invalid
from burrow.sqs.model import MessageMeta, new_id, parse_arn
from burrow.sqs.queues import Queue, QueueRegistry

log = logging.getLogger("burrow.sqs.redrive")

_BATCH = 10
#: Records kept per source queue (ListMessageMoveTasks shows up to 10).
_HISTORY = 10
#: A running task whose heartbeat is older than this (ms) has lost its process.
STALE_MS = 10_000
_SUFFIX = "#moves"
_CAS_ROUNDS = 32


@dataclass(slots=True)
class MoveTask:
    """One task's record, as stored."""

    handle: str
    account: str
    queue: str
    source_arn: str
    destination_arn: str | None
    rate: int | None
    started: int
    to_move: int
    moved: int = 0
    status: str = "RUNNING"
    failure: str | None = None
    heartbeat: int = 0


def _decode(raw: bytes | None) -> list[MoveTask]:
    return [] if raw is None else [MoveTask(**doc) for doc in orjson.loads(raw)]


def _encode(tasks: list[MoveTask]) -> bytes:
    return orjson.dumps([asdict(t) for t in tasks])


def task_account(handle: str) -> str | None:
    """The account whose queue a task handle names (None if it names none): checked before
    anything about the task is said, so another account's task is AccessDenied."""
    try:
        _, source_arn = orjson.loads(base64.urlsafe_b64decode(handle.encode("ascii")))
        parsed = parse_arn(source_arn)
    except (ValueError, TypeError, UnicodeError, binascii.Error):
        return None
    return None if parsed is None else parsed[1]


def _not_found() -> SqsError:
    return SqsError(
        "ResourceNotFoundException",
        "The resource that you specified for the TaskHandle parameter doesn't exist.",
    )


class MoveTasks:
    """Message move tasks, stored in the engine's queue metadata; runners in this process."""

    def __init__(self, engine: Engine, queues: QueueRegistry) -> None:
        self.engine = engine
        self.queues = queues
        self._runners: dict[str, asyncio.Task[None]] = {}
        engine.on_stop(self.stop)

    def _now_ms(self) -> int:
        return int(self.engine.now() * 1000)

    async def _change(
        self, account: str, queue: str, change: Callable[[list[MoveTask]], list[MoveTask]]
    ) -> list[MoveTask]:
        """Apply ``change`` to the stored records of a source queue with compare-and-set."""
        key = queue + _SUFFIX
        for _ in range(_CAS_ROUNDS):
            raw = await self.engine.get_queue_meta(account, key)
            tasks = change(_decode(raw))
            if await self.engine.swap_queue_meta(account, key, raw, _encode(tasks)):
                return tasks
        raise SqsError("ServiceUnavailable", "Message move tasks are being changed concurrently; retry.")

    async def start(
        self,
        source: Queue,
        source_arn: str,
        destination: Queue | None,
        destination_arn: str | None,
        rate: int | None,
    ) -> str:
        if not await self.queues.is_dead_letter_queue(source):
            raise invalid("Source queue must be configured as a Dead Letter Queue.")
        await self._adopt(source.account, source.name)
        visible, in_flight, _ = await self.queues.counts(source)
        now = self._now_ms()
        task = MoveTask(
            base64.urlsafe_b64encode(orjson.dumps([new_id(), source_arn])).decode("ascii"),
            source.account,
            source.name,
            source_arn,
            destination_arn,
            rate,
            now,
            visible + in_flight,
            heartbeat=now,
        )

        def add(tasks: list[MoveTask]) -> list[MoveTask]:
            if any(t.status in ("RUNNING", "CANCELLING") for t in tasks):
                raise SqsError(
                    "UnsupportedOperation",
                    "There is already a task running for this queue."
                    " Only one active task is allowed for each source queue at any given time.",
                )
            return [task, *tasks][:_HISTORY]

        await self._change(source.account, source.name, add)
        self._run_here(task)
        return task.handle

    async def list(self, source: Queue, limit: int) -> list[MoveTask]:
        await self._adopt(source.account, source.name)
        raw = await self.engine.get_queue_meta(source.account, source.name + _SUFFIX)
        return _decode(raw)[:limit]

    async def cancel(self, handle: str) -> MoveTask:
        try:
            _, source_arn = orjson.loads(base64.urlsafe_b64decode(handle.encode("ascii")))
            parsed = parse_arn(source_arn)
        except (ValueError, TypeError, UnicodeError, binascii.Error):
            raise _not_found() from None
        if parsed is None:
            raise _not_found()
        account, queue = parsed[1], parsed[2]
        found: list[MoveTask] = []

        def mark(tasks: list[MoveTask]) -> list[MoveTask]:
            found.clear()
            for i, t in enumerate(tasks):
                if t.handle == handle:
                    if t.status != "RUNNING":
                        raise SqsError(
                            "UnsupportedOperation",
                            f"Only a running task can be cancelled; this one is {t.status}.",
                        )
                    tasks[i] = replace(t, status="CANCELLING")
                    found.append(tasks[i])
                    return tasks
            raise _not_found()

        await self._change(account, queue, mark)
        runner = self._runners.get(handle)
        if runner is None:  # running in another process: it stops at its next batch
            return found[0]
        runner.cancel()  # running here: stop it now, and report what it had moved
        with contextlib.suppress(asyncio.CancelledError):
            await runner
        raw = await self.engine.get_queue_meta(account, queue + _SUFFIX)
        return next((t for t in _decode(raw) if t.handle == handle), found[0])

    async def stop(self) -> None:
        for runner in list(self._runners.values()):
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner

    # -- running ----------------------------------------------------------------------
    async def _adopt(self, account: str, queue: str) -> None:
        """Take over the source's running task if its process stopped heartbeating."""
        now = self._now_ms()
        adopted: list[MoveTask] = []

        def take(tasks: list[MoveTask]) -> list[MoveTask]:
            adopted.clear()
            for i, t in enumerate(tasks):
                if t.status == "RUNNING" and t.handle not in self._runners and now - t.heartbeat > STALE_MS:
                    tasks[i] = replace(t, heartbeat=now)
                    adopted.append(tasks[i])
            return tasks

        raw = await self.engine.get_queue_meta(account, queue + _SUFFIX)
        if any(t.status == "RUNNING" and now - t.heartbeat > STALE_MS for t in _decode(raw)):
            await self._change(account, queue, take)
            for task in adopted:
                log.info("resuming message move task from %s", task.source_arn)
                self._run_here(task)

    def _run_here(self, task: MoveTask) -> None:
        runner = asyncio.get_running_loop().create_task(self._run(task))
        self._runners[task.handle] = runner
        runner.add_done_callback(lambda _: self._runners.pop(task.handle, None))

    async def _record(
        self, task: MoveTask, moved: int, status: str | None, failure: str | None = None
    ) -> str:
        """Store progress (and an end status); returns the stored status (CANCELLING when asked to stop)."""
        now = self._now_ms()
        seen = ["CANCELLED"]

        def progress(tasks: list[MoveTask]) -> list[MoveTask]:
            for i, t in enumerate(tasks):
                if t.handle == task.handle:
                    end = status
                    if t.status == "CANCELLING" and status is not None:
                        end = "CANCELLED"
                    tasks[i] = replace(t, moved=moved, heartbeat=now, status=end or t.status, failure=failure)
                    seen[0] = t.status
            return tasks

        await self._change(task.account, task.queue, progress)
        return seen[0]

    async def _run(self, task: MoveTask) -> None:
        """Run the task to its end; ``task.moved`` counts as it goes, so every end records it."""
        try:
            await self._move_all(task)
            await self._record(task, task.moved, "COMPLETED")
        except SqsError as error:
            await self._record(task, task.moved, "FAILED", error.code)
        except asyncio.CancelledError:  # cancelled here, or this process is stopping
            with contextlib.suppress(Exception):
                await self._record(task, task.moved, "CANCELLED")
            raise
        except Exception as error:  # a storage failure ends the task, it must not kill the server
            log.exception("message move task failed")
            with contextlib.suppress(Exception):
                await self._record(task, task.moved, "FAILED", type(error).__name__)

    async def _move_all(self, task: MoveTask) -> None:
        """Move batches until the source is empty, ``to_move`` are moved or the task is cancelled."""
        source = await self.queues.get(task.account, task.queue)
        destination = None
        if task.destination_arn:
            parsed = parse_arn(task.destination_arn)
            destination = None if parsed is None else await self.queues.find(parsed[1], parsed[2])
            if destination is None:
                raise SqsError("QueueDoesNotExist", "The destination queue no longer exists.")
        while task.moved < task.to_move or task.to_move == 0:
            batch = await self.engine.get_messages(source.account, source.name, Filter(limit=_BATCH))
            if not batch:
                return
            for m in batch:
                meta = MessageMeta.decode(m.meta)
                target = destination or await self._origin(meta, source)
                fresh = replace(meta, dlq_source=None)
                done = await self.engine.move(
                    source.account,
                    source.name,
                    m.id,
                    target.account,
                    target.name,
                    target.number("MessageRetentionPeriod"),
                    meta=fresh.encode(),
                    expect_receives=m.receives,
                )
                if done is not None:
                    task.moved += 1
                if task.rate:
                    await asyncio.sleep(1.0 / task.rate)
            if await self._record(task, task.moved, None) == "CANCELLING":
                return  # cancelled from another process: _run's final record says CANCELLED

    async def _origin(self, meta: MessageMeta, source: Queue) -> Queue:
        parsed = None if meta.dlq_source is None else parse_arn(meta.dlq_source)
        queue = None if parsed is None else await self.queues.find(parsed[1], parsed[2])
        if queue is None:
            raise SqsError("QueueDoesNotExist", "The source queue of a message no longer exists.")
        if (queue.account, queue.name) == (source.account, source.name):
            # moving it onto itself would delete it: fail the task instead
            raise invalid("The source queue of a message is the dead-letter queue itself.")
        return queue
