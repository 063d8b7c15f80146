"""The Redis Cluster test harness: a working cluster, shared per process, nothing left behind."""

from __future__ import annotations

import pytest
import redis
import redis.cluster

from burrow.testing.redis_cluster import RedisCluster, RedisServer, require_tools, shared_cluster


def test_shared_cluster_serves_every_slot() -> None:
    cluster = shared_cluster()
    assert shared_cluster() is cluster  # one per test process
    assert len(cluster.nodes) == 6
    assert cluster.url == "redis+cluster://" + ",".join(cluster.nodes)
    roles = []
    for port in cluster.ports:
        with redis.Redis(port=port) as node:
            roles.append(node.execute_command("ROLE")[0])
    assert roles == [b"master"] * 3 + [b"slave"] * 3  # primaries listed first
    client = redis.cluster.RedisCluster(host="127.0.0.1", port=cluster.ports[0])
    try:
        keys = [f"harness:{i}" for i in range(30)]
        for key in keys:
            client.set(key, key)
        assert [client.get(k) for k in keys] == [k.encode() for k in keys]
        for port in cluster.ports[:3]:  # the keys spread over all three primaries
            with redis.Redis(port=port) as node:
                assert node.dbsize() > 0
        for key in keys:
            client.delete(key)
    finally:
        client.close()


def test_stop_ends_the_nodes_and_removes_their_files() -> None:
    shared_cluster()  # skips (or fails under BURROW_REQUIRE_SERVICES=1) without redis-server
    cluster = RedisCluster().start()
    directory, procs = cluster._dir, list(cluster._procs)
    assert directory is not None and directory.exists()
    cluster.stop()
    assert not directory.exists()
    assert all(proc.returncode is not None for proc in procs)
    assert cluster.nodes == []


def test_a_private_server_restarts_on_its_port_and_leaves_nothing_behind() -> None:
    require_tools()
    server = RedisServer().start()
    try:
        port = server.port
        with redis.Redis(port=port) as client:
            client.set("k", "v")
        server.stop()
        with pytest.raises(redis.ConnectionError), redis.Redis(port=port) as client:
            client.ping()
        server.start()
        assert server.port == port and server.url == f"redis://127.0.0.1:{port}/0"
        with redis.Redis(port=port) as client:
            assert client.get("k") is None  # nothing persisted: an empty server, as after a crash
    finally:
        directory = server._dir
        server.close()
    assert directory is not None and not directory.exists()
