"""Burrow: a fast, durable, multi-tenant HTTP message-queue service.

Layers, inside out: ``core`` (pure queue semantics, no I/O, time passed in),
``backends`` (one storage contract, several implementations), ``engine`` (the one
owner of every queue operation: clock, defaults, long polling, events, the cleaner),
``sqs`` (SQS semantics over engine operations), ``api`` (protocol front ends that
only translate), ``http`` (the thin HTTP layer) and ``cli``.
"""

__version__ = "0.1.0"
