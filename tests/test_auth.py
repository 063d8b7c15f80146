"""Auth and tenants: credentials that work, reloads, the file's checks, the router, the warning.

The refusals, every route by every attack, are tests/test_auth_matrix.py's; this module is the
other side (what a tenant, a read-only reader and an admin can do), the credentials file's
validation, reload on SIGHUP through a real ``burrow serve``, and the loopback warning.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import orjson
import pytest
from botocore.exceptions import ClientError

from burrow import AsyncClient
from burrow.api.routes import route_for
from burrow.auth import ADMIN, CredentialsError, Grant, Guard, load_credentials
from burrow.backends import open_backend
from burrow.client import Connection, Reply, SyncConnection
from burrow.config import Settings
from burrow.core.errors import Forbidden, Unauthorized
from burrow.engine import Engine
from burrow.http.types import Request, Response
from burrow.quotas import Quota
from burrow.testing.process import ServeProcess
from burrow.testing.router import running_router
from burrow.testing.server import running_server
from tests.boto import sqs_client

ADMIN_TOKEN = "admin-token-" + "a" * 32
ACME_TOKEN = "acme-token-" + "b" * 32
ACME_READ = "acme-read-" + "c" * 32
ZETA_TOKEN = "zeta-token-" + "d" * 32
ACME_SECRET = "acme-sqs-secret-" + "e" * 24
FILE = f"""admin_tokens = ["{ADMIN_TOKEN}"]
[accounts.acme]
tokens = ["{ACME_TOKEN}"]
read_tokens = ["{ACME_READ}"]
sqs_keys = {{ AKIDACME = "{ACME_SECRET}" }}
[accounts.acme.quotas]
queues = 100
messages = 1000000
bytes = "1G"
waiters = 100
[accounts.zeta]
tokens = ["{ZETA_TOKEN}"]
"""


@pytest.fixture
def credentials(tmp_path: Path) -> str:
    path = tmp_path / "credentials.toml"
    path.write_text(FILE)
    return str(path)


def auth(token: str, header: str = "bearer") -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if header == "bearer" else {"X-Auth-Token": token}


# -- what credentials allow ---------------------------------------------------------------------


@pytest.mark.parametrize("header", ["bearer", "x-auth-token"])
async def test_own_token_reads_and_writes_its_account(credentials: str, header: str) -> None:
    settings = Settings(backend="memory://", credentials=credentials)
    async with running_server(settings) as server, Connection(server.url) as conn:
        put = await conn.request("PUT", "/v1.0/acme/jobs/m1", b"hello", auth(ACME_TOKEN, header))
        assert put.status == 201, put
        got = await conn.request("GET", "/v1.0/acme/jobs/m1", b"", auth(ACME_TOKEN, header))
        assert (got.status, orjson.loads(got.body)["body"]) == (200, "hello")
        queues = await conn.request("GET", "/v1.0/acme", b"", auth(ACME_TOKEN, header))
        assert orjson.loads(queues.body) == ["jobs"]
        assert (
            await conn.request("DELETE", "/v1.0/acme/jobs/m1", b"", auth(ACME_TOKEN, header))
        ).status == 204
        # another account's path, with this valid token: 403, naming nothing of it
        other = await conn.request("GET", "/v1.0/zeta/jobs", b"", auth(ACME_TOKEN, header))
        assert other.status == 403 and b"zeta" not in other.body
        # the account's name percent-encoded is the same account
        encoded = await conn.request("PUT", "/v1.0/%61cme/jobs/m2", b"x", auth(ACME_TOKEN, header))
        assert encoded.status == 201


async def test_read_only_token_reads_and_nothing_else(credentials: str) -> None:
    settings = Settings(backend="memory://", credentials=credentials)
    async with running_server(settings) as server, Connection(server.url) as conn:
        await conn.call("PUT", "/v1.0/acme/jobs/m1?ttl=0", b"hello", auth(ACME_TOKEN))
        listed = await conn.request("GET", "/v1.0/acme/jobs?detail=all", b"", auth(ACME_READ))
        assert listed.status == 200 and orjson.loads(listed.body)[0]["body"] == "hello"
        assert (await conn.request("GET", "/v1.0/acme", b"", auth(ACME_READ))).status == 200
        for method, path in [
            ("PUT", "/v1.0/acme/jobs/m2"),
            ("POST", "/v1.0/acme/jobs?hide=60"),  # a take is a write
            ("POST", "/v1.0/acme/jobs/m1?ttl=5"),
            ("DELETE", "/v1.0/acme/jobs/m1"),
            ("DELETE", "/v1.0/acme"),
        ]:
            reply = await conn.request(method, path, b"x" if method == "PUT" else b"", auth(ACME_READ))
            assert reply.status == 403, (method, path, reply)
            assert orjson.loads(reply.body)["error"] == "forbidden"
        still = await conn.request("GET", "/v1.0/acme/jobs/m1", b"", auth(ACME_READ))
        assert still.status == 200 and orjson.loads(still.body)["hide"] == 0  # nothing changed


async def test_admin_token_lists_and_deletes_accounts(credentials: str) -> None:
    async with running_server(Settings(backend="memory://", credentials=credentials)) as server:
        async with (
            AsyncClient(server.url, token=ADMIN_TOKEN) as admin,
            AsyncClient(server.url, token=ACME_TOKEN) as acme,
            AsyncClient(server.url, token=ZETA_TOKEN) as zeta,
        ):
            await acme.queue("acme", "jobs").put("m1", "a")
            await zeta.queue("zeta", "jobs").put("m1", "z")
            assert await admin.accounts() == ["acme", "zeta"]
            assert (await admin.queue("zeta", "jobs").get("m1")).body == b"z"  # every account
            with pytest.raises(Forbidden):
                await acme.accounts()  # listing accounts is the admin's
            with pytest.raises(Forbidden):
                await acme.queue("zeta", "jobs").get("m1")
            assert await admin.account("zeta").delete() == 1
            assert await admin.accounts() == ["acme"]
        async with AsyncClient(server.url) as anonymous:
            with pytest.raises(Unauthorized):
                await anonymous.queue("acme", "jobs").list()


async def test_probes_are_open_and_metrics_need_admin(credentials: str) -> None:
    settings = Settings(backend="memory://", credentials=credentials)
    async with running_server(settings) as server, Connection(server.url) as conn:
        for path in ("/health/live", "/health/ready", "/openapi.json"):
            assert (await conn.request("GET", path)).status == 200, path
        anonymous = await conn.request("GET", "/metrics")
        assert anonymous.status == 401
        assert anonymous.headers["www-authenticate"] == 'Bearer realm="burrow"'
        assert (await conn.request("GET", "/metrics", b"", auth(ACME_TOKEN))).status == 403
        scraped = await conn.request("GET", "/metrics", b"", auth(ADMIN_TOKEN))
        assert scraped.status == 200 and b"burrow_" in scraped.body


async def test_unmatched_paths_answer_401_before_404(credentials: str) -> None:
    settings = Settings(backend="memory://", credentials=credentials)
    async with running_server(settings) as server, Connection(server.url) as conn:
        for path in ("/nothing/here/at/all/x", "/v1.0/a/b/c/d"):
            assert (await conn.request("GET", path)).status == 401
            assert (await conn.request("GET", path, b"", auth(ZETA_TOKEN))).status == 404
        # a method a route lacks: 401 first too, then 405 for a valid credential
        assert (await conn.request("PATCH", "/v1.0/zeta/q")).status == 401
        assert (await conn.request("PATCH", "/v1.0/zeta/q", b"", auth(ZETA_TOKEN))).status == 405


async def test_sqs_key_of_the_file_acts_as_its_account(credentials: str) -> None:
    async with running_server(Settings(backend="memory://", credentials=credentials)) as server:

        def scenario() -> None:
            sqs = sqs_client(server.url, "AKIDACME", ACME_SECRET)
            url = sqs.create_queue(QueueName="orders")["QueueUrl"]
            assert url.endswith("/acme/orders")  # the key acts as account acme
            sqs.send_message(QueueUrl=url, MessageBody="from boto3")
            (message,) = sqs.receive_message(QueueUrl=url)["Messages"]
            assert message["Body"] == "from boto3"
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
            sqs.send_message(QueueUrl=url, MessageBody="for v1.0")
            with pytest.raises(ClientError) as error:
                sqs_client(server.url, "AKIDACME", "wrong-secret").list_queues()
            assert error.value.response["Error"]["Code"] == "SignatureDoesNotMatch"
            with SyncConnection(server.url) as conn:  # one store: v1.0 sees the SQS queue's message
                listed = conn.request("GET", "/v1.0/acme", b"", auth(ACME_READ))
                assert listed.status == 200 and orjson.loads(listed.body) == ["orders"]

        await asyncio.to_thread(scenario)


async def test_only_v1_tokens_still_make_sqs_strict(tmp_path: Path) -> None:
    """A file with tokens and no SQS keys: every SQS request is refused (no API stays open)."""
    path = tmp_path / "tokens-only.toml"
    path.write_text(f'[accounts.acme]\ntokens = ["{ACME_TOKEN}"]\n')
    async with running_server(Settings(backend="memory://", credentials=str(path))) as server:

        def scenario() -> None:
            with pytest.raises(ClientError) as error:
                sqs_client(server.url, "testing", "testing").list_queues()
            assert error.value.response["Error"]["Code"] == "InvalidClientTokenId"
            with SyncConnection(server.url) as conn:
                unsigned = conn.request(
                    "POST",
                    "/",
                    b"{}",
                    {"X-Amz-Target": "AmazonSQS.ListQueues", "Content-Type": "application/x-amz-json-1.0"},
                )
                assert unsigned.status == 403 and b"MissingAuthenticationToken" in unsigned.body

        await asyncio.to_thread(scenario)


async def test_sqs_credentials_alone_guard_both_apis() -> None:
    settings = Settings(backend="memory://", sqs_credentials="alice:a-secret")
    async with running_server(settings) as server:

        def scenario() -> None:
            alice = sqs_client(server.url, "alice", "a-secret")
            url = alice.create_queue(QueueName="q")["QueueUrl"]
            assert url.endswith("/alice/q")
            alice.send_message(QueueUrl=url, MessageBody="kept")
            with SyncConnection(server.url) as conn:
                for method, path in [("GET", "/v1.0/alice/q"), ("GET", "/v1.0"), ("DELETE", "/v1.0/alice")]:
                    reply = conn.request(method, path)
                    assert reply.status == 401, (method, path, reply)
                    assert b"alice" not in reply.body and b"kept" not in reply.body
                assert conn.request("GET", "/health/live").status == 200
            assert alice.receive_message(QueueUrl=url)["Messages"][0]["Body"] == "kept"

        await asyncio.to_thread(scenario)


async def test_auth_off_is_unrestricted_and_carries_no_grant() -> None:
    async with running_server(Settings(backend="memory://")) as server, Connection(server.url) as conn:
        assert (await conn.request("PUT", "/v1.0/a/q/m", b"x")).status == 201
        assert (await conn.request("GET", "/v1.0")).status == 200
        assert (await conn.request("GET", "/metrics")).status == 200


async def test_the_grant_rides_on_the_request(credentials: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Handlers (the dashboard's) read ``request.grant``: the account and write flag, None for admins."""
    seen: list[Grant | None] = []
    route, _ = route_for("/v1.0/acme")
    assert route is not None
    original = route.methods["GET"]

    async def spy(api: Any, request: Request, account: str) -> Response:
        seen.append(request.grant)
        return await original(api, request, account)

    monkeypatch.setitem(route.methods, "GET", spy)  # before the App is built: it counts by handler
    settings = Settings(backend="memory://", credentials=credentials)
    async with running_server(settings) as server, Connection(server.url) as conn:
        for token in (ACME_TOKEN, ACME_READ, ADMIN_TOKEN):
            assert (await conn.request("GET", "/v1.0/acme", b"", auth(token))).status == 404
    assert seen == [Grant("acme", True), Grant("acme", False), ADMIN]


