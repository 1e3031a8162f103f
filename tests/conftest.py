from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# llm's guard: plugins.load_plugins() never autoloads installed entry points under tests.
sys._called_from_test = True  # type: ignore[attr-defined]


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
