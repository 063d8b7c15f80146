"""``burrow credentials``: add tenants and mint or revoke tokens and SQS keys in a credentials file.

Every change is checked as the server would load it (:func:`burrow.auth.credentials.
parse_document`) before it is written, and written atomically: a temporary file (mode 0600)
in the same directory, synced, then renamed over the old one, so a server reloading at the
same moment reads the old file or the new one, never half of one. Everything else in the file
(quotas tables, other accounts) is kept; comments are not (TOML is re-written by tomli-w).
New secrets come from :func:`secrets.token_urlsafe` and are printed once; ``list`` prints
counts, never a secret. A running server applies the file on SIGHUP.

Exit status: 0 done; 1 the account, token or key named does not exist; 2 a usage error or a
file that cannot be used.
"""

from __future__ import annotations

import argparse
import os
import secrets
import string
import sys
import tempfile
from collections.abc import Sequence
from typing import Any, Final, NoReturn

import tomli_w

from burrow.auth.credentials import (
    CredentialsError,
    check_account_name,
    check_token,
    load_document,
    parse_document,
)

__all__ = ["main", "mint_token", "write_document"]

EXIT_OK: Final = 0
EXIT_MISSING: Final = 1
EXIT_USAGE: Final = 2
#: What to tell the user after each change.
APPLY: Final = "send SIGHUP to the server to apply it (kill -HUP <pid>)"
_KEY_CHARS: Final = string.ascii_uppercase + string.digits


class _Missing(Exception):
    """The account, token or key named does not exist (exit 1)."""


class _Usage(Exception):
    """A command line or file that cannot be used (exit 2)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _Usage(f"{message} (see burrow credentials --help)")


def mint_token() -> str:
    """A new token: 32 random bytes, URL-safe base64 (43 characters)."""
    return secrets.token_urlsafe(32)


def _mint_sqs_key() -> tuple[str, str]:
    """A new (access key, secret) pair shaped like AWS's: ``BKIA`` + 16, and 40 characters."""
    access = "BKIA" + "".join(secrets.choice(_KEY_CHARS) for _ in range(16))
    return access, secrets.token_urlsafe(30)


def write_document(path: str, data: dict[str, Any]) -> None:
    """Check ``data`` as the server would, then replace ``path`` with it atomically (mode 0600)."""
    parse_document(data, path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, temp = tempfile.mkstemp(prefix=".credentials-", suffix=".tmp", dir=directory)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(tomli_w.dumps(data).encode("utf-8"))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(temp, path)
    except BaseException:
        os.unlink(temp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="burrow credentials",
        description="Edit a credentials file (burrow serve --credentials FILE). Changes are written"
        " atomically (mode 0600); a running server applies them on SIGHUP.",
    )
    parser.add_argument(
        "--file",
        default=os.environ.get("BURROW_CREDENTIALS"),
        help="the credentials file [default: $BURROW_CREDENTIALS]",
    )
    commands = parser.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser)
    commands.required = True
    add = commands.add_parser("add-account", help="add an account (created with the file if missing)")
    add.add_argument("name")
    mint = commands.add_parser("mint-token", help="mint a v1.0 token of an account and print it")
    mint.add_argument("name")
    mint.add_argument("--read-only", action="store_true", help="a token that may only GET")
    commands.add_parser("mint-admin-token", help="mint a server-wide admin token and print it")
    revoke = commands.add_parser(
        "revoke-token", help="remove a token (admin or account; - reads it from stdin)"
    )
    revoke.add_argument("token")
    key = commands.add_parser("mint-sqs-key", help="mint an SQS access key and secret of an account")
    key.add_argument("name")
    unkey = commands.add_parser("revoke-sqs-key", help="remove an SQS access key")
    unkey.add_argument("key")
    remove = commands.add_parser("remove-account", help="remove an account and all its credentials")
    remove.add_argument("name")
    commands.add_parser("list", help="accounts and how many tokens and keys each has (no secrets)")
    return parser


def _accounts(data: dict[str, Any]) -> dict[str, Any]:
    accounts = data.setdefault("accounts", {})
    if not isinstance(accounts, dict):
        raise _Usage("accounts must be a table")
    return accounts


