"""Finding the files of a model from explicit paths, without loading anything.

(a) A diffusers-format folder exactly as published (model_index.json, transformer/, text_encoder/,
    tokenizer/, vae/, scheduler/), any component sharded, (b) ComfyUI single files (DiT,
    ``ae.safetensors`` VAE, Qwen3 text encoder) with the remaining parts from a folder. Finding a
    snapshot in the Hugging Face cache is the caller's business: the engine takes folders and files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from zimage_mcp.engine.errors import WeightsError

COMPONENTS = ("transformer", "text_encoder", "tokenizer", "vae", "scheduler")


@dataclass(frozen=True)
class ModelFiles:
    """Every file the engine needs, resolved. ``*_config`` is None where the config must be inferred."""

    transformer: tuple[Path, ...]
    transformer_config: Path | None
    vae: tuple[Path, ...]
    vae_config: Path | None
    text_encoder: tuple[Path, ...]
    text_encoder_config: Path | None
    tokenizer: Path
    scheduler_config: Path | None


def _component(folder: Path, name: str) -> Path:
    path = folder / name
    if not path.is_dir():
        raise WeightsError(f"{folder} is missing the {name}/ folder "
                           f"(a diffusers model folder needs {list(COMPONENTS)})")
    return path


def find_diffusers_folder(folder: Path) -> ModelFiles:
    """Resolve a published diffusers folder; errors say which component is missing and where we looked."""
    # imported here: torch-free callers can use the rest of this module
    from zimage_mcp.engine.weights.files import DIFFUSERS_WEIGHTS, HF_WEIGHTS, shard_files

    folder = Path(folder)
    if not (folder / "model_index.json").is_file():
        raise WeightsError(f"{folder} is not a diffusers model folder: no model_index.json")
    missing = [c for c in COMPONENTS if not (folder / c).is_dir()]
    if missing:
        raise WeightsError(f"{folder} is missing component folders {missing}")
    tr, te, vae = _component(folder, "transformer"), _component(folder, "text_encoder"), _component(folder, "vae")
    return ModelFiles(
        transformer=tuple(shard_files(tr, *DIFFUSERS_WEIGHTS)),
        transformer_config=tr / "config.json",
        vae=tuple(shard_files(vae, *DIFFUSERS_WEIGHTS)),
        vae_config=vae / "config.json",
        text_encoder=tuple(shard_files(te, *HF_WEIGHTS)),
        text_encoder_config=te / "config.json",
        tokenizer=_component(folder, "tokenizer"),
        scheduler_config=_component(folder, "scheduler") / "scheduler_config.json",
    )


def resolve_model_files(
    folder: Path | None = None,
    transformer_file: Path | None = None,
    vae_file: Path | None = None,
    text_encoder_file: Path | None = None,
) -> ModelFiles:
    """Combine a base diffusers folder with optional single-file overrides."""
    if folder is None:
        if transformer_file is None:
            raise WeightsError("no model given: pass the diffusers model folder")
        raise WeightsError(
            f"single file {transformer_file} holds only the transformer; the tokenizer, text encoder and VAE "
            "must come from a diffusers folder, and none was given"
        )
    base = find_diffusers_folder(Path(folder))
    for f in (transformer_file, vae_file, text_encoder_file):
        if f is not None and not Path(f).is_file():
            raise WeightsError(f"missing weights file: {f}")
    return ModelFiles(
        transformer=(Path(transformer_file),) if transformer_file else base.transformer,
        transformer_config=None if transformer_file else base.transformer_config,
        vae=(Path(vae_file),) if vae_file else base.vae,
        vae_config=base.vae_config,
        text_encoder=(Path(text_encoder_file),) if text_encoder_file else base.text_encoder,
        text_encoder_config=base.text_encoder_config,
        tokenizer=base.tokenizer,
        scheduler_config=base.scheduler_config,
    )
