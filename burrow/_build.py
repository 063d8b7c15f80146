"""Which build of the hot path runs: the mypyc-compiled modules, or their pure-Python source.

``setup.py`` compiles :data:`COMPILED` with mypyc into one group: its modules call each other
natively, so they run all compiled or all interpreted, never mixed. :func:`select` (called once by
``burrow/__init__.py``, before any submodule is imported) decides which and, for pure Python,
puts :class:`PureFinder` first on ``sys.meta_path`` so every ``burrow.*`` module loads from its
``.py`` file even where a compiled one sits beside it. Pure Python runs when:

* ``BURROW_PURE_PYTHON=1`` asks for it (to compare, or to rule the compiler out);
* in a checkout (not an installed wheel), a compiled module is older than its source (someone
  edited it after building), or some of the group are missing: running old code silently
  would be worse than running slower, so this is logged once, with the fix;
* nothing was compiled (no C compiler at install, ``BURROW_BUILD=pure``, or a plain checkout).

This module is never compiled (``setup.py`` reads :data:`COMPILED` from it without importing
the package) and imports only the standard library, so ``import burrow`` stays cheap.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import logging
import os
import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType

#: The modules compiled with mypyc, in one group. burrow/__init__.py and this module never are.
COMPILED: tuple[str, ...] = (
    "burrow.http.protocol",
    "burrow.http.types",
    "burrow.api.routes",
    "burrow.api.v1",
    "burrow.core.errors",
    "burrow.core.model",
    "burrow.core.validation",
    "burrow.engine",
    "burrow.backends.memory",
    "burrow.backends.memory_arena",
    "burrow.backends.memory_index",
    "burrow.backends.memory_queue",
)

STALE_WARNING = (
    "compiled build is older than the source; running pure Python — rebuild with scripts/bootstrap"
)

#: The group's shared library, beside the package: it holds the compiled code of every module
#: (each module's own extension is a small shim that loads its part from here).
GROUP = "burrow__mypyc"

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def _compiled_file(module: str) -> str | None:
    """The extension file built for ``module`` (or for ``GROUP``) beside its source, if any."""
    base = os.path.join(os.path.dirname(_PACKAGE_DIR), *module.split("."))
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        if os.path.exists(base + suffix):
            return base + suffix
    return None


def _stale(module: str, library: str) -> bool:
    """True when ``module``'s source changed after the group ``library`` was built from it
    (the library, not the module's shim: a rebuild may leave an unchanged shim's time as it was)."""
    source = os.path.join(os.path.dirname(_PACKAGE_DIR), *module.split(".")) + ".py"
    try:
        return os.stat(source).st_mtime > os.stat(library).st_mtime
    except OSError:  # no source beside it (a compiled-only install): nothing to be stale against
        return False


def _installed() -> bool:
    """Whether this package was installed from a wheel (``burrow-*.dist-info`` beside it), not
    run from a checkout: pip writes a wheel's files in no set order, so their times say nothing
    there, and installed sources change only by installing again, library included."""
    parent = os.path.dirname(_PACKAGE_DIR)
    return any(n.startswith("burrow-") and n.endswith(".dist-info") for n in os.listdir(parent))


class PureFinder:
    """A ``sys.meta_path`` finder that loads ``burrow.*`` modules from their ``.py`` files."""

    def find_spec(
        self, name: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if not name.startswith("burrow.") or not path:
            return None
        leaf = name.rpartition(".")[2]
        for directory in path:
            source = os.path.join(directory, leaf + ".py")
            if os.path.isfile(source):
                return importlib.util.spec_from_file_location(name, source)
        return None  # a package, or not found: the normal finders decide


def select() -> str:
    """Decide the build for this process (``"compiled"`` or ``"pure"``); install the finder if pure."""
    built = [module for module in COMPILED if _compiled_file(module) is not None]
    library = _compiled_file(GROUP)
    if not built and library is None:
        return "pure"
    pure = os.environ.get("BURROW_PURE_PYTHON", "") not in ("", "0")
    if not pure and (
        library is None
        or len(built) < len(COMPILED)
        or (any(_stale(module, library) for module in built) and not _installed())
    ):
        # logged, not warnings.warn: a test run (warnings are errors there) must still run
        logging.getLogger("burrow").warning(STALE_WARNING)
        pure = True
    if not pure:
        return "compiled"
    if not any(isinstance(finder, PureFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, PureFinder())
    return "pure"
