"""The SQS service: the queue registry, message operations and move tasks over one Burrow Service.

It shares the Burrow :class:`~burrow.service.Service` (clock, backend, long-poll
waiters, cleaner) with the burrow v1.0 front end, which is what makes a message sent
through one API visible through the other.
"""

from __future__ import annotations

from burrow.service import Service
from burrow.sqs.messages import Messages
from burrow.sqs.queues import QueueRegistry
from burrow.sqs.redrive import MoveTasks


class SqsService:
    def __init__(self, service: Service) -> None:
        self.service = service
        self.queues = QueueRegistry(service)
        self.messages = Messages(service, self.queues)
        self.moves = MoveTasks(service, self.queues)

    def now(self) -> float:
        return self.service.clock()
