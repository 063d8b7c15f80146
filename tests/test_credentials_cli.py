"""``burrow credentials``: the file it writes, and a round trip through a running ``burrow serve``
(mint, the server accepts after SIGHUP, revoke, refused)."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import stat
import sys
import tomllib
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from burrow.auth.manage import main
from burrow.client import Connection
from burrow.testing.process import ServeProcess
from tests.boto import sqs_client


async def cli(*args: str, stdin: bytes = b"", env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """``python -m burrow credentials ARGS``: (exit status, stdout, stderr)."""
    return await burrow("credentials", *args, stdin=stdin, env=env)


async def burrow(*args: str, stdin: bytes = b"", env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """``python -m burrow ARGS``: (exit status, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "burrow",
        *args,
        env=None if env is None else {**os.environ, **env},
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def _reload(process: ServeProcess) -> None:
    mark = len(process.log)
    process.signal(signal.SIGHUP)
    async with asyncio.timeout(15):
        while not any("credentials reloaded" in line for line in process.log[mark:]):
            await asyncio.sleep(0.02)


async def _status(url: str, method: str, path: str, token: str) -> int:
    async with Connection(url) as conn:
        body = b"x" if method == "PUT" else b""
        return (await conn.request(method, path, body, {"Authorization": f"Bearer {token}"})).status


async def test_round_trip_through_a_running_server(tmp_path: Path) -> None:
    path = str(tmp_path / "credentials.toml")
    assert (await cli("--file", path, "add-account", "acme"))[0] == 0
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    status, token, err = await cli("--file", path, "mint-token", "acme")
    token = token.strip()
    assert status == 0 and len(token) == 43 and "SIGHUP" in err
    status, out, _ = await cli("--file", path, "mint-sqs-key", "acme")
    fields = dict(line.split("=", 1) for line in out.split())
    key, secret = fields["access_key"], fields["secret"]
    assert status == 0 and key.startswith("BKIA") and len(secret) == 40
    with open(path, "ab") as fh:  # an operator adds quotas by hand: later edits keep them
        fh.write(b'\n[accounts.acme.quotas]\nqueues = 10\nbytes = "1M"\n')

    process = ServeProcess("--backend", "memory://", "--port", "0", "--credentials", path)
    url = await process.start()
    try:
        assert await _status(url, "PUT", "/v1.0/acme/q/m1", token) == 201
        # the command-line client: --token, or BURROW_TOKEN
        put = await burrow("put", "--url", url, "--account", "acme", "--token", token, "q", "m2", "hi")
        assert put[0] == 0, put
        got = await burrow(
            "get", "--url", url, "--account", "acme", "q", "m2", "--raw", env={"BURROW_TOKEN": token}
        )
        assert got[:2] == (0, "hi"), got
        refused = await burrow("get", "--url", url, "--account", "acme", "q", env={"BURROW_TOKEN": ""})
        assert refused[0] == 3 and "a credential is required" in refused[2], refused

        def sqs_works(access: str, secret_key: str) -> str:
            try:
                sqs_client(url, access, secret_key).list_queues()
            except ClientError as error:
                return str(error.response["Error"]["Code"])
            return "ok"

        assert await asyncio.to_thread(sqs_works, key, secret) == "ok"

        status, reader, _ = await cli("--file", path, "mint-token", "acme", "--read-only")
        reader = reader.strip()
        status, admin, _ = await cli("--file", path, "mint-admin-token")
        admin = admin.strip()
        assert await _status(url, "GET", "/v1.0/acme/q", reader) == 401  # not before SIGHUP
        await _reload(process)
        assert await _status(url, "GET", "/v1.0/acme/q", reader) == 200
        assert await _status(url, "DELETE", "/v1.0/acme/q", reader) == 403
        assert await _status(url, "GET", "/v1.0", admin) == 200

        status, out, _ = await cli("--file", path, "list")
        assert status == 0 and "admin tokens: 1" in out
        assert "acme\ttokens=1\tread_tokens=1\tsqs_keys=1\tquotas=yes" in out
        for secret_value in (token, reader, admin, secret):
            assert secret_value not in out

        assert (await cli("--file", path, "revoke-token", "-", stdin=token.encode() + b"\n"))[0] == 0
        assert (await cli("--file", path, "revoke-sqs-key", key))[0] == 0
        await _reload(process)
        assert await _status(url, "GET", "/v1.0/acme/q", token) == 401
        assert await asyncio.to_thread(sqs_works, key, secret) == "InvalidClientTokenId"
        assert await _status(url, "GET", "/v1.0/acme/q", reader) == 200

        assert (await cli("--file", path, "remove-account", "acme"))[0] == 0
        await _reload(process)
        assert await _status(url, "GET", "/v1.0/acme/q", reader) == 401
        assert await _status(url, "GET", "/v1.0/acme/q", admin) == 200  # the data is still there
    finally:
        await process.stop()
    assert not any(s in "".join(process.log) for s in (token, reader, admin, secret))


def _run(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    return main(list(args), out), out.getvalue()


def test_quotas_and_other_accounts_are_kept(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        '[accounts.zeta]\ntokens = ["zeta-token-0123456789"]\n[accounts.zeta.quotas]\nmessages = 5\n'
    )
    assert _run("--file", str(path), "add-account", "acme")[0] == 0
    assert _run("--file", str(path), "mint-token", "acme")[0] == 0
    data = tomllib.loads(path.read_text())
    assert data["accounts"]["zeta"] == {"tokens": ["zeta-token-0123456789"], "quotas": {"messages": 5}}
    assert len(data["accounts"]["acme"]["tokens"]) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["c.toml"]  # no temporary file left


@pytest.mark.parametrize(
    ("args", "status", "message"),
    [
        (["mint-token", "nobody"], 1, "no account 'nobody'"),
        (["revoke-token", "not-a-token-in-the-file"], 1, "no such token"),
        (["revoke-sqs-key", "NOKEY"], 1, "no SQS key 'NOKEY'"),
        (["remove-account", "nobody"], 1, "no account 'nobody'"),
        (["add-account", "acme"], 2, "already exists"),
        (["add-account", "bad\u200bname"], 2, "not a valid name"),
        (["revoke-token", "short"], 2, "16 to 1024"),
        (["frobnicate"], 2, "invalid choice"),
    ],
)
def test_mistakes_exit_with_a_reason_and_change_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], status: int, message: str
) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[accounts.acme]\ntokens = ["acme-token-0123456789"]\n')
    before = path.read_bytes()
    assert _run("--file", str(path), *args)[0] == status
    assert message in capsys.readouterr().err
    assert path.read_bytes() == before


def test_a_file_the_server_would_refuse_is_not_edited(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[accounts.acme]\ntokens = ["too-short"]\n')
    assert _run("--file", str(path), "mint-token", "acme")[0] == 2
    err = capsys.readouterr().err
    assert "accounts.acme.tokens[0]" in err and "too-short" not in err
    assert path.read_text() == '[accounts.acme]\ntokens = ["too-short"]\n'
    monkeypatch.delenv("BURROW_CREDENTIALS", raising=False)
    assert _run("list")[0] == 2
    assert "--file" in capsys.readouterr().err
    monkeypatch.setenv("BURROW_CREDENTIALS", str(tmp_path / "new.toml"))
    status, token = _run("mint-admin-token")  # the file from the environment, created
    assert status == 0 and tomllib.loads((tmp_path / "new.toml").read_text())["admin_tokens"] == [
        token.strip()
    ]
