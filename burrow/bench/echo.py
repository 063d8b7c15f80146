"""Run the echo baseline server as its own process: ``python -m burrow.bench.echo --port 0``.

The server is :mod:`burrow.http.echo` (a fixed ``200 OK`` per request, no parsing). Readiness is
one line on stderr: ``echo listening on http://HOST:PORT loop=NAME impl=burrow.http.echo``.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from burrow.http.echo import start_echo_server
from burrow.http.server import loop_factory, run

__all__ = ["main"]


async def _serve(host: str, port: int, loop_name: str) -> None:
    server, bound = await start_echo_server(host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(
        f"echo listening on http://{host}:{bound} loop={loop_name} impl=burrow.http.echo",
        file=sys.stderr,
        flush=True,
    )
    await stop.wait()
    server.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m burrow.bench.echo", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    run(_serve(args.host, args.port, loop_factory()[0]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
