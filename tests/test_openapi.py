"""The OpenAPI document (``GET /openapi.json``): valid OpenAPI 3.1, in step with the route table,
and true of a real server, which schemathesis checks (no 5xx; every status, content type,
header and body as documented; invalid input refused; undocumented methods 405 with ``Allow``).

The schemathesis run is bounded (``--max-examples``, a fixed seed, long polls capped at 1 s by
``max_wait``) to stay well under a minute on two cores; ``BURROW_SOAK=1`` runs many more
examples with a random seed.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path
from typing import Any

import orjson

from burrow.api.openapi import ERROR_CODES, document
from burrow.api.routes import ROUTES, UI_API, operation_name
from burrow.client import Connection
from burrow.config import Settings
from burrow.core.errors import ERRORS_BY_CODE
from burrow.testing.server import running_server

SOAK = os.environ.get("BURROW_SOAK") == "1"
#: Every check schemathesis has that applies without auth or resource links.
CHECKS = [
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "negative_data_rejection",
    "unsupported_method",
    "allow_header_conformance",
]


def test_the_document_is_valid_openapi_3_1() -> None:
    # The OpenAPI 3.1 meta-schema as schemathesis ships it (with its jsonschema_rs validator).
    from schemathesis.specs.openapi.definitions import OPENAPI_31_VALIDATOR

    doc = document(Settings())
    errors = [f"{error.instance_path}: {error.message}" for error in OPENAPI_31_VALIDATOR.iter_errors(doc)]
    assert errors == []
    assert doc["openapi"] == "3.1.0"


def test_the_document_describes_every_route_of_the_table() -> None:
    doc = document(Settings())
    paths: dict[str, Any] = doc["paths"]
    expected: dict[str, set[str]] = {}
    for route in ROUTES:
        if not route.methods or route.api == UI_API:
            continue  # SQS queue URLs: no burrow v1.0 methods (docs/sqs.md)
        expected[route.template] = {method.lower() for method in route.methods}
        item = paths[route.template]
        documented = {m for m in item if m != "parameters"}
        assert documented == expected[route.template], route.template
        declared = {p["$ref"].rsplit("/", 1)[1] for p in item.get("parameters", [])}
        assert declared == set(route.params), route.template
        for method, handler in route.methods.items():
            operation = item[method.lower()]
            assert operation["operationId"] == operation_name(handler)  # the metrics' operation label
            # Every refusal the server has, but those that depend on the operation (404: not
            # every path can miss; 405: the method is not the operation's; 507: writes only;
            # 429: quotas, on creates and long polls only; 409 and 501: backups only).
            only_some = {404, 405, 409, 429, 501, 507}
            for status in {cls.status for cls in ERRORS_BY_CODE.values()} - only_some:
                assert str(status) in operation["responses"], (route.template, method, status)
    assert set(paths) == set(expected)
    assert sorted(ERRORS_BY_CODE) == ERROR_CODES


def test_the_document_states_the_servers_limits() -> None:
    doc = document(Settings(max_seconds=3600))
    assert doc["components"]["parameters"]["ttl"]["schema"]["maximum"] == 3600


async def test_the_server_serves_it() -> None:
    async with running_server(Settings(backend="memory://")) as server, Connection(server.url) as conn:
        reply = await conn.request("GET", "/openapi.json")
        assert reply.status == 200
        assert reply.headers["content-type"] == "application/json"
        assert orjson.loads(reply.body) == orjson.loads(orjson.dumps(document(server.engine.settings)))


async def test_schemathesis_finds_the_server_true_to_the_document(tmp_path: Path) -> None:
    settings = Settings(backend=f"sqlite:///{tmp_path}/burrow.db", max_wait=1)
    async with running_server(settings) as server:
        seed = [] if SOAK else ["--seed", "20240501"]
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "schemathesis.cli",
            "run",
            f"{server.url}/openapi.json",
            "--checks",
            ",".join(CHECKS),
            "--max-examples",
            "200" if SOAK else "6",
            *seed,
            "--workers",
            "2",
            "--request-timeout",
            "10",
            "--no-color",
            cwd=tmp_path,  # its hypothesis database and any report stay in the scratch directory
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, "NO_COLOR": "1", "COLUMNS": "120"},
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 600 if SOAK else 180)
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text[-6000:]
    counts = re.search(r"(\d+) generated, (\d+) passed", text)
    assert counts is not None, text[-3000:]
    generated, passed = map(int, counts.groups())
    assert generated == passed > 100, text[-3000:]
    assert re.search(r"Tested: 15\b", text), text[-3000:]  # every operation of the document
