"""The command-line client: ``burrow put|get|take|update|delete|queues|accounts|watch`` and the
2011 client's command names (``burrow.cli.CLIENT_ALIASES``), over :class:`burrow.Client`.

Output: ``--json`` prints JSON lines, one object per message or name (a stream, so ``watch``
and lists look alike and ``jq`` reads either). Otherwise a table on a terminal, and on a pipe
plain tab-separated lines without a header. Bodies that are UTF-8 are printed as text with
control characters escaped (``\\n``, ``\\t``, ``\\\\``, ``\\xNN``); others as ``base64:...``
(in JSON: base64 with ``"body_encoding": "base64"``, as the API writes them).

Exit status (:data:`EXIT_OK` ...): 0 done; 1 nothing matched (the server's 404: no such
message, an empty queue, nothing to take); 2 usage error, or a request the server refused as
bad (400); 3 any other failure (server error, unreachable, timeout). A failure prints one line
on stderr. ``watch`` runs until Ctrl-C and then exits 0.
"""

from __future__ import annotations

import argparse
import base64
import os
import sys
from collections.abc import Callable, Sequence
from typing import Final, NoReturn, TextIO

import orjson

from burrow.client.api import DEFAULT_URL, Message, MessageAttributes, describe
from burrow.client.sync_client import Client
from burrow.client.wire import ProtocolError
from burrow.core.errors import BadRequest, BurrowError, NotFound

__all__ = ["EXIT_ERROR", "EXIT_NOT_FOUND", "EXIT_OK", "EXIT_USAGE", "main"]

EXIT_OK: Final = 0
EXIT_NOT_FOUND: Final = 1
EXIT_USAGE: Final = 2
EXIT_ERROR: Final = 3
#: Largest body ``put`` reads from stdin (the server's own limit, ``--max-body-bytes``, is lower).
MAX_STDIN_BODY: Final = 64 * 1024 * 1024

#: Control characters as escapes, so one message is one line and a body cannot drive the terminal.
_ESCAPES: Final = {
    **{c: f"\\x{c:02x}" for c in (*range(32), *range(127, 160))},
    ord("\\"): "\\\\",
    ord("\t"): "\\t",
    ord("\n"): "\\n",
    ord("\r"): "\\r",
}
_BASE64_MARK: Final = "base64:"


class Usage(Exception):
    """A command line that cannot run (exit status 2)."""


class Nothing(Exception):
    """Nothing matched (exit status 1); the message says what."""


class _Parser(argparse.ArgumentParser):
    """argparse that raises :class:`Usage` instead of exiting, so main() returns a status."""

    def error(self, message: str) -> NoReturn:
        raise Usage(f"{message} (see burrow {self.prog.split()[-1]} --help)")


# -- command lines -----------------------------------------------------------------


