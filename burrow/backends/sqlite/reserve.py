"""Disk space held beside the database so that deletes and expiry can commit on a full disk.

Why. In WAL mode every commit, a delete's too, appends frames to the ``-wal`` file, and a
checkpoint may have to grow the database file by the pages the log holds. On a full
filesystem both fail, so without room held back, space could only come back from
outside. The writer keeps a preallocated file (``<database>.reserve``) while the disk has
room and removes it the moment a commit or checkpoint fails for lack of space: what it
held lets the checkpoint finish and deletes append to the log. From then until the
reserve can be made again, the writer pins the database at its size, so new messages
only fill pages that deletes and expiry freed inside the file (see ``writer``).

The file is made with ``posix_fallocate`` (blocks allocated, nothing written; glibc
writes them where a filesystem cannot allocate), never synced (after a power cut it is
simply made again), kept across a crash (an allocated one is reused as it is) and removed
when the server stops cleanly.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sqlite3

from burrow.config import parse_bytes

log = logging.getLogger("burrow.sqlite")

#: Default size of the reserve: what the log gathers between two checkpoints (every
#: 0.25 s) under a heavy load of large messages, with room to spare for deletes.
RESERVE_BYTES = 64 * 1024 * 1024
#: The reserve is made again only once the filesystem has this many times its size free,
#: so the writes that follow do not fill the disk again at once (no flapping).
ROOM_FACTOR = 2

_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def is_full(error: BaseException) -> bool:
    """Whether a failure means "no space": SQLITE_FULL, or ENOSPC/EDQUOT/EFBIG from the OS."""
    if isinstance(error, sqlite3.Error):
        code = getattr(error, "sqlite_errorcode", None)
        return code is not None and code & 0xFF == sqlite3.SQLITE_FULL
    return isinstance(error, OSError) and error.errno in _FULL_ERRNOS


class Reserve:
    """The preallocated file at ``path`` of ``size`` bytes (0: no reserve is kept)."""

    def __init__(self, path: str, size: int) -> None:
        if size < 0:
            raise ValueError(f"the reserve size must be 0 or more bytes, got {size}")
        self.path = path
        self.size = size
        #: Whether the file is there with its blocks allocated.
        self.held = False

    def make(self) -> bool:
        """Allocate the file (or keep an allocated one); False if the disk has no room for it."""
        if not self.size:
            return False
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as error:
            log.warning("cannot create the disk reserve %s: %s", self.path, error)
            return False
        try:
            os.posix_fallocate(fd, 0, self.size)
            if os.fstat(fd).st_size > self.size:  # a larger one from an earlier setting
                os.ftruncate(fd, self.size)
        except OSError as error:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(self.path)  # a partial allocation helps nobody
            if not is_full(error):
                log.warning("cannot allocate the disk reserve %s: %s", self.path, error)
            return False
        os.close(fd)
        self.held = True
        return True

    def release(self) -> bool:
        """Remove the file, handing its space to the filesystem; whether it was held."""
        was = self.held
        self.held = False
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        return was

    def room(self) -> bool:
        """Whether the filesystem has room to make the reserve again (``ROOM_FACTOR`` times it)."""
        if not self.size:
            return False
        try:
            fs = os.statvfs(os.path.dirname(os.path.abspath(self.path)))
        except OSError:
            return False
        return fs.f_bavail * fs.f_frsize >= ROOM_FACTOR * self.size


def mib(size: int) -> str:
    """Bytes for a log line: ``64 MiB``, ``0.5 MiB``."""
    return f"{size / (1 << 20):g} MiB"


def parse_size(text: str) -> int:
    """``"64MiB"``, ``"512k"``, ``"1048576"`` -> bytes (``burrow.config.parse_bytes``)."""
    try:
        return parse_bytes(text)
    except ValueError:
        raise ValueError(f"reserve must be a byte size such as 67108864 or 64MiB, got {text!r}") from None
