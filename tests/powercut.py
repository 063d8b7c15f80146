"""The power-cut simulation of ``tests/powercut.c``: build it, load it, pull the plug.

A server started with :meth:`PowerCut.env` keeps, for each file of the data directory,
a copy as of its last ``fsync``/``fdatasync``. :meth:`PowerCut.restore` (after the
process is killed) puts those copies in place of the files: what the disk would hold
after a power cut that lost every write not yet synced. :meth:`PowerCut.fail_syncs`
makes every sync of those files fail with EIO (and copy nothing) until it is turned off.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

SOURCE = Path(__file__).with_name("powercut.c")


def compiler() -> str | None:
    return shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")


def build(into: Path) -> Path:
    """Compile the preload library into ``into``; raises if no C compiler works."""
    cc = compiler()
    if cc is None:
        raise RuntimeError("no C compiler (cc or gcc) to build the power-cut library")
    lib = into / "libpowercut.so"
    subprocess.run(
        [cc, "-shared", "-fPIC", "-O2", "-Wall", "-o", str(lib), str(SOURCE), "-ldl", "-lpthread"],
        check=True,
        capture_output=True,
        text=True,
    )
    return lib


class PowerCut:
    """One data directory under simulation; the shadow copies live in ``shadow``."""

    def __init__(self, lib: Path, data: Path, shadow: Path) -> None:
        self.lib = lib
        self.data = data.resolve()
        self.shadow = shadow.resolve()
        self.data.mkdir(parents=True, exist_ok=True)
        self.shadow.mkdir(parents=True, exist_ok=True)
        #: While this file exists, syncs fail (it lives beside the shadow copies, not watched).
        self.fail_flag = self.shadow.parent / f"{self.shadow.name}.fail-sync"

    def env(self) -> dict[str, str]:
        """Environment for a server process whose writes to ``data`` are watched."""
        return {
            **os.environ,
            "LD_PRELOAD": str(self.lib),
            "BURROW_POWERCUT_DIR": str(self.data),
            "BURROW_POWERCUT_SHADOW": str(self.shadow),
            "BURROW_POWERCUT_FAIL_SYNC": str(self.fail_flag),
        }

    def fail_syncs(self, on: bool) -> None:
        """From now on, every ``fsync``/``fdatasync`` of a watched file fails with EIO (``on``)
        or works again (not ``on``)."""
        if on:
            self.fail_flag.touch()
        else:
            self.fail_flag.unlink(missing_ok=True)

    def restore(self) -> list[str]:
        """After the process died: every file becomes its last synced copy (or goes).

        Returns the names of the files that came back. SQLite's ``-shm`` index is removed
        too (it is rebuilt from the WAL; a power cut would leave it stale or missing).
        """
        for path in self.data.iterdir():
            if path.is_file():
                path.unlink()
        back = []
        for copy in self.shadow.iterdir():
            if copy.is_file() and not copy.name.endswith(".tmp"):
                shutil.copyfile(copy, self.data / copy.name)
                back.append(copy.name)
        return sorted(back)
