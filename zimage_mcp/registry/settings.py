"""Process settings: one frozen ``Settings`` from the host's environment and the user's ``[runtime]`` table.

Two sources, each for its own kind of value:

- ``ENV_OPTIONS``: what an MCP host sets in its config (paths, device, token, origins, log level, default
  model, plugin lists, the Hugging Face cache), read from ``ZIMAGE_MCP_*``/``HF_*`` variables.
- ``RUNTIME_OPTIONS``: the tuning knobs, read from the ``[runtime]`` table of the user registry file (the
  file ``catalog.py`` merges over the shipped ``registry.toml``). An unknown key or a bad value raises
  ``SettingsError`` naming the file, the table, the key and what is allowed.

CLI options override both. Nothing is read at import time: ``Settings.from_env()`` is called once at
startup and the result is passed down; no other module reads ``os.environ``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import platformdirs

from zimage_mcp.contract import BackendContext, RegistryError, SettingsError

log = logging.getLogger(__name__)

PREFIX = "ZIMAGE_MCP_"
APP_NAME = "zimage-mcp"
RUNTIME_TABLE = "runtime"


def default_output_dir() -> Path:
    """Where images are saved when ``ZIMAGE_MCP_OUTPUT_DIR`` is unset: never the working directory."""
    return Path(platformdirs.user_pictures_dir()) / APP_NAME


def default_compile_cache_dir() -> Path:
    """torch.compile artefacts kept between server runs: a restart compiles in seconds, not a minute.

    The backend adds a subfolder per torch version and GPU (kernels are only valid for one of each)."""
    return Path(platformdirs.user_cache_dir(APP_NAME)) / "torch-compile"


def default_bytecode_cache_dir() -> Path:
    """Python bytecode of the engine's imports, where the installed packages have none (``cli.bytecode_cache``)."""
    return Path(platformdirs.user_cache_dir(APP_NAME)) / "python-bytecode"


def user_registry_file() -> Path:
    """The user's registry file (variants, ``[loras]``, ``[runtime]``), used when it exists."""
    return Path(platformdirs.user_config_dir(APP_NAME)) / "registry.toml"


def read_toml(path: Path) -> dict[str, Any]:
    """Parse one TOML file; raises ``RegistryError`` naming the file."""
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise RegistryError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise RegistryError(f"{path}: not valid TOML: {exc}") from None