# -- through the router -------------------------------------------------------------------------


async def test_tokens_pass_through_the_router(credentials: str) -> None:
    settings = Settings(backend="memory://", credentials=credentials)
    async with (
        running_router(settings) as cluster,
        AsyncClient(cluster.url, token=ACME_TOKEN) as acme,
        Connection(cluster.url) as conn,
    ):
        names = [f"q{i}" for i in range(8)]
        for name in names:  # forwarded: each to its queue's server
            await acme.queue("acme", name).put("m", name)
        assert len({cluster.server_of("acme", n).url for n in names}) >= 1
        assert sorted(await acme.account("acme").queues()) == names  # fanned out over the subset
        for name in names:
            assert (await acme.queue("acme", name).get("m")).body == name.encode()
        for header in ("bearer", "x-auth-token"):  # fanned out to every server
            everything = await conn.request("GET", "/v1.0", b"", auth(ADMIN_TOKEN, header))
            assert everything.status == 200 and orjson.loads(everything.body) == ["acme"]
            mine = await conn.request("GET", "/v1.0/acme", b"", auth(ACME_READ, header))
            assert sorted(orjson.loads(mine.body)) == names
        assert (await conn.request("GET", "/v1.0")).status == 401
        assert (await conn.request("GET", "/v1.0", b"", auth(ACME_TOKEN))).status == 403
        assert (await conn.request("GET", "/v1.0/acme")).status == 401
        assert (await conn.request("GET", "/v1.0/acme", b"", auth(ZETA_TOKEN))).status == 403
        assert (await conn.request("DELETE", "/v1.0/acme", b"", auth(ACME_READ))).status == 403
        assert (await conn.request("GET", "/")).status == 200  # public: the health check
        assert await acme.account("acme").delete() == len(names)


