"""Built-in plugin: every ``.safetensors`` file in the LoRA folder becomes a LoRA named after the file.

An optional sidecar ``NAME.toml`` or ``NAME.json`` next to ``NAME.safetensors`` sets::

    base = "z-image-turbo"        # variant id or alias the LoRA was trained on
    scale = 0.8                   # default strength
    trigger_words = ["pxl art"]   # a string or a list of strings
    description = "Pixel-art style"

A bad sidecar refuses that LoRA only, naming the file and key. Pickle files (``.ckpt``, ``.pt``,
``.bin``, ``.pth``) are listed as refused and never opened. The folder is not scanned recursively.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zimage_mcp import hookimpl
from zimage_mcp.contract import RegistryError
from zimage_mcp.contract.rules import WEIGHTS_SUFFIX, is_pickle

if TYPE_CHECKING:
    from zimage_mcp.registry.hookspecs import Catalog, RefuseLora, RegisterLora

SIDECAR_KEYS = {
    "base": "a variant id",
    "scale": "a number",
    "trigger_words": "a list of strings",
    "description": "a string",
}


@hookimpl
def zimage_register_loras(register: RegisterLora, refuse: RefuseLora, catalog: Catalog) -> None:
    folder = catalog.lora_dir
    if folder is None or not folder.is_dir():
        if folder is not None and catalog.lora_dir_configured:
            refuse(str(folder), "LoRA folder does not exist")
        return
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        if is_pickle(path):
            refuse(path.name, "pickle formats are never loaded")
        elif path.suffix.lower() == WEIGHTS_SUFFIX:
            try:
                options = read_sidecar(path)
            except RegistryError as exc:
                refuse(path.stem, str(exc))
                continue
            register(path.stem, str(path), **options)


def read_sidecar(lora_file: Path) -> dict[str, Any]:
    """The options in ``NAME.toml`` or ``NAME.json`` beside ``lora_file`` ({} when there is none)."""
    sidecars = [p for p in (lora_file.with_suffix(".toml"), lora_file.with_suffix(".json")) if p.is_file()]
    if not sidecars:
        return {}
    if len(sidecars) > 1:
        raise RegistryError(f"{sidecars[0]}: and {sidecars[1].name} both exist; keep one sidecar")
    sidecar = sidecars[0]
    try:
        data = tomllib.loads(sidecar.read_text()) if sidecar.suffix == ".toml" else json.loads(sidecar.read_text())
    except (OSError, ValueError) as exc:
        raise RegistryError(f"{sidecar}: cannot parse: {exc}") from None
    if not isinstance(data, dict):
        raise RegistryError(f"{sidecar}: must hold a table/object of {', '.join(SIDECAR_KEYS)}")
    for key, value in data.items():
        if key not in SIDECAR_KEYS:
            raise RegistryError(f"{sidecar}: {key}: unknown key (allowed: {', '.join(SIDECAR_KEYS)})")
        if not _valid(key, value):
            raise RegistryError(f"{sidecar}: {key}: must be {SIDECAR_KEYS[key]}, got {json.dumps(value, default=str)}")
    if isinstance(data.get("trigger_words"), str):
        data["trigger_words"] = [data["trigger_words"]]
    return data


def _valid(key: str, value: Any) -> bool:
    if key == "scale":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if key == "trigger_words":
        return isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value))
    return isinstance(value, str)
