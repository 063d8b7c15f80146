"""``burrow proxy``: parse the settings that apply to a router, then route until SIGINT or SIGTERM.

The flags are the ``burrow serve`` flags that mean something to a router (generated from the
same Settings fields, with the same help), plus ``--servers`` and ``--subset-size``; a
``--config`` file shared with the servers works as it is (settings a router has no use for,
such as ``backend``, are accepted and ignored), and its ``servers`` may be a TOML list.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from typing import Final

from burrow import __version__
from burrow.cli import SERVE_FLAGS, StartupError, _help_for
from burrow.config import Settings, load_settings

log = logging.getLogger("burrow")

#: The settings a router uses: where it listens, its HTTP limits and timeouts, what it
#: routes to, ``max_wait`` (how long a forwarded long poll may take), ``max_limit`` and
#: ``max_response_bytes`` (merged lists, capped and bounded as on a server), and the SQS
#: settings that say whose a request is. ``sqs_credentials`` is
#: accepted so one file can configure servers and routers; signatures are verified by the
#: servers, which get them untouched.
ROUTER_SETTINGS: Final = (
    "host",
    "port",
    "servers",
    "subset_size",
    "max_wait",
    "max_limit",
    "max_body_bytes",
    "max_response_bytes",
    "max_header_bytes",
    "max_header_count",
    "max_url_bytes",
    "header_timeout",
    "body_timeout",
    "idle_timeout",
    "write_timeout",
    "max_unsent_bytes",
    "max_inflight_bytes",
    "max_connections",
    "max_connections_per_client",
    "log_level",
    "sqs_credentials",
    "sqs_default_account",
    "region",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="burrow proxy",
        description="Route the burrow v1.0 and SQS APIs over several queue servers: each queue lives on"
        " one server (two-step hashing of account and queue), account-wide and server-wide requests"
        " are merged. Settings come from defaults < --config TOML file < BURROW_* environment"
        " variables < flags. See docs/operations.md, Scaling out.",
    )
    parser.add_argument(
        "--config", metavar="FILE", help="TOML file of settings (keys as below, or a [burrow] table)"
    )
    for f in SERVE_FLAGS:
        if f.name in ROUTER_SETTINGS:
            kind = {"int": int, "float": float}.get(str(f.type), str)
            parser.add_argument(
                "--" + f.name.replace("_", "-"), dest=f.name, type=kind, default=None, help=_help_for(f.name)
            )
    return parser


def main(argv: list[str]) -> int:
    """Entry point of ``burrow proxy ARGS``; returns the exit status."""
    args = build_parser().parse_args(argv)
    overrides = {name: getattr(args, name) for name in ROUTER_SETTINGS}
    try:
        settings = load_settings(overrides, config_file=args.config)
        if not settings.server_urls():
            raise ValueError("no servers to route to: give --servers http://host:port,... (or servers=)")
    except (OSError, ValueError) as error:
        print(f"burrow proxy: {error}", file=sys.stderr)
        return 2
    return proxy(settings)


def proxy(settings: Settings) -> int:
    """Run the router until SIGINT or SIGTERM; return the exit status."""
    from burrow.http.server import loop_factory, run

    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        return run(_proxy(settings, loop_factory()[0]))
    except StartupError as error:
        log.error("%s", error)
        return 1


async def _proxy(settings: Settings, loop_name: str) -> int:
    from burrow.http.server import ResourceLimitError, ensure_open_files, start_server
    from burrow.router.app import Router

    try:
        router = Router(settings)
    except ValueError as error:
        raise StartupError(f"bad --servers: {error}") from error
    try:  # a descriptor per client connection, and per pooled connection to each server
        ensure_open_files(settings.max_connections + sum(u.limit for u in router.ordered))
        http = await start_server(router, settings)
    except ResourceLimitError as error:
        raise StartupError(str(error)) from error
    except OSError as error:
        raise StartupError(f"cannot listen on {settings.host}:{settings.port}: {error}") from error
    await router.start(http.host, http.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    log.info(
        "burrow %s listening on http://%s:%d router servers=%s subset_size=%d loop=%s",
        __version__,
        http.host,
        http.port,
        ",".join(router.placement.servers),
        settings.subset_size,
        loop_name,
    )
    await stop.wait()
    log.info("shutting down")
    await http.close()  # running requests (long polls too) get a grace period to finish
    await router.close()
    log.info("stopped")
    return 0
