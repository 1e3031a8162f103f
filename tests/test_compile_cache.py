"""Where torch.compile keeps its artefacts: per user, per torch version and GPU, and whose setting wins."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from tests.server_fixtures import make_settings
from zimage_mcp.contract import BackendContext
from zimage_mcp.registry import Registry

ENV = "TORCHINDUCTOR_CACHE_DIR"
CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _no_inherited_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV, raising=False)  # each test sets what it inherits; teardown restores the variable


def test_the_key_names_torch_and_the_device() -> None:
    from zimage_mcp.engine.speed.compile_cache import compile_cache_key

    key = compile_cache_key(CPU)
    assert key.startswith("torch-" + torch.__version__.lower()) and key.endswith("-cpu") and "/" not in key


def test_default_base_folder_is_created_with_a_key_subfolder(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from zimage_builtins.engine_loading import use_compile_cache

    from zimage_mcp.engine.speed.compile_cache import compile_cache_key

    caplog.set_level(logging.INFO)
    folder = use_compile_cache(BackendContext(compile_cache_dir=str(tmp_path / "base")), CPU)
    assert folder == tmp_path / "base" / compile_cache_key(CPU) and folder.is_dir()
    assert Path(__import__("os").environ[ENV]) == folder
    assert any("compile cache" in r.message and "the default" in r.message for r in caplog.records)


def test_an_inherited_variable_wins_over_the_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from zimage_builtins.engine_loading import use_compile_cache

    caplog.set_level(logging.INFO)
    monkeypatch.setenv(ENV, str(tmp_path / "inherited"))
    folder = use_compile_cache(BackendContext(compile_cache_dir=str(tmp_path / "base")), CPU)
    assert folder == tmp_path / "inherited" and folder.is_dir() and not (tmp_path / "base").exists()
    assert any("inherited TORCHINDUCTOR_CACHE_DIR" in r.message for r in caplog.records)


def test_the_users_setting_wins_over_an_inherited_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Before: os.environ.setdefault let an inherited variable win silently and the folder was not created."""
    import os

    from zimage_builtins.engine_loading import use_compile_cache

    caplog.set_level(logging.INFO)
    monkeypatch.setenv(ENV, str(tmp_path / "inherited"))
    ctx = BackendContext(compile_cache_dir=str(tmp_path / "mine"), compile_cache_explicit=True)
    folder = use_compile_cache(ctx, CPU)
    assert folder is not None and folder.parent == tmp_path / "mine" and folder.is_dir()
    assert os.environ[ENV] == str(folder)
    warned = [r.message for r in caplog.records if r.levelno == logging.WARNING]
    assert any(str(folder) in m and str(tmp_path / "inherited") in m for m in warned)  # neither is lost silently


def test_the_registry_says_whether_the_user_chose_the_folder(tmp_path: Path) -> None:
    reg = tmp_path / "r.toml"
    reg.write_text('[runtime]\ncompile_cache = "cc"\n')
    ctx = Registry.from_settings(make_settings(tmp_path, reg, tmp_path)).settings.backend_context()
    assert ctx.compile_cache_explicit is True and ctx.compile_cache_dir == str(tmp_path / "cc")
    reg.write_text("")
    ctx = Registry.from_settings(make_settings(tmp_path, reg, tmp_path)).settings.backend_context()
    assert ctx.compile_cache_explicit is False and ctx.compile_cache_dir.endswith("torch-compile")
