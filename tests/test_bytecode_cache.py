"""Bytecode for the engine's imports: kept in our cache folder only where the installed package has none and
none may be written beside it (each start would compile torch's source again), never in the source tree."""

from __future__ import annotations

import os
import py_compile
import subprocess
import sys
from pathlib import Path

import pytest

from zimage_mcp.cli.bytecode_cache import needs_private_bytecode

REPO = Path(__file__).resolve().parents[1]


def _package(root: Path, name: str = "probe_pkg") -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "__init__.py").write_text("VALUE = 42\n")
    return folder


@pytest.fixture
def on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys, "pycache_prefix", None)
    return tmp_path


def test_only_a_package_without_bytecode_that_may_not_write_it_needs_the_cache(
    on_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = _package(on_path)
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    assert needs_private_bytecode("probe_pkg")  # PYTHONDONTWRITEBYTECODE and no .pyc: compiled every start
    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    assert not needs_private_bytecode("probe_pkg")  # Python writes it beside the source on the first import
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    py_compile.compile(str(folder / "__init__.py"), doraise=True)
    assert not needs_private_bytecode("probe_pkg")  # installed with its bytecode
    assert not needs_private_bytecode("no_such_package_here")


def test_the_users_own_prefix_wins(on_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _package(on_path)
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    monkeypatch.setattr(sys, "pycache_prefix", str(on_path / "theirs"))
    assert not needs_private_bytecode("probe_pkg")


def test_a_start_writes_the_bytecode_under_our_folder_and_the_next_reads_it(tmp_path: Path) -> None:
    """Two fresh interpreters with PYTHONDONTWRITEBYTECODE=1, as a container image sets it."""
    packages, cache = tmp_path / "site", tmp_path / "cache" / "python-bytecode"
    source = _package(packages) / "__init__.py"
    code = (
        "import os, sys; from pathlib import Path; from zimage_mcp.cli.bytecode_cache import keep_bytecode; "
        f"print(keep_bytecode(Path({str(cache)!r}), ('probe_pkg',))); import probe_pkg; "
        "print(probe_pkg.VALUE, os.environ.get('PYTHONPYCACHEPREFIX'), probe_pkg.__cached__)"
    )
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": os.pathsep.join([str(REPO), str(packages)])}
    env.pop("PYTHONPYCACHEPREFIX", None)
    first = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    kept, line = first.stdout.splitlines()
    value, prefix, cached = line.split()
    assert kept == "True" and value == "42" and prefix == str(cache)
    assert Path(cached).is_file() and Path(cached).is_relative_to(cache)  # written under our folder...
    assert not (source.parent / "__pycache__").exists()  # ...and nothing beside the source
    written = Path(cached).stat().st_mtime_ns
    second = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert second.stdout.splitlines()[0] == "True" and Path(cached).stat().st_mtime_ns == written  # read, not rewritten


def test_bytecode_cache_false_in_the_runtime_table_turns_it_off(tmp_path: Path) -> None:
    from zimage_mcp.registry.settings import Settings

    registry = tmp_path / "registry.toml"
    registry.write_text("[runtime]\nbytecode_cache = false\n")
    assert Settings.from_env({}, registry_file=registry).bytecode_cache is False
    assert Settings.from_env({}, registry_file=tmp_path / "none.toml").bytecode_cache is True
