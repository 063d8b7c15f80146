"""Where a queue lives when Burrow runs as several servers: two-step rendezvous hashing.

The router (``burrow proxy``) and the client library (``burrow.Client([url, ...])``)
place queues with this one module, so a client that hashes and a router agree.

Step one, the account: it gets ``subset_size`` *slots*, and each slot is placed on the
server with the highest rendezvous score for (server, account, slot). Step two, the
queue: a hash of (account, queue) picks one of the account's slots. So an account's
queues are spread over at most ``subset_size`` servers (account-wide listings ask only
those and merge), and each queue lives on exactly one server.

Why slots rather than "the top ``subset_size`` servers, then the best of those": when a
server is added, a slot moves only if the new server wins it (probability 1/(N+1)), and
then it moves *to the new server*; queues follow their slot. So adding a fourth server to
three moves about a quarter of the queues, all to the new server, and nothing else moves.
Choosing among the top-k instead would also move queues between old servers whenever the
new one pushed a server out of an account's subset. The price: two slots may land on one
server, so an account uses a little fewer than ``subset_size`` distinct servers when there
are few servers.

Placement depends only on the configured server list (the URL strings, normalised), never
on which servers are up: a server that is down makes its queues unavailable instead of
splitting them.

Hash tags put chosen queues of an account on one server, as Redis Cluster's do for keys:
step two hashes a queue's *tag* instead of its whole name when it has one (:func:`hash_key`).
That matters where servers must hold two queues together: an SQS queue and its dead-letter
queue (the server that moves a message needs both), and a message move task's source and
destination. Two spellings, one rule for every name (a queue is the same queue in the
burrow v1.0 and the SQS API, so both must place it alike):

* ``{tag}``: the text between the first ``{`` and the first ``}`` after it, if not empty
  (Redis Cluster's rule): ``{orders}``, ``{orders}-dlq`` and ``x{orders}y`` go together.
* ``tag--rest``: the text before the first ``--``, if not empty. SQS queue names cannot
  hold braces (only ``A-Z a-z 0-9 - _``), so this is their spelling: ``orders``,
  ``orders--dlq`` and ``orders--retry.fifo`` go together (a name without a tag hashes
  whole, so ``orders`` is its own tag).

Every queue with one tag lives on one server, so tags trade spreading for togetherness:
a tag shared by many busy queues puts all their load on one server.
"""

from __future__ import annotations

from collections.abc import Sequence
from hashlib import blake2b

#: Placements remembered per :class:`Placement` (accounts); the cache is dropped when full.
_CACHE_LIMIT = 65_536


def normalise(url: str) -> str:
    """A server's identity in the hash: its base URL, lower-case scheme and host, no trailing slash."""
    url = url.strip().rstrip("/")
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError(f"server must be a URL like http://host:port, got {url!r}")
    host, slash, path = rest.partition("/")
    return f"{scheme.lower()}://{host.lower()}{slash}{path}"


def hash_key(queue: str) -> str:
    """What step two hashes for ``queue``: its tag (``{tag}``, else ``tag--...``), or the whole name."""
    start = queue.find("{")
    if start >= 0:
        end = queue.find("}", start + 1)
        if end > start + 1:
            return queue[start + 1 : end]
    cut = queue.find("--")
    if cut > 0:
        return queue[:cut]
    return queue


def _score(*parts: str) -> int:
    return int.from_bytes(blake2b("\n".join(parts).encode("utf-8", "surrogatepass"), digest_size=8).digest())


class Placement:
    """Which server holds each queue, for one list of servers."""

    def __init__(self, servers: Sequence[str], subset_size: int = 3) -> None:
        if not servers:
            raise ValueError("at least one server is needed")
        if subset_size < 1:
            raise ValueError("subset_size must be at least 1")
        self.servers: tuple[str, ...] = tuple(normalise(s) for s in servers)
        if len(set(self.servers)) != len(self.servers):
            raise ValueError("a server is listed twice")
        self.subset_size = subset_size
        self._slots: dict[str, tuple[str, ...]] = {}

    def slots(self, account: str) -> tuple[str, ...]:
        """The server of each of the account's slots (a server may hold several)."""
        slots = self._slots.get(account)
        if slots is None:
            if len(self.servers) == 1:
                slots = self.servers * self.subset_size
            else:
                slots = tuple(
                    max(self.servers, key=lambda server: _score(server, account, str(slot)))
                    for slot in range(self.subset_size)
                )
            if len(self._slots) >= _CACHE_LIMIT:
                self._slots.clear()
            self._slots[account] = slots
        return slots

    def account_servers(self, account: str) -> list[str]:
        """The distinct servers holding the account's queues, in slot order (for fan-out)."""
        return list(dict.fromkeys(self.slots(account)))

    def server_for(self, account: str, queue: str) -> str:
        """The one server that holds (account, queue); queues with one tag share it (:func:`hash_key`)."""
        slots = self.slots(account)
        if len(self.servers) == 1:
            return slots[0]
        return slots[_score(account, hash_key(queue)) % len(slots)]
