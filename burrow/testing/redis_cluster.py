"""Real Redis for tests: a Cluster of six ``redis-server`` processes (3 primaries, 3
replicas), and a single private server that a test may stop and restart.

The Redis backend's suites (contract, API, SQS) and the notifier's tests run against a
cluster as well as a single server; :func:`shared_cluster` starts one per test process,
on first use, and stops it at interpreter exit, so those suites pay the start-up (a
second or two) once. Readiness is ``CLUSTER INFO`` saying ``cluster_state:ok`` on every
node, polled against a deadline; nothing sleeps blindly.

Without ``redis-server``/``redis-cli`` the tests that need them skip, unless
``BURROW_REQUIRE_SERVICES=1`` (CI), where that is a failure (:func:`require_tools`).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import random
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import redis

HOST = "127.0.0.1"
#: Ports are drawn below the kernel's usual ephemeral range (32768+), where outgoing
#: connections could take them, and clear of burrow.testing.redis_server's (23000-31999):
#: client ports here, and each cluster node's bus port (``--cluster-port``) from BUS_RANGE.
PORT_RANGE = (20000, 23000)
BUS_RANGE = (32000, 32768)
START_TIMEOUT = 30.0


class ClusterUnavailable(RuntimeError):
    """The cluster could not be started (tools missing, or a node would not come up)."""


def tools_missing() -> list[str]:
    """The Redis programs the harness needs that are not on PATH."""
    return [tool for tool in ("redis-server", "redis-cli") if shutil.which(tool) is None]


class RedisCluster:
    """Six local ``redis-server --cluster-enabled yes`` nodes joined into one cluster.

    ``nodes`` lists every node as ``host:port`` (primaries first once started);
    ``url`` is the ``redis+cluster://`` storage URL naming all of them.
    """

    def __init__(self, primaries: int = 3, replicas_per_primary: int = 1) -> None:
        self.size = primaries * (1 + replicas_per_primary)
        self.primaries = primaries
        self.replicas_per_primary = replicas_per_primary
        self.nodes: list[str] = []
        self._procs: list[subprocess.Popen[bytes]] = []
        self._dir: Path | None = None

    # -- lifecycle ------------------------------------------------------------------
    def start(self) -> RedisCluster:
        """Start the nodes, create the cluster and wait until every node reports it ok."""
        if self._procs:
            return self
        missing = tools_missing()
        if missing:
            raise ClusterUnavailable(f"{' and '.join(missing)} not installed")
        self._dir = Path(tempfile.mkdtemp(prefix="burrow-redis-cluster-"))
        try:
            for attempt in range(3):  # a port taken between the probe and the bind: try others
                ports = _free_ports(self.size, PORT_RANGE)
                try:
                    self._spawn(ports, _free_ports(self.size, BUS_RANGE))
                    break
                except ClusterUnavailable:
                    self._kill()
                    if attempt == 2:
                        raise
            self._create()
            self._wait_ok()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every node and remove their files."""
        self._kill()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
        self.nodes = []

    def __enter__(self) -> RedisCluster:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """``redis+cluster://127.0.0.1:p1,127.0.0.1:p2,...``: every node, as a storage URL."""
        return "redis+cluster://" + ",".join(self.nodes)

    @property
    def ports(self) -> list[int]:
        return [int(node.rpartition(":")[2]) for node in self.nodes]

    # -- steps ----------------------------------------------------------------------
    def _spawn(self, ports: list[int], bus_ports: list[int]) -> None:
        assert self._dir is not None
        for port, bus in zip(ports, bus_ports, strict=True):
            cluster_args = ["--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf"]
            cluster_args += ["--cluster-port", str(bus), "--cluster-node-timeout", "5000"]
            self._procs.append(_spawn_server(port, self._dir, cluster_args))
        self.nodes = [f"{HOST}:{port}" for port in ports]
        deadline = time.monotonic() + START_TIMEOUT
        for proc, port in zip(self._procs, ports, strict=True):
            _wait_ping(proc, port, self._dir, deadline)

    def _create(self) -> None:
        done = subprocess.run(
            [
                "redis-cli",
                "--cluster", "create", *self.nodes,
                "--cluster-replicas", str(self.replicas_per_primary),
                "--cluster-yes",
            ],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=START_TIMEOUT,
            check=False,
        )  # fmt: skip
        if done.returncode != 0:
            output = (done.stdout + done.stderr).decode(errors="replace")[-2000:]
            raise ClusterUnavailable(f"redis-cli --cluster create failed:\n{output}")

    def _wait_ok(self) -> None:
        """Poll every node until it says ``cluster_state:ok``, knows every slot and node,
        and (a replica) has synced with its primary."""
        deadline = time.monotonic() + START_TIMEOUT
        roles: dict[int, str] = {}
        for port in self.ports:
            while True:
                info = _cluster_info(port)
                role = _role(port) if info.get("cluster_state") == "ok" else []
                if (
                    role
                    and int(info.get("cluster_slots_ok", 0)) == 16384
                    and int(info.get("cluster_known_nodes", 0)) == self.size
                    and (role[0] == "master" or (len(role) > 3 and role[3] == "connected"))
                ):
                    roles[port] = role[0]
                    break
                if time.monotonic() > deadline:
                    raise ClusterUnavailable(f"node {HOST}:{port} not ready: {info} {role}")
                time.sleep(0.02)
        # Primaries first: what a client library would pick for writes.
        self.nodes.sort(key=lambda node: roles[int(node.rpartition(":")[2])] != "master")

    def _kill(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self._procs:
            _end(proc)
        self._procs = []


class RedisServer:
    """One private ``redis-server`` on a free port, which a test may stop and start again.

    The port stays the same across restarts (clients reconnect to the same address);
    nothing persists (``--save ''``), so a restart is an empty server, as after a crash
    of a cache-mode Redis. ``password``: clients must AUTH. ``tls``: the port speaks TLS
    only, with a self-signed certificate made by ``openssl`` (``ca_file`` verifies it).
    """

    def __init__(self, password: str | None = None, tls: bool = False) -> None:
        self.port = 0
        self.password = password
        self.tls = tls
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir: Path | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"{'rediss' if self.tls else 'redis'}://{auth}{HOST}:{self.port}/0"

    @property
    def ca_file(self) -> str:
        assert self._dir is not None
        return str(self._dir / "cert.pem")

    def client_kwargs(self) -> dict[str, Any]:
        """What ``redis.Redis(...)`` / ``redis.asyncio.Redis(...)`` need to reach it."""
        kwargs: dict[str, Any] = {"host": HOST, "port": self.port, "password": self.password}
        if self.tls:
            kwargs.update(ssl=True, ssl_ca_certs=self.ca_file)
        return kwargs

    def start(self) -> RedisServer:
        """Start it (on a new free port the first time, on the same port after :meth:`stop`)."""
        if self._proc is not None:
            return self
        missing = tools_missing() + (["openssl"] if self.tls and shutil.which("openssl") is None else [])
        if missing:
            raise ClusterUnavailable(f"{' and '.join(missing)} not installed")
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="burrow-redis-"))
            self.port = _free_ports(1, PORT_RANGE)[0]
            if self.tls:
                self._make_certificate()
        extra = ["--requirepass", self.password] if self.password else []
        if self.tls:
            extra += ["--port", "0", "--tls-port", str(self.port), "--tls-auth-clients", "no"]
            extra += ["--tls-cert-file", self.ca_file, "--tls-key-file", str(self._dir / "key.pem")]
            extra += ["--tls-ca-cert-file", self.ca_file]
        self._proc = _spawn_server(self.port, self._dir, extra)
        try:
            _wait_ping(
                self._proc, self.port, self._dir, time.monotonic() + START_TIMEOUT, self.client_kwargs()
            )
        except BaseException:
            self.stop()
            raise
        return self

    def _make_certificate(self) -> None:
        assert self._dir is not None
        done = subprocess.run(
            [
                "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                "-keyout", str(self._dir / "key.pem"), "-out", self.ca_file,
                "-subj", f"/CN={HOST}", "-addext", f"subjectAltName=IP:{HOST}",
            ],
            capture_output=True,
            timeout=START_TIMEOUT,
            check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise ClusterUnavailable(f"openssl failed: {done.stderr.decode(errors='replace')[-500:]}")

    def stop(self) -> None:
        """End the server (SIGTERM, SIGKILL if it lingers); :meth:`start` brings it back."""
        proc, self._proc = self._proc, None
        if proc is not None:
            _end(proc)

    def close(self) -> None:
        """Stop it and remove its files."""
        self.stop()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _spawn_server(port: int, directory: Path, extra: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            "redis-server",
            "--port", str(port),
            "--bind", HOST,
            "--dir", str(directory),
            "--save", "",
            "--appendonly", "no",
            "--repl-diskless-sync-delay", "0",
            "--logfile", str(directory / f"{port}.log"),
            *extra,
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip


def _wait_ping(
    proc: subprocess.Popen[bytes],
    port: int,
    directory: Path,
    deadline: float,
    kwargs: dict[str, Any] | None = None,
) -> None:
    while not _pings(port, kwargs):
        if proc.poll() is not None:  # exited: most likely the port was taken meanwhile
            try:
                tail = (directory / f"{port}.log").read_text(errors="replace")[-500:]
            except OSError:
                tail = ""
            raise ClusterUnavailable(f"redis-server on port {port} exited: {tail}")
        if time.monotonic() > deadline:
            raise ClusterUnavailable(f"redis-server on port {port} did not answer PING")
        time.sleep(0.01)


def _end(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _free_ports(count: int, within: tuple[int, int]) -> list[int]:
    """``count`` ports from the range ``within`` that nothing listens on now."""
    ports: list[int] = []
    candidates = list(range(*within))
    random.shuffle(candidates)
    for port in candidates:
        if _bindable(port):
            ports.append(port)
            if len(ports) == count:
                return ports
    raise ClusterUnavailable("no free ports for the cluster")


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def _client(port: int) -> redis.Redis:
    return redis.Redis(host=HOST, port=port, socket_timeout=5, socket_connect_timeout=1)


def _cluster_info(port: int) -> dict[str, str]:
    """``CLUSTER INFO`` as a dict (empty while the node does not answer)."""
    try:
        with _client(port) as client:
            reply = client.execute_command("CLUSTER INFO")
    except redis.ConnectionError:
        return {}
    if isinstance(reply, dict):  # redis-py parsed it
        return {str(k): str(v) for k, v in reply.items()}
    text = reply.decode() if isinstance(reply, bytes) else str(reply)
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)


def _role(port: int) -> list[str]:
    """``ROLE`` as strings: ``["master", ...]`` or ``["slave", host, port, state, offset]``."""
    with _client(port) as client:
        reply = client.execute_command("ROLE")
    return [item.decode() if isinstance(item, bytes) else str(item) for item in reply]


def _pings(port: int, kwargs: dict[str, Any] | None = None) -> bool:
    try:
        with redis.Redis(**(kwargs or {"host": HOST, "port": port}), socket_connect_timeout=1) as client:
            return bool(client.ping())
    except redis.ConnectionError:
        return False


# -- one cluster per test process -------------------------------------------------------
_shared: RedisCluster | None = None
_shared_error: str | None = None
_lock = threading.Lock()


def shared_cluster() -> RedisCluster:
    """This process's cluster, started on first call and stopped at exit.

    In a test: skips when the Redis tools are missing (fails under
    ``BURROW_REQUIRE_SERVICES=1``); a cluster that fails to start fails the test, and
    later calls fail fast with the same reason instead of trying again.
    """
    global _shared, _shared_error
    import pytest

    require_tools()
    with _lock:
        if _shared_error is not None:
            pytest.fail(f"Redis Cluster did not start earlier in this run: {_shared_error}")
        if _shared is None:
            cluster = RedisCluster()
            try:
                cluster.start()
            except ClusterUnavailable as exc:
                _shared_error = str(exc)
                raise
            _shared = cluster
            atexit.register(_stop_shared)
        return _shared


def require_tools() -> None:
    """Skip the calling test when redis-server/redis-cli are missing; fail under
    ``BURROW_REQUIRE_SERVICES=1``."""
    import pytest

    missing = tools_missing()
    if missing:
        reason = f"this test needs {' and '.join(missing)} (apt-get install redis-server redis-tools)"
        if os.environ.get("BURROW_REQUIRE_SERVICES") == "1":
            pytest.fail(reason + " and BURROW_REQUIRE_SERVICES=1")
        pytest.skip(reason)


def _stop_shared() -> None:
    global _shared
    with _lock:
        if _shared is not None:
            with contextlib.suppress(Exception):
                _shared.stop()
            _shared = None
