"""The variant catalogue: the shipped ``registry.toml`` with the user's registry file merged over it.

Every value is checked against the torch-free dataclasses in ``zimage_mcp.contract``; the sub-table keys
(``defaults``, ``limits``, ``capabilities``, ``weights``) are exactly those dataclasses' field names.
Each file is checked on its own (so an error names the file that holds the bad value), then the
variant tables are deep-merged and checked for completeness. A bad key is named in ``Catalog.problems``
and ignored on its own; a merge that is inconsistent (steps above max_steps, say) refuses a new
variant, but a built-in variant is then kept exactly as shipped and the user's table for it is ignored
(listed too), so a typo never drops Turbo nor silently makes another variant the default.
``defaults.shift`` is unset in the shipped file: ``None`` means the checkpoint's own scheduler shift,
and only a registry file that sets it overrides that.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import platformdirs

from zimage_mcp.contract import Capabilities, Defaults, Limits, RegistryError, VariantSpec, WeightsLocation
from zimage_mcp.contract.rules import guidance_problem, size_problem, steps_problem
from zimage_mcp.registry.settings import APP_NAME, RUNTIME_TABLE, Settings, read_toml, user_registry_file

BUILTIN_FILE = Path(__file__).parents[1] / "registry.toml"
VARIANT_ID = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
ALIAS = re.compile(r"[a-z0-9][a-z0-9._-]*")
KINDS = ("turbo", "base", "edit")

_TOP_KEYS = {"plugin": "str", "title": "str", "kind": "str", "description": "str", "aliases": "list", "shares": "list"}
_SUBTABLES: dict[str, type] = {
    "weights": WeightsLocation,
    "defaults": Defaults,
    "limits": Limits,
    "capabilities": Capabilities,
}
_AT_LEAST_ONE = {
    "defaults.steps", "defaults.width", "defaults.height", "limits.min_side", "limits.max_side",
    "limits.size_multiple", "limits.min_steps", "limits.max_steps", "limits.max_count",
}  # fmt: skip
_REQUIRED = ("plugin", "title", "kind", "defaults.steps", "defaults.guidance")  # no shift: the checkpoint's own
_TABLES = ("variants", "loras", "ray", RUNTIME_TABLE)  # [runtime] is read and checked by settings.py
# [ray]: the Ray Serve scale-out (``serve --ray``); key -> type. Read here, used by zimage_mcp.scale.
RAY_KEYS = {
    "address": "str", "min_replicas": "int", "max_replicas": "int", "initial_replicas": "int",
    "target_ongoing_requests": "float", "max_ongoing_requests": "int", "max_models_per_replica": "int",
    "num_gpus": "float", "num_cpus": "float", "resources": "table", "downscale_delay_s": "float",
    "retries": "int",
}  # fmt: skip
_RAY_AT_LEAST_ONE = {"max_replicas", "max_ongoing_requests", "max_models_per_replica"}
# Before one engine plugin registered every built-in variant, each had its own; old user files still work.
ENGINE_PLUGIN = "zimage_engine"
FORMER_ENGINE_PLUGINS = ("zimage_turbo", "zimage_base", "zimage_edit")


@dataclass(frozen=True)
class CatalogVariant:
    """One validated ``[variants.<id>]`` table: the plugin that registers it, its aliases and spec."""

    plugin: str
    aliases: tuple[str, ...]
    spec: VariantSpec
    source: str  # the file that last set this table


@dataclass(frozen=True)
class Catalog:
    """The merged catalogue handed to the registration hooks."""

    variants: tuple[CatalogVariant, ...] = ()
    lora_dir: Path | None = None
    lora_dir_configured: bool = False  # True when set by ZIMAGE_MCP_LORA_DIR or [loras] dir
    files: tuple[str, ...] = ()
    problems: tuple[str, ...] = ()
    default_variant: str | None = None  # the built-in file's first variant: the default unless one is chosen
    ray: dict[str, Any] = dataclasses.field(default_factory=dict)  # the checked [ray] table (user file wins)

    def variants_for(self, plugin: str) -> list[CatalogVariant]:
        """The catalogue variants whose ``plugin`` key names ``plugin``, in file order."""
        return [v for v in self.variants if v.plugin == plugin]

    def published_repos(self) -> dict[str, str]:
        """Variant id and each alias -> Hugging Face repo, for the variants whose weights are published."""
        repos: dict[str, str] = {}
        for item in self.variants:
            weights = item.spec.weights
            if weights.repo_id and weights.published:
                repos.update(dict.fromkeys((item.spec.id, *item.aliases), weights.repo_id))
        return repos


def default_lora_dir() -> Path:
    """The LoRA folder used when neither ``ZIMAGE_MCP_LORA_DIR`` nor ``[loras] dir`` is set."""
    return Path(platformdirs.user_data_dir(APP_NAME)) / "loras"


def catalog_from_settings(settings: Settings) -> Catalog:
    """The catalogue with the configured user file (``--registry`` must exist; the default may not)."""
    return load_catalog(
        settings.registry_file or user_registry_file(),
        required=settings.registry_file is not None,
        lora_dir=settings.lora_dir,
    )


def load_catalog(
    user_file: Path | None = None,
    *,
    required: bool = False,
    lora_dir: Path | None = None,
    builtin: Path = BUILTIN_FILE,
) -> Catalog:
    """Read ``builtin``, merge ``user_file`` over it and validate.

    ``required``: the user file was named explicitly (``--registry``), so a missing one raises
    ``RegistryError``. An unreadable or malformed user file is a problem and is ignored. ``lora_dir``
    (from settings) wins over ``[loras] dir``.
    """
    layers = [(str(builtin), read_toml(builtin), builtin.parent)]
    problems: list[str] = []
    if user_file is not None:
        if user_file.is_file():
            try:
                layers.append((str(user_file), read_toml(user_file), user_file.parent))
            except RegistryError as exc:
                problems.append(f"{exc} (file ignored)")
        elif required:
            raise RegistryError(f"{user_file}: registry file does not exist")

    tables: dict[str, list[tuple[str, dict[str, Any]]]] = {}  # id -> (file, its table) per file
    toml_lora_dir: Path | None = None
    ray: dict[str, Any] = {}
    for label, data, folder in layers:
        for key in data:
            if key not in _TABLES:
                problems.append(f"{label}: [{key}]: unknown table (allowed: {', '.join(_TABLES)})")
        toml_lora_dir = _lora_dir(label, data.get("loras", {}), folder, problems) or toml_lora_dir
        ray.update(_ray_table(label, data.get("ray", {}), problems))
        variants = data.get("variants", {})
        if not isinstance(variants, dict):
            problems.append(f"{label}: variants: must be a table of [variants.<id>] tables")
            continue
        for vid, table in variants.items():
            kept, errors = _checked_table(label, vid, table)
            problems.extend(errors)
            if kept is not None:
                tables.setdefault(vid, []).append((label, _absolute_paths(kept, folder)))

    built: list[CatalogVariant] = []
    for vid, layered in tables.items():
        item = _build_layers(vid, layered, str(builtin), problems)
        if item is not None:
            built.append(item)
    configured = lora_dir or toml_lora_dir
    return Catalog(
        variants=tuple(built),
        lora_dir=configured or default_lora_dir(),
        lora_dir_configured=configured is not None,
        files=tuple(label for label, _, _ in layers),
        problems=tuple(problems),
        default_variant=next(iter(layers[0][1].get("variants", {})), None),
        ray=ray,
    )


def _ray_table(label: str, table: Any, problems: list[str]) -> dict[str, Any]:
    """The ``[ray]`` keys of one file that have the right type; each bad key is named and ignored."""
    if not isinstance(table, dict):
        problems.append(f"{label}: ray: must be a table")
        return {}
    kept: dict[str, Any] = {}
    for key, value in table.items():
        typ = RAY_KEYS.get(key)
        if typ is None:
            problems.append(f"{label}: [ray] {key}: unknown key (allowed: {', '.join(RAY_KEYS)}) (key ignored)")
            continue
        if typ == "table":
            ok = isinstance(value, dict) and all(_check_value("float", v, 0) is None for v in value.values())
            problem = None if ok else "must be a table of resource name = amount (numbers >= 0)"
        else:
            problem = _check_value(typ, value, 1 if key in _RAY_AT_LEAST_ONE else 0)
        if problem:
            problems.append(f"{label}: [ray] {key}: {problem}, got {_show(value)} (key ignored)")
        else:
            kept[key] = float(value) if typ == "float" else value
    return kept


def _lora_dir(label: str, table: Any, folder: Path, problems: list[str]) -> Path | None:
    if not isinstance(table, dict):
        problems.append(f"{label}: loras: must be a table")
        return None
    for key, value in table.items():
        if key != "dir":
            problems.append(f"{label}: [loras] {key}: unknown key (allowed: dir)")
        elif not isinstance(value, str):
            problems.append(f"{label}: [loras] dir: must be a string, got {_show(value)}")
        elif value.strip():
            return folder / Path(value).expanduser()
    return None


def _build_layers(
    vid: str, layered: list[tuple[str, dict[str, Any]]], builtin: str, problems: list[str]
) -> CatalogVariant | None:
    """Build a variant from its tables, merged file over file. When the merge is inconsistent, a built-in
    variant is kept exactly as shipped (the user's table for it is ignored, and listed as a problem)."""
    merged: dict[str, Any] = {}
    for _, table in layered:
        merged = _merge(merged, table)
    try:
        return _build(vid, merged, layered[-1][0])
    except RegistryError as exc:
        if layered[0][0] != builtin or len(layered) == 1:
            problems.append(f"{exc} (variant refused)")
            return None
        ignored = ", ".join(label for label, _ in layered[1:])
        problems.append(f"{exc} (your [variants.{vid}] table in {ignored} is ignored; the built-in {vid} is kept)")
        return _build(vid, layered[0][1], builtin)


def _checked_table(label: str, vid: str, table: Any) -> tuple[dict[str, Any] | None, list[str]]:
    """One file's variant table without its unknown keys, wrong types and out-of-range numbers, each
    named as a problem (file, table, key, allowed keys) and ignored on its own."""
    where = f"{label}: [variants.{vid}]"
    if not isinstance(table, dict):
        return None, [f"{where}: must be a table, got {_show(table)} (table ignored)"]
    errors: list[str] = []
    kept: dict[str, Any] = {}
    for key, value in table.items():
        if key in _TOP_KEYS:
            ok = isinstance(value, str) if _TOP_KEYS[key] == "str" else _is_str_list(value)
            if not ok:
                kind = "a string" if _TOP_KEYS[key] == "str" else "a list of strings"
                errors.append(f"{where} {key}: must be {kind}, got {_show(value)} (key ignored)")
                continue
            kept[key] = value
        elif key in _SUBTABLES:
            if not isinstance(value, dict):
                errors.append(f"{where} {key}: must be a table, got {_show(value)} (key ignored)")
                continue
            kept[key] = _checked_subtable(where, key, value, errors)
        else:
            allowed = ", ".join([*_TOP_KEYS, *_SUBTABLES])
            errors.append(f"{where} {key}: unknown key (allowed: {allowed}) (key ignored)")
    return kept, errors


def _checked_subtable(where: str, name: str, table: dict[str, Any], errors: list[str]) -> dict[str, Any]:
    types = {f.name: str(f.type).replace(" | None", "") for f in dataclasses.fields(_SUBTABLES[name])}
    kept = {}
    for key, value in table.items():
        if key not in types:
            errors.append(f"{where} {name}.{key}: unknown key (allowed: {', '.join(types)}) (key ignored)")
            continue
        problem = _check_value(types[key], value, 1 if f"{name}.{key}" in _AT_LEAST_ONE else 0)
        if problem:
            errors.append(f"{where} {name}.{key}: {problem}, got {_show(value)} (key ignored)")
            continue
        kept[key] = value
    return kept


def _check_value(typ: str, value: Any, minimum: int) -> str | None:
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if typ == "bool":
        return None if isinstance(value, bool) else "must be true or false"
    if typ == "int":
        return None if is_number and isinstance(value, int) and value >= minimum else f"must be an integer >= {minimum}"
    if typ == "float":
        return None if is_number and math.isfinite(value) and value >= minimum else f"must be a number >= {minimum}"
    return None if isinstance(value, str) else "must be a string"


def _build(vid: str, t: dict[str, Any], label: str) -> CatalogVariant:
    """Check a merged table for completeness and consistency and turn it into a spec."""

    def fail(key: str, message: str) -> RegistryError:
        return RegistryError(f"{label}: [variants.{vid}] {key}: {message}")

    if not VARIANT_ID.fullmatch(vid):
        raise RegistryError(f"{label}: [variants.{vid}]: variant ids must be lowercase kebab-case (z-image-turbo)")
    for key in _REQUIRED:
        table, _, sub = key.partition(".")
        if (sub and sub not in t.get(table, {})) or (not sub and key not in t):
            raise fail(key, "missing (required)")
    if t["kind"] not in KINDS:
        raise fail("kind", f"must be one of {', '.join(KINDS)}, got {_show(t['kind'])}")
    for alias in t.get("aliases", []):
        if not ALIAS.fullmatch(alias):
            raise fail("aliases", f"{_show(alias)} is not a valid alias (lowercase letters, digits, '.', '_', '-')")
    parts = {name: _instantiate(cls, t.get(name, {})) for name, cls in _SUBTABLES.items()}
    d: Defaults = parts["defaults"]
    lim: Limits = parts["limits"]
    for lo, hi in (("min_side", "max_side"), ("min_steps", "max_steps"), ("min_guidance", "max_guidance")):
        if getattr(lim, lo) > getattr(lim, hi):
            raise fail(f"limits.{lo}", f"{getattr(lim, lo)} is greater than limits.{hi} ({getattr(lim, hi)})")
    for key, problem in (
        ("steps", steps_problem(d.steps, lim)),
        ("guidance", guidance_problem(d.guidance, lim)),
        ("width", size_problem(d.width, lim)),
        ("height", size_problem(d.height, lim)),
    ):
        if problem:
            raise fail(f"defaults.{key}", problem)
    spec = VariantSpec(
        id=vid,
        title=t["title"],
        kind=t["kind"],
        capabilities=parts["capabilities"],
        defaults=d,
        limits=lim,
        weights=parts["weights"],
        description=t.get("description", ""),
        shares=tuple(t.get("shares", ())),
    )
    plugin = ENGINE_PLUGIN if t["plugin"] in FORMER_ENGINE_PLUGINS else t["plugin"]
    return CatalogVariant(plugin=plugin, aliases=tuple(t.get("aliases", ())), spec=spec, source=label)


def _instantiate(cls: type, table: dict[str, Any]) -> Any:
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name in table:
            value = table[f.name]
            if str(f.type).startswith("str | None") and value == "":
                value = None  # TOML has no null: "" means unset
            values[f.name] = float(value) if str(f.type).startswith("float") else value
    return cls(**values)


def _absolute_paths(table: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Relative weights paths (``path``, the single files, ``controlnet``) are relative to the file that sets them."""
    weights = table.get("weights")
    if not isinstance(weights, dict):
        return table
    fixed = dict(weights)
    for key in ("path", "single_file", "vae_file", "text_encoder_file", "controlnet"):
        if fixed.get(key):
            fixed[key] = str(folder / Path(fixed[key]).expanduser())
    return {**table, "weights": fixed}


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _is_str_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _show(value: Any) -> str:
    return json.dumps(value, default=str)
