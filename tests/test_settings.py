from __future__ import annotations

import os
from pathlib import Path

import pytest

from zimage_mcp.contract import SettingsError
from zimage_mcp.settings import Settings


def test_defaults_never_use_the_working_directory(tmp_path: Path) -> None:
    s = Settings.from_env({})
    assert s.output_dir == Path(os.environ["XDG_PICTURES_DIR"]) / "zimage-mcp"
    assert s.load_plugins is None and s.block_plugins == ()
    assert (s.device, s.dtype, s.idle_unload_seconds, s.max_queue) == ("auto", "bfloat16", 900.0, 32)
    assert s.vram_budget_gb is None and s.registry_file is None and s.lora_dir is None
    assert s.fp8 is False and s.step_cache == 0.0 and s.compile_cache_dir is None  # lossy modes: opt-in


def test_fp8_and_compile_cache_are_read() -> None:
    s = Settings.from_env({"ZIMAGE_MCP_FP8": "1", "ZIMAGE_MCP_COMPILE_CACHE": "~/tc", "ZIMAGE_MCP_STEP_CACHE": "0.1"})
    assert s.fp8 is True and s.compile_cache_dir == Path("~/tc").expanduser() and s.step_cache == 0.1
    with pytest.raises(SettingsError, match="ZIMAGE_MCP_STEP_CACHE"):
        Settings.from_env({"ZIMAGE_MCP_STEP_CACHE": "-1"})


def test_preload_and_warm_sizes_are_read() -> None:
    s = Settings.from_env({"ZIMAGE_MCP_PRELOAD": "turbo, base", "ZIMAGE_MCP_WARM_SIZES": "1280x720, 720X1280"})
    assert s.preload == ("turbo", "base") and s.warm_sizes == ("1280x720", "720x1280")
    assert Settings.from_env({}).preload == () and Settings.from_env({}).warm_sizes == ()
    with pytest.raises(SettingsError, match="ZIMAGE_MCP_WARM_SIZES: must be comma-separated WIDTHxHEIGHT"):
        Settings.from_env({"ZIMAGE_MCP_WARM_SIZES": "1280*720"})


def test_reads_prefixed_variables() -> None:
    env = {
        "ZIMAGE_MCP_REGISTRY": "~/reg.toml",
        "ZIMAGE_MCP_INPUT_DIRS": os.pathsep.join(["/a", "/b"]),
        "ZIMAGE_MCP_VRAM_BUDGET_GB": "20.5",
        "ZIMAGE_MCP_DEVICE": "cuda:1",
        "ZIMAGE_MCP_LOG_LEVEL": "debug",
        "ZIMAGE_MCP_ALLOWED_ORIGINS": "http://a, http://b",
        "ZIMAGE_MCP_PREVIEW_MAX_BYTES": "1000",
        "HF_HOME": "/hf",
        "HF_HUB_CACHE": "/hub",
    }
    s = Settings.from_env(env)
    assert s.registry_file == Path("~/reg.toml").expanduser()
    assert s.input_dirs == (Path("/a"), Path("/b"))
    assert (s.vram_budget_gb, s.device, s.log_level, s.preview_max_bytes) == (20.5, "cuda:1", "DEBUG", 1000)
    assert s.allowed_origins == ("http://a", "http://b")
    assert (s.hf_home, s.hf_hub_cache) == ("/hf", "/hub")


@pytest.mark.parametrize(("value", "expected"), [("a, b", ("a", "b")), ("", ())])
def test_load_plugins_set_or_empty(value: str, expected: tuple[str, ...]) -> None:
    assert Settings.from_env({"ZIMAGE_MCP_LOAD_PLUGINS": value}).load_plugins == expected


@pytest.mark.parametrize(
    ("var", "value", "message"),
    [
        ("ZIMAGE_MCP_VRAM_BUDGET_GB", "lots", "ZIMAGE_MCP_VRAM_BUDGET_GB: must be a number > 0, got 'lots'"),
        ("ZIMAGE_MCP_MAX_QUEUE", "0", "ZIMAGE_MCP_MAX_QUEUE: must be an integer >= 1, got '0'"),
        ("ZIMAGE_MCP_IDLE_UNLOAD_SECONDS", "-1", "ZIMAGE_MCP_IDLE_UNLOAD_SECONDS: must be a number >= 0"),
        ("ZIMAGE_MCP_DEVICE", "gpu", "ZIMAGE_MCP_DEVICE: must be one of auto, cpu, cuda, mps or cuda:N"),
        ("ZIMAGE_MCP_DTYPE", "int8", "ZIMAGE_MCP_DTYPE: must be one of bfloat16"),
        ("ZIMAGE_MCP_OUTPUT_DIR", " ", "ZIMAGE_MCP_OUTPUT_DIR: must be a path"),
    ],
)
def test_cast_errors_name_the_variable(var: str, value: str, message: str) -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env({var: value})
    assert str(info.value).startswith(message)


def test_overrides_win_and_none_is_ignored(tmp_path: Path) -> None:
    env = {"ZIMAGE_MCP_REGISTRY": "/env.toml", "ZIMAGE_MCP_DEVICE": "cpu"}
    s = Settings.from_env(env, registry_file=None, device="cuda", lora_dir=tmp_path, max_queue="4")
    assert (s.registry_file, s.device, s.lora_dir, s.max_queue) == (Path("/env.toml"), "cuda", tmp_path, 4)
    with pytest.raises(TypeError, match="no field 'nope'"):
        Settings.from_env({}, nope=1)
    with pytest.raises(SettingsError, match="max_queue: must be an integer"):
        Settings.from_env({}, max_queue="many")


def test_reads_os_environ_only_when_called(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZIMAGE_MCP_DEFAULT_MODEL", "base")
    assert Settings.from_env().default_model == "base"
