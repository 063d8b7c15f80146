"""The TCP fault proxy (:mod:`burrow.testing.faultproxy`) over real sockets, against an echo server."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest

from burrow.testing.faultproxy import FaultProxy, Mode

#: How long "nothing arrives" is watched for.
QUIET = 0.3


class Echo:
    """A TCP echo server that records how each of its connections ended."""

    def __init__(self, read: bool = True) -> None:
        self.read = read
        self.ended: list[str] = []  # "eof" or the exception's class name
        self.server: asyncio.Server | None = None
        self.port = 0
        self.open: set[asyncio.StreamWriter] = set()
        self.closing = asyncio.Event()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open.add(writer)
        try:
            if not self.read:
                await self.closing.wait()
                return
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
            self.ended.append("eof")
        except OSError as error:
            self.ended.append(type(error).__name__)
        finally:
            self.open.discard(writer)
            writer.close()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        self.closing.set()
        for writer in list(self.open):
            writer.transport.abort()


@contextlib.asynccontextmanager
async def echo_and_proxy(read: bool = True, buffer: int = 262144) -> AsyncIterator[tuple[Echo, FaultProxy]]:
    echo = Echo(read)
    await echo.start()
    try:
        async with FaultProxy("127.0.0.1", echo.port, buffer=buffer) as proxy:
            yield echo, proxy
    finally:
        await echo.close()


async def connect(proxy: FaultProxy) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", proxy.port)


async def roundtrip(
    conn: tuple[asyncio.StreamReader, asyncio.StreamWriter], data: bytes, timeout: float = 5
) -> bytes:
    reader, writer = conn
    writer.write(data)
    await writer.drain()
    return await asyncio.wait_for(reader.readexactly(len(data)), timeout)


async def close(conn: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> None:
    conn[1].close()
    with contextlib.suppress(OSError):
        await conn[1].wait_closed()


async def wait_until(predicate: object, timeout: float = 5) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def test_pass_forwards_both_ways_intact() -> None:
    async with echo_and_proxy() as (echo, proxy):
        conn = await connect(proxy)
        payload = bytes(range(256)) * 8192  # 2 MiB, more than any buffer on the way
        reader, writer = conn
        writer.write(payload)
        got = await asyncio.wait_for(reader.readexactly(len(payload)), 10)
        assert got == payload
        assert proxy.forwarded == {"out": len(payload), "back": len(payload)}
        writer.write_eof()  # a half-close goes through, and the echo's close comes back
        assert await asyncio.wait_for(reader.read(), 5) == b""
        await close(conn)
        await wait_until(lambda: echo.ended == ["eof"] and not proxy.links)
        assert proxy.accepted == 1


async def test_delay_holds_each_direction() -> None:
    async with echo_and_proxy() as (_, proxy):
        conn = await connect(proxy)
        await roundtrip(conn, b"warm")
        await proxy.delay(0.2)
        started = time.monotonic()
        assert await roundtrip(conn, b"slow") == b"slow"
        assert time.monotonic() - started >= 0.4  # 0.2 s out, 0.2 s back
        # a latency, not a queue of sleeps: ten chunks in a row arrive about 0.4 s later, not 4 s
        started = time.monotonic()
        reader, writer = conn
        for i in range(10):
            writer.write(b"%d;" % i)
            await writer.drain()
            await asyncio.sleep(0.01)
        expected = b"".join(b"%d;" % i for i in range(10))
        assert await asyncio.wait_for(reader.readexactly(len(expected)), 5) == expected
        assert 0.4 <= time.monotonic() - started < 2.0
        await proxy.pass_through()
        started = time.monotonic()
        await roundtrip(conn, b"fast")
        assert time.monotonic() - started < 0.2
        await close(conn)


async def test_a_change_of_mode_releases_delayed_chunks() -> None:
    async with echo_and_proxy() as (_, proxy):
        conn = await connect(proxy)
        await roundtrip(conn, b"warm")
        await proxy.delay(30)
        reader, writer = conn
        writer.write(b"held")
        await asyncio.sleep(0.1)
        await proxy.pass_through()
        assert await asyncio.wait_for(reader.readexactly(4), 2) == b"held"
        await close(conn)


async def test_black_hole_answers_nothing_then_heals() -> None:
    async with echo_and_proxy() as (_, proxy):
        old = await connect(proxy)
        await roundtrip(old, b"before")
        await proxy.black_hole()
        old[1].write(b"into the hole")
        new = await connect(proxy)  # accepted, then nothing
        new[1].write(b"new one")
        for reader in (old[0], new[0]):
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(reader.read(1), QUIET)
        assert proxy.accepted == 2 and len(proxy.links) == 2
        await proxy.pass_through()  # the partition heals: what was held goes through
        assert await asyncio.wait_for(old[0].readexactly(13), 5) == b"into the hole"
        assert await asyncio.wait_for(new[0].readexactly(7), 5) == b"new one"
        await close(old)
        await close(new)


async def test_reset_resets_current_and_new_connections_on_both_sides() -> None:
    async with echo_and_proxy() as (echo, proxy):
        conn = await connect(proxy)
        await roundtrip(conn, b"hello")
        await proxy.reset()
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(conn[0].read(1), 5)
        await wait_until(lambda: echo.ended == ["ConnectionResetError"])
        assert not proxy.links
        new = await connect(proxy)  # the handshake completes in the kernel; then the RST
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(new[0].read(1), 5)
        await close(conn)
        await close(new)
        await proxy.pass_through()
        again = await connect(proxy)
        assert await roundtrip(again, b"back") == b"back"
        await close(again)


async def test_refuse_closes_the_listener_and_keeps_open_connections() -> None:
    async with echo_and_proxy() as (_, proxy):
        conn = await connect(proxy)
        port = proxy.port
        await proxy.refuse()
        with pytest.raises(ConnectionRefusedError):
            await connect(proxy)
        assert await roundtrip(conn, b"still here") == b"still here"
        await proxy.pass_through()
        assert proxy.port == port
        again = await connect(proxy)
        assert await roundtrip(again, b"listening") == b"listening"
        await close(conn)
        await close(again)


async def test_an_unreachable_target_resets_the_client() -> None:
    echo = Echo()
    await echo.start()
    await echo.close()  # its port is now closed
    async with FaultProxy("127.0.0.1", echo.port) as proxy:
        conn = await connect(proxy)
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(conn[0].read(1), 5)
        await close(conn)


async def test_a_slow_reader_pushes_back_on_the_sender() -> None:
    """The target never reads: the proxy holds at most its buffer, then the sender blocks."""
    async with echo_and_proxy(read=False, buffer=65536) as (_, proxy):
        _, writer = await connect(proxy)
        chunk = b"x" * 65536
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(1):
                for _ in range(1024):  # 64 MiB: far more than the kernel and proxy buffers
                    writer.write(chunk)
                    await writer.drain()
        assert 0 < proxy.held <= 65536 + 65536  # the buffer, plus at most one chunk read past it
        writer.transport.abort()  # a close would wait for the unsent bytes


async def test_a_delay_belongs_to_the_delay_mode_only() -> None:
    async with echo_and_proxy() as (_, proxy):
        with pytest.raises(ValueError, match="delay"):
            await proxy.set_mode(Mode.PASS, 0.5)
        with pytest.raises(ValueError, match="delay"):
            await proxy.set_mode(Mode.DELAY, 0)