def _account(data: dict[str, Any], name: str) -> dict[str, Any]:
    account = _accounts(data).get(name)
    if account is None:
        raise _Missing(f"no account {name!r} in the file (add it with add-account)")
    if not isinstance(account, dict):
        raise _Usage(f"accounts.{name} must be a table")
    return account


def _list(table: dict[str, Any], key: str) -> list[Any]:
    value = table.setdefault(key, [])
    if not isinstance(value, list):
        raise _Usage(f"{key} must be a list")
    return value


def _run(args: argparse.Namespace, out: Any) -> None:
    path: str | None = args.file
    if not path:
        raise _Usage("no credentials file: give --file PATH or set BURROW_CREDENTIALS")
    creating = args.action in ("add-account", "mint-admin-token") and not os.path.exists(path)
    data: dict[str, Any] = {} if creating else load_document(path)
    parse_document(data, path)  # a file the server would refuse is not edited
    action = args.action
    if action == "list":
        admins = data.get("admin_tokens", [])
        out.write(f"admin tokens: {len(admins)}\n")
        for name, account in sorted(data.get("accounts", {}).items()):
            out.write(
                f"{name}\ttokens={len(account.get('tokens', []))}"
                f"\tread_tokens={len(account.get('read_tokens', []))}"
                f"\tsqs_keys={len(account.get('sqs_keys', {}))}"
                f"\tquotas={'yes' if 'quotas' in account else 'no'}\n"
            )
        return
    if action == "add-account":
        check_account_name(args.name, "add-account")
        accounts = _accounts(data)
        if args.name in accounts:
            raise _Usage(f"account {args.name!r} already exists")
        accounts[args.name] = {"tokens": [], "read_tokens": [], "sqs_keys": {}}
        write_document(path, data)
        out.write(f"added account {args.name!r}; {APPLY}\n")
    elif action == "remove-account":
        _account(data, args.name)
        del _accounts(data)[args.name]
        write_document(path, data)
        out.write(f"removed account {args.name!r} and its credentials; {APPLY}\n")
    elif action == "mint-token":
        token = mint_token()
        _list(_account(data, args.name), "read_tokens" if args.read_only else "tokens").append(token)
        write_document(path, data)
        kind = "read-only token" if args.read_only else "token"
        sys.stderr.write(f"minted a {kind} of {args.name!r}; {APPLY}\n")
        out.write(token + "\n")
    elif action == "mint-admin-token":
        token = mint_token()
        _list(data, "admin_tokens").append(token)
        write_document(path, data)
        sys.stderr.write(f"minted an admin token; {APPLY}\n")
        out.write(token + "\n")
    elif action == "revoke-token":
        token = sys.stdin.readline().strip() if args.token == "-" else args.token
        check_token(token, "revoke-token")
        holders = [data] + [a for a in _accounts(data).values() if isinstance(a, dict)]
        for table in holders:
            for key in ("admin_tokens",) if table is data else ("tokens", "read_tokens"):
                tokens = table.get(key, [])
                if token in tokens:
                    tokens.remove(token)
                    write_document(path, data)
                    out.write(f"revoked the token; {APPLY}\n")
                    return
        raise _Missing("no such token in the file")
    elif action == "mint-sqs-key":
        account = _account(data, args.name)
        keys = account.setdefault("sqs_keys", {})
        access, secret = _mint_sqs_key()
        keys[access] = secret
        write_document(path, data)
        sys.stderr.write(f"minted an SQS key of {args.name!r}; {APPLY}\n")
        out.write(f"access_key={access}\nsecret={secret}\n")
    elif action == "revoke-sqs-key":
        for account in _accounts(data).values():
            keys = account.get("sqs_keys", {}) if isinstance(account, dict) else {}
            if args.key in keys:
                del keys[args.key]
                write_document(path, data)
                out.write(f"revoked SQS key {args.key}; {APPLY}\n")
                return
        raise _Missing(f"no SQS key {args.key!r} in the file")


def main(argv: Sequence[str], out: Any = None) -> int:
    """``burrow credentials ARGS``; the exit status."""
    out = sys.stdout if out is None else out
    try:
        _run(_parser().parse_args(list(argv)), out)
    except _Missing as error:
        print(f"burrow credentials: {error}", file=sys.stderr)
        return EXIT_MISSING
    except (_Usage, CredentialsError, OSError) as error:
        print(f"burrow credentials: {error}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK
