"""Finding the files of a model as users actually have them, without loading anything.

(a) A diffusers-format folder exactly as published (model_index.json, transformer/, text_encoder/,
    tokenizer/, vae/, scheduler/), (b) ComfyUI single files (DiT, ``ae.safetensors`` VAE, Qwen3 text
    encoder) with the remaining parts from a folder, (c) a snapshot in the local Hugging Face cache.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from zimage_mcp.engine.errors import WeightsError
from zimage_mcp.hub_cache import find_snapshot, hub_cache_dir

COMPONENTS = ("transformer", "text_encoder", "tokenizer", "vae", "scheduler")


@dataclass(frozen=True)
class ModelFiles:
    """Every file the engine needs, resolved. ``*_config`` is None where the config must be inferred."""

    transformer: tuple[Path, ...]
    transformer_config: Path | None
    vae: Path
    vae_config: Path | None
    text_encoder: tuple[Path, ...]
    text_encoder_config: Path | None
    tokenizer: Path
    scheduler_config: Path | None


def hf_hub_cache(hf_home: str | None = None) -> Path:
    """The hub cache folder, honouring HF_HUB_CACHE and HF_HOME like huggingface_hub does."""
    return hub_cache_dir(hf_home or os.environ.get("HF_HOME"), os.environ.get("HF_HUB_CACHE"))


def find_hf_snapshot(repo_id: str, hf_home: str | None = None) -> Path | None:
    """The local snapshot folder of ``repo_id`` (refs/main first, else the newest), or None. No network."""
    return find_snapshot(hf_hub_cache(hf_home), repo_id)


def _component(folder: Path, name: str) -> Path:
    path = folder / name
    if not path.is_dir():
        raise WeightsError(f"{folder} is missing the {name}/ folder (a diffusers model folder needs {list(COMPONENTS)})")
    return path


def find_diffusers_folder(folder: Path) -> ModelFiles:
    """Resolve a published diffusers folder; errors say which component is missing and where we looked."""
    from zimage_mcp.engine.weights import shard_files  # torch-free callers can use the rest of this module

    folder = Path(folder)
    if not (folder / "model_index.json").is_file():
        raise WeightsError(f"{folder} is not a diffusers model folder: no model_index.json")
    missing = [c for c in COMPONENTS if not (folder / c).is_dir()]
    if missing:
        raise WeightsError(f"{folder} is missing component folders {missing}")
    tr, te, vae = _component(folder, "transformer"), _component(folder, "text_encoder"), _component(folder, "vae")
    return ModelFiles(
        transformer=tuple(shard_files(tr, "diffusion_pytorch_model.safetensors.index.json", "diffusion_pytorch_model.safetensors")),
        transformer_config=tr / "config.json",
        vae=shard_files(vae, "diffusion_pytorch_model.safetensors.index.json", "diffusion_pytorch_model.safetensors")[0],
        vae_config=vae / "config.json",
        text_encoder=tuple(shard_files(te, "model.safetensors.index.json", "model.safetensors")),
        text_encoder_config=te / "config.json",
        tokenizer=_component(folder, "tokenizer"),
        scheduler_config=_component(folder, "scheduler") / "scheduler_config.json",
    )


def resolve_model_files(
    folder: Path | None = None,
    repo_id: str | None = None,
    transformer_file: Path | None = None,
    vae_file: Path | None = None,
    text_encoder_file: Path | None = None,
    hf_home: str | None = None,
) -> ModelFiles:
    """Combine a base folder (local or HF cache) with optional single-file overrides."""
    base: ModelFiles | None = None
    if folder is not None:
        base = find_diffusers_folder(Path(folder))
    elif repo_id is not None:
        snap = find_hf_snapshot(repo_id, hf_home)
        if snap is not None:
            base = find_diffusers_folder(snap)
    if base is None:
        where = f"folder {folder}" if folder else f"the Hugging Face cache ({hf_hub_cache(hf_home)}) for {repo_id}"
        if transformer_file is None:
            raise WeightsError(f"no model found in {where}")
        raise WeightsError(
            f"single file {transformer_file} holds only the transformer; the tokenizer, text encoder and VAE "
            f"must come from a diffusers folder, but none was found in {where}"
        )
    for f in (transformer_file, vae_file, text_encoder_file):
        if f is not None and not Path(f).is_file():
            raise WeightsError(f"missing weights file: {f}")
    return ModelFiles(
        transformer=(Path(transformer_file),) if transformer_file else base.transformer,
        transformer_config=None if transformer_file else base.transformer_config,
        vae=Path(vae_file) if vae_file else base.vae,
        vae_config=base.vae_config,
        text_encoder=(Path(text_encoder_file),) if text_encoder_file else base.text_encoder,
        text_encoder_config=base.text_encoder_config,
        tokenizer=base.tokenizer,
        scheduler_config=base.scheduler_config,
    )
