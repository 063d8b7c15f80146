"""Burrow: a fast, durable, multi-tenant HTTP message-queue service.

Layers, inside out: ``core`` (pure queue semantics, no I/O, time passed in),
``backends`` (one storage contract, several implementations), ``service`` (where
clock, core and backend meet: defaults, long polling, the cleaner), ``api`` (protocol
front ends that only translate), ``http`` (the thin HTTP layer) and ``cli``.
"""

__version__ = "0.1.0"
