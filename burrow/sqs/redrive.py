"""Dead-letter queue redrive: StartMessageMoveTask, ListMessageMoveTasks, CancelMessageMoveTask.

A task moves the visible messages of a dead-letter queue to a destination queue, or,
without one, back to the queue each message came from (its DeadLetterQueueSourceArn).
Each move is put-then-compare-and-set-delete, so a message is never lost and a
message claimed by a receiver meanwhile is left alone. Moved messages start fresh:
receive count 0, retention counted from the move. Tasks run in this process and
their records are kept in memory (the messages they move are in the store).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from dataclasses import dataclass, replace

import orjson

from burrow.core.model import Filter
from burrow.service import Service
from burrow.sqs.errors import SqsError, invalid
from burrow.sqs.model import MessageMeta, new_id, parse_arn
from burrow.sqs.queues import Queue, QueueRegistry

log = logging.getLogger("burrow.sqs.redrive")

_BATCH = 10
#: Records of finished tasks kept per source queue (ListMessageMoveTasks shows up to 10).
_HISTORY = 10


@dataclass(slots=True)
class MoveTask:
    handle: str
    source: Queue
    source_arn: str
    destination_arn: str | None
    rate: int | None
    started: int
    to_move: int
    moved: int = 0
    status: str = "RUNNING"
    failure: str | None = None
    runner: asyncio.Task[None] | None = None


class MoveTasks:
    """The message move tasks of one server process."""

    def __init__(self, service: Service, queues: QueueRegistry) -> None:
        self.service = service
        self.backend = service.backend
        self.queues = queues
        self._by_source: dict[tuple[str, str], list[MoveTask]] = {}
        self._by_handle: dict[str, MoveTask] = {}
        service.on_stop(self.stop)

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
        key = (source.account, source.name)
        history = self._by_source.setdefault(key, [])
        if any(t.status == "RUNNING" for t in history):
            raise SqsError(
                "UnsupportedOperation",
                "There is already a task running for this queue."
                " Only one active task is allowed for each source queue at any given time.",
            )
        visible, in_flight, _ = await self.queues.counts(source, self.service.clock())
        handle = base64.urlsafe_b64encode(orjson.dumps([new_id(), source_arn])).decode("ascii")
        task = MoveTask(
            handle,
            source,
            source_arn,
            destination_arn,
            rate,
            int(self.service.clock() * 1000),
            visible + in_flight,
        )
        history.insert(0, task)
        del history[_HISTORY:]
        self._by_handle[handle] = task
        task.runner = asyncio.get_running_loop().create_task(self._run(task, destination))
        return handle

    def list(self, source: Queue, limit: int) -> list[MoveTask]:
        return self._by_source.get((source.account, source.name), [])[:limit]

    async def cancel(self, handle: str) -> MoveTask:
        task = self._by_handle.get(handle)
        if task is None:
            raise SqsError(
                "ResourceNotFoundException",
                "The resource that you specified for the TaskHandle parameter doesn't exist.",
            )
        if task.status != "RUNNING":
            raise SqsError(
                "UnsupportedOperation", f"Only a running task can be cancelled; this one is {task.status}."
            )
        task.status = "CANCELLING"
        if task.runner is not None:
            task.runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task.runner
        task.status = "CANCELLED"
        return task

    async def stop(self) -> None:
        for task in list(self._by_handle.values()):
            if task.runner is not None and not task.runner.done():
                task.runner.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task.runner

    async def _run(self, task: MoveTask, destination: Queue | None) -> None:
        try:
            await self._move_all(task, destination)
            task.status = "COMPLETED"
        except SqsError as error:
            task.status, task.failure = "FAILED", error.code
        except asyncio.CancelledError:
            task.status = "CANCELLED"
            raise
        except Exception as error:  # a storage failure ends the task, it must not kill the server
            log.exception("message move task failed")
            task.status, task.failure = "FAILED", type(error).__name__

    async def _move_all(self, task: MoveTask, destination: Queue | None) -> None:
        source = task.source
        while task.moved < task.to_move or task.to_move == 0:
            now = self.service.clock()
            batch = await self.backend.get_messages(source.account, source.name, Filter(limit=_BATCH), now)
            if not batch:
                return
            for m in batch:
                meta = MessageMeta.decode(m.meta)
                target = destination or await self._origin(meta, source)
                fresh = replace(meta, receive_count=0, first_receive=0, last_receive=0, dlq_source=None)
                expires = now + target.state.number("MessageRetentionPeriod")
                await self.backend.put_message(
                    target.account, target.name, m.id, m.body, expires, 0.0, now, fresh.encode()
                )
                gone = await self.backend.delete_message(
                    source.account, source.name, m.id, now, expect_hidden_until=m.hidden_until
                )
                if gone is None:
                    await self.backend.delete_message(target.account, target.name, m.id, now)
                    continue
                self.service.notify((target.account, target.name))
                task.moved += 1
                if task.rate:
                    await asyncio.sleep(1.0 / task.rate)
            await asyncio.sleep(0)

    async def _origin(self, meta: MessageMeta, source: Queue) -> Queue:
        parsed = None if meta.dlq_source is None else parse_arn(meta.dlq_source)
        queue = None if parsed is None else await self.queues.find(parsed[1], parsed[2])
        if queue is None:
            raise SqsError("QueueDoesNotExist", "The source queue of a message no longer exists.")
        if (queue.account, queue.name) == (source.account, source.name):
            # moving it onto itself would delete it: fail the task instead
            raise invalid("The source queue of a message is the dead-letter queue itself.")
        return queue