# -- reload on SIGHUP, through a real burrow serve --------------------------------------------------


async def _logged(process: ServeProcess, text: str, after: int, timeout: float = 15.0) -> str:
    """The first log line after index ``after`` containing ``text`` (its stderr is read all along)."""
    async with asyncio.timeout(timeout):
        while True:
            for line in process.log[after:]:
                if text in line:
                    return line
            await asyncio.sleep(0.02)


async def _status(url: str, method: str, path: str, token: str | None) -> Reply:
    async with Connection(url) as conn:
        return await conn.request(
            method, path, b"x" if method == "PUT" else b"", auth(token) if token else {}
        )


async def test_sighup_adds_and_revokes_tokens(credentials: str) -> None:
    path = Path(credentials)
    process = ServeProcess("--backend", "memory://", "--port", "0", "--credentials", credentials)
    url = await process.start()
    try:
        new_token = "new-token-" + "n" * 32
        assert (await _status(url, "PUT", "/v1.0/zeta/q/m", new_token)).status == 401
        path.write_text(
            FILE.replace(f'tokens = ["{ZETA_TOKEN}"]', f'tokens = ["{ZETA_TOKEN}", "{new_token}"]')
        )
        mark = len(process.log)
        process.signal(signal.SIGHUP)
        await _logged(process, "credentials reloaded", mark)
        assert (await _status(url, "PUT", "/v1.0/zeta/q/m", new_token)).status == 201
        # revoked: the old zeta token is gone from the file
        path.write_text(FILE.replace(f'tokens = ["{ZETA_TOKEN}"]', f'tokens = ["{new_token}"]'))
        mark = len(process.log)
        process.signal(signal.SIGHUP)
        await _logged(process, "credentials reloaded", mark)
        assert (await _status(url, "GET", "/v1.0/zeta/q", ZETA_TOKEN)).status == 401
        assert (await _status(url, "GET", "/v1.0/zeta/q", new_token)).status == 200
        # a broken file keeps what is in force, and the error names no secret
        path.write_text(FILE.replace(f'tokens = ["{ACME_TOKEN}"]', f'tokens = ["{ACME_TOKEN}", "short"]'))
        mark = len(process.log)
        process.signal(signal.SIGHUP)
        line = await _logged(process, "credentials not reloaded", mark)
        assert "accounts.acme.tokens[1]" in line and "short" not in line.replace("shorter", "")
        assert ACME_TOKEN not in line
        assert (await _status(url, "GET", "/v1.0/zeta/q", new_token)).status == 200
        path.write_text("this is [not toml")
        mark = len(process.log)
        process.signal(signal.SIGHUP)
        await _logged(process, "credentials not reloaded", mark)
        assert (await _status(url, "GET", "/v1.0/zeta/q", new_token)).status == 200
        assert (await _status(url, "GET", "/v1.0/acme", ACME_READ)).status == 404  # valid, nothing there
    finally:
        await process.stop()
    everything = "".join(process.log)
    for secret in (ADMIN_TOKEN, ACME_TOKEN, ACME_READ, ZETA_TOKEN, new_token, ACME_SECRET):
        assert secret not in everything


