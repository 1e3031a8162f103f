from __future__ import annotations

import os
from pathlib import Path

import pytest

from zimage_mcp.contract import SettingsError
from zimage_mcp.registry.settings import Settings


def test_defaults_never_use_the_working_directory(tmp_path: Path) -> None:
    s = Settings.from_env({})
    assert s.output_dir == Path(os.environ["XDG_PICTURES_DIR"]) / "zimage-mcp"
    assert s.load_plugins is None and s.block_plugins == ()
    assert (s.device, s.dtype, s.idle_unload_seconds, s.max_queue) == ("auto", "bfloat16", 900.0, 32)
    assert s.vram_budget_gb is None and s.registry_file is None and s.lora_dir is None
    assert s.fp8 is False and s.step_cache == 0.0 and s.compile_cache_dir is None  # lossy modes: opt-in


def runtime_file(tmp_path: Path, table: str) -> Path:
    path = tmp_path / "registry.toml"
    path.write_text("[runtime]\n" + table)
    return path


def test_knobs_are_read_from_the_runtime_table(tmp_path: Path) -> None:
    user = runtime_file(
        tmp_path,
        """
        fp8 = true
        compile_cache = "tc"
        step_cache = 0.1
        preload = ["turbo", "base"]
        warm_sizes = ["1280x720", "720X1280"]
        vram_budget_gb = 20.5
        max_queue = 4
        preview_max_bytes = 1000
        dtype = "float32"
        vae_dtype = "float32"
        offload_text_encoder = true
        """,
    )
    s = Settings.from_env({"ZIMAGE_MCP_REGISTRY": str(user)})
    assert s.fp8 is True and s.compile_cache_dir == tmp_path / "tc" and s.step_cache == 0.1  # relative to the file
    assert s.vae_dtype == "float32" and Settings.from_env({}).vae_dtype == "auto"
    assert s.preload == ("turbo", "base") and s.warm_sizes == ("1280x720", "720x1280")
    assert (s.vram_budget_gb, s.max_queue, s.preview_max_bytes) == (20.5, 4, 1000)
    assert s.dtype == "float32" and s.offload_text_encoder is True
    assert Settings.from_env({}).preload == () and Settings.from_env({}).warm_sizes == ()


def test_the_user_config_file_is_read_without_a_registry_variable() -> None:
    user = Path(os.environ["XDG_CONFIG_HOME"]) / "zimage-mcp" / "registry.toml"
    user.parent.mkdir(parents=True)
    user.write_text("[runtime]\nmax_queue = 3\n")
    assert Settings.from_env({}).max_queue == 3
    assert Settings.from_env({}, max_queue=5).max_queue == 5  # a CLI value wins


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("max_queu = 4", "[runtime] max_queu: unknown key (allowed: optimize, dtype, vae_dtype, offload_text_encoder,"),
        ("max_queue = 0", "[runtime] max_queue: must be an integer >= 1, got '0'"),
        ('max_queue = "4"', '[runtime] max_queue: must be an integer, got "4"'),
        ("step_cache = -1", "[runtime] step_cache: must be a number >= 0, got '-1'"),
        ("fp8 = 1", "[runtime] fp8: must be true or false, got 1"),
        ('optimize = "fast"', "[runtime] optimize: must be one of auto, compile, fuse, off, got 'fast'"),
        ('warm_sizes = ["1280*720"]', "[runtime] warm_sizes: must be WIDTHxHEIGHT sizes such as 1024x1024"),
        ('preload = "turbo"', '[runtime] preload: must be a list of strings, got "turbo"'),
        ("vram_budget_gb = 0", "[runtime] vram_budget_gb: must be a number > 0"),
        ("runtime = 1", "[runtime] runtime: unknown key"),
    ],
)
def test_bad_runtime_values_name_file_table_and_key(tmp_path: Path, table: str, message: str) -> None:
    user = runtime_file(tmp_path, table + "\n")
    with pytest.raises(SettingsError) as info:
        Settings.from_env({"ZIMAGE_MCP_REGISTRY": str(user)})
    assert str(info.value).startswith(f"{user}: {message}"), str(info.value)


def test_a_runtime_that_is_not_a_table_is_named(tmp_path: Path) -> None:
    user = tmp_path / "registry.toml"
    user.write_text("runtime = 5\n")
    with pytest.raises(SettingsError, match=r"registry.toml: \[runtime\]: must be a table, got 5"):
        Settings.from_env({"ZIMAGE_MCP_REGISTRY": str(user)})


def test_an_unparsable_file_is_left_to_the_catalogue(tmp_path: Path) -> None:
    user = tmp_path / "registry.toml"
    user.write_text("[runtime\n")
    assert Settings.from_env({"ZIMAGE_MCP_REGISTRY": str(user)}).max_queue == 32