@dataclass(frozen=True)
class Settings:
    """Everything the server, registry and plugins are configured with. Build with ``from_env``."""

    # Host configuration (environment variables, ENV_OPTIONS)
    registry_file: Path | None = None  # None: user_config_dir/registry.toml if present
    output_dir: Path = dataclasses.field(default_factory=default_output_dir)
    input_dirs: tuple[Path, ...] = ()  # extra folders edit inputs may be read from (os.pathsep-separated)
    lora_dir: Path | None = None  # None: [loras] dir in registry.toml, else user_data_dir/loras
    log_file: Path | None = None
    device: str = "auto"
    token: str | None = None
    allowed_origins: tuple[str, ...] = ()
    log_level: str = "INFO"
    default_model: str | None = None
    load_plugins: tuple[str, ...] | None = None  # None: all; (): none
    block_plugins: tuple[str, ...] = ()
    hf_home: str | None = None  # HF_HOME
    hf_hub_cache: str | None = None  # HF_HUB_CACHE
    # Tuning knobs (the [runtime] table, RUNTIME_OPTIONS)
    optimize: str = "auto"  # auto: fused projections + regional torch.compile on CUDA; "off": eager
    dtype: str = "bfloat16"
    vae_dtype: str = "auto"  # auto: the model dtype on CUDA (as diffusers' torch_dtype), float32 on the CPU
    offload_text_encoder: bool = False  # low-VRAM (16 GB cards): keep the text encoder in host memory
    fp8: bool = False  # opt-in, lossy: fp8 GEMM weights in the DiT (faster, half its memory, no LoRAs)
    step_cache: float = 0.0  # opt-in, lossy: first-block cache threshold for many-step sampling; 0 = off
    # None: user_cache_dir/torch-compile, unless TORCHINDUCTOR_CACHE_DIR is set; a set value wins over it
    compile_cache_dir: Path | None = None
    prepare_at_start: bool = True  # plugins import the engine and create the device context in the background
    bytecode_cache: bool = True  # keep imports' bytecode in our cache folder where none is installed or writable
    compile_in_background: bool = True  # requests never wait for the compiler; idle GPU time compiles
    preload: tuple[str, ...] = ()  # variants to load and compile at server start, in the background
    warm_sizes: tuple[str, ...] = ()  # "WxH" sizes preloading compiles besides each variant's default
    vram_budget_gb: float | None = None  # None: unlimited
    idle_unload_seconds: float = 900.0  # 0 disables idle release
    max_queue: int = 32
    job_timeout_seconds: float = 600.0
    preview_max_bytes: int = 900_000
    test_gpu_memory_gb: float | None = None  # test only: cap CUDA memory to emulate a 16 / 8 GB card

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read the host variables from ``environ``, the ``[runtime]`` table, then apply ``overrides``.

        Overrides are field values from the CLI; a ``None`` override is ignored (the option was not
        given) and a ``str`` override is parsed like the variable or key. Raises ``SettingsError``
        naming the variable, the file and key, or the field when a value is not allowed.
        """
        env = os.environ if environ is None else environ
        for name in overrides:
            if name not in OPTIONS:
                raise TypeError(f"Settings has no field {name!r}")
        given = {name: _override(name, value) for name, value in overrides.items() if value is not None}
        values: dict[str, Any] = {}
        for option in ENV_OPTIONS:
            raw = env.get(option.source)
            if raw is not None:
                values[option.field] = _parse(option.source, option.parse, raw)
        runtime_file = given.get("registry_file", values.get("registry_file")) or user_registry_file()
        for option in RUNTIME_OPTIONS:
            if PREFIX + option.source.upper() in env:
                log.warning(
                    "%s%s is no longer read: set %s in the [%s] table of %s instead",
                    PREFIX,
                    option.source.upper(),
                    option.source,
                    RUNTIME_TABLE,
                    runtime_file,
                )
        values.update(read_runtime_table(runtime_file))
        values.update(given)
        return cls(**values)

    def backend_context(self) -> BackendContext:
        """What a backend factory and ``zimage_prepare`` are told: the device, dtypes and modes set here."""
        return BackendContext(
            device=self.device,
            dtype=self.dtype,
            vae_dtype=self.vae_dtype,
            optimize=self.optimize,
            offload_text_encoder=self.offload_text_encoder,
            fp8=self.fp8,
            step_cache=self.step_cache,
            compile_cache_dir=str(self.compile_cache_dir or default_compile_cache_dir()),
            compile_cache_explicit=self.compile_cache_dir is not None,
            gpu_memory_limit_gb=self.test_gpu_memory_gb,
            defer_compile=self.compile_in_background,
            hf_home=self.hf_home,
        )


@dataclass(frozen=True)
class Option:
    """One setting: its field, where it is read from (a variable or a ``[runtime]`` key), how it is parsed."""

    field: str
    source: str
    parse: Callable[[str], Any]
    toml_type: str = "str"  # what a [runtime] value must be before parsing: str, bool, int, number, list


def read_runtime_table(path: Path) -> dict[str, Any]:
    """Field values from the ``[runtime]`` table of ``path`` ({} when the file or table is absent).

    A file that cannot be read or parsed is left to the catalogue, which reports it and ignores it.
    """
    if not path.is_file():
        return {}
    try:
        table = read_toml(path).get(RUNTIME_TABLE, {})
    except RegistryError:
        return {}
    where = f"{path}: [{RUNTIME_TABLE}]"
    if not isinstance(table, dict):
        raise SettingsError(f"{where}: must be a table, got {json.dumps(table, default=str)}")
    by_key = {option.source: option for option in RUNTIME_OPTIONS}
    values: dict[str, Any] = {}
    for key, value in table.items():
        option = by_key.get(key)
        if option is None:
            raise SettingsError(f"{where} {key}: unknown key (allowed: {', '.join(by_key)})")
        label = f"{where} {key}"
        value = _parse(label, option.parse, _toml_text(label, option.toml_type, value))
        if isinstance(value, Path) and not value.is_absolute():
            value = path.parent / value  # like weights paths: relative to the file that sets them
        values[option.field] = value
    return values


def _toml_text(label: str, toml_type: str, value: Any) -> str:
    """A TOML value of the expected type as the text the option's parser reads."""
    shown = json.dumps(value, default=str)
    if toml_type == "bool":
        if isinstance(value, bool):
            return "true" if value else "false"
        raise SettingsError(f"{label}: must be true or false, got {shown}")
    if toml_type in ("int", "number"):
        if isinstance(value, bool) or not isinstance(value, int if toml_type == "int" else (int, float)):
            raise SettingsError(f"{label}: must be {'an integer' if toml_type == 'int' else 'a number'}, got {shown}")
        return str(value)
    if toml_type == "list":
        if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            raise SettingsError(f"{label}: must be a list of strings, got {shown}")
        if any("," in v for v in value):
            raise SettingsError(f"{label}: one name per list item (no commas), got {shown}")
        return ",".join(value)
    if not isinstance(value, str):
        raise SettingsError(f"{label}: must be a string, got {shown}")
    return value


