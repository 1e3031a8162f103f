"""Whether a variant's weights are on this machine and where, without loading them or touching the network.

Weights come from (a) a diffusers folder (``weights.path``), (b) ComfyUI single files
(``single_file`` = the DiT, ``vae_file`` = ``ae.safetensors``, ``text_encoder_file`` = the Qwen3 file)
with whatever they leave out (always the tokenizer) from a folder: ``path`` or the Hugging Face cache
snapshot of ``repo_id``, or (c) that snapshot alone. A status that is not installed says exactly which
part is missing and names commands that exist.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from zimage_mcp.contract import VariantSpec, WeightsLocation
from zimage_mcp.contract.rules import is_pickle
from zimage_mcp.registry.hub_cache import find_snapshot

RUN_SH = Path(__file__).resolve().parents[2] / "run.sh"  # the checkout's entry point, when there is one
# single-file key -> (the folder component it replaces, what it is in ComfyUI's layout)
SINGLE_FILES = {
    "single_file": ("transformer", "the ComfyUI DiT file (diffusion_models/z_image_turbo_bf16.safetensors)"),
    "vae_file": ("vae", "ComfyUI's ae.safetensors"),
    "text_encoder_file": ("text_encoder", "ComfyUI's Qwen3 text encoder (text_encoders/qwen_3_4b.safetensors)"),
}


@dataclass(frozen=True)
class InstallStatus:
    """Whether a variant's weights are on this machine, where, and otherwise how to get them."""

    installed: bool
    location: str | None
    source: str  # "path" | "single_file" | "hf_cache" | "plugin" (no weights declared) | "missing"
    how_to_install: str
    folder: str | None = None  # for "single_file": the diffusers folder that supplies the other parts


def pull_command(pull_name: str) -> str:
    """A ``pull`` command line that runs from anywhere: the checkout's run.sh, else this interpreter."""
    if RUN_SH.is_file():
        return f"{RUN_SH} cli pull {pull_name}"
    return f"{sys.executable} -m zimage_mcp pull {pull_name}"


def find_weights(spec: VariantSpec, hub_dir: Path, pull_name: str) -> InstallStatus:
    """Look for ``spec``'s weights: single files (with a folder), a diffusers folder, the HF cache. No network."""
    w = spec.weights
    snapshot = find_snapshot(hub_dir, w.repo_id) if w.repo_id else None
    if w.single_file or w.vae_file or w.text_encoder_file:
        return _single_files(spec, snapshot)
    notes: list[str] = []
    if w.path:
        if (Path(w.path) / "model_index.json").is_file():
            return InstallStatus(True, w.path, "path", "")
        notes.append(f"path {w.path} has no model_index.json")
    if snapshot is not None:
        return InstallStatus(True, str(snapshot), "hf_cache", "")
    if not (w.path or w.repo_id):
        return InstallStatus(True, None, "plugin", "")
    if w.repo_id and not w.published:
        how = f"weights not published yet ({w.repo_id}); set [variants.{spec.id}.weights] path once you have them"
    elif w.repo_id:
        how = f"run `{pull_command(pull_name)}` or `hf download {w.repo_id}`"
    else:
        how = f"set [variants.{spec.id}.weights] path or single_file in your registry.toml"
    return InstallStatus(False, None, "missing", "; ".join([*notes, how]))


def _single_files(spec: VariantSpec, snapshot: Path | None) -> InstallStatus:
    w = spec.weights
    given = {key: getattr(w, key) for key in SINGLE_FILES if getattr(w, key)}
    problems: list[str] = []
    for key, file in given.items():
        if is_pickle(file):
            problems.append(f"{key} {file} refused: pickle formats are never loaded")
        elif not Path(file).is_file():
            problems.append(f"{key} {file} does not exist")
    needed = ["tokenizer", *(part for key, (part, _) in SINGLE_FILES.items() if key not in given)]
    candidates = [Path(w.path)] if w.path else []
    candidates += [snapshot] if snapshot is not None else []
    folder = next((c for c in candidates if all((c / part).is_dir() for part in needed)), None)
    if folder is None:
        problems.extend(_missing_parts(spec.id, w, given, needed, candidates))
    if problems:
        return InstallStatus(False, None, "missing", "; ".join(problems))
    return InstallStatus(True, w.single_file or str(folder), "single_file", "", str(folder))


def _missing_parts(
    vid: str, w: WeightsLocation, given: dict[str, str], needed: list[str], candidates: list[Path]
) -> list[str]:
    """What is missing beside the single files, one sentence per part."""
    lines = [
        f"single_file is set but {key} is not: {what} (or set [variants.{vid}.weights] path to a diffusers "
        f"folder with {part}/)"
        for key, (part, what) in SINGLE_FILES.items()
        if "single_file" in given and key != "single_file" and key not in given
    ]
    for c in candidates:
        lacking = [f"{part}/" for part in needed if not (c / part).is_dir()]
        lines.append(f"folder {c} has no {', '.join(lacking)}")
    download = (
        f", or run `hf download {w.repo_id} --include 'model_index.json' 'tokenizer/*' 'scheduler/*'`"
        if w.repo_id
        else " (the published repo's tokenizer/ and scheduler/ folders are enough)"
    )
    lines.append(
        f"the tokenizer always comes from a folder: set [variants.{vid}.weights] path to a diffusers folder{download}"
    )
    return lines


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


def located_spec(spec: VariantSpec, status: InstallStatus) -> VariantSpec:
    """The spec handed to the factory: ``weights.path`` points at the folder found (the HF cache snapshot,
    or for single files the folder that supplies the other parts)."""
    folder = {"hf_cache": status.location, "single_file": status.folder}.get(status.source)
    if folder is None:
        return spec
    return dataclasses.replace(spec, weights=dataclasses.replace(spec.weights, path=folder))
