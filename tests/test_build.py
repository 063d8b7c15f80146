"""The compiled build (burrow/_build.py, setup.py): which one runs, and that it is the one asked for.

CI (``BURROW_REQUIRE_SERVICES=1``) must run the compiled build unless it asks for pure Python,
so a compiler that silently stopped working fails the run instead of making it pure. The other
tests run each build as ``burrow serve`` does: a fresh interpreter.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import burrow
from burrow import _build
from burrow.testing.process import ServeProcess

ROOT = Path(burrow.__file__).resolve().parent.parent
REPORT = (
    "import sys, burrow, burrow.http.protocol as p, burrow.engine as e; "
    "print(burrow.BUILD, p.__file__, e.__file__, 'burrow__mypyc' in sys.modules)"
)


def _env(**changes: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "BURROW_PURE_PYTHON"}
    env.update(changes)
    return env


def _report(env: dict[str, str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", REPORT],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )


def _compiled_here() -> bool:
    return all(_build._compiled_file(module) is not None for module in (*_build.COMPILED, _build.GROUP))


def test_ci_runs_the_compiled_build() -> None:
    pure_asked = os.environ.get("BURROW_PURE_PYTHON", "") not in ("", "0")
    if os.environ.get("BURROW_REQUIRE_SERVICES") != "1" or pure_asked:
        pytest.skip("only CI requires the compiled build (BURROW_REQUIRE_SERVICES=1, not pure)")
    assert _compiled_here(), "no compiled hot path: did the mypyc build fail? (see setup.py's notes)"
    assert burrow.BUILD == "compiled"
    from burrow.http import protocol

    assert not protocol.__file__.endswith(".py"), protocol.__file__


def test_build_names_what_runs() -> None:
    out = _report(_env()).stdout.split()
    assert out[0] == ("compiled" if _compiled_here() and not _stale_anywhere() else "pure")
    if out[0] == "compiled":
        assert not out[1].endswith(".py") and not out[2].endswith(".py") and out[3] == "True"
    else:
        assert out[1].endswith(".py") and out[2].endswith(".py")


def _stale_anywhere() -> bool:
    library = _build._compiled_file(_build.GROUP)
    return library is not None and any(_build._stale(module, library) for module in _build.COMPILED)


def test_pure_python_env_runs_every_module_from_source() -> None:
    out = _report(_env(BURROW_PURE_PYTHON="1")).stdout.split()
    assert out == ["pure", str(ROOT / "burrow/http/protocol.py"), str(ROOT / "burrow/engine.py"), "False"]


def test_a_build_older_than_its_source_runs_pure_and_says_so(tmp_path: Path) -> None:
    if not _compiled_here():
        pytest.skip("needs the compiled build (scripts/bootstrap with a C compiler)")
    # A copy of the built package, so the checkout's own files and times stay as they are.
    shutil.copytree(ROOT / "burrow", tmp_path / "burrow", ignore=shutil.ignore_patterns("__pycache__"))
    for lib in ROOT.glob("burrow__mypyc*"):
        shutil.copy2(lib, tmp_path / lib.name)
    env = _env(PYTHONPATH=str(tmp_path))
    fresh = _report(env, cwd=tmp_path)
    assert fresh.stdout.split()[0] == "compiled" and _build.STALE_WARNING not in fresh.stderr
    source = tmp_path / "burrow/backends/memory_index.py"
    later = max(os.stat(lib).st_mtime for lib in tmp_path.glob("burrow__mypyc*")) + 10
    os.utime(source, (later, later))  # "edited after the build"
    stale = _report(env, cwd=tmp_path)
    build, protocol, engine, group = stale.stdout.split()
    assert (build, group) == ("pure", "False")
    assert protocol == str(tmp_path / "burrow/http/protocol.py")
    assert engine == str(tmp_path / "burrow/engine.py")
    assert stale.stderr.count(_build.STALE_WARNING) == 1


@pytest.mark.parametrize("pure", ["0", "1"])
async def test_serve_logs_the_build_on_its_listening_line(pure: str) -> None:
    expected = "pure" if pure == "1" or not _compiled_here() or _stale_anywhere() else "compiled"
    server = ServeProcess("--backend", "memory://", "--port", "0", env=_env(BURROW_PURE_PYTHON=pure))
    await server.start()
    try:
        (line,) = [line for line in server.log if "listening on" in line]
        assert line.rstrip().endswith(f"build={expected}"), line
    finally:
        await server.stop()


def test_compiled_coroutines_never_await_inside_an_except_block() -> None:
    """mypyc frees the handled exception too early when a coroutine awaits inside an ``except``
    block and raises it again afterwards (it crashed the interpreter: the quota check of
    ``Engine._put_within`` on SQLite did this). The compiled modules must hand the error out
    of the block first, as that method now does."""

    asynchronous = (ast.Await, ast.AsyncFor, ast.AsyncWith)
    found = []
    for module in _build.COMPILED:
        path = ROOT / Path(*module.split(".")).with_suffix(".py")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ExceptHandler):
                awaits = [n for n in ast.walk(node) if isinstance(n, asynchronous)]
                found += [f"{path.relative_to(ROOT)}:{n.lineno}" for n in awaits]
    assert not found, found
