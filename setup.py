"""Build Burrow with its hot path compiled by mypyc, or as pure Python where that cannot be done.

The modules in ``burrow/_build.py`` ``COMPILED`` are compiled from their typed source into one
mypyc group (they call each other natively). Compiling is optional: without mypyc, without a
working C compiler, or with ``BURROW_BUILD=pure`` the package installs as pure Python and runs
the same. The group is all or nothing, so a failed compile removes whatever part of it was built.
``MYPYC_OPT_LEVEL=0`` builds faster, for quick checks (3 by default: what to measure).
Everything else (metadata, dependencies, entry points) is in pyproject.toml.
"""

from __future__ import annotations

import os
import runpy
import sys
from typing import Any

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))


def _note(message: str) -> None:
    print(f"burrow build: {message}", file=sys.stderr, flush=True)


def _extensions() -> list[Extension]:
    if os.environ.get("BURROW_BUILD", "") == "pure":
        _note("BURROW_BUILD=pure: installing pure Python")
        return []
    compiled = runpy.run_path(os.path.join(HERE, "burrow", "_build.py"))["COMPILED"]
    paths = [os.path.join("burrow", *module.split(".")[1:]) + ".py" for module in compiled]
    try:
        from mypyc.build import mypycify
    except ImportError as error:
        _note(f"mypyc is not available ({error}): installing pure Python")
        return []
    try:
        extensions: list[Extension] = mypycify(
            paths, opt_level=os.environ.get("MYPYC_OPT_LEVEL", "3"), group_name="burrow"
        )
    except (Exception, SystemExit) as error:  # mypyc reports its errors by exiting
        _note(f"mypyc could not compile the hot path ({error!r}): installing pure Python")
        return []
    return extensions


class OptionalBuildExt(build_ext):
    """``build_ext`` that falls back to pure Python when the C compiler fails or is missing."""

    def run(self) -> None:
        inplace = self.inplace  # setuptools clears it while building and restores it only on success
        try:
            super().run()
        except Exception as error:
            self._remove_partial(inplace)
            _note(f"compiling failed ({error}): installing pure Python")

    def _remove_partial(self, inplace: bool) -> None:
        """Remove what was built of the group, and (editable installs) what an earlier build left
        in place: a part of the group cannot run, and an old one would only be detected as stale."""
        paths = self._built_paths(False) + (self._built_paths(True) if inplace else [])
        self.inplace = inplace
        for path in paths:
            if os.path.exists(path):
                os.remove(path)

    def _built_paths(self, inplace: bool) -> list[str]:
        self.inplace = inplace  # where get_ext_fullpath looks
        return [self.get_ext_fullpath(ext.name) for ext in self.extensions]

    def get_source_files(self) -> list[str]:
        return []  # generated C under build/, not part of an sdist


options: dict[str, Any] = {"ext_modules": _extensions(), "cmdclass": {"build_ext": OptionalBuildExt}}
setup(**options)
