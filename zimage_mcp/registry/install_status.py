"""Whether a variant's weights are on this machine and where, without loading them or touching the network."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from zimage_mcp.contract import VariantSpec
from zimage_mcp.contract.rules import is_pickle
from zimage_mcp.registry.hub_cache import find_snapshot


@dataclass(frozen=True)
class InstallStatus:
    """Whether a variant's weights are on this machine, where, and otherwise how to get them."""

    installed: bool
    location: str | None
    source: str  # "path" | "single_file" | "hf_cache" | "plugin" (no weights declared) | "missing"
    how_to_install: str


def find_weights(spec: VariantSpec, hub_dir: Path, pull_name: str) -> InstallStatus:
    """Look for ``spec``'s weights: a local diffusers folder, a single file, then the HF cache. No network."""
    w = spec.weights
    notes: list[str] = []
    if w.path:
        if (Path(w.path) / "model_index.json").is_file():
            return InstallStatus(True, w.path, "path", "")
        notes.append(f"path {w.path} has no model_index.json")
    if w.single_file:
        if is_pickle(w.single_file):
            notes.append(f"single_file {w.single_file} refused: pickle formats are never loaded")
        elif Path(w.single_file).is_file():
            return InstallStatus(True, w.single_file, "single_file", "")
        else:
            notes.append(f"single_file {w.single_file} does not exist")
    if w.repo_id:
        snapshot = find_snapshot(hub_dir, w.repo_id)
        if snapshot is not None:
            return InstallStatus(True, str(snapshot), "hf_cache", "")
    if not (w.path or w.single_file or w.repo_id):
        return InstallStatus(True, None, "plugin", "")
    if w.repo_id and not w.published:
        how = f"weights not published yet ({w.repo_id}); set [variants.{spec.id}.weights] path once you have them"
    elif w.repo_id:
        how = f"run `zimage-mcp pull {pull_name}` or `huggingface-cli download {w.repo_id}`"
    else:
        how = f"set [variants.{spec.id}.weights] path or single_file in your registry.toml"
    return InstallStatus(False, None, "missing", "; ".join([*notes, how]))


def weights_bytes(location: str | None) -> int:
    """Bytes of ``.safetensors`` at ``location`` (a file or a folder): a VRAM estimate before loading."""
    if location is None:
        return 0
    path = Path(location)
    if path.is_file():
        return path.stat().st_size
    total = 0
    for folder, _, files in os.walk(path, followlinks=True):
        total += sum(os.path.getsize(os.path.join(folder, f)) for f in files if f.endswith(".safetensors"))
    return total
