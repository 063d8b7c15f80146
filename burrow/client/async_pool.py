"""The asyncio connection pool (see :mod:`burrow.client.pool` for what both pools do)."""

from __future__ import annotations

import asyncio

from burrow.client.aio import Connection
from burrow.client.api import Request
from burrow.client.pool import DEFAULT_SIZE, Server, readable
from burrow.client.wire import Reply

__all__ = ["AsyncPool"]


class AsyncPool(Server):
    """Keep-alive connections to one server, for the event loop the client is used on."""

    def __init__(
        self,
        url: str,
        size: int = DEFAULT_SIZE,
        timeout: float | None = 30.0,
        connect_timeout: float = 10.0,
        token: str | None = None,
    ) -> None:
        super().__init__(url, size, timeout, connect_timeout, token)
        self._slots = asyncio.Semaphore(size)
        self._busy = 0
        self._idle: list[Connection] = []

    async def exchange(self, request: Request) -> Reply:
        """Send one request, return its response (any status)."""
        if self.closed:
            raise ConnectionError(f"{self.url}: the client is closed")
        slots = self._slots
        if slots.locked():
            try:
                await asyncio.wait_for(slots.acquire(), self.connect_timeout)
            except TimeoutError:
                raise self.busy() from None
        else:
            await slots.acquire()  # free: does not suspend
        self._busy += 1
        try:
            conn = self._reuse(request.retry)
            if conn is not None:
                try:
                    return await self._send(conn, request)
                except (OSError, EOFError) as error:
                    if not request.retry or isinstance(error, TimeoutError):
                        raise
            return await self._send(await self._open(), request)
        except EOFError as error:
            raise self.lost(error) from error
        finally:
            self._busy -= 1
            slots.release()

    def _reuse(self, retry: bool) -> Connection | None:
        """An idle connection, not one the loop already saw closed. For a request that may not be
        sent twice, its socket is also polled: a close that reached the kernel but not yet the
        loop makes it readable (an idle connection has nothing else to read)."""
        idle = self._idle
        while idle:
            conn = idle.pop()
            reader, writer = conn.reader, conn.writer
            if reader is not None and writer is not None and not reader.at_eof() and not writer.is_closing():
                sock = writer.get_extra_info("socket")
                if retry or sock is None or not readable(sock):
                    return conn
            _abandon(conn)
        return None

    async def _open(self) -> Connection:
        conn = Connection(host=self.host, port=self.port)
        try:
            await asyncio.wait_for(conn.connect(), self.connect_timeout)
        except BaseException:
            _abandon(conn)
            raise
        self.opened += 1
        return conn

    async def _send(self, conn: Connection, request: Request) -> Reply:
        try:
            await conn.send(self.encode(request), drain=False)
            timeout = self.read_timeout(request)
            if timeout is None:
                reply = await conn.reply()
            else:
                async with asyncio.timeout(timeout):  # no task per read, unlike wait_for
                    reply = await conn.reply()
        except BaseException:  # an error, a timeout or a cancellation: its state is unknown
            _abandon(conn)
            raise
        if reply.keep_alive and not self.closed:
            self._idle.append(conn)
        else:
            _abandon(conn)
        return reply

    def idle(self) -> int:
        """Connections open and waiting in the pool."""
        return len(self._idle)

    def in_use(self) -> int:
        """Requests in flight (each holds one of the ``size`` connections)."""
        return self._busy

    async def close(self) -> None:
        """Close the idle connections; those in use are closed when their request ends."""
        self.closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            await conn.close()


def _abandon(conn: Connection) -> None:
    """Close without waiting (safe inside a cancellation)."""
    writer = conn.writer
    conn.reader = conn.writer = None
    if writer is not None:
        writer.close()
