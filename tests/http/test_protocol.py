"""The HTTP layer over real sockets: framing, keep-alive, pipelining, limits, errors, shutdown."""

from __future__ import annotations

import asyncio
import socket
import sys
import time
from collections.abc import Awaitable, Callable

import pytest
import uvloop

from burrow.client import Reply
from burrow.http.echo import RESPONSE, EchoProtocol, start_echo_server
from burrow.http.server import loop_factory, run
from burrow.http.types import Request, Response
from tests.http.conftest import App, Client, Serve, get

Connect = Callable[[int], Awaitable[Client]]
CHUNKED = b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"


async def wait_until(predicate: Callable[[], bool], timeout: float = 2.0) -> None:
    """Poll a condition the test cannot await directly (e.g. the server's connection count)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def assert_served(port: int, connect: Connect) -> None:
    """A fresh client on its own connection still gets a normal answer."""
    client = await connect(port)
    reply = await client.exchange(get("/still/ok"))
    assert reply.status == 200
    assert reply.json()["path"] == "/still/ok"


async def assert_error_and_close(client: Client, status: int, code: str) -> Reply:
    reply = await client.reply()
    assert reply.status == status, reply.body
    assert reply.headers["content-type"] == "application/json"
    assert reply.headers["connection"] == "close"
    assert reply.json()["error"] == code
    assert reply.json()["message"]
    assert await client.at_eof()
    return reply


# -- basics -----------------------------------------------------------------------------------


async def test_simple_get(serve: Serve, clients: Connect) -> None:
    server = await serve()
    client = await clients(server.port)
    reply = await client.exchange(get("/hello"))
    assert reply.status == 200
    assert reply.reason == "OK"
    assert reply.headers["content-type"] == "application/json"
    assert reply.headers["x-test"] == "yes"
    assert "date" in reply.headers
    assert "connection" not in reply.headers
    data = reply.json()
    assert data["method"] == "GET"
    assert data["path"] == "/hello"
    assert data["query"] == ""
    host, port = client.sockname
    assert data["peer"] == f"{host}:{port}"


async def test_path_and_query_split(serve: Serve, clients: Connect) -> None:
    server = await serve()
    client = await clients(server.port)
    data = (await client.exchange(get("/v1/a%20b/queues?limit=5&wait=2&x=%3F"))).json()
    assert data["path"] == "/v1/a%20b/queues"  # still percent-encoded
    assert data["query"] == "limit=5&wait=2&x=%3F"  # raw, without '?'
    data = (await client.exchange(get("/empty?"))).json()
    assert (data["path"], data["query"]) == ("/empty", "")
    data = (await client.exchange(get("http://test/abs/form?q=1"))).json()  # Host: test
    assert (data["path"], data["query"]) == ("/abs/form", "q=1")
    data = (await client.exchange(get("/frag?a=1#section"))).json()
    assert (data["path"], data["query"]) == ("/frag", "a=1")


async def test_headers_lowercased_and_repeats_joined(serve: Serve, clients: Connect) -> None:
    server = await serve()
    client = await clients(server.port)
    reply = await client.exchange(get("/", "X-Thing: one", "x-thing: two", "Accept: */*"))
    headers = reply.json()["headers"]
    assert headers["x-thing"] == "one, two"
    assert headers["accept"] == "*/*"
    assert headers["host"] == "test"


async def test_post_with_content_length(serve: Serve, clients: Connect) -> None:
    server = await serve()
    client = await clients(server.port)
    body = b'{"messages": [1, 2, 3]}'
    await client.send(b"POST /q HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % len(body))
    await client.send(body[:5])  # the body may arrive in pieces
    await client.send(body[5:])
    data = (await client.reply()).json()
    assert data["method"] == "POST"
    assert data["body"] == body.decode()


async def test_chunked_body(serve: Serve, clients: Connect) -> None:
    server = await serve()
    client = await clients(server.port)
    await client.send(b"PUT /q HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
    await client.send(b"5\r\nhello\r\n")
    await client.send(b"6;ext=1\r\n world\r\n0\r\n\r\n")
    data = (await client.reply()).json()
    assert data["method"] == "PUT"
    assert data["body"] == "hello world"
    # and the connection is still good afterwards
    assert (await client.exchange(get("/after"))).json()["path"] == "/after"


async def test_expect_100_continue(serve: Serve, clients: Connect) -> None:
    server = await serve(max_body_bytes=100)
    client = await clients(server.port)
    await client.send(b"PUT /q HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
    assert await client.read_until(b"\r\n\r\n", timeout=2) == b"HTTP/1.1 100 Continue\r\n\r\n"
    reply = await client.exchange(b"hello")
    assert reply.json()["body"] == "hello"
    # a body that would be refused is refused before it is sent
    await client.send(b"PUT /q HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 101\r\n\r\n")
    await assert_error_and_close(client, 413, "payload_too_large")


async def test_head_has_length_but_no_body(serve: Serve, clients: Connect) -> None:
    server = await serve()
    client = await clients(server.port)
    await client.send(b"HEAD /big?n=10 HTTP/1.1\r\nHost: t\r\n\r\n")
    line = await client.read_until(b"\r\n\r\n")
    assert b"content-length: 10\r\n" in line
    reply = await client.exchange(get("/next"))  # no stray body bytes before the next response
    assert reply.json()["path"] == "/next"


async def test_a_head_rejected_while_parsing_gets_no_error_body(serve: Serve, clients: Connect) -> None:
    server = await serve(max_url_bytes=64)
    client = await clients(server.port)
    await client.send(b"HEAD /" + b"u" * 100 + b" HTTP/1.1\r\nHost: t\r\n\r\n")
    head = await client.read_until(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 414 ")
    assert b"content-length: " in head and b"connection: close" in head
    assert await client.read_to_eof(timeout=2) == b""  # no body, then the close


async def test_no_body_statuses_have_no_content_length(serve: Serve, clients: Connect) -> None:
    server = await serve()
    client = await clients(server.port)
    reply = await client.exchange(get("/status?s=204"))
    assert reply.status == 204
    assert "content-length" not in reply.headers
    assert (await client.exchange(get("/status?s=201"))).status == 201


async def test_keep_alive_several_requests(serve: Serve, clients: Connect) -> None:
    server = await serve()
    client = await clients(server.port)
    for i in range(5):
        reply = await client.exchange(get(f"/n/{i}"))
        assert reply.json()["path"] == f"/n/{i}"
    assert server.connections == 1


async def test_pipelining_keeps_order_with_slow_requests(serve: Serve, clients: Connect) -> None:
    server = await serve()
    client = await clients(server.port)
    paths = [f"/slow?d=0.0{i % 5}&i={i}" if i % 10 == 0 else f"/fast?i={i}" for i in range(50)]
    await client.send(b"".join(get(p) for p in paths))  # one write
    for i in range(50):
        data = (await client.reply()).json()
        assert data["query"].endswith(f"i={i}"), (i, data)


async def test_deep_pipelining_pauses_and_resumes_reading(serve: Serve, app: App, clients: Connect) -> None:
    server = await serve()
    client = await clients(server.port)
    # 300 requests behind a slow one: more than the queue bound, so reading pauses...
    await client.send(get("/slow?d=0.1&i=0") + b"".join(get(f"/p?i={i}") for i in range(1, 300)))
    for i in range(300):
        assert (await client.reply()).json()["query"].endswith(f"i={i}")
    assert app.calls == 300
    # ...and resumes once they are answered: later requests are still read
    assert (await client.exchange(get("/later"))).json()["path"] == "/later"


async def test_peer_not_reading_stops_handling(serve: Serve, app: App) -> None:
    server = await serve()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", server.port))
    client = await Client(timeout=5.0).connect(sock=sock)
    try:
        n = 16
        await client.send(b"".join(get("/big?n=1000000") for _ in range(n)))
        await wait_until(lambda: app.calls > 0)
        await asyncio.sleep(0.15)  # asserting something does NOT happen needs a pause
        assert app.calls < n, "server kept handling while the peer was not reading"
        for _ in range(n):
            assert len((await client.reply()).body) == 1_000_000
        assert app.calls == n
    finally:
        await client.close()


async def test_http10_closes_by_default(serve: Serve, clients: Connect) -> None:
    server = await serve()
    client = await clients(server.port)
    reply = await client.exchange(get("/old", version="1.0"))
    assert reply.status == 200
    assert reply.headers["connection"] == "close"
    assert await client.at_eof()


async def test_http10_keep_alive_when_asked(serve: Serve, clients: Connect) -> None:
    server = await serve()
    client = await clients(server.port)
    for _ in range(2):
        reply = await client.exchange(get("/old", "Connection: keep-alive", version="1.0"))
        assert reply.headers["connection"] == "keep-alive"


async def test_connection_close_is_honoured(serve: Serve, clients: Connect, app: App) -> None:
    server = await serve()
    client = await clients(server.port)
    # a request pipelined after "Connection: close" is not handled
    await client.send(get("/last", "Connection: close") + get("/never"))
    reply = await client.reply()
    assert reply.json()["path"] == "/last"
    assert reply.headers["connection"] == "close"
    assert await client.at_eof()
    assert app.calls == 1


async def test_client_eof_still_gets_ready_responses(serve: Serve, clients: Connect, app: App) -> None:
    server = await serve()
    client = await clients(server.port)
    # A FIN counts as a vanished client; responses that are ready are still flushed before the close.
    await client.send(get("/a") + get("/b"))
    client.write_eof()
    assert (await client.reply()).json()["path"] == "/a"
    assert (await client.reply()).json()["path"] == "/b"
    assert await client.at_eof()
    await wait_until(lambda: server.connections == 0)


async def test_awaitable_handler_that_is_not_a_coroutine(serve: Serve, clients: Connect) -> None:
    def handler(req: Request) -> asyncio.Future[Response]:
        fut: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        fut.set_result(Response(200, req.path.encode(), "text/plain"))
        return fut

    server = await serve(handler)
    client = await clients(server.port)
    assert (await client.exchange(get("/future"))).body == b"/future"


async def test_handler_runs_in_a_task_after_it_suspends(serve: Serve, app: App, clients: Connect) -> None:
    server = await serve()
    client = await clients(server.port)
    assert (await client.exchange(get("/task"))).status == 200
    # fast path: the first step runs synchronously, with no Task; the rest runs in one
    assert app.in_task == [False, True]


# -- handler failures and cancellation --------------------------------------------------------


async def test_handler_exception_is_500_and_connection_survives(
    serve: Serve, clients: Connect, caplog: pytest.LogCaptureFixture
) -> None:
    server = await serve()
    client = await clients(server.port)
    reply = await client.exchange(get("/boom"))
    assert reply.status == 500
    assert reply.json()["error"] == "internal"
    assert "connection" not in reply.headers
    assert any(r.name == "burrow.http" and r.exc_info for r in caplog.records)
    assert (await client.exchange(get("/again"))).json()["path"] == "/again"


async def test_exception_after_suspending_is_500(serve: Serve, clients: Connect) -> None:
    async def handler(req: Request) -> Response:
        await asyncio.sleep(0.01)
        raise ValueError("late")

    server = await serve(handler)
    client = await clients(server.port)
    assert (await client.exchange(get("/x"))).status == 500
    assert (await client.exchange(get("/y"))).status == 500  # still usable


async def test_disconnect_cancels_running_handler(
    serve: Serve, app: App, clients: Connect, caplog: pytest.LogCaptureFixture
) -> None:
    server = await serve()
    client = await clients(server.port)
    await client.send(get("/hang") + get("/queued"))
    await asyncio.wait_for(app.hang_started.wait(), 2)
    await client.close()
    await asyncio.wait_for(app.hang_cancelled.wait(), 2)
    await wait_until(lambda: server.connections == 0)
    assert app.calls == 1  # the queued request was dropped, not handled
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]


# -- limits -----------------------------------------------------------------------------------


async def test_declared_body_too_large_is_413(serve: Serve, clients: Connect, app: App) -> None:
    server = await serve(max_body_bytes=100)
    client = await clients(server.port)
    await client.send(b"POST /q HTTP/1.1\r\nHost: t\r\nContent-Length: 101\r\n\r\n")  # no body sent
    await assert_error_and_close(client, 413, "payload_too_large")
    assert app.calls == 0
    ok = await clients(server.port)
    reply = await ok.exchange(b"POST /q HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n" + b"a" * 100)
    assert reply.status == 200  # exactly the limit is fine


async def test_streamed_chunked_body_too_large_is_413(serve: Serve, clients: Connect) -> None:
    server = await serve(max_body_bytes=100)
    client = await clients(server.port)
    await client.send(CHUNKED)
    await client.send(b"32\r\n" + b"a" * 50 + b"\r\n")
    await client.send(b"33\r\n" + b"a" * 51 + b"\r\n")
    await assert_error_and_close(client, 413, "payload_too_large")
    await assert_served(server.port, clients)


async def test_header_section_too_large_is_431(serve: Serve, clients: Connect) -> None:
    server = await serve(max_header_bytes=1024)
    client = await clients(server.port)
    await client.send(get("/", "X-Big: " + "a" * 2000))
    await assert_error_and_close(client, 431, "headers_too_large")
    ok = await clients(server.port)
    assert (await ok.exchange(get("/", "X-Fits: " + "a" * 900))).status == 200
    await assert_served(server.port, clients)


async def test_endless_header_is_cut_off_with_431(serve: Serve, clients: Connect) -> None:
    server = await serve(max_header_bytes=1024)
    client = await clients(server.port)
    await client.send(b"GET / HTTP/1.1\r\nX-Endless: ")
    for _ in range(20):  # never finishes the header; the server must not buffer it forever
        try:
            await client.send(b"a" * 200)
            await asyncio.sleep(0.01)
        except ConnectionError:
            break
    await assert_error_and_close(client, 431, "headers_too_large")


async def test_too_many_headers_is_431(serve: Serve, clients: Connect) -> None:
    server = await serve(max_header_count=10)
    ok = await clients(server.port)
    nine = [f"X-H{i}: v" for i in range(9)]  # plus Host: 10 headers
    assert (await ok.exchange(get("/", *nine))).status == 200
    client = await clients(server.port)
    await client.send(get("/", *nine, "X-One-Too-Many: v"))
    await assert_error_and_close(client, 431, "headers_too_large")
    # repeats of one header count too
    client = await clients(server.port)
    await client.send(get("/", *(["X-Same: v"] * 11)))
    await assert_error_and_close(client, 431, "headers_too_large")


async def test_url_too_long_is_414(serve: Serve, clients: Connect) -> None:
    server = await serve(max_url_bytes=100)
    ok = await clients(server.port)
    assert (await ok.exchange(get("/" + "a" * 99))).status == 200
    client = await clients(server.port)
    await client.send(get("/" + "a" * 100))
    await assert_error_and_close(client, 414, "uri_too_long")
    await assert_served(server.port, clients)


async def test_header_timeout_is_408(serve: Serve, clients: Connect) -> None:
    server = await serve(header_timeout=0.2)
    client = await clients(server.port)
    started = time.monotonic()
    await client.send(b"GET / HTTP/1.1\r\nHost: t\r\n")  # headers never finish
    await assert_error_and_close(client, 408, "request_timeout")
    assert 0.15 < time.monotonic() - started < 2
    await assert_served(server.port, clients)


async def test_body_timeout_is_408(serve: Serve, clients: Connect) -> None:
    server = await serve(body_timeout=0.2)
    client = await clients(server.port)
    started = time.monotonic()
    await client.send(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc")
    reply = await assert_error_and_close(client, 408, "request_timeout")
    assert 0.15 < time.monotonic() - started < 2
    assert "body" in reply.json()["message"]


async def test_idle_connection_closed_silently(serve: Serve, clients: Connect) -> None:
    server = await serve(idle_timeout=0.2)
    client = await clients(server.port)
    assert (await client.exchange(get("/"))).status == 200
    started = time.monotonic()
    assert await client.at_eof()  # no bytes, just the close
    assert 0.15 < time.monotonic() - started < 2
    await wait_until(lambda: server.connections == 0)


async def test_busy_connection_not_timed_out(serve: Serve, clients: Connect) -> None:
    server = await serve(header_timeout=0.1, body_timeout=0.1, idle_timeout=0.2)
    client = await clients(server.port)
    # a handler slower than every timeout is not a client stall
    assert (await client.exchange(get("/slow?d=0.3"))).status == 200
    # requests spaced under the idle timeout keep the connection, well past one idle period
    for _ in range(4):
        await asyncio.sleep(0.07)
        assert (await client.exchange(get("/"))).status == 200


async def test_max_connections_503(serve: Serve, clients: Connect) -> None:
    server = await serve(max_connections=2)
    first, second = await clients(server.port), await clients(server.port)
    assert (await first.exchange(get("/"))).status == 200
    assert (await second.exchange(get("/"))).status == 200
    third = await clients(server.port)
    await assert_error_and_close(third, 503, "unavailable")
    assert server.connections == 2
    assert (await first.exchange(get("/"))).status == 200  # existing ones unaffected
    await first.close()
    await wait_until(lambda: server.connections == 1)
    await assert_served(server.port, clients)


# -- malformed and ambiguous framing -----------------------------------------------------------

BAD_REQUESTS = {
    # rejected by llhttp itself
    "content-length and chunked": b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    "chunked and content-length": b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
    b"Content-Length: 3\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    "duplicate equal content-length": b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n"
    b"Content-Length: 3\r\n\r\nabc",
    "duplicate different content-length": b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n"
    b"Content-Length: 4\r\n\r\nabcd",
    "non-numeric content-length": b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: abc\r\n\r\nabc",
    "negative content-length": b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: -1\r\n\r\n",
    "content-length list": b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3, 3\r\n\r\nabc",
    "bad chunk size": CHUNKED + b"zz\r\nabc\r\n0\r\n\r\n",
    "negative chunk size": CHUNKED + b"-3\r\nabc\r\n0\r\n\r\n",
    "chunk size overflow": CHUNKED + b"fffffffffffffffffffff\r\nabc\r\n",
    "chunk data overrun": CHUNKED + b"3\r\nabcd\r\n0\r\n\r\n",
    "gzip transfer-encoding": b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\nabc",
    "identity transfer-encoding": b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: identity\r\n\r\n",
    "repeated transfer-encoding": b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "garbage request line": b"\x16\x03\x01\x02\x00garbage\r\n\r\n",
    "unknown method": b"FROB / HTTP/1.1\r\nHost: t\r\n\r\n",
    "lowercase method": b"get / HTTP/1.1\r\nHost: t\r\n\r\n",
    "bare LF": b"GET / HTTP/1.1\nHost: t\n\n",
    "obs-fold": b"GET / HTTP/1.1\r\nHost: t\r\nX: a\r\n b\r\n\r\n",
    "space before colon": b"GET / HTTP/1.1\r\nHost : t\r\n\r\n",
    "non-ascii url": b"GET /\xc3\xa9 HTTP/1.1\r\nHost: t\r\n\r\n",
    # checked by the protocol
    "gzip then chunked": b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
    b"3\r\nabc\r\n0\r\n\r\n",
    "chunked on HTTP/1.0": CHUNKED.replace(b"1.1", b"1.0") + b"3\r\nabc\r\n0\r\n\r\n",
    "duplicate host": b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "websocket upgrade": b"GET / HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    "connect": b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
}


@pytest.mark.parametrize("data", BAD_REQUESTS.values(), ids=[k.replace(" ", "_") for k in BAD_REQUESTS])
async def test_malformed_is_400_and_close(serve: Serve, clients: Connect, app: App, data: bytes) -> None:
    server = await serve()
    bystander = await clients(server.port)
    assert (await bystander.exchange(get("/before"))).status == 200
    client = await clients(server.port)
    await client.send(data)
    await assert_error_and_close(client, 400, "bad_request")
    assert app.calls == 1  # the bad request never reached the handler
    assert (await bystander.exchange(get("/after"))).status == 200  # other connections unaffected
    await assert_served(server.port, clients)


@pytest.mark.parametrize("version", ["2.0", "0.9"])
async def test_unsupported_version_is_505(serve: Serve, clients: Connect, version: str) -> None:
    server = await serve()
    client = await clients(server.port)
    await client.send(f"GET / HTTP/{version}\r\nHost: t\r\n\r\n".encode())
    await assert_error_and_close(client, 505, "version_not_supported")
    await assert_served(server.port, clients)


async def test_error_after_pipelined_requests_comes_last(serve: Serve, clients: Connect) -> None:
    server = await serve()
    client = await clients(server.port)
    requests = get("/first") + get("/slow?d=0.05&i=1") + get("/slow?d=0.05&i=2") + get("/last")
    await client.send(requests + b"BAD REQUEST\r\n\r\n")
    assert (await client.reply()).json()["path"] == "/first"
    assert (await client.reply()).json()["query"] == "d=0.05&i=1"
    assert (await client.reply()).json()["query"] == "d=0.05&i=2"
    assert (await client.reply()).json()["path"] == "/last"
    await assert_error_and_close(client, 400, "bad_request")


async def test_ready_answers_do_not_wait_for_a_later_slow_request(serve: Serve, clients: Connect) -> None:
    server = await serve()
    client = await clients(server.port)
    await client.send(get("/first") + get("/slow?d=5"))
    assert (await client.reply(timeout=1)).json()["path"] == "/first"


async def test_413_reaches_a_client_still_uploading(serve: Serve, clients: Connect) -> None:
    server = await serve(max_body_bytes=100)
    client = await clients(server.port)
    # Answered at the headers while the client is still uploading (no waiting for the body);
    # the server then discards input until the client closes (lingering close) rather than
    # closing with unread bytes, which can reset the connection before the reply is read.
    head = b"POST /q HTTP/1.1\r\nHost: t\r\nContent-Length: 8000000\r\n\r\n"
    await client.send(head + b"x" * 8_000_000, drain=False)
    await assert_error_and_close(client, 413, "payload_too_large")


# -- server lifecycle, loop policy, echo baseline ----------------------------------------------


async def test_graceful_close(serve: Serve, app: App, clients: Connect) -> None:
    server = await serve()
    idle = await clients(server.port)
    assert (await idle.exchange(get("/"))).status == 200
    busy = await clients(server.port)
    await busy.send(get("/slow?d=0.2"))
    hung = await clients(server.port)
    await hung.send(get("/hang"))
    await asyncio.wait_for(app.hang_started.wait(), 2)
    started = time.monotonic()
    closing = asyncio.create_task(server.close(grace=0.4))
    assert await idle.at_eof(timeout=1)  # idle: closed at once
    reply = await busy.reply()  # in flight: finished, told the connection closes
    assert reply.status == 200
    assert reply.headers["connection"] == "close"
    await closing
    assert time.monotonic() - started < 2
    assert app.hang_cancelled.is_set()  # past the grace: cancelled
    assert server.connections == 0
    with pytest.raises(OSError):
        await Client(port=server.port).connect()


async def test_sock_argument_and_port(serve: Serve, app: App, clients: Connect) -> None:
    from burrow.config import Settings
    from burrow.http.server import start_server

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = await start_server(app, Settings(port=12345), sock=sock)
    try:
        assert server.port == port
        assert server.host == "127.0.0.1"
        client = await clients(port)
        assert (await client.exchange(get("/via-sock"))).status == 200
    finally:
        await server.close()


def test_loop_factory_prefers_uvloop_and_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    old = asyncio.get_event_loop_policy()

    async def running_loop() -> asyncio.AbstractEventLoop:
        return asyncio.get_running_loop()

    assert loop_factory()[0] == "uvloop"
    assert isinstance(run(running_loop()), uvloop.Loop)
    monkeypatch.setitem(sys.modules, "uvloop", None)  # as if it were not installed
    assert loop_factory()[0] == "asyncio"
    assert not isinstance(run(running_loop()), uvloop.Loop)
    assert asyncio.get_event_loop_policy() is old  # the global policy is never touched


async def test_echo_baseline_serves_pipelined_requests() -> None:
    server, port = await start_echo_server("127.0.0.1", 0)
    client = await Client(port=port, timeout=2).connect()
    try:
        for reply in await client.pipeline([get("/")] * 3):
            assert (reply.status, reply.body) == (200, b"ok")
    finally:
        await client.close()
        server.close()
        await server.wait_closed()


def test_echo_baseline_counts_terminators_split_across_reads() -> None:
    class Sink:
        def __init__(self) -> None:
            self.data = b""

        def write(self, data: bytes) -> None:
            self.data += data

    stream = get("/a") * 2 + get("/b")
    for cut in range(1, len(stream)):
        for second_cut in (cut + 1, len(stream)):
            sink = Sink()
            protocol = EchoProtocol()
            protocol.connection_made(sink)  # type: ignore[arg-type]
            for piece in (stream[:cut], stream[cut:second_cut], stream[second_cut:]):
                if piece:
                    protocol.data_received(piece)
            assert sink.data == RESPONSE * 3, (cut, second_cut)
