"""Checking and loading the parts of a Z-Image Omni folder in the layout of diffusers' ``ZImageOmniPipeline``.

Components (model_index.json names): transformer, vae, text_encoder, tokenizer, scheduler, siglip,
siglip_processor. Every missing component is reported at once, in one ``WeightsError`` naming the folder.
"""

from __future__ import annotations

from pathlib import Path

import torch

from zimage_mcp.engine.config import TransformerConfig
from zimage_mcp.engine.dit.attention import AttentionBackend, best_backend
from zimage_mcp.engine.dit.omni_transformer import ZImageOmniTransformer
from zimage_mcp.engine.errors import WeightsError
from zimage_mcp.engine.weights.files import DIFFUSERS_WEIGHTS, HF_WEIGHTS, load_strict, read_files, shard_files

# component -> (files that must exist, alternatives for the weights or None)
COMPONENTS: dict[str, tuple[tuple[str, ...], tuple[str, ...] | None]] = {
    "transformer": (("config.json",), DIFFUSERS_WEIGHTS),
    "vae": (("config.json",), DIFFUSERS_WEIGHTS),
    "text_encoder": (("config.json",), HF_WEIGHTS),
    "tokenizer": (("tokenizer_config.json",), None),
    "scheduler": (("scheduler_config.json",), None),
    "siglip": (("config.json",), HF_WEIGHTS),
    "siglip_processor": (("preprocessor_config.json",), None),
}


def missing_components(folder: Path) -> list[str]:
    """'name (what is missing)' for each component the folder lacks."""
    out = []
    for name, (required, weights) in COMPONENTS.items():
        sub = folder / name
        lacking = [f"{name}/{f}" for f in required if not (sub / f).is_file()]
        if weights is not None and not any((sub / w).is_file() for w in weights):
            lacking.append(" or ".join(f"{name}/{w}" for w in weights))
        if lacking:
            out.append(f"{name} ({', '.join(lacking)})")
    return out


def load_omni_transformer(
    folder: Path, device: torch.device, dtype: torch.dtype, attn_backend: AttentionBackend | None = None
) -> ZImageOmniTransformer:
    cfg = TransformerConfig.from_json(folder / "config.json")
    if cfg.siglip_feat_dim is None:
        raise WeightsError(f"{folder / 'config.json'}: no siglip_feat_dim, so not an Omni transformer")
    files = shard_files(folder, *DIFFUSERS_WEIGHTS)
    sd = read_files(files, dtype, device)
    with torch.device("meta"):
        model = ZImageOmniTransformer(cfg, attn_backend or best_backend(device))
    load_strict(model, sd, ", ".join(str(f) for f in files))
    return model.eval().requires_grad_(False)
