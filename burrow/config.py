"""Configuration: one frozen settings object, every default documented here.

Values come from, in increasing priority: the defaults below, a TOML file
(``--config FILE``), ``BURROW_*`` environment variables, and command-line flags.
Nothing else in Burrow reads the environment or a config file; everything that
needs a setting is handed this object.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from burrow.core.validation import MAX_NAME_BYTES, forbidden_character

ENV_PREFIX = "BURROW_"
#: An AWS region name as it appears in ARNs and SigV4 credential scopes (``us-east-1``).
_REGION = re.compile(r"[a-z0-9-]{1,64}")


def default_data_dir() -> Path:
    """Where the default durable store lives: ``$XDG_DATA_HOME/burrow`` or ``~/.local/share/burrow``."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "burrow"


@dataclass(frozen=True, slots=True)
class Settings:
    """Every tunable of a Burrow server. Field docs are the reference for operators."""

    #: Address to listen on.
    host: str = "127.0.0.1"
    #: TCP port to listen on (0 picks a free port).
    port: int = 8080
    #: Storage URL: ``memory://``, ``sqlite:///relative.db``, ``sqlite:////abs.db``,
    #: ``sqlite://:memory:``, ``redis://[:password@]host:port/db``, ``rediss://...`` (TLS),
    #: ``redis+cluster://host:port[,host:port...]`` (Redis options such as ``?prefix=NAME``:
    #: docs/operations.md "Redis"). Empty means the durable default, a SQLite file in ``data_dir``.
    backend: str = ""
    #: Directory for the default SQLite store (created if missing).
    data_dir: str = ""
    #: Durability for SQLite (docs/operations.md has each mode's promise): ``batch``
    #: (creates are synced before their 2xx, grouped; takes, hides and deletes are
    #: acknowledged once committed and synced within ``fsync_interval``), ``always``
    #: (every write synced before its 2xx), ``never`` (no sync; survives a process
    #: crash, not a power cut).
    fsync: str = "batch"
    #: Seconds within which ``--fsync batch`` syncs a take, hide or delete it acknowledged
    #: at commit (0 = sync them before their 2xx as well).
    fsync_interval: float = 0.005
    #: Seconds a message lives when PUT has no ``ttl`` (0 = forever).
    default_ttl: int = 600
    #: Seconds a message stays hidden when PUT has no ``hide``.
    default_hide: int = 0
    #: Largest ``wait`` honoured; larger values are capped to this.
    max_wait: int = 20
    #: Largest number of items one response returns; larger ``limit`` values are capped.
    max_limit: int = 1000
    #: Largest ``ttl`` or ``hide`` accepted (seconds); larger is 400.
    max_seconds: int = 1_000_000_000
    #: Largest request body (bytes); larger is 413. Room for a 1 MiB SQS message once JSON-escaped.
    max_body_bytes: int = 4_194_304
    #: Byte budget of one burrow v1.0 list response (docs/api.md "Response size"): a GET
    #: list stops before the message that would take it past this (at least one is always
    #: returned) and says so in ``X-Burrow-Truncated``; POST and DELETE lists that return
    #: messages are capped at this / ``max_body_bytes`` of them (1 KiB each without bodies).
    max_response_bytes: int = 16_777_216
    #: Largest total size of the request line plus headers (bytes); larger is 431.
    max_header_bytes: int = 16_384
    #: Most headers in one request; more is 431.
    max_header_count: int = 100
    #: Longest request target (bytes); longer is 414.
    max_url_bytes: int = 8_192
    #: Seconds allowed to receive a request's headers once it has started; then 408.
    header_timeout: float = 10.0
    #: Seconds allowed to receive a request's body once headers are in; then 408.
    body_timeout: float = 30.0
    #: Seconds an idle keep-alive connection is kept open.
    idle_timeout: float = 75.0
    #: Seconds a connection's unsent output may wait for the client to read it: unless it
    #: drains, or shrinks by ``max_unsent_bytes``, within this time (or within
    #: ``idle_timeout`` if that is shorter) the connection is closed.
    write_timeout: float = 30.0
    #: Unsent response bytes of one connection above which it stops reading and handling
    #: requests until the client has read them all.
    max_unsent_bytes: int = 262_144
    #: Bytes in flight across all connections (request bodies being received or waiting for
    #: their handler, responses not yet sent) above which new requests are answered 503 with
    #: ``Retry-After`` and their connection closed.
    max_inflight_bytes: int = 268_435_456
    #: Most concurrent connections; more are answered 503 and closed. The server needs this
    #: many open files plus 128: at start it raises its soft RLIMIT_NOFILE as far as needed,
    #: and refuses to start if the hard limit is lower.
    max_connections: int = 10_000
    #: Most concurrent connections from one client IP address; more are answered 503 and closed.
    max_connections_per_client: int = 1_000
    #: Seconds between cleaner passes (expiry, unhide, removal of empty queues).
    clean_interval: float = 1.0
    #: Memory backend: bytes of messages (ids, bodies, meta and a fixed per-message and
    #: per-queue overhead) it may hold; a create past it is 507 (docs/operations.md "Budgets
    #: and quotas"). 0 = a quarter of physical memory (at least 64 MiB), decided and logged
    #: at start; per process (``workers`` on memory each own a store). Suffixes K, M, G
    #: (1024-based) are accepted.
    max_memory: int = 0
    #: SQLite backend: bytes of database pages in use (file size less free pages) past which
    #: a create is 507. 0 = no limit but the disk's own (the reserve file, docs/operations.md
    #: "Full disk"). Suffixes K, M, G (1024-based) are accepted.
    max_disk: int = 0
    #: Log level name.
    log_level: str = "info"
    #: The credentials file (TOML: admin tokens, accounts with their v1.0 tokens, SQS keys and
    #: quotas; docs/operations.md "Auth and tenants"), reloaded on SIGHUP. Set, or with
    #: ``sqs_credentials`` set, auth is on for both APIs; neither set, auth is off (local use).
    credentials: str = ""
    #: SQS API credentials, ``ACCESS_KEY:SECRET`` pairs separated by commas. Each access
    #: key is also the Burrow account its requests use. Empty (the default, for local
    #: use) accepts any signature without checking it; set, SigV4 signatures are verified
    #: (and auth is on for burrow v1.0 too: it then needs a token of ``credentials``).
    sqs_credentials: str = ""
    #: The Burrow account of SQS requests that carry no ``Authorization`` header
    #: (accepted only while auth is off: neither ``credentials`` nor ``sqs_credentials`` set).
    sqs_default_account: str = "000000000000"
    #: The one AWS region this server is: SQS ARNs name it, and with ``sqs_credentials``
    #: set a request signed for another region (or another service than ``sqs``) is
    #: refused (403). Without credentials any signed region is accepted and ignored.
    region: str = "us-east-1"
    #: ``burrow serve``: server processes to run. With a shared backend (Redis) they all
    #: listen on ``port`` (SO_REUSEPORT); with an in-process one (memory, SQLite) each owns
    #: its own store on a port of its own and a router listens on ``port``.
    workers: int = 1
    #: ``burrow proxy``: the queue servers to route to, base URLs separated by commas
    #: (``http://h1:8080,http://h2:8080``). Their order does not matter; their URLs do.
    servers: str = ""
    #: Servers one account's queues are spread over (the first step of the two-step hash).
    subset_size: int = 3
    #: Redis: acknowledge a write only once this many replicas have it (``WAIT``; 0 = off).
    redis_wait_replicas: int = 0
    #: Redis: seconds a write waits for ``redis_wait_replicas`` before it is answered 503.
    redis_wait_timeout: float = 1.0
    # -- observability (docs/operations.md "Metrics", "Access log") --
    #: ``on``: count requests and message events and serve them at ``GET /metrics``
    #: (Prometheus); ``off``: no counting at all, and ``/metrics`` is 404.
    metrics: str = "on"
    #: Queues ``/metrics`` reports the depth of: the deepest ones, found by a scan at scrape
    #: time (at most one a second, over at most 10,000 queues); 0 = none.
    metrics_top_queues: int = 20
    #: Structured access log, one JSON object a line: a file path, ``-`` for standard error,
    #: empty for none. Written by a background thread; lines over its bound are dropped
    #: (and counted), never waited for.
    access_log: str = ""

    #: Where ``POST /backup`` writes online backups of a SQLite store; empty = ``backups/``
    #: beside the database file.
    backup_dir: str = ""
    #: Backups kept in ``backup_dir``: after each new one, older ``burrow-*.db`` files go.
    backup_keep: int = 7

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    def validate(self) -> Settings:
        """Raise ValueError with a clear reason for any setting that cannot work."""
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be 0..65535, got {self.port}")
        if self.fsync not in ("always", "batch", "never"):
            raise ValueError(f"fsync must be always, batch or never, got {self.fsync!r}")
        for name in ("default_ttl", "default_hide"):
            if not 0 <= getattr(self, name) <= self.max_seconds:
                raise ValueError(f"{name} must be 0..{self.max_seconds}")
        for name in (
            "max_wait",
            "max_limit",
            "max_body_bytes",
            "max_response_bytes",
            "max_header_bytes",
            "max_header_count",
            "max_url_bytes",
            "max_connections",
            "max_connections_per_client",
            "max_unsent_bytes",
            "max_inflight_bytes",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.credentials != self.credentials.strip() or "\0" in self.credentials:
            raise ValueError(f"credentials must be a file path or empty, got {self.credentials!r}")
        for pair in filter(None, (p.strip() for p in self.sqs_credentials.split(","))):
            access, sep, secret = pair.partition(":")
            if not sep or not access or not secret:
                raise ValueError("sqs_credentials must be ACCESS_KEY:SECRET pairs separated by commas")
        if not self.sqs_default_account:
            raise ValueError("sqs_default_account must not be empty")
        bad = forbidden_character(self.sqs_default_account)
        if bad is not None or len(self.sqs_default_account.encode("utf-8", "replace")) > MAX_NAME_BYTES:
            raise ValueError(
                "sqs_default_account must be 1-256 bytes of UTF-8 without control or invisible"
                f" characters; it has {bad or 'more than 256 bytes'}"
            )
        if not 1 <= self.workers <= 256:
            raise ValueError(f"workers must be 1..256, got {self.workers}")
        if not 1 <= self.subset_size <= 64:
            raise ValueError(f"subset_size must be 1..64, got {self.subset_size}")
        if self.redis_wait_replicas < 0:
            raise ValueError("redis_wait_replicas must be 0 or more")
        if not 0 < self.redis_wait_timeout <= 60:
            raise ValueError(f"redis_wait_timeout must be in (0, 60] seconds, got {self.redis_wait_timeout}")
        if not _REGION.fullmatch(self.region):
            raise ValueError(f"region must be 1 to 64 of a-z 0-9 -, got {self.region!r}")
        if not 0 <= self.fsync_interval <= 10:
            raise ValueError(f"fsync_interval must be 0..10 seconds, got {self.fsync_interval}")
        for name in ("header_timeout", "body_timeout", "idle_timeout", "write_timeout", "clean_interval"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        for name in ("max_memory", "max_disk"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be 0 (see its default) or a number of bytes")
        if not 1 <= self.backup_keep <= 10_000:
            raise ValueError(f"backup_keep must be 1..10000, got {self.backup_keep}")
        if "\0" in self.backup_dir:
            raise ValueError("backup_dir must be a directory path")
        if self.metrics not in ("on", "off"):
            raise ValueError(f"metrics must be on or off, got {self.metrics!r}")
        if not 0 <= self.metrics_top_queues <= 1000:
            raise ValueError(f"metrics_top_queues must be 0..1000, got {self.metrics_top_queues}")
        if self.access_log != self.access_log.strip() or "\0" in self.access_log:
            raise ValueError(f"access_log must be a file path, '-' or empty, got {self.access_log!r}")
        return self

    def server_urls(self) -> list[str]:
        """``servers`` as a list of base URLs without a trailing slash."""
        return [u.strip().rstrip("/") for u in self.servers.split(",") if u.strip()]

    def backend_url(self) -> str:
        """The storage URL in force: the configured one, or the durable default file."""
        if self.backend:
            return self.backend
        data = Path(self.data_dir) if self.data_dir else default_data_dir()
        return f"sqlite:///{(data / 'burrow.db').resolve()}"  # absolute path: four slashes


_FIELD_TYPES: dict[str, type] = {
    f.name: {"str": str, "int": int, "float": float}[str(f.type)] for f in fields(Settings)
}
#: Settings that are byte sizes: they accept K, M and G suffixes (:func:`parse_bytes`)
#: in the TOML file, the environment and flags alike.
BYTE_SIZES = frozenset(
    name for name in _FIELD_TYPES if name in ("max_memory", "max_disk") or name.endswith("_bytes")
)
_SIZE = re.compile(r"(\d+)\s*(?:([KMG])(?:I?B)?|B)?", re.IGNORECASE)


def parse_bytes(value: str | int) -> int:
    """A byte size: an integer, or one with a suffix K, M or G (1024-based; ``KiB``, ``MB`` and
    lower case are read the same), e.g. ``512M`` = 536870912."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    match = _SIZE.fullmatch(value.strip()) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f"expected a byte size such as 1048576, 512K, 64M or 2G, got {value!r}")
    unit = (match.group(2) or "").upper()
    return int(match.group(1)) << {"": 0, "K": 10, "M": 20, "G": 30}[unit]


def _coerce(name: str, value: Any) -> Any:
    if name == "servers" and isinstance(value, list):  # TOML: servers = ["http://h1:8080", ...]
        if not all(isinstance(url, str) for url in value):
            raise ValueError(f"setting servers: expected URLs (strings), got {value!r}")
        return ",".join(value)
    kind = _FIELD_TYPES[name]
    if name in BYTE_SIZES:
        try:
            return parse_bytes(value)
        except ValueError as error:
            raise ValueError(f"setting {name}: {error}") from None
    try:
        if kind is int and isinstance(value, str):
            return int(value, 10)
        return kind(value)
    except (TypeError, ValueError):
        raise ValueError(f"setting {name}: expected {kind.__name__}, got {value!r}") from None


def load_settings(
    overrides: Mapping[str, Any] | None = None,
    config_file: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Merge defaults < TOML file < ``BURROW_*`` environment < explicit overrides."""
    values: dict[str, Any] = {}
    if config_file:
        with open(config_file, "rb") as fh:
            data = tomllib.load(fh)
        section = data.get("burrow", data)
        for key, value in section.items():
            name = key.replace("-", "_")
            if name not in _FIELD_TYPES:
                raise ValueError(f"unknown setting {key!r} in {config_file}")
            values[name] = _coerce(name, value)
    env = os.environ if environ is None else environ
    for key, value in env.items():
        if key.startswith(ENV_PREFIX):
            name = key[len(ENV_PREFIX) :].lower()
            if name in _FIELD_TYPES:
                values[name] = _coerce(name, value)
    for key, value in (overrides or {}).items():
        if value is not None:
            values[key] = _coerce(key, value)
    return Settings(**values).validate()
