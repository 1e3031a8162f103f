from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# llm's guard: plugins.load_plugins() never autoloads installed entry points under tests.
sys._called_from_test = True  # type: ignore[attr-defined]


@pytest.fixture(scope="session", autouse=True)
def inductor_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The suite's own torch.compile cache: never the shared ~/.cache or /tmp/torchinductor_<user>, which
    other runs on this machine write to. Set before any test runs, so before anything compiles; server
    subprocesses inherit it."""
    folder = tmp_path_factory.mktemp("torchinductor")
    old = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)
    try:
        yield folder
    finally:
        if old is None:
            os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
        else:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = old


@pytest.fixture(autouse=True)
def root_logging_restored() -> Iterator[None]:
    """A command run in-process (``main([...])``) points the root logger at the sys.stderr pytest gave that
    test; put the previous handlers back, so later tests' background threads never log into a closed file."""
    import logging

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No ZIMAGE_MCP_* from the developer's shell; user config, data, pictures and HF cache in tmp_path."""
    for name in list(os.environ):
        if name.startswith("ZIMAGE_MCP_") or name == "HF_HUB_CACHE":
            monkeypatch.delenv(name)
    home = tmp_path / "home"
    for var, sub in {
        "XDG_CONFIG_HOME": "config",
        "XDG_DATA_HOME": "data",
        "XDG_CACHE_HOME": "cache",
        "XDG_PICTURES_DIR": "pictures",
    }.items():
        (home / sub).mkdir(parents=True)
        monkeypatch.setenv(var, str(home / sub))
    monkeypatch.setenv("HF_HOME", str(home / "hf"))