def test_former_knob_variables_warn_and_name_their_runtime_key(caplog: pytest.LogCaptureFixture) -> None:
    s = Settings.from_env({"ZIMAGE_MCP_MAX_QUEUE": "4", "ZIMAGE_MCP_FP8": "1", "ZIMAGE_MCP_COMPILE_CACHE": "/tc"})
    assert (s.max_queue, s.fp8, s.compile_cache_dir) == (32, False, None)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 3
    assert any(
        w.startswith("ZIMAGE_MCP_MAX_QUEUE is no longer read: set max_queue in the [runtime] table of")
        for w in warnings
    )
    assert any("ZIMAGE_MCP_COMPILE_CACHE" in w and "set compile_cache in the [runtime] table" in w for w in warnings)


def test_reads_prefixed_variables() -> None:
    env = {
        "ZIMAGE_MCP_REGISTRY": "~/reg.toml",
        "ZIMAGE_MCP_INPUT_DIRS": os.pathsep.join(["/a", "/b"]),
        "ZIMAGE_MCP_DEVICE": "cuda:1",
        "ZIMAGE_MCP_LOG_LEVEL": "debug",
        "ZIMAGE_MCP_ALLOWED_ORIGINS": "http://a, http://b",
        "HF_HOME": "/hf",
        "HF_HUB_CACHE": "/hub",
    }
    s = Settings.from_env(env)
    assert s.registry_file == Path("~/reg.toml").expanduser()
    assert s.input_dirs == (Path("/a"), Path("/b"))
    assert (s.device, s.log_level) == ("cuda:1", "DEBUG")
    assert s.allowed_origins == ("http://a", "http://b")
    assert (s.hf_home, s.hf_hub_cache) == ("/hf", "/hub")


@pytest.mark.parametrize(("value", "expected"), [("a, b", ("a", "b")), ("", ())])
def test_load_plugins_set_or_empty(value: str, expected: tuple[str, ...]) -> None:
    assert Settings.from_env({"ZIMAGE_MCP_LOAD_PLUGINS": value}).load_plugins == expected


@pytest.mark.parametrize(
    ("var", "value", "message"),
    [
        ("ZIMAGE_MCP_DEVICE", "gpu", "ZIMAGE_MCP_DEVICE: must be one of auto, cpu, cuda, mps or cuda:N"),
        ("ZIMAGE_MCP_LOG_LEVEL", "loud", "ZIMAGE_MCP_LOG_LEVEL: must be one of DEBUG, INFO"),
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


def test_test_gpu_memory_cap_is_parsed_and_reaches_the_device(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The test-only cap that emulates a 16 GB / 8 GB card on a bigger one: parsed, passed to the backend
    context, and handed to torch.cuda.set_per_process_memory_fraction (a no-op on the CPU)."""
    import torch
    from zimage_builtins import engine_loading

    from zimage_mcp.contract import BackendContext
    from zimage_mcp.engine import device as engine_device
    from zimage_mcp.registry import Registry

    reg = tmp_path / "r.toml"
    reg.write_text("[runtime]\ntest_gpu_memory_gb = 15\n")
    s = Settings.from_env({}, registry_file=reg, device="cpu")
    assert s.test_gpu_memory_gb == 15 and Settings.from_env({}).test_gpu_memory_gb is None
    ctx = Registry.from_settings(s).settings.backend_context()
    assert ctx.gpu_memory_limit_gb == 15
    reg.write_text("[runtime]\ntest_gpu_memory_gb = 0\n")
    with pytest.raises(SettingsError, match="test_gpu_memory_gb: must be a number > 0"):
        Settings.from_env({}, registry_file=reg)

    assert engine_device.limit_memory(torch.device("cpu"), 8 << 30) is None  # CPU: nothing to cap
    calls: list[tuple[float, object]] = []
    monkeypatch.setattr(
        torch.cuda, "get_device_properties", lambda d: type("P", (), {"total_memory": 140 << 30})(), raising=False
    )
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", lambda f, d=None: calls.append((f, d)))
    monkeypatch.setattr(engine_device, "use_expandable_segments", lambda: True)
    monkeypatch.setattr(engine_loading, "_PREPARED", set())  # once per device and process
    engine_loading._prepare_device(BackendContext(gpu_memory_limit_gb=14), torch.device("cuda"))
    assert calls == [(0.1, torch.device("cuda"))]
    engine_loading._prepare_device(BackendContext(gpu_memory_limit_gb=14), torch.device("cuda"))
    engine_loading._prepare_device(BackendContext(gpu_memory_limit_gb=14), torch.device("cpu"))
    assert len(calls) == 1  # the second load on the same device does not cap it again
