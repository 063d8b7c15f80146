"""Online backups of a running SQLite store, with SQLite's backup API.

Why in the server: the store holds its file with ``locking_mode=EXCLUSIVE`` (see
``writer``), so no other process (``sqlite3 burrow.db .backup``) can read it while Burrow
runs. The server copies it itself, through its own connection, a few hundred pages at a
time: the writer's lock is held only for one step, and the loop's batches run between
steps (they park for at most one step, as they do for a checkpoint). A write made through
the same connection during the copy is carried into the copy by SQLite itself, so the
backup is the store as it was when the last step ran: consistent, every acknowledged
commit up to then included.

The copy is written to a temporary file beside its destination, checked
(``PRAGMA quick_check``), synced and renamed into place, so a backup file that exists is
complete. Old backups beyond ``keep`` are removed, newest kept.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from pathlib import Path
from typing import TYPE_CHECKING

from burrow.backends.base import BackupResult

if TYPE_CHECKING:
    from burrow.backends.sqlite.writer import Writer

#: Pages copied per step (4 KiB each: 1 MiB held under the lock at a time).
PAGES_PER_STEP = 256
#: Longest pause between steps for the batches that parked during one to run (seconds).
STEP_PAUSE = 0.005
#: Backup files are named ``<PREFIX><UTC time>.db``; only such files are ever removed.
PREFIX = "burrow-"


def backup_name(now: float) -> str:
    """``burrow-20261202T153000.123Z.db``: sortable, and unique per millisecond."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now))
    return f"{PREFIX}{stamp}.{int(now * 1000) % 1000:03d}Z.db"


def run_backup(writer: Writer, directory: Path, keep: int) -> BackupResult:
    """Copy the writer's database into ``directory`` (blocking: run it on a thread of its own).

    Raises OSError or sqlite3.Error if the copy cannot be made; nothing is left behind then.
    """
    started = time.monotonic()
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / backup_name(time.time())
    partial = final.with_suffix(".db.partial")
    target = sqlite3.connect(partial, isolation_level=None)
    try:
        lock = writer.lock

        def between_steps(status: int, remaining: int, total: int) -> None:
            # The lock is released between steps so the loop's batches run (they may change
            # pages already copied, which SQLite then copies again: same connection). Wait
            # until what parked meanwhile has run, briefly, or the copy would starve them.
            lock.release()
            writer.unpark_soon()
            deadline = time.monotonic() + STEP_PAUSE
            time.sleep(0)
            while writer.parked and time.monotonic() < deadline:
                time.sleep(0.0002)
            lock.acquire()

        with lock:
            store = writer.store
            if store is None:
                raise OSError("the database is being reopened; try again")
            store.conn.backup(target, pages=PAGES_PER_STEP, progress=between_steps)
        writer.unpark_soon()
        check = target.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            raise sqlite3.DatabaseError(f"the copy failed its check: {check}")
        target.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
        target.close()
        fd = os.open(partial, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(partial, final)
        _sync_directory(directory)
    except BaseException:
        target.close()
        with contextlib.suppress(OSError):
            partial.unlink()
        raise
    removed = prune(directory, keep)
    return BackupResult(str(final), final.stat().st_size, time.monotonic() - started, removed)


def prune(directory: Path, keep: int) -> tuple[str, ...]:
    """Remove all but the newest ``keep`` backups (files named by :func:`backup_name`)."""
    backups = sorted(p for p in directory.glob(f"{PREFIX}*Z.db") if p.is_file())
    old = backups[: max(0, len(backups) - keep)]
    for path in old:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    return tuple(str(p) for p in old)


def _sync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
