"""A TCP fault proxy for tests: put it between a client and a server, then break the path.

``FaultProxy(target_host, target_port)`` listens on a free port of 127.0.0.1 and forwards each
connection it accepts to the target. The test switches its mode at any moment:

``pass``
    forward both ways (the default).
``delay``
    forward, each chunk held ``seconds`` after it was read, in each direction (latency, not a
    throughput cap: chunks read meanwhile wait alongside, in order).
``black hole``
    keep every connection, accept new ones, forward nothing and answer nothing: what a peer
    sees when a network path silently drops packets. Bytes already read are kept (up to the
    buffer bound), and so are new connections: back in ``pass`` they flow again, as TCP
    does when a partition heals.
``reset``
    reset every connection (SO_LINGER 0, then close: an RST to both peers), and every new
    one as soon as it is accepted: a crashed peer, or a firewall rejecting the flow.
``refuse``
    close the listening socket, so new connections are refused (ECONNREFUSED); connections
    already open keep forwarding. Leaving this mode listens again on the same port.

Memory is bounded: each direction holds at most ``buffer`` bytes it has read and not yet
written; past that it stops reading, and the kernel pushes back on the sender.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import socket
import struct
from types import TracebackType
from typing import Self

__all__ = ["FaultProxy", "Mode"]

_CHUNK = 65536
_LINGER_0 = struct.pack("ii", 1, 0)


class Mode(enum.Enum):
    PASS = "pass"
    DELAY = "delay"
    BLACK_HOLE = "black hole"
    RESET = "reset"
    REFUSE = "refuse"


def _reset(writer: asyncio.StreamWriter | None) -> None:
    """Close with an RST, now, dropping whatever was not sent."""
    if writer is None:
        return
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_0)
    writer.transport.abort()


class _Pipe:
    """One direction of a link: a reader task fills a bounded queue, a writer task drains it."""

    def __init__(self, proxy: FaultProxy, name: str) -> None:
        self.proxy, self.name = proxy, name
        self.chunks: collections.deque[tuple[float, bytes]] = collections.deque()  # (read at, data)
        self.held = 0  # bytes in ``chunks``
        self.eof = False
        self.changed = asyncio.Event()  # set when chunks or eof change

    async def read(self, reader: asyncio.StreamReader) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while self.held >= self.proxy.buffer:
                self.changed.clear()
                await self.changed.wait()
            data = await reader.read(_CHUNK)
            if not data:
                self.eof = True
                self.changed.set()
                return
            self.chunks.append((loop.time(), data))
            self.held += len(data)
            self.changed.set()

    async def write(self, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        proxy = self.proxy
        while True:
            await proxy.flowing.wait()
            if not self.chunks:
                if self.eof:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                self.changed.clear()
                await self.changed.wait()
                continue
            read_at, data = self.chunks[0]
            due = read_at + proxy.delay_s
            if (now := loop.time()) < due:
                with contextlib.suppress(TimeoutError):  # woken early by a change of mode
                    await asyncio.wait_for(proxy.switched.wait(), due - now)
                continue
            self.chunks.popleft()
            self.held -= len(data)
            self.changed.set()  # room for the reader
            writer.write(data)
            await writer.drain()
            self.proxy.forwarded[self.name] += len(data)


class _Link:
    """One accepted connection and its connection to the target."""

    def __init__(self, proxy: FaultProxy, client: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> None:
        self.proxy = proxy
        self.client_reader, self.client_writer = client
        self.upstream: asyncio.StreamWriter | None = None
        self.pipes: tuple[_Pipe, ...] = ()
        self.task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        proxy = self.proxy
        try:
            await proxy.flowing.wait()  # a connection made in a black hole waits to be let through
            try:
                up_reader, self.upstream = await asyncio.open_connection(proxy.target_host, proxy.target_port)
            except OSError:
                self.abort()  # the nearest a proxy gets to passing on "connection refused"
                return
            out, back = self.pipes = _Pipe(proxy, "out"), _Pipe(proxy, "back")
            tasks = [
                asyncio.ensure_future(out.read(self.client_reader)),
                asyncio.ensure_future(out.write(self.upstream)),
                asyncio.ensure_future(back.read(up_reader)),
                asyncio.ensure_future(back.write(self.client_writer)),
            ]
            try:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
                if any(not t.cancelled() and t.exception() is not None for t in done):
                    self.abort()  # one peer reset or broke: pass it on to the other
                else:
                    self.client_writer.close()
                    self.upstream.close()
            finally:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            proxy.links.discard(self)

    def abort(self) -> None:
        """Reset both connections."""
        _reset(self.client_writer)
        _reset(self.upstream)

    def reset(self) -> None:
        """Reset both connections and end the link's task (from outside it)."""
        self.abort()
        if self.task is not None:
            self.task.cancel()


