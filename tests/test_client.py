"""The one HTTP client (:mod:`burrow.client`): its sans-I/O request encoding and response parsing,
and its asyncio and blocking connections against a real server."""

from __future__ import annotations

import asyncio
import threading

import pytest

from burrow.client import (
    Connection,
    ProtocolError,
    ResponseParser,
    SyncConnection,
    encode_request,
    path,
    raise_for_status,
    scan,
)
from burrow.client.wire import Reply, Span
from burrow.config import Settings
from burrow.core.errors import (
    BadRequest,
    BurrowError,
    NotFound,
    PayloadTooLarge,
    StorageUnavailable,
    TooManyConnections,
)
from burrow.testing.server import running_server

OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
NO_CONTENT = b"HTTP/1.1 204 No Content\r\ndate: x\r\n\r\n"


def test_encode_request() -> None:
    assert encode_request("GET", "/v1.0") == b"GET /v1.0 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    assert encode_request("PUT", "/q/m", b"abc", host="h:1") == (
        b"PUT /q/m HTTP/1.1\r\nHost: h:1\r\nContent-Length: 3\r\n\r\nabc"
    )
    assert encode_request("POST", "/") == b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n"
    # a Host among the headers replaces the default, in its place; framing headers are the caller's
    chunked = encode_request(
        "POST", "/", b"0\r\n\r\n", [("X-A", "1"), ("host", "x"), ("Transfer-Encoding", "chunked")]
    )
    assert chunked == b"POST / HTTP/1.1\r\nX-A: 1\r\nhost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    assert encode_request("GET", "/", host=None, version="1.0") == b"GET / HTTP/1.0\r\n\r\n"
    assert encode_request("GET", "/", headers={"X-Name": "\u00e9"}).endswith(b"X-Name: \xc3\xa9\r\n\r\n")
    assert path("a", "b/c") == "/v1.0/a/b%2Fc"


def test_scan_counts_frames_and_stops_at_an_incomplete_response() -> None:
    head_reply = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"  # any case; to a HEAD: no body
    buf = b"HTTP/1.1 100 Continue\r\n\r\n" + OK + NO_CONTENT + OK[:-1]
    statuses: dict[bytes, int] = {}
    spans: list[Span] = []
    pos, count, need = scan(buf, 0, statuses, spans)
    assert (count, statuses) == (3, {b"100": 1, b"200": 1, b"204": 1})
    assert pos == len(buf) - len(OK) + 1 and need == len(buf) + 1
    code, start, body, end = spans[1]
    assert (code, buf[start:end], buf[body:end]) == (b"200", OK, b"ok")
    assert scan(head_reply, head_only=True)[:2] == (len(head_reply), 1)
    assert scan(head_reply)[1:] == (0, len(head_reply) + 10)
    assert scan(OK * 3, limit=2)[:2] == (2 * len(OK), 2)
    with pytest.raises(ProtocolError):
        scan(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")


def test_parser_one_byte_at_a_time() -> None:
    stream = b"HTTP/1.1 200 OK\r\nX-A: 1\r\nx-a: 2\r\nConnection: close\r\ncontent-length: 3\r\n\r\nabc"
    stream += (
        NO_CONTENT + b"HTTP/1.0 200 OK\r\n\r\n" + b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n\r\nrest"
    )
    parser = ResponseParser()
    replies: list[Reply] = []
    for i in range(len(stream)):
        parser.feed(stream[i : i + 1])
        while (reply := parser.next_reply()) is not None:
            replies.append(reply)
    first, second, third, fourth = replies
    assert (first.status, first.reason, first.version, first.body) == (200, "OK", "HTTP/1.1", b"abc")
    assert first.headers == {"x-a": "1, 2", "connection": "close", "content-length": "3"}
    assert first.fields[:2] == [("x-a", "1"), ("x-a", "2")]
    assert [r.keep_alive for r in replies] == [False, True, False, True]
    assert (second.status, second.body, second.headers) == (204, b"", {"date": "x"})
    assert third.version == "HTTP/1.0" and fourth.headers["connection"] == "keep-alive"
    assert len(parser) == 4 and parser.take_until(b"x") is None and parser.take() == b"rest"
    parser.feed(b"HTTP/2 200\r\n\r\n")
    with pytest.raises(ProtocolError):
        parser.next_reply()


def test_errors_come_back_as_the_servers_classes() -> None:
    def error(status: int, body: bytes) -> BurrowError:
        with pytest.raises(BurrowError) as raised:
            raise_for_status(Reply(status, {}, body))
        return raised.value

    assert raise_for_status(Reply(204)).status == 204
    assert isinstance(error(404, b'{"error": "not_found", "message": "no q"}'), NotFound)
    assert error(404, b'{"error": "not_found", "message": "no q"}').message == "no q"
    assert isinstance(error(413, b'{"error": "payload_too_large", "message": "big"}'), PayloadTooLarge)
    assert isinstance(error(503, b'{"error": "unavailable", "message": "full"}'), TooManyConnections)
    assert isinstance(error(503, b'{"error": "storage_unavailable", "message": "disk"}'), StorageUnavailable)
    assert isinstance(error(400, b"not json"), BadRequest) and error(400, b"not json").message == "not json"
    assert type(error(418, b"{}")) is BurrowError


async def test_async_connection_plain_pipelined_and_raw() -> None:
    settings = Settings(backend="memory://", max_body_bytes=10)
    async with running_server(settings) as server, Connection(server.url) as conn:
        assert (await conn.call("PUT", path("a", "q", "m"), b"body")).status == 201
        assert (await conn.request("GET", path("a", "q", "m") + "?detail=body")).body == b"body"
        head = await conn.request("HEAD", path("a", "q", "m"))
        assert head.status == 405 and head.body == b""  # no body follows a HEAD's head
        with pytest.raises(NotFound):
            await conn.call("GET", path("a", "nothing"))
        replies = await conn.pipeline([encode_request("GET", "/")] * 3)
        assert [r.json() for r in replies] == [["v1.0"]] * 3
        with pytest.raises(PayloadTooLarge):  # answered with connection: close ...
            await conn.call("PUT", path("a", "q", "big"), b"x" * 11)
        assert (await conn.request("GET", "/")).status == 200  # ... so the next request reconnects
        raw = await Connection(server.url, timeout=5).connect()
        try:
            await raw.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /x HTTP/9.9\r\n\r\n")
            assert (await raw.reply()).status == 200
            assert await raw.read_until(b"\r\n") == b"HTTP/1.1 400 Bad Request\r\n"
            assert b'"bad_request"' in await raw.read_to_eof()
        finally:
            await raw.close()


async def test_sync_connection_from_another_thread() -> None:
    async with running_server() as server:
        got: list[object] = []

        def client() -> None:
            with SyncConnection(server.url, timeout=10) as conn:
                got.append(conn.call("PUT", path("a", "q", "m"), b"x").status)
                got.append(conn.request("GET", path("a", "q") + "?detail=id").json())
                got.append([r.status for r in conn.pipeline([encode_request("GET", "/")] * 2)])
                try:
                    conn.call("DELETE", path("a", "q", "gone"))
                except NotFound as error:
                    got.append(error.message)

        thread = threading.Thread(target=client)
        thread.start()
        while thread.is_alive():  # the server runs on this loop: let it serve meanwhile
            await asyncio.sleep(0.01)
        assert got[:3] == [201, ["m"], [200, 200]] and isinstance(got[3], str) and got[3]
