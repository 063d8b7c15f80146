"""The credentials file (``--credentials FILE``): load it, check it, index it for lookups.

The file is TOML (docs/operations.md "Auth and tenants")::

    admin_tokens = ["..."]
    [accounts.acme]
    tokens = ["..."]                 # read-write on acme (burrow v1.0)
    read_tokens = ["..."]            # read-only on acme (GET only)
    sqs_keys = { AKIDACME = "..." }  # SigV4 access key -> secret; the key acts as acme
    [accounts.acme.quotas]           # optional: burrow.quotas.Quota
    queues = 100
    bytes = "1G"

Every mistake is a :class:`CredentialsError` naming the file and the key (``accounts.acme.
tokens[1]``), never the secret itself. Tokens are kept only as SHA-256 digests: a request's
token is hashed and looked up in a dict, so neither the lookup's timing nor memory tells
anything about a stored token beyond its digest.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from burrow.auth.grant import ADMIN, Grant
from burrow.config import parse_bytes
from burrow.core.validation import MAX_NAME_BYTES, forbidden_character
from burrow.quotas import Quota

#: Shortest and longest token accepted (characters); minted ones are 43.
MIN_TOKEN, MAX_TOKEN = 16, 1024
#: Longest SQS secret accepted (characters).
MAX_SECRET = 1024
#: An SQS access key: what the SigV4 credential scope can carry (as ``burrow.api.sqs_auth``).
ACCESS_KEY = re.compile(r"[A-Za-z0-9_.-]{1,128}")
#: A token: visible ASCII only (it travels in a header).
_TOKEN = re.compile(r"[!-~]+")
_TOP_KEYS = ("admin_tokens", "accounts")
_ACCOUNT_KEYS = ("tokens", "read_tokens", "sqs_keys", "quotas")


class CredentialsError(ValueError):
    """The credentials (file or ``--sqs-credentials``) cannot be used; the message says where."""


class SqsKey(NamedTuple):
    """An SQS access key's secret and the account it acts as."""

    secret: str
    account: str

    def __repr__(self) -> str:  # never the secret, whatever logs it
        return f"SqsKey(secret='***', account={self.account!r})"


def digest(token: str) -> bytes:
    """The SHA-256 of a token: what is stored and looked up, never the token."""
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


@dataclass(frozen=True, slots=True)
class Credentials:
    """Everything authentication needs, indexed. Replaced whole on reload, never changed."""

    #: SHA-256 of each token -> what it grants.
    grants: Mapping[bytes, Grant] = field(default_factory=dict, repr=False)
    #: SQS access key -> its secret and account.
    sqs_keys: Mapping[str, SqsKey] = field(default_factory=dict, repr=False)
    #: Account -> its quotas (accounts without a quotas table are not listed).
    quotas: Mapping[str, Quota] = field(default_factory=dict)
    #: The accounts the file names.
    accounts: tuple[str, ...] = ()


