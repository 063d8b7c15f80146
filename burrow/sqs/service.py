"""The SQS service: the queue registry, message operations and move tasks over the one queue engine.

It shares the :class:`~burrow.engine.Engine` (clock, store, long polls, events) with
the burrow v1.0 front end, which is what makes a message sent through one API
visible through the other.
"""

from __future__ import annotations

from burrow.engine import Engine
from burrow.sqs.messages import Messages
from burrow.sqs.queues import QueueRegistry
from burrow.sqs.redrive import MoveTasks


class SqsService:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.queues = QueueRegistry(engine)
        self.messages = Messages(engine, self.queues)
        self.moves = MoveTasks(engine, self.queues)

    def now(self) -> float:
        """The engine's time (never going back), for queue and message rules."""
        return self.engine.now()

    def wall_clock(self) -> float:
        """The clock as it reads, for checking a signature's date against it."""
        return self.engine.clock()
