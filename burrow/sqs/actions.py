"""The SQS action table: action name -> handler over JSON-shaped request members.

Both wire protocols end here: the JSON front end passes its body as is, the query
front end first unflattens its form parameters into the same shape. Handlers return
JSON-shaped response members, which each front end renders in its own format.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from burrow.sqs import message_actions as msg
from burrow.sqs import queue_actions as qa
from burrow.sqs.errors import SqsError
from burrow.sqs.params import Caller, Params
from burrow.sqs.service import SqsService

Action = Callable[[SqsService, Caller, Params], Awaitable[dict[str, Any]]]


ACTIONS: dict[str, Action] = {
    "CreateQueue": qa.create_queue,
    "GetQueueUrl": qa.get_queue_url,
    "ListQueues": qa.list_queues,
    "DeleteQueue": qa.delete_queue,
    "GetQueueAttributes": qa.get_queue_attributes,
    "SetQueueAttributes": qa.set_queue_attributes,
    "PurgeQueue": qa.purge_queue,
    "TagQueue": qa.tag_queue,
    "UntagQueue": qa.untag_queue,
    "ListQueueTags": qa.list_queue_tags,
    "ListDeadLetterSourceQueues": qa.list_dead_letter_source_queues,
    "StartMessageMoveTask": qa.start_message_move_task,
    "ListMessageMoveTasks": qa.list_message_move_tasks,
    "CancelMessageMoveTask": qa.cancel_message_move_task,
    "AddPermission": qa.add_permission,
    "RemovePermission": qa.remove_permission,
    "SendMessage": msg.send_message,
    "SendMessageBatch": msg.send_message_batch,
    "ReceiveMessage": msg.receive_message,
    "DeleteMessage": msg.delete_message,
    "DeleteMessageBatch": msg.delete_message_batch,
    "ChangeMessageVisibility": msg.change_message_visibility,
    "ChangeMessageVisibilityBatch": msg.change_message_visibility_batch,
}


def run(sqs: SqsService, caller: Caller, action: str, params: Params) -> Awaitable[dict[str, Any]]:
    """The action's result (``await run(...)``); a plain function, to spare a coroutine frame."""
    handler = ACTIONS.get(action)
    if handler is None:
        raise SqsError("InvalidAction", f"The action {action[:100]} is not valid for this endpoint.")
    return handler(sqs, caller, params)
