"""The SQS-compatible API: queue semantics of Amazon SQS over the Burrow store.

Pure parts (no I/O): :mod:`errors`, :mod:`digests`, :mod:`validation`, :mod:`model`,
:mod:`fifo`. Parts that reach the store through the queue engine (:class:`burrow.engine.Engine`):
:mod:`queues` (queue registry in queue metadata), :mod:`messages` (send, receive,
delete, visibility), :mod:`redrive` (message move tasks), tied together by
:mod:`service`. :mod:`actions` maps JSON-shaped requests to those calls; the HTTP
front ends in ``burrow.api.sqs_*`` only translate wire formats to and from it.
"""