class FaultProxy:
    """See the module docstring. Use as ``async with FaultProxy(host, port) as proxy:``;
    point the client at ``proxy.port`` (or ``proxy.address``)."""

    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        buffer: int = 262144,
    ) -> None:
        self.target_host, self.target_port = target_host, target_port
        self.host, self.port = host, port
        #: bytes each direction of a connection may hold read and not yet written
        self.buffer = buffer
        self.mode = Mode.PASS
        self.delay_s = 0.0
        #: set unless in a black hole: pipes and new links wait on it
        self.flowing = asyncio.Event()
        self.flowing.set()
        #: set, and replaced, at every change of mode: wakes pipes holding chunks back
        self.switched = asyncio.Event()
        self.links: set[_Link] = set()
        #: connections accepted, ever; bytes forwarded each way ("out": to the target)
        self.accepted = 0
        self.forwarded = {"out": 0, "back": 0}
        self._server: asyncio.Server | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def held(self) -> int:
        """Bytes read and not yet written, over every connection."""
        return sum(pipe.held for link in self.links for pipe in link.pipes)

    async def start(self) -> Self:
        await self._listen()
        return self

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._accept, self.host, self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _unlisten(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            # not wait_closed(): since Python 3.12 it waits for every accepted connection too

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self.mode is Mode.RESET:
            _reset(writer)
            return
        link = _Link(self, (reader, writer))
        self.links.add(link)
        # A task of the proxy's own, which a reset may cancel: asyncio reports a cancelled
        # connection handler as an error.
        link.task = asyncio.get_running_loop().create_task(link.run())

    async def close(self) -> None:
        """Stop listening and reset every connection."""
        await self._unlisten()
        await self._reset_all()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # -- modes -----------------------------------------------------------------------------------

    async def set_mode(self, mode: Mode, delay: float = 0.0) -> None:
        """Switch to ``mode`` (``delay``: seconds, for :attr:`Mode.DELAY`)."""
        if delay < 0 or (mode is Mode.DELAY) != (delay > 0):
            raise ValueError(f"a delay (> 0 seconds) goes with Mode.DELAY only, got {mode} and {delay}")
        self.mode, self.delay_s = mode, delay
        self.switched.set()
        self.switched = asyncio.Event()
        if mode is Mode.BLACK_HOLE:
            self.flowing.clear()
        else:
            self.flowing.set()
        if mode is Mode.RESET:
            await self._reset_all()
        if mode is Mode.REFUSE:
            await self._unlisten()
        elif self._server is None:
            await self._listen()

    async def pass_through(self) -> None:
        await self.set_mode(Mode.PASS)

    async def delay(self, seconds: float) -> None:
        await self.set_mode(Mode.DELAY, seconds)

    async def black_hole(self) -> None:
        await self.set_mode(Mode.BLACK_HOLE)

    async def reset(self) -> None:
        await self.set_mode(Mode.RESET)

    async def refuse(self) -> None:
        await self.set_mode(Mode.REFUSE)

    async def _reset_all(self) -> None:
        links = list(self.links)
        for link in links:
            link.reset()
        tasks = [link.task for link in links if link.task is not None]
        if tasks:  # let each link's task see the reset and end
            await asyncio.wait(tasks, timeout=5)
