"""Configuration: one frozen settings object, every default documented here.

Values come from, in increasing priority: the defaults below, a TOML file
(``--config FILE``), ``BURROW_*`` environment variables, and command-line flags.
Nothing else in Burrow reads the environment or a config file; everything that
needs a setting is handed this object.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

ENV_PREFIX = "BURROW_"


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
    #: ``sqlite://:memory:``. Empty means the durable default, a SQLite file in ``data_dir``.
    backend: str = ""
    #: Directory for the default SQLite store (created if missing).
    data_dir: str = ""
    #: Durability for SQLite: ``always`` (fsync each commit), ``batch`` (group commit,
    #: fsync'd), ``never`` (no fsync; survives a process crash, not a power cut).
    fsync: str = "batch"
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
    #: Most concurrent connections; more are answered 503 and closed.
    max_connections: int = 20_000
    #: Seconds between cleaner passes (expiry, unhide, removal of empty queues).
    clean_interval: float = 1.0
    #: Log level name.
    log_level: str = "info"
    #: SQS API credentials, ``ACCESS_KEY:SECRET`` pairs separated by commas. Each access
    #: key is also the Burrow account its requests use. Empty (the default, for local
    #: use) accepts any signature without checking it; set, SigV4 signatures are verified.
    sqs_credentials: str = ""
    #: The Burrow account of SQS requests that carry no ``Authorization`` header
    #: (accepted only while ``sqs_credentials`` is empty).
    sqs_default_account: str = "000000000000"

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
            "max_header_bytes",
            "max_header_count",
            "max_url_bytes",
            "max_connections",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        for pair in filter(None, (p.strip() for p in self.sqs_credentials.split(","))):
            access, sep, secret = pair.partition(":")
            if not sep or not access or not secret:
                raise ValueError("sqs_credentials must be ACCESS_KEY:SECRET pairs separated by commas")
        if not self.sqs_default_account:
            raise ValueError("sqs_default_account must not be empty")
        for name in ("header_timeout", "body_timeout", "idle_timeout", "clean_interval"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        return self

    def backend_url(self) -> str:
        """The storage URL in force: the configured one, or the durable default file."""
        if self.backend:
            return self.backend
        data = Path(self.data_dir) if self.data_dir else default_data_dir()
        return f"sqlite:///{(data / 'burrow.db').resolve()}"  # absolute path: four slashes


_FIELD_TYPES: dict[str, type] = {
    f.name: {"str": str, "int": int, "float": float}[str(f.type)] for f in fields(Settings)
}


def _coerce(name: str, value: Any) -> Any:
    kind = _FIELD_TYPES[name]
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
