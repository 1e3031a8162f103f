"""Process settings: one frozen ``Settings`` read once from ``ZIMAGE_MCP_*`` variables and CLI overrides.

Nothing is read at import time. ``Settings.from_env()`` is called once at startup and the result is
passed down explicitly; no other module reads ``os.environ``.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import platformdirs

from zimage_mcp.contract import SettingsError

PREFIX = "ZIMAGE_MCP_"
APP_NAME = "zimage-mcp"


def default_output_dir() -> Path:
    """Where images are saved when ``ZIMAGE_MCP_OUTPUT_DIR`` is unset: never the working directory."""
    return Path(platformdirs.user_pictures_dir()) / APP_NAME


def default_compile_cache_dir() -> Path:
    """torch.compile artefacts kept between server runs: a restart compiles in seconds, not a minute."""
    return Path(platformdirs.user_cache_dir(APP_NAME)) / "torch-compile"


@dataclass(frozen=True)
class Settings:
    """Everything the server, registry and plugins are configured with. Build with ``from_env``."""

    registry_file: Path | None = None  # ZIMAGE_MCP_REGISTRY; None: user_config_dir/registry.toml if present
    output_dir: Path = dataclasses.field(default_factory=default_output_dir)
    input_dirs: tuple[Path, ...] = ()  # extra folders edit inputs may be read from (os.pathsep-separated)
    lora_dir: Path | None = None  # None: [loras] dir in registry.toml, else user_data_dir/loras
    device: str = "auto"
    dtype: str = "bfloat16"
    optimize: str = "auto"  # auto: fused projections + regional torch.compile on CUDA; "off": eager
    offload_text_encoder: bool = False  # low-VRAM (16 GB cards): keep the text encoder in host memory
    fp8: bool = False  # opt-in, lossy: fp8 GEMM weights in the DiT (faster, half its memory, no LoRAs)
    step_cache: float = 0.0  # opt-in, lossy: first-block cache threshold for many-step sampling; 0 = off
    compile_cache_dir: Path | None = None  # None: user_cache_dir/torch-compile (TORCHINDUCTOR_CACHE_DIR wins)
    preload: tuple[str, ...] = ()  # variants to load and compile at server start, in the background
    warm_sizes: tuple[str, ...] = ()  # "WxH" sizes preloading compiles besides each variant's default
    vram_budget_gb: float | None = None  # None: unlimited
    idle_unload_seconds: float = 900.0  # 0 disables idle release
    default_model: str | None = None
    load_plugins: tuple[str, ...] | None = None  # None: all; (): none
    block_plugins: tuple[str, ...] = ()
    token: str | None = None
    allowed_origins: tuple[str, ...] = ()
    preview_max_bytes: int = 900_000
    max_queue: int = 32
    job_timeout_seconds: float = 600.0
    log_file: Path | None = None
    log_level: str = "INFO"
    hf_home: str | None = None  # HF_HOME
    hf_hub_cache: str | None = None  # HF_HUB_CACHE

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read ``ZIMAGE_MCP_*`` (and ``HF_HOME``/``HF_HUB_CACHE``) from ``environ``, then apply overrides.

        Overrides are field values from the CLI; a ``None`` override is ignored (the option was not
        given) and a ``str`` override is parsed like the environment variable. Raises ``SettingsError``
        naming the variable or field when a value cannot be cast.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name, (var, parse) in _FIELDS.items():
            raw = env.get(var)
            if raw is not None:
                values[name] = _cast(var, parse, raw)
        for name, value in overrides.items():
            if name not in _FIELDS:
                raise TypeError(f"Settings has no field {name!r}")
            if value is None:
                continue
            values[name] = _cast(name, _FIELDS[name][1], value) if isinstance(value, str) else _coerce(name, value)
        return cls(**values)


def _cast(label: str, parse: Callable[[str], Any], raw: str) -> Any:
    try:
        return parse(raw)
    except ValueError as exc:
        raise SettingsError(f"{label}: {exc}, got {raw!r}") from None


def _coerce(name: str, value: Any) -> Any:
    if name in _PATH_FIELDS and isinstance(value, os.PathLike):
        return Path(value)
    if name in _LIST_FIELDS and isinstance(value, (list, tuple)):
        return tuple(Path(v) for v in value) if name == "input_dirs" else tuple(str(v) for v in value)
    return value


def _path(raw: str) -> Path:
    if not raw.strip():
        raise ValueError("must be a path")
    return Path(raw).expanduser()


def _optional_path(raw: str) -> Path | None:
    return _path(raw) if raw.strip() else None


def _paths(raw: str) -> tuple[Path, ...]:
    return tuple(Path(p).expanduser() for p in raw.split(os.pathsep) if p.strip())


def _names(raw: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in raw.split(",") if n.strip())


def _sizes(raw: str) -> tuple[str, ...]:
    sizes = _names(raw.lower())
    bad = [s for s in sizes if not re.fullmatch(r"[1-9]\d*x[1-9]\d*", s)]
    if bad:
        raise ValueError(f"must be comma-separated WIDTHxHEIGHT sizes such as 1024x1024,1280x720 (bad: {bad})")
    return sizes


def _optional_str(raw: str) -> str | None:
    return raw.strip() or None


def _number(minimum: float, *, strict: bool = False, integer: bool = False) -> Callable[[str], Any]:
    kind = "an integer" if integer else "a number"
    bound = f"> {minimum:g}" if strict else f">= {minimum:g}"

    def parse(raw: str) -> float | int:
        try:
            value: float | int = int(raw) if integer else float(raw)
        except ValueError:
            raise ValueError(f"must be {kind} {bound}") from None
        if value != value or (value <= minimum if strict else value < minimum):
            raise ValueError(f"must be {kind} {bound}")
        return value

    return parse


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("must be one of 1, 0, true, false, yes, no, on, off")


def _optional_budget(raw: str) -> float | None:
    return _number(0, strict=True)(raw) if raw.strip() else None


def _choice(*allowed: str, pattern: str | None = None, upper: bool = False) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().upper() if upper else raw.strip()
        if value in allowed or (pattern is not None and re.fullmatch(pattern, value)):
            return value
        raise ValueError(f"must be one of {', '.join(allowed)}" + (" or cuda:N" if pattern else ""))

    return parse


_FIELDS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "registry_file": (PREFIX + "REGISTRY", _optional_path),
    "output_dir": (PREFIX + "OUTPUT_DIR", _path),
    "input_dirs": (PREFIX + "INPUT_DIRS", _paths),
    "lora_dir": (PREFIX + "LORA_DIR", _optional_path),
    "device": (PREFIX + "DEVICE", _choice("auto", "cpu", "cuda", "mps", pattern=r"cuda:\d+")),
    "dtype": (PREFIX + "DTYPE", _choice("bfloat16", "float16", "float32")),
    "optimize": (PREFIX + "OPTIMIZE", _choice("auto", "compile", "fuse", "off")),
    "offload_text_encoder": (PREFIX + "OFFLOAD_TEXT_ENCODER", _bool),
    "fp8": (PREFIX + "FP8", _bool),
    "step_cache": (PREFIX + "STEP_CACHE", _number(0)),
    "compile_cache_dir": (PREFIX + "COMPILE_CACHE", _optional_path),
    "preload": (PREFIX + "PRELOAD", _names),
    "warm_sizes": (PREFIX + "WARM_SIZES", _sizes),
    "vram_budget_gb": (PREFIX + "VRAM_BUDGET_GB", _optional_budget),
    "idle_unload_seconds": (PREFIX + "IDLE_UNLOAD_SECONDS", _number(0)),
    "default_model": (PREFIX + "DEFAULT_MODEL", _optional_str),
    "load_plugins": (PREFIX + "LOAD_PLUGINS", _names),
    "block_plugins": (PREFIX + "BLOCK_PLUGINS", _names),
    "token": (PREFIX + "TOKEN", _optional_str),
    "allowed_origins": (PREFIX + "ALLOWED_ORIGINS", _names),
    "preview_max_bytes": (PREFIX + "PREVIEW_MAX_BYTES", _number(0, integer=True)),
    "max_queue": (PREFIX + "MAX_QUEUE", _number(1, integer=True)),
    "job_timeout_seconds": (PREFIX + "JOB_TIMEOUT_SECONDS", _number(0, strict=True)),
    "log_file": (PREFIX + "LOG_FILE", _optional_path),
    "log_level": (PREFIX + "LOG_LEVEL", _choice("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL", upper=True)),
    "hf_home": ("HF_HOME", _optional_str),
    "hf_hub_cache": ("HF_HUB_CACHE", _optional_str),
}
_PATH_FIELDS = {"registry_file", "output_dir", "lora_dir", "log_file"}
_LIST_FIELDS = {"input_dirs", "load_plugins", "block_plugins", "allowed_origins", "preload", "warm_sizes"}
