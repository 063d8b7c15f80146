"""SQS errors: one table of modelled shapes, their legacy codes and HTTP statuses.

A JSON client sees the shape in ``__type`` and the legacy code in the
``x-amzn-query-error`` header (botocore reports the legacy code as ``Error.Code``); a
query client sees the legacy code in the XML ``<Code>``. Both come from
:data:`SHAPES`, so the two protocols cannot disagree.
"""

from __future__ import annotations

from burrow.core.errors import BurrowError, QuotaExceeded

#: shape -> (legacy code, HTTP status). From sqs.md section 5.4.
SHAPES: dict[str, tuple[str, int]] = {
    "QueueDoesNotExist": ("AWS.SimpleQueueService.NonExistentQueue", 400),
    "QueueNameExists": ("QueueAlreadyExists", 400),
    "QueueDeletedRecently": ("AWS.SimpleQueueService.QueueDeletedRecently", 400),
    "PurgeQueueInProgress": ("AWS.SimpleQueueService.PurgeQueueInProgress", 403),
    "MessageNotInflight": ("AWS.SimpleQueueService.MessageNotInflight", 400),
    "ReceiptHandleIsInvalid": ("ReceiptHandleIsInvalid", 400),
    "InvalidIdFormat": ("InvalidIdFormat", 400),
    "TooManyEntriesInBatchRequest": ("AWS.SimpleQueueService.TooManyEntriesInBatchRequest", 400),
    "EmptyBatchRequest": ("AWS.SimpleQueueService.EmptyBatchRequest", 400),
    "BatchEntryIdsNotDistinct": ("AWS.SimpleQueueService.BatchEntryIdsNotDistinct", 400),
    "BatchRequestTooLong": ("AWS.SimpleQueueService.BatchRequestTooLong", 400),
    "InvalidBatchEntryId": ("AWS.SimpleQueueService.InvalidBatchEntryId", 400),
    "UnsupportedOperation": ("AWS.SimpleQueueService.UnsupportedOperation", 400),
    "InvalidAttributeName": ("InvalidAttributeName", 400),
    "InvalidAttributeValue": ("InvalidAttributeValue", 400),
    "InvalidMessageContents": ("InvalidMessageContents", 400),
    "OverLimit": ("OverLimit", 403),
    "RequestThrottled": ("RequestThrottled", 403),
    "ResourceNotFoundException": ("ResourceNotFoundException", 404),
    # Unmodelled in the current service model, but what clients match on.
    "MissingParameter": ("MissingParameter", 400),
    "InvalidParameterValue": ("InvalidParameterValue", 400),
    "InvalidAction": ("InvalidAction", 400),
    "MissingAction": ("MissingAction", 400),
    "InvalidClientTokenId": ("InvalidClientTokenId", 403),
    "SignatureDoesNotMatch": ("SignatureDoesNotMatch", 403),
    "MissingAuthenticationToken": ("MissingAuthenticationToken", 403),
    "IncompleteSignature": ("IncompleteSignature", 400),
    "AccessDenied": ("AccessDenied", 403),
    "ServiceUnavailable": ("ServiceUnavailable", 503),
    "InternalFailure": ("InternalFailure", 500),
}

#: Shapes that are the server's fault rather than the sender's.
RECEIVER_FAULTS = frozenset({"ServiceUnavailable", "InternalFailure"})


class SqsError(Exception):
    """An SQS error response; ``shape`` must be a key of :data:`SHAPES`."""

    def __init__(self, shape: str, message: str) -> None:
        super().__init__(message)
        self.shape = shape
        self.code, self.status = SHAPES[shape]
        self.message = message

    @property
    def sender_fault(self) -> bool:
        return self.shape not in RECEIVER_FAULTS

    @property
    def fault(self) -> str:
        return "Sender" if self.sender_fault else "Receiver"


def from_burrow(error: BurrowError) -> SqsError:
    """An engine or store failure as the SQS error clients act on: a quota reached is
    ``RequestThrottled`` (403; botocore retries it, in its legacy and standard modes), or
    ``OverLimit`` for the queues quota (as AWS answers a queue limit; not retried); anything
    else (a store failure, a storage budget reached) is ``ServiceUnavailable`` (503, retried)."""
    if isinstance(error, QuotaExceeded):
        return SqsError("OverLimit" if error.quota == "queues" else "RequestThrottled", error.message)
    return SqsError("ServiceUnavailable", f"The service is unavailable: {error.message}")


def invalid(message: str) -> SqsError:
    return SqsError("InvalidParameterValue", message)


def missing(parameter: str) -> SqsError:
    return SqsError("MissingParameter", f"The request must contain the parameter {parameter}.")


def no_queue() -> SqsError:
    return SqsError("QueueDoesNotExist", "The specified queue does not exist.")
