"""``burrow serve --workers N``: start, supervise and stop N server processes (and a router).

The layout follows the store, because only a shared store lets processes share queues:

* **Shared store** (``redis://``, ``rediss://``, ``redis+cluster://``, ``rediss+cluster://``):
  N workers, each a normal single-process server over the one store, all listening on
  ``--host:--port`` with SO_REUSEPORT, so the kernel spreads connections between them. The
  supervisor itself holds a socket bound to that port (SO_REUSEPORT, never listening) for its
  whole life: a port taken by another program fails at once, ``--port 0`` picks the port
  once, and a restarted worker always gets its port back.
* **In-process store** (``memory://``, SQLite): each worker owns a store of its own and
  listens on ``--host`` port ``port + i`` (worker i = 1..N); ``burrow proxy`` listens on
  ``--port`` and sends each queue to the worker that holds it (two-step rendezvous hashing,
  :mod:`burrow.hashing`), so a client that hashes can address the workers directly, with
  the server URLs exactly as the ``servers=`` of the supervisor's "listening on" line (they
  are the hash's identities). With ``--port 0`` every process binds a free port of its own;
  the ports learned at the first start are kept for restarts (the router's server list must
  not change), but the next start of the command gets new ones, so durable queues need a
  fixed ``--port``. Each SQLite worker has its own file, always the same one
  (:func:`worker_backend`). The router gets ``--host``, ``--port``, ``--servers`` and
  ``--subset-size`` as flags and every other setting (limits, timeouts) in its environment.

Children are started (``python -m burrow.supervisor --worker NAME``, settings in their
``BURROW_*`` environment) and are ready when they log their "listening on" line; nothing
sleeps. Their output goes to the supervisor's stderr, each line prefixed ``[worker-i]`` or
``[router]``; their "listening on" line is forwarded as "listening at", so the only
"listening on" line the command prints is its own, logged once every child is ready.

A child that dies is logged (exit status or signal) and restarted after a backoff that
doubles up to :data:`BACKOFF_MAX` (and starts over once a child stayed up
:data:`STABLE_SECONDS`). A child that fails at the first start, or fails to start
:data:`MAX_FAILED_STARTS` times in a row later, makes the supervisor stop everything and
exit 1 with the reason. SIGHUP is passed on to the workers (each reloads its credentials
file, :class:`burrow.auth.Guard`). SIGTERM or SIGINT stops the children (the router first, so requests
it is forwarding finish; SIGTERM, then SIGKILL after :data:`STOP_GRACE` seconds) and exits
0; a second signal kills them at once. Children run in their own session (a terminal's
Ctrl-C reaches only the supervisor) and get SIGTERM if the supervisor dies (Linux
``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import ctypes
import logging
import os
import re
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

from burrow import BUILD, __version__
from burrow.backends.memory import default_max_memory
from burrow.config import ENV_PREFIX, Settings, default_data_dir, load_settings

log = logging.getLogger("burrow.supervisor")

#: Backends several processes can share (each worker opens the same store).
SHARED_SCHEMES = frozenset({"redis", "rediss", "redis+cluster", "rediss+cluster"})
#: Backends that live inside one process (each worker gets a store of its own).
IN_PROCESS_SCHEMES = frozenset({"memory", "sqlite"})

#: A child is ready when it logs this (the same line ``burrow serve`` prints).
READY = re.compile(r"listening on http://(\S+):(\d+) ")
#: Seconds a child may take to become ready before it is killed and counted as failed.
START_TIMEOUT = 60.0
#: Restart delays: the first, and the cap of the doubling.
BACKOFF_MIN, BACKOFF_MAX = 0.1, 10.0
#: A child up this long has its restart delay start over from ``BACKOFF_MIN``.
STABLE_SECONDS = 30.0
#: Consecutive failed starts (exit or timeout before ready) after which the supervisor gives up.
MAX_FAILED_STARTS = 5
#: Seconds each stop phase (router, then workers) waits after SIGTERM before SIGKILL.
STOP_GRACE = 10.0
#: Lines of each child's output kept to explain a failure.
TAIL_LINES = 20
_PR_SET_PDEATHSIG = 1


class GiveUp(Exception):
    """The command cannot run as configured (a child will not start): stop and exit 1."""


class ChildFailed(Exception):
    """One start of a child ended before it was ready."""


def backend_kind(url: str) -> str:
    """``shared`` or ``in-process`` for a storage URL; ValueError for an unknown scheme."""
    scheme, sep, _ = url.partition("://")
    if sep and scheme in SHARED_SCHEMES:
        return "shared"
    if sep and scheme in IN_PROCESS_SCHEMES:
        return "in-process"
    known = ", ".join(sorted(SHARED_SCHEMES | IN_PROCESS_SCHEMES))
    raise ValueError(f"--workers needs a backend URL with one of the schemes {known}; got {url!r}")


def worker_backend(settings: Settings, index: int) -> str:
    """The store of in-process worker ``index`` (1..N): the same one at every start.

    The default store ``DATA_DIR/burrow.db`` becomes ``DATA_DIR/worker-i/burrow.db``;
    ``sqlite:///dir/x.db`` becomes ``sqlite:///dir/x-i.db`` (``x`` → ``x-i`` without an
    extension); ``sqlite://:memory:`` and ``memory://`` are private to each process anyway.
    """
    if not settings.backend:
        data = Path(settings.data_dir) if settings.data_dir else default_data_dir()
        return f"sqlite:///{(data / f'worker-{index}' / 'burrow.db').resolve()}"
    scheme, _, rest = settings.backend.partition("://")
    if scheme != "sqlite" or rest.startswith(":memory:"):
        return settings.backend
    rest, mark, query = rest.partition("?")  # options (?reserve=...) stay as they are
    head, slash, name = rest.rpartition("/")
    stem, dot, ext = name.rpartition(".")
    name = f"{stem}-{index}.{ext}" if dot and stem else f"{name}-{index}"
    return f"sqlite://{head}{slash}{name}{mark}{query}"


def redact(url: str) -> str:
    """A storage URL fit for a log: a password in it is replaced by ``***``."""
    return re.sub(r"(://[^/?#@:]*:)[^/?#]*@", r"\1***@", url)


def settings_environment(settings: Settings) -> dict[str, str]:
    """This process's environment with every setting as its ``BURROW_*`` variable (so a
    child sees exactly ``settings``, whatever config file or flags produced them)."""
    env = dict(os.environ)
    for f in fields(Settings):
        env[ENV_PREFIX + f.name.upper()] = str(getattr(settings, f.name))
    return env


def describe_exit(status: int) -> str:
    """``exited with status 1`` or ``killed by SIGKILL``, from a returncode."""
    if status < 0:
        try:
            return f"killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"killed by signal {-status}"
    return f"exited with status {status}"


def _die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child get SIGTERM when the supervisor dies (Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def arm() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the supervisor died before the line above
            os._exit(1)

    return arm


class Child:
    """One supervised process (a worker or the router): start it, forward its output, stop it."""

    def __init__(self, name: str, command: Callable[[Child], tuple[list[str], dict[str, str]]]) -> None:
        self.name = name
        #: Builds argv and environment at each start (a learned port is kept in ``port``).
        self._command = command
        #: Port to listen on: the configured one, or once learned (``--port 0``) the bound one.
        self.port = 0
        self.host = ""
        self.proc: asyncio.subprocess.Process | None = None
        self.started_at = 0.0
        self.tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self._ready: asyncio.Future[bool] | None = None
        self._reader: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc is not None else 0

    async def start(self) -> None:
        """Start the process and return once it listens; ChildFailed if it exits or hangs first."""
        argv, env = self._command(self)
        loop = asyncio.get_running_loop()
        self._ready = loop.create_future()
        self.tail.clear()
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *argv,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent(),
            )
        except OSError as error:  # out of processes or memory: a failed start like any other
            raise ChildFailed(f"cannot start {argv[0]}: {error}") from error
        self.started_at = time.monotonic()
        self._reader = loop.create_task(self._forward(self.proc, self._ready))
        try:
            ready = await asyncio.wait_for(asyncio.shield(self._ready), START_TIMEOUT)
        except TimeoutError:
            await self.kill()
            raise ChildFailed(f"not ready within {START_TIMEOUT:.0f} s{self._last_words()}") from None
        if not ready:  # its output closed: it exited (or is about to)
            status = await self.wait()
            raise ChildFailed(f"{describe_exit(status)}{self._last_words()}")

    def _last_words(self) -> str:
        lines = [line for line in self.tail if line.strip()]
        return f": {lines[-1].strip()}" if lines else ""

    async def _forward(self, proc: asyncio.subprocess.Process, ready: asyncio.Future[bool]) -> None:
        """Copy the child's output to stderr, prefixed; ``ready`` is True at its listening line,
        False if its output ends first."""
        assert proc.stdout is not None
        prefix = f"[{self.name}] "
        while True:
            try:
                raw = await proc.stdout.readline()
            except ValueError:  # a line over the stream limit: it was dropped
                raw = b"(output line too long, dropped)\n"
            if not raw:
                break
            line = raw.decode(errors="replace").rstrip("\r\n")
            found = READY.search(line)
            if found:
                line = line.replace("listening on http://", "listening at http://")
            self.tail.append(line)
            sys.stderr.write(prefix + line + "\n")
            sys.stderr.flush()
            if found and not ready.done():
                self.host, self.port = found.group(1), int(found.group(2))
                ready.set_result(True)
        if not ready.done():
            ready.set_result(False)

    async def wait(self) -> int:
        """Wait for the process to end (and its output to be forwarded); its returncode."""
        assert self.proc is not None
        status = await self.proc.wait()
        if self._reader is not None:
            await self._reader
        return status

    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def send(self, signum: int) -> None:
        if self.running():
            assert self.proc is not None
            with contextlib.suppress(ProcessLookupError):  # exited, not yet reaped
                self.proc.send_signal(signum)

    async def kill(self) -> None:
        self.send(signal.SIGKILL)
        if self.proc is not None:
            await self.wait()

    async def stop(self, grace: float) -> bool:
        """SIGTERM, then SIGKILL after ``grace`` seconds; True if it stopped by itself."""
        if not self.running():
            if self.proc is not None:
                await self.wait()
            return True
        self.send(signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(self.wait()), grace)
            return True
        except TimeoutError:
            log.warning(
                "%s (pid %d) still running %.0f s after SIGTERM; killing it", self.name, self.pid, grace
            )
            await self.kill()
            return False


class Supervisor:
    """The processes of one ``burrow serve --workers N`` and their lifecycle."""

    def __init__(self, settings: Settings, loop_name: str) -> None:
        self.settings = settings
        self.loop_name = loop_name
        self.url = settings.backend_url()
        self.kind = backend_kind(self.url)
        n = settings.workers
        if self.kind == "in-process" and settings.port and settings.port + n > 65535:
            raise ValueError(
                f"--workers {n} on an in-process backend listens on ports {settings.port + 1}.."
                f"{settings.port + n}, past 65535: choose a lower --port (or 0)"
            )
        self.workers = [Child(f"worker-{i}", self._worker_command) for i in range(1, n + 1)]
        for i, worker in enumerate(self.workers, 1):
            worker.port = settings.port + i if self.kind == "in-process" and settings.port else settings.port
        self.router: Child | None = None
        if self.kind == "in-process":
            self.router = Child("router", self._router_command)
            self.router.port = settings.port
        self._reservation: socket.socket | None = None
        self._stop = asyncio.Event()
        self._signals = 0

    # -- commands -------------------------------------------------------------------
    def _backend_of(self, worker: Child) -> str:
        if self.kind == "shared":
            return self.url
        return worker_backend(self.settings, self.workers.index(worker) + 1)

    def _worker_command(self, child: Child) -> tuple[list[str], dict[str, str]]:
        backend = self._backend_of(child)
        settings = self.settings.replace(workers=1, port=child.port, backend=backend)
        if self.kind != "shared" and not settings.max_memory and backend.startswith("memory"):
            # Each worker owns a memory store: the default budget is shared between them.
            settings = settings.replace(max_memory=default_max_memory(self.settings.workers))
        argv = [sys.executable, "-m", "burrow.supervisor", "--worker", child.name]
        if self.kind == "shared":
            argv.append("--reuse-port")
        return argv, settings_environment(settings)

    def _router_command(self, child: Child) -> tuple[list[str], dict[str, str]]:
        servers = ",".join(worker.url for worker in self.workers)
        settings = self.settings.replace(workers=1, port=child.port, servers=servers)
        argv = [sys.executable, "-m", "burrow", "proxy", "--host", settings.host, "--port", str(child.port)]
        argv += ["--servers", servers, "--subset-size", str(settings.subset_size)]
        return argv, settings_environment(settings)

    @property
    def children(self) -> list[Child]:
        """Every child, in stop order: the router first."""
        return ([self.router] if self.router is not None else []) + self.workers

    # -- lifecycle ------------------------------------------------------------------
    async def run(self) -> int:
        """Start everything, keep it running until a signal, stop it; the exit status."""
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self._on_signal, signum)
        loop.add_signal_handler(signal.SIGHUP, self._reload)
        try:
            return await self._run()
        finally:
            for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                loop.remove_signal_handler(signum)
            if self._reservation is not None:
                self._reservation.close()

    async def _run(self) -> int:
        stop: asyncio.Future[Any] = asyncio.ensure_future(self._stop.wait())
        try:
            status = await self._serve_until(stop)
        finally:
            stop.cancel()
            await self._stop_all()  # whatever happened, no child outlives the supervisor
        if status == 0:
            log.info("stopped")
        return status

    async def _serve_until(self, stop: asyncio.Future[Any]) -> int:
        starting: asyncio.Future[Any] = asyncio.ensure_future(self._start_all())
        await asyncio.wait({stop, starting}, return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():
            starting.cancel()
            await asyncio.gather(starting, return_exceptions=True)
            log.info("stopping before every process was ready")
            return 0
        try:
            starting.result()
        except GiveUp as error:
            log.error("%s", error)
            return 1
        self._announce()
        keepers: list[asyncio.Future[Any]] = [asyncio.ensure_future(self._keep(c)) for c in self.children]
        try:
            await asyncio.wait({stop, *keepers}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for keeper in keepers:
                keeper.cancel()
            results = await asyncio.gather(*keepers, return_exceptions=True)
        for result in results:
            if isinstance(result, GiveUp):
                log.error("giving up: %s", result)
                return 1
            if isinstance(result, Exception):
                raise result
        log.info("shutting down")
        return 0

    def _reload(self) -> None:
        """SIGHUP: each worker reloads its credentials file (the router holds none)."""
        log.info("SIGHUP: asking %d workers to reload their credentials", len(self.workers))
        for worker in self.workers:
            worker.send(signal.SIGHUP)

    def _on_signal(self, signum: int) -> None:
        self._signals += 1
        if self._signals == 1:
            log.info("%s: stopping %d processes", signal.Signals(signum).name, len(self.children))
            self._stop.set()
            return
        log.warning("%s again: killing every process now", signal.Signals(signum).name)
        for child in self.children:
            child.send(signal.SIGKILL)

    async def _start_all(self) -> None:
        """Workers (all at once), then the router; GiveUp naming the first that failed."""
        if self.kind == "shared":
            self._reserve_port()
        elif not self.settings.port and self.url.startswith("sqlite:///"):
            log.warning(
                "--port 0 gives the workers new ports at every start, and queues are placed by"
                " server URL: a queue stored by one run may be looked for on another worker by"
                " the next. Give a fixed --port to keep SQLite data across restarts."
            )
        await self._start_group(self.workers)
        if self.router is not None:
            await self._start_group([self.router])

    def _reserve_port(self) -> None:
        """Bind (SO_REUSEPORT, not listening) the workers' shared port for the supervisor's life."""
        host, port = self.settings.host, self.settings.port
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
        except OSError as error:
            sock.close()
            raise GiveUp(f"cannot listen on {host}:{port}: {error}") from error
        self._reservation = sock
        for worker in self.workers:
            worker.port = int(sock.getsockname()[1])

    async def _start_group(self, group: Sequence[Child]) -> None:
        results = await asyncio.gather(*(child.start() for child in group), return_exceptions=True)
        for child, result in zip(group, results, strict=True):
            if isinstance(result, ChildFailed):
                raise GiveUp(f"{child.name} failed to start: {result}")
            if isinstance(result, BaseException):
                raise result
            self._log_ready(child)

    def _log_ready(self, child: Child) -> None:
        backend = "" if child is self.router else " backend=" + redact(self._backend_of(child))
        log.info("%s (pid %d) ready at %s%s", child.name, child.pid, child.url, backend)

    def _announce(self) -> None:
        if self.router is not None:
            public = self.router
            mode = "router servers=" + ",".join(worker.url for worker in self.workers)
        else:
            public = self.workers[0]
            mode = "reuseport"
        log.info(
            "burrow %s listening on http://%s:%d backend=%s workers=%d mode=%s loop=%s build=%s",
            __version__,
            public.host,
            public.port,
            redact(self.url),
            len(self.workers),
            mode,
            self.loop_name,
            BUILD,
        )

    async def _keep(self, child: Child) -> None:
        """Restart ``child`` whenever it dies; GiveUp after MAX_FAILED_STARTS failed starts in a row."""
        delay = BACKOFF_MIN
        while True:
            status = await child.wait()
            uptime = time.monotonic() - child.started_at
            if uptime >= STABLE_SECONDS:
                delay = BACKOFF_MIN
            log.warning(
                "%s (pid %d) %s after %.1f s; restarting in %.1f s",
                child.name,
                child.pid,
                describe_exit(status),
                uptime,
                delay,
            )
            failures = 0
            while True:
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX)
                try:
                    await child.start()
                except ChildFailed as error:
                    failures += 1
                    if failures >= MAX_FAILED_STARTS:
                        message = f"{child.name} failed to start {failures} times in a row: {error}"
                        raise GiveUp(message) from None
                    log.warning("%s failed to start (%s); retrying in %.1f s", child.name, error, delay)
                    continue
                break
            self._log_ready(child)

    async def _stop_all(self) -> None:
        """Router first (its requests in flight need the workers), then every worker at once."""
        if self.router is not None:
            await self.router.stop(STOP_GRACE)
        await asyncio.gather(*(worker.stop(STOP_GRACE) for worker in self.workers))


def supervise(settings: Settings) -> int:
    """Run ``burrow serve --workers N`` (``settings.workers`` > 1) until a signal; the exit status."""
    from burrow.http.server import loop_factory, run

    try:
        supervisor = Supervisor(settings, loop_factory()[0])
    except ValueError as error:
        log.error("%s", error)
        return 2
    return run(supervisor.run())


def worker_main(argv: Sequence[str]) -> int:
    """A worker: ``burrow serve`` with the settings of its ``BURROW_*`` environment."""
    parser = argparse.ArgumentParser(prog="python -m burrow.supervisor", description=__doc__)
    parser.add_argument("--worker", required=True, help="the worker's name in the supervisor's log")
    parser.add_argument("--reuse-port", action="store_true", help="bind with SO_REUSEPORT (shared store)")
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
    except ValueError as error:
        print(f"burrow: {error}", file=sys.stderr)
        return 2
    if settings.workers != 1:
        print("burrow: a worker runs one process (BURROW_WORKERS=1)", file=sys.stderr)
        return 2
    from burrow.cli import serve

    return serve(settings, reuse_port=args.reuse_port)


if __name__ == "__main__":
    raise SystemExit(worker_main(sys.argv[1:]))
