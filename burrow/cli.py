"""Command line: ``burrow serve``, ``bench``, ``proxy`` and the client commands. Parsing only."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import fields

from burrow import BUILD, __version__
from burrow.config import BYTE_SIZES, Settings, load_settings, parse_bytes

log = logging.getLogger("burrow")

#: Settings exposed as ``serve`` flags (flag name = field name with dashes).
SERVE_FLAGS = list(fields(Settings))
_DEFAULTS = Settings()


def _help_for(name: str) -> str:
    docs = {
        "host": "address to listen on",
        "port": "TCP port (0 = any free port)",
        "backend": "storage URL: memory://, sqlite:///rel.db, sqlite:////abs.db, sqlite://:memory:,"
        " redis://[:password@]host:port/db[?prefix=NAME], rediss://..., redis+cluster://host:port[,host:port]"
        " (default: a SQLite file in --data-dir)",
        "data_dir": "directory of the default SQLite store (default: $XDG_DATA_HOME/burrow"
        " or ~/.local/share/burrow)",
        "fsync": "SQLite durability: batch (creates synced before their 2xx, takes and deletes"
        " within --fsync-interval) | always (every write synced) | never",
        "fsync_interval": "seconds within which --fsync batch syncs an acknowledged take, hide or"
        " delete (0 = before its 2xx)",
        "default_ttl": "seconds a message lives when PUT gives no ttl (0 = forever)",
        "default_hide": "seconds a message is hidden when PUT gives no hide",
        "max_wait": "cap on the wait parameter (seconds)",
        "max_limit": "cap on items returned by one GET",
        "max_seconds": "largest ttl or hide accepted",
        "max_body_bytes": "largest request body; larger is 413",
        "max_response_bytes": "byte budget of one v1.0 list response (at least one message is always"
        " returned; see docs/api.md)",
        "max_header_bytes": "largest request head; larger is 431",
        "max_header_count": "most request headers; more is 431",
        "max_url_bytes": "longest request target; longer is 414",
        "header_timeout": "seconds to receive a request head (then 408)",
        "body_timeout": "seconds to receive a request body (then 408)",
        "idle_timeout": "seconds an idle keep-alive connection stays open",
        "write_timeout": "seconds unsent output may go unread (it must drain, or shrink by"
        " --max-unsent-bytes) before the connection is closed",
        "max_unsent_bytes": "unsent response bytes of one connection over which it stops reading"
        " until the client has read them",
        "max_inflight_bytes": "request and response bytes in flight across connections over which"
        " new requests get 503",
        "max_connections": "most concurrent connections; more get 503 (needs as many open files"
        " plus 128; refused at start if the hard limit is lower)",
        "max_connections_per_client": "most concurrent connections from one client IP address; more get 503",
        "clean_interval": "seconds between cleaner passes",
        "max_memory": "memory backend: bytes of messages it may hold, suffixes K M G (e.g. 512M); a"
        " create past it gets 507 (0 = a quarter of physical memory; per worker process)",
        "max_disk": "SQLite backend: bytes of database pages in use past which a create gets 507,"
        " suffixes K M G (0 = no limit but the disk's)",
        "log_level": "debug | info | warning | error",
        "credentials": "credentials file (TOML: admin tokens, accounts, tokens, SQS keys, quotas);"
        " turns auth on for both APIs; reloaded on SIGHUP (see burrow credentials --help)",
        "sqs_credentials": "SQS SigV4 credentials ACCESS:SECRET[,ACCESS2:SECRET2]; the access key is the"
        " account; set, auth is on for both APIs (v1.0 then needs a --credentials token); empty ="
        " accept any signature unless --credentials is set",
        "sqs_default_account": "account of SQS requests without an Authorization header",
        "region": "the AWS region SQS ARNs name; with --sqs-credentials, requests signed for"
        " another region are refused",
        "workers": "server processes: on a shared backend (redis) all on --port; on memory or"
        " SQLite each with its own store behind a router on --port",
        "servers": "burrow proxy: queue server base URLs, comma-separated",
        "subset_size": "servers one account's queues are spread over (two-step hashing)",
        "redis_wait_replicas": "Redis: acknowledge writes only once this many replicas have them (WAIT)",
        "redis_wait_timeout": "Redis: seconds to wait for --redis-wait-replicas before answering 503",
        "metrics": "on: count requests and messages, served at GET /metrics (Prometheus) | off: no"
        " counting, /metrics is 404",
        "metrics_top_queues": "queues whose depth /metrics reports: the deepest, scanned at scrape"
        " time (0 = none, at most 1000)",
        "backup_dir": "where POST /backup writes online SQLite backups (default: backups/ beside"
        " the database file)",
        "backup_keep": "online backups kept in --backup-dir (older burrow-*.db files are removed)",
        "access_log": "JSON-lines access log: a file path, - for stderr, empty for none (written off"
        " the request path; dropped and counted when it falls behind)",
    }
    default = getattr(_DEFAULTS, name)
    return f"{docs.get(name, name)} [default: {default!r}; env BURROW_{name.upper()}]"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="burrow",
        description="Burrow: a fast, durable, multi-tenant HTTP message-queue service "
        "(burrow v1.0 API). Settings come from defaults < --config TOML file < BURROW_* "
        "environment variables < flags.",
    )
    parser.add_argument("--version", action="version", version=f"burrow {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    serve = commands.add_parser("serve", help="run the queue server")
    serve.add_argument(
        "--config", metavar="FILE", help="TOML file of settings (keys as below, or a [burrow] table)"
    )
    for f in SERVE_FLAGS:
        kind: Callable[[str], object] = {"int": int, "float": float}.get(str(f.type), str)
        if f.name in BYTE_SIZES:
            kind = parse_bytes
        serve.add_argument(
            "--" + f.name.replace("_", "-"), dest=f.name, type=kind, default=None, help=_help_for(f.name)
        )

    bench = commands.add_parser("bench", help="run the benchmark suite (see benchmarks/README.md)")
    bench.add_argument("args", nargs="*", help="arguments for the benchmark runner (burrow bench --help)")
    # These have parsers of their own; listed here for --help, dispatched in main().
    commands.add_parser("proxy", help="route requests over several servers (burrow proxy --help)")
    commands.add_parser(
        "credentials", help="edit a credentials file: accounts, tokens, SQS keys (burrow credentials --help)"
    )
    for name, summary in CLIENT_COMMANDS.items():
        commands.add_parser(name, help=f"{summary} (burrow {name} --help)")
    return parser


#: The command-line client's commands (burrow.client.cli), each with its summary.
CLIENT_COMMANDS: dict[str, str] = {
    "put": "client: create or replace a message",
    "get": "client: list messages, or get one",
    "take": "client: take messages (get and hide)",
    "update": "client: change ttl/hide of messages",
    "delete": "client: delete messages, or one",
    "queues": "client: list an account's queues",
    "accounts": "client: list accounts",
    "watch": "client: print messages as they arrive (long polls)",
}

#: The 2011 burrow client's command names, as aliases of ours.
CLIENT_ALIASES: dict[str, str] = {
    "create_message": "put",
    "get_messages": "get",
    "get_message": "get",
    "update_messages": "update",
    "update_message": "update",
    "delete_messages": "delete",
    "delete_message": "delete",
    "get_queues": "queues",
    "delete_queues": "delete",
    "get_accounts": "accounts",
    "delete_accounts": "delete",
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:
        # The benchmark has its own parser; hand it everything after "bench".
        from burrow.bench.runner import main as bench_main

        return bench_main(argv[1:])
    if argv[:1] == ["proxy"]:
        from burrow.router.cli import main as proxy_main

        return proxy_main(argv[1:])
    if argv[:1] == ["credentials"]:
        from burrow.auth.manage import main as credentials_main

        return credentials_main(argv[1:])
    if argv and (argv[0] in CLIENT_COMMANDS or argv[0] in CLIENT_ALIASES):
        from burrow.client.cli import main as client_main

        return client_main(argv[0], argv[1:])
    args = build_parser().parse_args(argv)
    overrides = {f.name: getattr(args, f.name) for f in SERVE_FLAGS}
    try:
        settings = load_settings(overrides, config_file=args.config)
    except (OSError, ValueError) as error:
        print(f"burrow: {error}", file=sys.stderr)
        return 2
    return serve(settings)


def serve(settings: Settings, *, reuse_port: bool = False) -> int:
    """Run the server until SIGINT or SIGTERM; return the process exit status.

    ``settings.workers`` > 1 runs that many server processes under a supervisor
    (:mod:`burrow.supervisor`) instead. ``reuse_port`` binds with SO_REUSEPORT: the
    supervisor's workers on a shared store all listen on one port.
    """
    from burrow.http.server import loop_factory, run

    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if settings.workers > 1:
        from burrow.supervisor import supervise

        return supervise(settings)
    try:
        return run(_serve(settings, loop_factory()[0], reuse_port=reuse_port))
    except StartupError as error:
        log.error("%s", error)
        return 1


class StartupError(Exception):
    pass


async def _serve(settings: Settings, loop_name: str, *, reuse_port: bool = False) -> int:
    import asyncio  # here, not at the top: the client commands never need an event loop
    import signal

    from burrow.api.routes import App
    from burrow.auth import CredentialsError
    from burrow.auth.guard import warn_if_open
    from burrow.backends import open_backend
    from burrow.engine import Engine
    from burrow.http.server import ResourceLimitError, ensure_open_files, start_server

    try:
        ensure_open_files(settings.max_connections)  # before opening the store
    except ResourceLimitError as error:
        raise StartupError(str(error)) from error
    url = settings.backend_url()
    try:
        backend = open_backend(url, settings)
        engine = Engine(backend, settings)
        await engine.start()
    except Exception as error:
        raise StartupError(f"cannot open backend {url}: {error}") from error
    try:
        app = App(engine)
    except CredentialsError as error:  # names the file and the key, never a secret
        await engine.stop()
        raise StartupError(f"cannot use the credentials: {error}") from error
    except OSError as error:
        await engine.stop()
        raise StartupError(f"cannot open the access log {settings.access_log}: {error}") from error
    try:
        http = await start_server(app, settings, reuse_port=reuse_port)
    except OSError as error:
        await engine.stop()
        raise StartupError(f"cannot listen on {settings.host}:{settings.port}: {error}") from error
    app.serving(http)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    guard = app.guard
    if guard is not None:
        loop.add_signal_handler(signal.SIGHUP, guard.reload)  # a bad file keeps the old credentials
    else:
        loop.add_signal_handler(signal.SIGHUP, log.info, "SIGHUP: auth is off, no credentials to reload")
    warn_if_open(settings, http.host)
    log.info(
        "burrow %s listening on http://%s:%d backend=%s loop=%s build=%s",
        __version__,
        http.host,
        http.port,
        url,
        loop_name,
        BUILD,
    )
    await stop.wait()
    log.info("shutting down")
    engine.drain()  # parked long polls are answered (404 / empty receive) before connections close
    await http.close()
    await engine.stop()
    log.info("stopped")
    return 0