def parse_size(value: object, where: str) -> int:
    """A quota amount: a non-negative int, or a string of digits with an optional K, M or G
    (1024-based) suffix (``"512M"``)."""
    if isinstance(value, bool):
        raise CredentialsError(f"{where}: expected a number, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise CredentialsError(f"{where}: must be 0 or more, got {value}")
        return value
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return parse_bytes(value)
    raise CredentialsError(
        f'{where}: expected a whole number, optionally with a K, M or G suffix ("1G"), got {value!r}'
    )


def check_account_name(name: str, where: str) -> str:
    """An account name as the API accepts it (burrow.core.validation): 1-256 bytes of UTF-8
    without control or invisible characters."""
    bad = forbidden_character(name)
    size = len(name.encode("utf-8", "surrogatepass"))
    if not name or size > MAX_NAME_BYTES or bad is not None:
        why = bad or ("is empty" if not name else f"is {size} bytes")
        raise CredentialsError(
            f"{where}: account name {name[:80]!r} is not a valid name (1-256 bytes of UTF-8 without"
            f" control or invisible characters): {why}"
        )
    return name


def check_token(token: object, where: str) -> str:
    """A token: a string of MIN_TOKEN to MAX_TOKEN visible ASCII characters (never echoed)."""
    if not isinstance(token, str):
        raise CredentialsError(f"{where}: a token must be a string")
    if not MIN_TOKEN <= len(token) <= MAX_TOKEN or not _TOKEN.fullmatch(token):
        raise CredentialsError(
            f"{where}: a token must be {MIN_TOKEN} to {MAX_TOKEN} visible ASCII characters without"
            f" spaces (this one has {len(token)} characters)"
        )
    return token


def check_secret(secret: object, where: str) -> str:
    if not isinstance(secret, str):
        raise CredentialsError(f"{where}: a secret must be a string")
    if not 1 <= len(secret) <= MAX_SECRET or not secret.isprintable():
        raise CredentialsError(
            f"{where}: a secret must be 1 to {MAX_SECRET} printable characters"
            f" (this one has {len(secret)} characters)"
        )
    return secret


def _list(value: object, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise CredentialsError(f"{where}: expected a list of strings")
    return value


def _table(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise CredentialsError(f"{where}: expected a table")
    return value


def _unknown(table: Mapping[str, Any], known: tuple[str, ...], where: str) -> None:
    for key in table:
        if key not in known:
            raise CredentialsError(f"{where}unknown key {key[:80]!r} (known: {', '.join(known)})")


class _Builder:
    """Collects grants and keys, refusing any token or access key listed twice."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.grants: dict[bytes, Grant] = {}
        self.token_at: dict[bytes, str] = {}
        self.sqs_keys: dict[str, SqsKey] = {}
        self.key_at: dict[str, str] = {}
        self.quotas: dict[str, Quota] = {}
        self.accounts: list[str] = []

    def fail(self, message: str) -> CredentialsError:
        return CredentialsError(f"{self.source}: {message}")

    def token(self, raw: object, where: str, grant: Grant) -> None:
        try:
            token = check_token(raw, where)
        except CredentialsError as error:
            raise self.fail(str(error)) from None
        key = digest(token)
        if key in self.token_at:
            raise self.fail(f"{where}: this token is also listed at {self.token_at[key]}; each token once")
        self.token_at[key] = where
        self.grants[key] = grant

    def sqs_key(self, access: str, raw_secret: object, where: str, account: str) -> None:
        if not ACCESS_KEY.fullmatch(access):
            raise self.fail(f"{where}: access key {access[:80]!r} must be 1 to 128 of A-Z a-z 0-9 _ . -")
        try:
            secret = check_secret(raw_secret, f"{where}.{access}")
        except CredentialsError as error:
            raise self.fail(str(error)) from None
        if access in self.key_at:
            raise self.fail(
                f"{where}: access key {access!r} is also listed at {self.key_at[access]}; each key once"
            )
        self.key_at[access] = where
        self.sqs_keys[access] = SqsKey(secret, account)

    def build(self) -> Credentials:
        return Credentials(self.grants, self.sqs_keys, self.quotas, tuple(self.accounts))


def parse_document(data: Mapping[str, Any], source: str, sqs_credentials: str = "") -> Credentials:
    """The credentials of a parsed TOML document (``source`` names it in errors), plus the
    ``--sqs-credentials`` pairs (each key acting as the account of its own name)."""
    b = _Builder(source)
    try:
        _unknown(data, _TOP_KEYS, "")
        for i, token in enumerate(_list(data.get("admin_tokens", []), "admin_tokens")):
            b.token(token, f"admin_tokens[{i}]", ADMIN)
        for name, raw in _table(data.get("accounts", {}), "accounts").items():
            where = f"accounts.{_key(name)}"
            check_account_name(name, where)
            account = _table(raw, where)
            _unknown(account, _ACCOUNT_KEYS, f"{where}: ")
            b.accounts.append(name)
            write, read = Grant(name, True), Grant(name, False)
            for i, token in enumerate(_list(account.get("tokens", []), f"{where}.tokens")):
                b.token(token, f"{where}.tokens[{i}]", write)
            for i, token in enumerate(_list(account.get("read_tokens", []), f"{where}.read_tokens")):
                b.token(token, f"{where}.read_tokens[{i}]", read)
            for access, secret in _table(account.get("sqs_keys", {}), f"{where}.sqs_keys").items():
                b.sqs_key(access, secret, f"{where}.sqs_keys", name)
            if "quotas" in account:
                b.quotas[name] = _quota(account["quotas"], f"{where}.quotas")
    except CredentialsError as error:
        message = str(error)
        raise error if message.startswith(source + ": ") else b.fail(message) from None
    for pair in filter(None, (p.strip() for p in sqs_credentials.split(","))):
        access, sep, secret = pair.partition(":")
        if not sep or not access or not secret:
            raise CredentialsError("--sqs-credentials: expected ACCESS_KEY:SECRET pairs separated by commas")
        b.source = "--sqs-credentials"
        b.sqs_key(access, secret, "--sqs-credentials", access)
    return b.build()


def _quota(raw: object, where: str) -> Quota:
    table = _table(raw, where)
    _unknown(table, Quota.KEYS, f"{where}: ")
    return Quota(**{key: parse_size(value, f"{where}.{key}") for key, value in table.items()})


def _key(name: str) -> str:
    """A TOML key as written in a dotted path (quoted unless bare)."""
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else repr(name[:80])


def load_document(path: str) -> dict[str, Any]:
    """The parsed TOML of the file (CredentialsError if it cannot be read or parsed)."""
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except OSError as error:
        raise CredentialsError(
            f"{path}: cannot read the credentials file: {error.strerror or error}"
        ) from None
    except tomllib.TOMLDecodeError as error:
        # tomllib's messages give the line and column, never the value
        raise CredentialsError(f"{path}: not valid TOML: {error}") from None
    except UnicodeDecodeError:
        raise CredentialsError(f"{path}: not valid UTF-8") from None


def load_credentials(path: str = "", sqs_credentials: str = "") -> Credentials:
    """The credentials of the file at ``path`` (none if empty) plus ``--sqs-credentials``."""
    data = load_document(path) if path else {}
    return parse_document(data, path or "--sqs-credentials", sqs_credentials)
