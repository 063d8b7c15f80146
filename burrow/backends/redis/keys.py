"""Key names and packed arguments, on the Python side (the layout is documented in ``scripts``).

Every script call starts with the same five arguments: the account's state key (the
only declared key, which routes the call on Cluster), the global key prefix (empty on
Cluster), the account's key prefix, the account and the queue. They are RESP-encoded
once per (account, queue) and cached, so a request packs only its own few arguments.
"""

from __future__ import annotations

import hashlib

from redis.crc import key_slot

from burrow.backends.redis.link import bulk

#: Cached (account, queue) argument blocks; the cache is dropped when it grows past this.
CACHE_LIMIT = 65_536


def encode(name: str) -> bytes:
    """A name as stored: UTF-8, lone surrogates passed through (as the other backends do)."""
    return name.encode("utf-8", "surrogatepass")


def decode(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogatepass")


def tag(account: str) -> str:
    """The account's hash tag: 8 hex digits of SHA-1 of its name (only spreads accounts over
    slots; names are spelled out in the keys, so two accounts sharing a tag do not mix)."""
    return hashlib.sha1(encode(account)).hexdigest()[:8]


class AccountKeys:
    """One account's key prefix, state key (which routes its calls) and Cluster slot."""

    __slots__ = ("meta", "name", "prefix", "raw", "slot", "state")

    def __init__(self, prefix: bytes, account: str, cluster: bool) -> None:
        self.name = account
        self.raw = encode(account)
        self.prefix = prefix + b"{" + tag(account).encode() + b"}"
        self.state = self.prefix + b"S:" + self.raw
        self.meta = self.prefix + b"M:" + self.raw
        self.slot = int(key_slot(self.state)) if cluster else 0

    def queue_key(self, kind: bytes, queue: bytes) -> bytes:
        return self.prefix + kind + b"%d:" % len(self.raw) + self.raw + queue


class Keys:
    """The key names of one store (one prefix)."""

    def __init__(self, prefix: str, cluster: bool) -> None:
        self.prefix = prefix.encode()
        self.cluster = cluster
        #: The global keys' prefix; it carries the hash tag {prefix}.
        self.glob = self.prefix + b"{" + self.prefix + b"}"
        self.global_arg = bulk(b"" if cluster else self.glob)
        self.global_slot = int(key_slot(self.glob)) if cluster else 0
        self.accounts_key = self.glob + b"A"
        self._accounts: dict[str, AccountKeys] = {}
        #: (account, queue) -> (account keys, argument block, data hash key)
        self._queues: dict[tuple[str, str], tuple[AccountKeys, bytes, bytes]] = {}

    def account(self, account: str) -> AccountKeys:
        keys = self._accounts.get(account)
        if keys is None:
            if len(self._accounts) >= CACHE_LIMIT:
                self._accounts.clear()
            keys = self._accounts[account] = AccountKeys(self.prefix, account, self.cluster)
        return keys

    def block(self, account: str, queue: str) -> tuple[AccountKeys, bytes, bytes]:
        """(account keys, the five leading arguments RESP-encoded, the queue's data hash key)."""
        found = self._queues.get((account, queue))
        if found is None:
            if len(self._queues) >= CACHE_LIMIT:
                self._queues.clear()
            a = self.account(account)
            raw = encode(queue)
            head = bulk(a.state) + self.global_arg + bulk(a.prefix) + bulk(a.raw) + bulk(raw)
            found = self._queues[account, queue] = (a, head, a.queue_key(b"d", raw))
        return found

    def global_head(self) -> bytes:
        """The leading arguments of a call on the global keys: the routing key and G."""
        return bulk(self.accounts_key) + bulk(self.glob)