def _parser(typed: str, command: str) -> argparse.ArgumentParser:
    parser = _Parser(prog=f"burrow {typed}", description=_DESCRIPTIONS[typed])
    parser.add_argument(
        "--url",
        default=os.environ.get("BURROW_URL", DEFAULT_URL),
        help="server base URL; several, comma-separated, for client-side hashing"
        f" [default: $BURROW_URL or {DEFAULT_URL}]",
    )
    if typed != "delete_accounts" and command != "accounts":
        parser.add_argument(
            "--account", default=os.environ.get("BURROW_ACCOUNT"), help="account [default: $BURROW_ACCOUNT]"
        )
    parser.add_argument(
        "--token",
        default=os.environ.get("BURROW_TOKEN"),
        help="token for a server with auth on (sent as Authorization: Bearer) [default: $BURROW_TOKEN]",
    )
    parser.add_argument("--json", action="store_true", help="print JSON lines (one object per item)")
    parser.add_argument(
        "--timeout", type=float, default=30.0, help="seconds to wait for a response (plus --wait)"
    )
    parser.add_argument(
        "--subset-size", type=int, default=3, help="servers per account when --url lists several [default: 3]"
    )
    one_id = {"get_message", "update_message", "delete_message"}
    many = {"get_messages", "update_messages", "delete_messages"}
    if command == "put":
        parser.add_argument("queue")
        parser.add_argument("id")
        parser.add_argument("body", nargs="?", help="message body [default: read from stdin]")
        parser.add_argument("--ttl", type=int, help="seconds until it expires (0 = never) [server default]")
        parser.add_argument("--hide", type=int, help="seconds it stays hidden [server default]")
    elif typed in ("delete_queues", "delete_accounts"):
        nargs = "*" if typed == "delete_queues" else "+"
        name = "queues" if typed == "delete_queues" else "accounts"
        parser.add_argument(name, nargs=nargs, metavar=name[:-1].upper())
    elif command in ("get", "update", "delete", "take", "watch"):
        parser.add_argument("queue")
        if command in ("get", "update", "delete"):
            if typed in one_id:
                parser.add_argument("id")
            elif typed not in many:
                parser.add_argument("id", nargs="?", help="one message (else: the matched messages)")
        if command == "take":
            parser.add_argument("--hide", type=int, required=True, help="seconds to hide what is taken")
            parser.add_argument("--limit", type=int, default=1, help="most messages to take [default: 1]")
            parser.add_argument("--wait", type=int, default=0, help="seconds to wait for a message")
        elif command == "watch":
            parser.add_argument("--marker", help="start after this message id [default: the start]")
            parser.add_argument("--match-hidden", action="store_true", help="include hidden messages")
            parser.add_argument(
                "--wait", type=int, default=20, help="seconds of each long poll [default: 20]"
            )
        elif typed not in one_id:
            parser.add_argument("--limit", type=int, help="most messages to match")
            parser.add_argument("--marker", help="only messages after this id")
            parser.add_argument("--match-hidden", action="store_true", help="include hidden messages")
            parser.add_argument("--wait", type=int, default=0, help="seconds to wait for a match")
        if command == "update":
            parser.add_argument("--ttl", type=int, help="new ttl (seconds; 0 = never)")
            parser.add_argument("--hide", type=int, help="new hide (seconds; 0 = visible)")
        if command == "get" and typed not in many:
            parser.add_argument("--raw", action="store_true", help="with ID: print only the body, as it is")
    elif command in ("queues", "accounts"):
        parser.add_argument("--limit", type=int, help="most names to list [default: one page]")
        parser.add_argument("--marker", help="only names after this one")
    return parser


_DESCRIPTIONS: Final = {
    "put": "Create or replace message ID in QUEUE.",
    "get": "List the messages of QUEUE, or get message ID.",
    "take": "Take messages: get them and hide them for --hide seconds (a worker deletes each when done).",
    "update": "Change ttl and/or hide of message ID, or of the matched messages.",
    "delete": "Delete message ID, or the matched messages (visible ones unless --match-hidden).",
    "queues": "List the queues of the account.",
    "accounts": "List the accounts.",
    "watch": "Print the queue's messages, then each new one as it arrives, until Ctrl-C.",
    "create_message": "Create or replace message ID in QUEUE (= burrow put).",
    "get_messages": "List the messages of QUEUE (= burrow get QUEUE).",
    "get_message": "Get message ID of QUEUE (= burrow get QUEUE ID).",
    "update_messages": "Change ttl and/or hide of the matched messages (= burrow update QUEUE).",
    "update_message": "Change ttl and/or hide of message ID (= burrow update QUEUE ID).",
    "delete_messages": "Delete the matched messages of QUEUE (= burrow delete QUEUE).",
    "delete_message": "Delete message ID (= burrow delete QUEUE ID).",
    "get_queues": "List the queues of the account (= burrow queues).",
    "delete_queues": "Delete the named queues of the account with all their messages, hidden ones"
    " too; without names, every queue of the account.",
    "get_accounts": "List the accounts (= burrow accounts).",
    "delete_accounts": "Delete the named accounts with all their queues (at least one name: there is"
    " no command that empties a whole server).",
}


