"""Storage URLs of the Redis backend, parsed strictly (a typo is an error at start, not a surprise later).

Forms::

    redis://[[user]:password@]host[:port][/db][?options]      one server (port 6379, db 0)
    rediss://...                                               the same over TLS
    redis+cluster://[[user]:password@]host:port[,host:port...][?options]   a Cluster
    rediss+cluster://...                                       a Cluster over TLS

Options: ``prefix=NAME`` (default ``burrow``) starts every key, so deployments and tests
can share one Redis; it may not hold braces or whitespace. ``timeout=SECONDS`` (default
3) bounds one round trip (a command, its reply, and a reconnect before it);
``connect_timeout=SECONDS`` (default 2). TLS: ``ssl_ca_certs=PATH``,
``ssl_certfile=PATH``, ``ssl_keyfile=PATH``, ``ssl_cert_reqs=required|optional|none``.
A Cluster has no databases: its path, if any, must be ``/0``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote, urlsplit

SCHEMES = ("redis", "rediss", "redis+cluster", "rediss+cluster")
DEFAULT_PREFIX = "burrow"
DEFAULT_PORT = 6379
#: Printable ASCII without braces (they would change the hash tags) or spaces.
_PREFIX = re.compile(r"[!-z|~]{1,200}")
_TLS_OPTIONS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs")


@dataclass(frozen=True)
class RedisTarget:
    """Where the store lives and how to reach it (a parsed storage URL)."""

    url: str
    cluster: bool
    tls: bool
    nodes: tuple[tuple[str, int], ...]
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    prefix: str = DEFAULT_PREFIX
    timeout: float = 3.0
    connect_timeout: float = 2.0
    tls_options: tuple[tuple[str, str], ...] = ()

    def describe(self) -> str:
        """The target for messages and logs, without the password."""
        hosts = ",".join(f"{host}:{port}" for host, port in self.nodes)
        kind = "Redis Cluster" if self.cluster else "Redis"
        return f"{kind} at {hosts}" + ("" if self.cluster else f" db {self.db}")

    def connection_kwargs(self) -> dict[str, object]:
        """Arguments of a redis-py connection (or cluster client) for this target."""
        kwargs: dict[str, object] = {
            "username": self.username,
            "password": self.password,
            "socket_connect_timeout": self.connect_timeout,
            "socket_keepalive": True,
        }
        if self.tls:
            kwargs.update(self.tls_options)
        return kwargs


def parse(url: str) -> RedisTarget:
    """Parse a Redis storage URL; ValueError says what is wrong with it."""
    scheme, sep, _ = url.partition("://")
    if not sep or scheme not in SCHEMES:
        raise ValueError(f"not a Redis storage URL (schemes: {', '.join(SCHEMES)}): {url!r}")
    cluster = scheme.endswith("+cluster")
    parts = urlsplit(url)
    if parts.fragment:
        raise ValueError(f"a Redis storage URL has no #fragment: {url!r}")
    userinfo, at, hostlist = parts.netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    nodes = tuple(_node(item, url) for item in hostlist.split(",")) if hostlist else ()
    if not nodes:
        raise ValueError(f"a Redis storage URL needs a host: {url!r}")
    if len(nodes) > 1 and not cluster:
        raise ValueError(f"several hosts need the redis+cluster:// scheme: {url!r}")
    path = parts.path.strip("/")
    try:
        db = int(path) if path else 0
    except ValueError:
        raise ValueError(
            f"the path of a Redis storage URL is a database number, got {parts.path!r}"
        ) from None
    if db < 0 or (cluster and db != 0):
        raise ValueError(f"bad database {db} (a Cluster has only database 0): {url!r}")
    options = {name: values[-1] for name, values in parse_qs(parts.query, keep_blank_values=True).items()}
    prefix = options.pop("prefix", DEFAULT_PREFIX)
    if not _PREFIX.fullmatch(prefix):
        raise ValueError(
            f"prefix must be 1-200 printable ASCII characters without braces or spaces, got {prefix!r}"
        )
    timeout = _seconds(options.pop("timeout", "3"), "timeout")
    connect_timeout = _seconds(options.pop("connect_timeout", "2"), "connect_timeout")
    tls_options = tuple((name, options.pop(name)) for name in _TLS_OPTIONS if name in options)
    if tls_options and not scheme.startswith("rediss"):
        raise ValueError(f"TLS options need the rediss:// scheme: {url!r}")
    if options:
        raise ValueError(f"unknown option(s) {', '.join(sorted(options))} in {url!r}")
    return RedisTarget(
        url=url,
        cluster=cluster,
        tls=scheme.startswith("rediss"),
        nodes=nodes,
        db=db,
        username=username,
        password=password,
        prefix=prefix,
        timeout=timeout,
        connect_timeout=connect_timeout,
        tls_options=tls_options,
    )


def _node(item: str, url: str) -> tuple[str, int]:
    host, colon, port = item.rpartition(":") if not item.endswith("]") else (item, "", "")
    if not colon:
        host, port = item, str(DEFAULT_PORT)
    host = host.strip("[]")
    if not host:
        raise ValueError(f"empty host in {url!r}")
    try:
        number = int(port)
    except ValueError:
        raise ValueError(f"bad port {port!r} in {url!r}") from None
    if not 0 < number < 65536:
        raise ValueError(f"bad port {number} in {url!r}")
    return host, number


def _seconds(text: str, name: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{name} must be a number of seconds, got {text!r}") from None
    if not 0 < value <= 300:
        raise ValueError(f"{name} must be in (0, 300] seconds, got {value}")
    return value
