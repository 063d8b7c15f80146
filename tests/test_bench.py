"""Smoke tests of ``burrow bench``: its request scripts, and tiny real runs against real servers."""

from __future__ import annotations

import importlib.metadata
import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from burrow.bench.loadgen import run_python, run_wrk
from burrow.bench.measure import percentile
from burrow.bench.procs import Control, Placement, start_burrow, start_echo
from burrow.bench.runner import main
from burrow.bench.workloads import BODY, WORKLOADS, lua_script, make_script, prefill_id


def _line(request: bytes | None) -> str:
    assert request is not None
    return request.split(b"\r\n", 1)[0].decode()


def test_scripts_make_unique_ids_and_split_prefills() -> None:
    puts = [make_script("put", {}, stream, 2) for stream in range(2)]
    paths = {_line(p.request()).split()[1] for p in puts for _ in range(50)}
    assert len(paths) == 100
    assert all(len(path.rsplit("/", 1)[1]) == 16 for path in paths)
    fills = [make_script("fill:q", {"n": 7}, stream, 3) for stream in range(3)]
    sent = [_line(r) for f in fills for r in iter(f.request, None)]
    assert sorted(sent) == sorted(f"PUT /v1.0/bench/q/{prefill_id('q', i)} HTTP/1.1" for i in range(7))
    put = make_script("put", {}, 0, 1).request()
    assert put is not None and put.endswith(b"\r\n\r\n" + BODY) and len(BODY) == 100


def test_worker_script_deletes_what_it_took() -> None:
    worker = make_script("worker", {}, 0, 1)
    assert _line(worker.request()).startswith("POST /v1.0/bench/q?limit=1&hide=60")
    worker.response(b"200", b'[{"id": "q000000000000003", "ttl": 5, "hide": 60, "body": "x"}]')
    assert _line(worker.request()) == "DELETE /v1.0/bench/q/q000000000000003 HTTP/1.1"
    mixed = make_script("mixed", {"n": 10, "nread": 10}, 0, 1)
    mixed.response(b"200", b'[{"id": "r000000000000001"}]')  # a read of queue r, not a take
    kinds = [_line(mixed.request()).split()[0] for _ in range(20)]
    assert kinds.count("PUT") == 5 and kinds.count("POST") == 5 and "DELETE" not in kinds


@pytest.mark.parametrize("name", sorted(WORKLOADS))
def test_lua_scripts_render(name: str) -> None:
    script = lua_script(name, {"n": 10, "nread": 5}, 2)
    assert "function done(" in script and "BENCHJSON" in script and "local streams = 2" in script
    assert not any(hole in script for hole in ("{n}", "{nread}", "{take}", "{slots}", "{body}"))


def test_bench_runs_on_a_plain_install() -> None:
    """``burrow bench`` (runner, load-generator and echo processes) imports nothing but the
    standard library and Burrow's own dependencies: no extra is needed."""
    code = (
        "import sys; before = set(sys.modules); "
        "import burrow.bench.runner, burrow.bench.client, burrow.bench.echo, burrow.cli; "
        "print(' '.join(sorted({m.split('.')[0] for m in set(sys.modules) - before})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    from_dists = importlib.metadata.packages_distributions()
    used = {dist.lower() for name in out.split() for dist in from_dists.get(name, [])}
    required = {
        re.split(r"[^A-Za-z0-9_.-]", spec, maxsplit=1)[0].lower()
        for spec in importlib.metadata.requires("burrow") or []
        if "extra ==" not in spec
    }
    assert used - {"burrow"} <= required, used
    assert {"httptools", "orjson"} <= used  # the check sees third-party imports at all


def test_percentile() -> None:
    assert percentile([3.0, 1.0, 2.0, 4.0], 50) == 2.0
    assert percentile([float(i) for i in range(1, 101)], 99) == 99.0
    assert math.isnan(percentile([], 50))


def test_python_generator_against_real_servers() -> None:
    placement = Placement.split()
    with start_echo(placement.server) as echo:
        base = run_python(
            echo,
            "echo",
            {},
            processes=1,
            connections=2,
            depth=10,
            duration=0.5,
            cpus=placement.client,
            ok=(200,),
        )
    assert base.rps > 0 and base.bad == 0 and base.statuses == {"200": base.requests}
    with start_burrow("memory://", placement.server) as server:
        put = run_python(
            server,
            "put",
            {},
            processes=2,
            connections=2,
            depth=20,
            duration=0.5,
            cpus=placement.client,
            ok=(201,),
        )
        assert put.rps > 0 and put.bad == 0 and set(put.statuses) == {"201"}
        assert put.server_cpu > 0
        with Control(server.port) as control:
            assert control.count_messages("bench", "q") == put.requests
        worker = run_python(
            server,
            "worker",
            {},
            processes=1,
            connections=4,
            depth=1,
            duration=0.5,
            cpus=placement.client,
            ok=(200, 204),
        )
        taken, deleted = worker.statuses["200"], worker.statuses["204"]
        assert taken > 0 and set(worker.statuses) <= {"200", "204", "404"}  # 404: the queue ran dry
        assert 0 <= taken - deleted <= 4  # each take is followed by its delete, but the last ones
        with Control(server.port) as control:
            remaining = control.count_messages("bench", "q")
            assert remaining == put.requests - deleted
            if "404" in worker.statuses:
                assert remaining == taken - deleted  # only the still-hidden last takes are left
            assert control.request("DELETE", "/v1.0").status in (204, 404)


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk not installed")
def test_wrk_worker_cycle() -> None:
    placement = Placement.split()
    with start_burrow("memory://", placement.server) as server:
        run_python(
            server, "fill:q", {"n": 5000}, processes=1, connections=1, depth=100, duration=math.inf,
            cpus=placement.client, ok=(201,),
        )  # fmt: skip
        result = run_wrk(server, "worker", {"n": 5000}, connections=4, duration=1, cpus=placement.client)
        assert result.requests > 0
        with Control(server.port) as control:
            assert control.request("DELETE", "/v1.0").status in (204, 404)


def test_runner_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench.json"
    argv = ["--modes", "pipelined", "--duration", "0.3", "--workloads", "root", "--pipeline", "10"]
    argv += ["--memory-messages", "20000", "--longpoll-waiters", "20", "--json", str(out)]
    assert main(argv) == 0
    data = json.loads(out.read_text())
    assert [r["workload"] for r in data["throughput"]] == ["echo", "root"]
    for result in data["throughput"]:
        assert result["rps"] > 0 and result["bad"] == 0 and set(result["statuses"]) == {"200"}
    assert data["throughput"][1]["ratio"] > 0
    memory = data["memory"]
    assert memory["stored"] == 20000 and memory["bad"] == 0 and memory["rss_after"] > memory["rss_before"]
    longpoll = data["longpoll"]
    assert longpoll["woken"] == 20 and longpoll["early"] == 0
    assert longpoll["put_statuses"] == {"201": 20} and longpoll["waiter_statuses"] == {"200": 20}
    assert 0 <= longpoll["send_p99_ms"] < 1000
    assert "| root | pipelined |" in capsys.readouterr().out
