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
        raise WeightsError(
            f"{folder} is missing the {name}/ folder (a diffusers model folder needs {list(COMPONENTS)})"
        )
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
    """Combine a base diffusers folder with optional single-file overrides.

    With overrides the folder needs only what they leave out (always ``tokenizer/``); configs it has
    are used, the rest is inferred (and the scheduler shift falls back to the default without one).
    """
    if folder is None:
        if transformer_file is None:
            raise WeightsError("no model given: pass the diffusers model folder")
        raise WeightsError(
            f"single file {transformer_file} holds only the transformer; the tokenizer, text encoder and VAE "
            "must come from a diffusers folder, and none was given"
        )
    if not (transformer_file or vae_file or text_encoder_file):
        return find_diffusers_folder(Path(folder))
    for f in (transformer_file, vae_file, text_encoder_file):
        if f is not None and not Path(f).is_file():
            raise WeightsError(f"missing weights file: {f}")
    from zimage_mcp.engine.weights.files import DIFFUSERS_WEIGHTS, HF_WEIGHTS, shard_files

    folder = Path(folder)

    def files(given: Path | None, name: str, names: tuple[str, str]) -> tuple[Path, ...]:
        return (Path(given),) if given else tuple(shard_files(_component(folder, name), *names))

    def config(name: str) -> Path | None:
        path = folder / name / ("scheduler_config.json" if name == "scheduler" else "config.json")
        return path if path.is_file() else None

    return ModelFiles(
        transformer=files(transformer_file, "transformer", DIFFUSERS_WEIGHTS),
        transformer_config=None if transformer_file else config("transformer"),
        vae=files(vae_file, "vae", DIFFUSERS_WEIGHTS),
        vae_config=config("vae"),
        text_encoder=files(text_encoder_file, "text_encoder", HF_WEIGHTS),
        text_encoder_config=config("text_encoder"),
        tokenizer=_component(folder, "tokenizer"),
        scheduler_config=config("scheduler"),
    )