async def test_workers_reload_on_sighup(credentials: str) -> None:
    """``--workers``: the supervisor passes SIGHUP to every worker."""
    path = Path(credentials)
    process = ServeProcess(
        "--backend", "memory://", "--port", "0", "--workers", "2", "--credentials", credentials
    )
    url = await process.start()
    try:
        new_token = "new-token-" + "w" * 32
        path.write_text(FILE.replace(f'tokens = ["{ZETA_TOKEN}"]', f'tokens = ["{new_token}"]'))
        mark = len(process.log)
        process.signal(signal.SIGHUP)
        await _logged(process, "[worker-1]", mark)
        await _logged(process, "credentials reloaded", mark)
        async with asyncio.timeout(15):  # both workers logged it
            while sum("credentials reloaded" in line for line in process.log[mark:]) < 2:
                await asyncio.sleep(0.02)
        names = [f"q{i}" for i in range(6)]  # spread over both workers by the router
        for name in names:
            assert (await _status(url, "PUT", f"/v1.0/zeta/{name}/m", new_token)).status == 201
            assert (await _status(url, "GET", f"/v1.0/zeta/{name}/m", ZETA_TOKEN)).status == 401
    finally:
        await process.stop()


async def test_a_bad_file_stops_the_start(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[accounts.acme]\ntokens = ["too-short"]\n')
    process = ServeProcess("--backend", "memory://", "--port", "0", "--credentials", str(path))
    with pytest.raises(AssertionError, match="exited before listening") as error:
        await process.start()
    assert process.proc is not None and await process.proc.wait() == 1
    assert f"{path}: accounts.acme.tokens[0]" in str(error.value)
    assert "too-short" not in str(error.value)


@pytest.mark.parametrize(
    ("host", "auth_on", "warned"),
    [("0.0.0.0", False, True), ("127.0.0.1", False, False), ("0.0.0.0", True, False)],
)
async def test_auth_off_beyond_loopback_is_logged_loudly(
    credentials: str, host: str, auth_on: bool, warned: bool
) -> None:
    args = ["--backend", "memory://", "--port", "0", "--host", host]
    process = ServeProcess(*args, *(["--credentials", credentials] if auth_on else []))
    await process.start()
    await process.stop()
    warnings = [line for line in process.log if "AUTH IS OFF" in line]
    assert bool(warnings) == warned
    if warned:
        assert "WARNING" in warnings[0] and host in warnings[0]


# -- the file's checks ----------------------------------------------------------------------------


def _load(tmp_path: Path, text: str, sqs: str = "") -> Any:
    path = tmp_path / "c.toml"
    path.write_text(text)
    return load_credentials(str(path), sqs)


@pytest.mark.parametrize(
    ("text", "where", "secret"),
    [
        ("admins = []", "unknown key 'admins'", None),
        ('[accounts.acme]\ntoken = ["x"]', "accounts.acme: unknown key 'token'", None),
        ('[accounts."bad\\u200bname"]\ntokens = []', "not a valid name", None),
        ('[accounts.acme]\ntokens = ["short-secret-1"]', "accounts.acme.tokens[0]", "short-secret-1"),
        ('[accounts.acme]\ntokens = ["with space 0123456789"]', "accounts.acme.tokens[0]", "with space"),
        ("[accounts.acme]\ntokens = [1234567890123456789]", "accounts.acme.tokens[0]", None),
        (
            f'admin_tokens = ["{ADMIN_TOKEN}"]\n[accounts.acme]\nread_tokens = ["{ADMIN_TOKEN}"]',
            "accounts.acme.read_tokens[0]: this token is also listed at admin_tokens[0]",
            ADMIN_TOKEN,
        ),
        (
            '[accounts.a]\nsqs_keys = { K1 = "secret-one" }\n[accounts.b]\nsqs_keys = { K1 = "secret-two" }',
            "access key 'K1' is also listed at accounts.a.sqs_keys",
            "secret-two",
        ),
        ('[accounts.a]\nsqs_keys = { "bad key" = "s" }', "must be 1 to 128 of", None),
        ('[accounts.a]\nsqs_keys = { K = "" }', "accounts.a.sqs_keys.K: a secret", None),
        ("[accounts.a.quotas]\nqueues = -1", "accounts.a.quotas.queues: must be 0 or more", None),
        ('[accounts.a.quotas]\nbytes = "1T"', "accounts.a.quotas.bytes", None),
        ("[accounts.a.quotas]\nbytes = true", "accounts.a.quotas.bytes", None),
        ("[accounts.a.quotas]\nqueue = 1", "accounts.a.quotas: unknown key 'queue'", None),
        ("[accounts.a]\ntokens = [", "not valid TOML", None),
    ],
)
def test_file_mistakes_name_the_file_and_key_never_the_secret(
    tmp_path: Path, text: str, where: str, secret: str | None
) -> None:
    with pytest.raises(CredentialsError) as error:
        _load(tmp_path, text)
    message = str(error.value)
    assert message.startswith(str(tmp_path / "c.toml") + ": "), message
    assert where in message, message
    if secret is not None:
        assert secret not in message


def test_sqs_credentials_join_the_file(tmp_path: Path) -> None:
    loaded = _load(tmp_path, '[accounts.acme]\nsqs_keys = { AKIDACME = "s3cret" }', "alice:a-secret")
    assert loaded.sqs_keys["AKIDACME"] == ("s3cret", "acme")
    assert loaded.sqs_keys["alice"] == ("a-secret", "alice")  # a key named account, as before
    assert "s3cret" not in repr(loaded) and "a-secret" not in repr(loaded)
    with pytest.raises(CredentialsError, match="--sqs-credentials: access key 'AKIDACME' is also listed"):
        _load(tmp_path, '[accounts.acme]\nsqs_keys = { AKIDACME = "s3cret" }', "AKIDACME:other")


def test_tokens_are_kept_as_digests_only(tmp_path: Path) -> None:
    loaded = _load(tmp_path, FILE)
    assert len(loaded.grants) == 4
    assert all(len(key) == 32 for key in loaded.grants)  # SHA-256 digests
    text = repr(loaded) + repr(dict(loaded.grants))
    for token in (ADMIN_TOKEN, ACME_TOKEN, ACME_READ, ZETA_TOKEN):
        assert token not in text and token.encode() not in b"".join(loaded.grants)


async def test_quotas_reach_the_engine_at_start_and_reload(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(FILE)
    settings = Settings(backend="memory://", credentials=str(path))
    engine = Engine(open_backend("memory://", settings), settings)
    guard = Guard(settings, engine.set_quotas)
    assert engine.quotas == {"acme": Quota(queues=100, messages=1_000_000, bytes=1 << 30, waiters=100)}
    path.write_text(FILE.replace('bytes = "1G"', 'bytes = "512M"').replace("queues = 100", "queues = 0"))
    assert guard.reload()
    assert engine.quotas["acme"] == Quota(queues=0, messages=1_000_000, bytes=512 << 20, waiters=100)
    path.write_text(FILE.replace("queues = 100", 'queues = "lots"'))
    assert not guard.reload()  # kept
    assert engine.quotas["acme"].queues == 0


def test_a_guard_checks_without_a_server(credentials: str) -> None:
    """The route table's check in isolation, for the cases the servers above do not reach."""
    guard = Guard(Settings(credentials=credentials))
    route, parts = route_for("/v1.0/acme/q")
    assert route is not None
    read = Request("GET", "/v1.0/acme/q", headers={"authorization": f"bearer  {ACME_READ} "})
    assert guard.check(read, route, parts) == Grant("acme", False)  # scheme any case, spaces trimmed
    with pytest.raises(Unauthorized):
        guard.check(Request("GET", "/v1.0/acme/q", headers={"authorization": "Bearer"}), route, parts)
    with pytest.raises(Forbidden):  # a name that is not valid is nobody's account
        bad, bad_parts = route_for("/v1.0/%ff/q")
        assert bad is not None
        guard.check(Request("GET", "/v1.0/%ff/q", headers={"x-auth-token": ACME_TOKEN}), bad, bad_parts)
