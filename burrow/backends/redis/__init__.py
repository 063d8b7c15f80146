"""The Redis backend: one store shared by any number of Burrow processes.

``redis://host:port/db``, ``rediss://`` (TLS), ``redis://:password@host:port/db`` and
``redis+cluster://host:port[,host:port...]`` (Redis Cluster); ``?prefix=NAME`` namespaces
every key (``url`` has every form and option). Needs Redis 7.0 or later (functions).

Modules: ``url`` (storage URLs), ``scripts`` (the Lua functions, one per operation, and
the key layout), ``keys`` (key names and packed arguments), ``link`` (pipelined commands
over redis-py connections, errors, ``WAIT``), ``backend`` (the storage contract),
``notify`` (long-poll wake-ups across processes over pub/sub).

Atomicity. Every operation is one call of a Redis function (FCALL), so a take, a claim
(FIFO groups included), a FIFO send (sequence and deduplication), a compare-and-set and a
move run atomically however many processes share the store. Nothing reads Redis's clock:
``now`` is an argument, as the contract wants.

Cluster. All keys of an account, its queues' included, carry the account's hash tag, so
an operation on a queue, or a move between two queues of one account, is one call in one
slot. A move between accounts in different slots copies first and deletes second (a crash
between leaves two copies, never none). The account list and the cleaner's index live
under one global tag: on one server each call updates them in the same step; on Cluster
a call returns what changed and the backend applies it to the global slot with a second
call, numbered per account so concurrent processes converge. A process that dies between
those two steps leaves an account unlisted (or listed though empty), or its deadlines
unknown to the cleaner, until that account's next change; the data itself is intact. On
Cluster an account's small state hash (its publication counter) outlives the account, a
few dozen bytes per account name ever used.

Durability is Redis's (AOF ``appendfsync always`` for a write acknowledged only once on
disk); ``Settings.redis_wait_replicas`` adds ``WAIT``: a write is acknowledged only after
that many replicas have it, and otherwise answered 503 although the primary applied it.
"""

from burrow.backends.redis.backend import RedisBackend
from burrow.backends.redis.url import RedisTarget, parse

__all__ = ["RedisBackend", "RedisTarget", "parse"]