def _parse(label: str, parse: Callable[[str], Any], raw: str) -> Any:
    try:
        return parse(raw)
    except ValueError as exc:
        raise SettingsError(f"{label}: {exc}, got {raw!r}") from None


def _override(name: str, value: Any) -> Any:
    if isinstance(value, str):
        return _parse(name, OPTIONS[name].parse, value)
    if name in _PATH_FIELDS and isinstance(value, os.PathLike):
        return Path(value)
    if isinstance(value, (list, tuple)) and name in _LIST_FIELDS:
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
        raise ValueError(f"must be WIDTHxHEIGHT sizes such as 1024x1024, 1280x720 (bad: {bad})")
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


def _choice(*allowed: str, pattern: str | None = None, upper: bool = False) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().upper() if upper else raw.strip()
        if value in allowed or (pattern is not None and re.fullmatch(pattern, value)):
            return value
        raise ValueError(f"must be one of {', '.join(allowed)}" + (" or cuda:N" if pattern else ""))

    return parse


ENV_OPTIONS = (
    Option("registry_file", PREFIX + "REGISTRY", _optional_path),
    Option("output_dir", PREFIX + "OUTPUT_DIR", _path),
    Option("input_dirs", PREFIX + "INPUT_DIRS", _paths),
    Option("lora_dir", PREFIX + "LORA_DIR", _optional_path),
    Option("log_file", PREFIX + "LOG_FILE", _optional_path),
    Option("device", PREFIX + "DEVICE", _choice("auto", "cpu", "cuda", "mps", pattern=r"cuda:\d+")),
    Option("token", PREFIX + "TOKEN", _optional_str),
    Option("allowed_origins", PREFIX + "ALLOWED_ORIGINS", _names),
    Option("log_level", PREFIX + "LOG_LEVEL", _choice("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL", upper=True)),
    Option("default_model", PREFIX + "DEFAULT_MODEL", _optional_str),
    Option("load_plugins", PREFIX + "LOAD_PLUGINS", _names),
    Option("block_plugins", PREFIX + "BLOCK_PLUGINS", _names),
    Option("hf_home", "HF_HOME", _optional_str),
    Option("hf_hub_cache", "HF_HUB_CACHE", _optional_str),
)
RUNTIME_OPTIONS = (
    Option("optimize", "optimize", _choice("auto", "compile", "fuse", "off")),
    Option("dtype", "dtype", _choice("bfloat16", "float16", "float32")),
    Option("vae_dtype", "vae_dtype", _choice("auto", "bfloat16", "float16", "float32")),
    Option("offload_text_encoder", "offload_text_encoder", _bool, "bool"),
    Option("fp8", "fp8", _bool, "bool"),
    Option("step_cache", "step_cache", _number(0), "number"),
    Option("compile_cache_dir", "compile_cache", _optional_path),
    Option("prepare_at_start", "prepare_at_start", _bool, "bool"),
    Option("bytecode_cache", "bytecode_cache", _bool, "bool"),
    Option("compile_in_background", "compile_in_background", _bool, "bool"),
    Option("preload", "preload", _names, "list"),
    Option("warm_sizes", "warm_sizes", _sizes, "list"),
    Option("vram_budget_gb", "vram_budget_gb", _number(0, strict=True), "number"),
    Option("idle_unload_seconds", "idle_unload_seconds", _number(0), "number"),
    Option("max_queue", "max_queue", _number(1, integer=True), "int"),
    Option("job_timeout_seconds", "job_timeout_seconds", _number(0, strict=True), "number"),
    Option("preview_max_bytes", "preview_max_bytes", _number(0, integer=True), "int"),
    Option("test_gpu_memory_gb", "test_gpu_memory_gb", _number(0, strict=True), "number"),
)
OPTIONS = {option.field: option for option in (*ENV_OPTIONS, *RUNTIME_OPTIONS)}
_PATH_FIELDS = {"registry_file", "output_dir", "lora_dir", "log_file", "compile_cache_dir"}
_LIST_FIELDS = {"input_dirs", "load_plugins", "block_plugins", "allowed_origins", "preload", "warm_sizes"}