# -- output ------------------------------------------------------------------------


def _text(value: str) -> str:
    return value.translate(_ESCAPES)


def _body(body: bytes) -> str:
    """A body on one line: escaped text, or ``base64:...`` (a text body that itself starts with
    that mark has its first character escaped, so the mark always means base64)."""
    try:
        text = _text(body.decode("utf-8"))
    except UnicodeDecodeError:
        return _BASE64_MARK + base64.b64encode(body).decode("ascii")
    return "\\x62" + text[1:] if text.startswith(_BASE64_MARK) else text


def _message_json(m: Message) -> dict[str, object]:
    item: dict[str, object] = {"id": m.id, "ttl": m.ttl, "hide": m.hide}
    try:
        item["body"] = m.body.decode("utf-8")
    except UnicodeDecodeError:
        item["body"] = base64.b64encode(m.body).decode("ascii")
        item["body_encoding"] = "base64"
    return item


class Output:
    """Where results go: JSON lines, a table (a terminal) or tab-separated lines (a pipe)."""

    def __init__(self, json: bool, stream: TextIO) -> None:
        self.json, self.stream = json, stream
        self.table = not json and stream.isatty()

    def line(self, text: str) -> None:
        self.stream.write(text + "\n")

    def record(self, item: dict[str, object], text: str) -> None:
        self.line(orjson.dumps(item).decode() if self.json else text)

    def messages(self, messages: list[Message]) -> None:
        if self.json:
            for m in messages:
                self.line(orjson.dumps(_message_json(m)).decode())
        elif self.table:
            rows = [(_text(m.id), str(m.ttl), str(m.hide), _body(m.body)) for m in messages]
            self._table(("ID", "TTL", "HIDE", "BODY"), rows)
        else:
            for m in messages:
                self.message(m)

    def message(self, m: Message) -> None:
        """One message as one line (a list on a pipe, and ``watch`` everywhere)."""
        if self.json:
            self.line(orjson.dumps(_message_json(m)).decode())
        else:
            self.line(f"{_text(m.id)}\t{m.ttl}\t{m.hide}\t{_body(m.body)}")
        self.stream.flush()

    def attributes(self, a: MessageAttributes) -> None:
        if self.json:
            self.line(orjson.dumps({"id": a.id, "ttl": a.ttl, "hide": a.hide}).decode())
        elif self.table:
            self._table(("ID", "TTL", "HIDE"), [(_text(a.id), str(a.ttl), str(a.hide))])
        else:
            self.line(f"{_text(a.id)}\t{a.ttl}\t{a.hide}")

    def names(self, names: list[str]) -> None:
        for name in names:
            self.record({"id": name}, _text(name))

    def _table(self, header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> None:
        """Aligned columns; the last one is cut to the terminal's width."""
        width = os.get_terminal_size(self.stream.fileno()).columns if self.table else 200
        cols = [min(40, max(len(r[i]) for r in [header, *rows])) for i in range(len(header) - 1)]
        room = max(10, width - sum(cols) - 2 * len(cols))
        for row in [header, *rows]:
            cells = [_fit(cell, cols[i]).ljust(cols[i]) for i, cell in enumerate(row[:-1])]
            self.line("  ".join([*cells, _fit(row[-1], room)]).rstrip())


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "\u2026"


# -- commands ----------------------------------------------------------------------


def _account(opts: argparse.Namespace) -> str:
    if not opts.account:
        raise Usage("no account: give --account or set BURROW_ACCOUNT")
    return str(opts.account)


#: What a command line without these options means (not every command has each of them).
_ABSENT: Final[dict[str, object]] = {
    "id": None,
    "limit": None,
    "marker": None,
    "match_hidden": False,
    "wait": 0,
    "raw": False,
}


def _only_for_many(opts: argparse.Namespace) -> None:
    given = [
        f"--{k.replace('_', '-')}" for k in ("limit", "marker", "match_hidden", "wait") if getattr(opts, k)
    ]
    if opts.id is not None and given:
        raise Usage(f"{', '.join(given)} select matched messages; they do not go with an ID")


def _put(client: Client, opts: argparse.Namespace, out: Output) -> int:
    if opts.body is not None:
        body = opts.body.encode("utf-8", "surrogateescape")
    else:
        body = sys.stdin.buffer.read(MAX_STDIN_BODY + 1)
        if len(body) > MAX_STDIN_BODY:
            raise Usage(f"the body on stdin is larger than {MAX_STDIN_BODY} bytes")
    created = client.queue(_account(opts), opts.queue).put(opts.id, body, opts.ttl, opts.hide)
    out.record(
        {"id": opts.id, "created": created}, f"{'created' if created else 'replaced'} {_text(opts.id)}"
    )
    return EXIT_OK


def _get(client: Client, opts: argparse.Namespace, out: Output) -> int:
    queue = client.queue(_account(opts), opts.queue)
    _only_for_many(opts)
    if opts.id is not None:
        message = queue.get(opts.id)
        if opts.raw:
            out.stream.flush()
            sys.stdout.buffer.write(message.body)
            sys.stdout.buffer.flush()
        else:
            out.messages([message])
        return EXIT_OK
    if opts.raw:
        raise Usage("--raw prints one message's body: give an ID")
    messages = queue.list(opts.limit, opts.marker, opts.match_hidden, opts.wait)
    if not messages:
        raise Nothing(f"no matching messages in queue {opts.queue!r}")
    out.messages(messages)
    return EXIT_OK


def _take(client: Client, opts: argparse.Namespace, out: Output) -> int:
    messages = client.queue(_account(opts), opts.queue).take(opts.limit, opts.hide, opts.wait)
    if not messages:
        raise Nothing(f"no visible messages to take in queue {opts.queue!r}")
    out.messages(messages)
    return EXIT_OK


def _update(client: Client, opts: argparse.Namespace, out: Output) -> int:
    queue = client.queue(_account(opts), opts.queue)
    if opts.ttl is None and opts.hide is None:
        raise Usage("give --ttl and/or --hide")
    _only_for_many(opts)
    if opts.id is not None:
        out.attributes(queue.update(opts.id, ttl=opts.ttl, hide=opts.hide))
        return EXIT_OK
    count = queue.update(
        ttl=opts.ttl,
        hide=opts.hide,
        limit=opts.limit,
        marker=opts.marker,
        match_hidden=opts.match_hidden,
        wait=opts.wait,
    )
    if not count:
        raise Nothing(f"no matching messages in queue {opts.queue!r}")
    out.record({"updated": count}, f"updated {count} message{'s' * (count != 1)}")
    return EXIT_OK


def _delete(client: Client, opts: argparse.Namespace, out: Output) -> int:
    if opts.typed == "delete_queues":
        return _delete_queues(client, opts, out)
    if opts.typed == "delete_accounts":
        return _delete_accounts(client, opts, out)
    queue = client.queue(_account(opts), opts.queue)
    _only_for_many(opts)
    if opts.id is not None:
        queue.delete(opts.id)
        out.record({"id": opts.id, "deleted": True}, f"deleted {_text(opts.id)}")
        return EXIT_OK
    count = queue.delete(limit=opts.limit, marker=opts.marker, match_hidden=opts.match_hidden, wait=opts.wait)
    if not count:
        raise Nothing(f"no matching messages in queue {opts.queue!r}")
    out.record({"deleted": count}, f"deleted {count} message{'s' * (count != 1)}")
    return EXIT_OK


def _delete_queues(client: Client, opts: argparse.Namespace, out: Output) -> int:
    account = client.account(_account(opts))
    if not opts.queues:
        count = account.delete()
        if not count:
            raise Nothing(f"account {account.name!r} has no queues")
        out.record({"account": account.name, "queues": count}, f"deleted {count} queue{'s' * (count != 1)}")
        return EXIT_OK
    found = 0
    for name in opts.queues:
        messages = account.queue(name).delete(match_hidden=True)
        if messages:
            found += 1
            out.record(
                {"id": name, "messages": messages}, f"deleted queue {_text(name)} ({messages} messages)"
            )
    if not found:
        raise Nothing("no such queues")
    return EXIT_OK


def _delete_accounts(client: Client, opts: argparse.Namespace, out: Output) -> int:
    found = 0
    for name in opts.accounts:
        queues = client.account(name).delete()
        if queues:
            found += 1
            out.record({"id": name, "queues": queues}, f"deleted account {_text(name)} ({queues} queues)")
    if not found:
        raise Nothing("no such accounts")
    return EXIT_OK


def _queues(client: Client, opts: argparse.Namespace, out: Output) -> int:
    names = client.account(_account(opts)).queues(opts.limit, opts.marker)
    if not names:
        raise Nothing(f"no queues in account {opts.account!r}")
    out.names(names)
    return EXIT_OK


def _accounts(client: Client, opts: argparse.Namespace, out: Output) -> int:
    names = client.accounts(opts.limit, opts.marker)
    if not names:
        raise Nothing("no accounts")
    out.names(names)
    return EXIT_OK


def _watch(client: Client, opts: argparse.Namespace, out: Output) -> int:
    queue = client.queue(_account(opts), opts.queue)
    for message in queue.watch(opts.marker, opts.wait, opts.match_hidden):
        out.message(message)
    return EXIT_OK  # not reached: watch ends with Ctrl-C


_COMMANDS: Final[dict[str, Callable[[Client, argparse.Namespace, Output], int]]] = {
    "put": _put,
    "get": _get,
    "take": _take,
    "update": _update,
    "delete": _delete,
    "queues": _queues,
    "accounts": _accounts,
    "watch": _watch,
}


def main(command: str, args: list[str]) -> int:
    """Run one client command (``command`` as typed, an alias or not); the exit status."""
    from burrow.cli import CLIENT_ALIASES  # here: burrow.cli imports this module lazily

    base = CLIENT_ALIASES.get(command, command)
    if base not in _COMMANDS:
        print(f"burrow: unknown client command {command!r}", file=sys.stderr)
        return EXIT_USAGE
    try:
        try:
            opts = _parser(command, base).parse_args(args)
        except SystemExit as exit:  # --help
            return exit.code if isinstance(exit.code, int) else EXIT_OK
        for name, value in _ABSENT.items():
            opts.__dict__.setdefault(name, value)
        opts.typed = command
        out = Output(opts.json, sys.stdout)
        with Client(opts.url, subset_size=opts.subset_size, timeout=opts.timeout, token=opts.token) as client:
            status = _COMMANDS[base](client, opts, out)
        sys.stdout.flush()
        return status
    except KeyboardInterrupt:
        return EXIT_OK if base == "watch" else 130
    except BrokenPipeError:  # a reader like `head` went away: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except Nothing as error:
        return _fail(EXIT_NOT_FOUND, str(error))
    except NotFound as error:
        return _fail(EXIT_NOT_FOUND, describe(error))
    except (Usage, BadRequest, ValueError) as error:
        return _fail(EXIT_USAGE, str(error) if not isinstance(error, BurrowError) else describe(error))
    except (BurrowError, OSError, EOFError, ProtocolError) as error:
        return _fail(EXIT_ERROR, describe(error))


def _fail(status: int, message: str) -> int:
    print(f"burrow: {message}", file=sys.stderr)
    return status
