"""Loading a Z-Image Omni folder in the layout of diffusers' ``ZImageOmniPipeline``.

Components (model_index.json names): transformer, vae, text_encoder, tokenizer, scheduler, siglip,
siglip_processor. Every missing component is reported at once, in one ``WeightsError`` naming the folder.
"""

from __future__ import annotations

from pathlib import Path

import torch

from zimage_mcp.engine.attention import AttentionBackend, best_backend
from zimage_mcp.engine.config import TransformerConfig
from zimage_mcp.engine.errors import WeightsError
from zimage_mcp.engine.loader import default_dtype, load_scheduler, load_vae, resolve_device
from zimage_mcp.engine.pipeline_omni import OmniPipeline
from zimage_mcp.engine.siglip import load_siglip
from zimage_mcp.engine.text_encoder import load_text_encoder
from zimage_mcp.engine.transformer_omni import ZImageOmniTransformer
from zimage_mcp.engine.weights import load_strict, read_files, shard_files

DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors.index.json", "diffusion_pytorch_model.safetensors")
HF_WEIGHTS = ("model.safetensors.index.json", "model.safetensors")

# component -> (files that must exist, alternatives for the weights or None)
COMPONENTS: dict[str, tuple[tuple[str, ...], tuple[str, ...] | None]] = {
    "transformer": (("config.json",), DIFFUSERS_WEIGHTS),
    "vae": (("config.json",), ("diffusion_pytorch_model.safetensors",)),
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


def load_omni_transformer(folder: Path, device: torch.device, dtype: torch.dtype,
                          attn_backend: AttentionBackend | None = None) -> ZImageOmniTransformer:
    cfg = TransformerConfig.from_json(folder / "config.json")
    if cfg.siglip_feat_dim is None:
        raise WeightsError(f"{folder / 'config.json'}: no siglip_feat_dim, so not an Omni transformer")
    files = shard_files(folder, *DIFFUSERS_WEIGHTS)
    sd = read_files(files, dtype, device)
    with torch.device("meta"):
        model = ZImageOmniTransformer(cfg, attn_backend or best_backend(device))
    load_strict(model, sd, ", ".join(str(f) for f in files))
    return model.eval().requires_grad_(False)


def load_omni_pipeline(
    folder: Path,
    device: str | torch.device = "auto",
    dtype: torch.dtype | None = None,
    attn_backend: AttentionBackend | None = None,
) -> OmniPipeline:
    """Load every Omni component from ``folder`` (offline); the VAE runs in fp32 as for text-to-image."""
    folder = Path(folder)
    if not folder.is_dir():
        raise WeightsError(f"Omni model folder not found: {folder}")
    missing = missing_components(folder)
    if missing:
        raise WeightsError(f"{folder} is not a complete Z-Image Omni folder; missing components: {'; '.join(missing)}")
    dev = resolve_device(device)
    dt = dtype or default_dtype(dev)
    transformer = load_omni_transformer(folder / "transformer", dev, dt, attn_backend)
    vae = load_vae(folder / "vae" / "diffusion_pytorch_model.safetensors", folder / "vae" / "config.json", dev)
    text_encoder = load_text_encoder(folder / "text_encoder", folder / "tokenizer", dev, dt)
    siglip = load_siglip(folder / "siglip", folder / "siglip_processor", dev, dt)
    if siglip.hidden_size != transformer.cfg.siglip_feat_dim:
        raise WeightsError(f"{folder}: SigLIP2 width {siglip.hidden_size} does not match the transformer's "
                           f"siglip_feat_dim {transformer.cfg.siglip_feat_dim}")
    sched = load_scheduler(folder / "scheduler" / "scheduler_config.json", 3.0)
    return OmniPipeline(transformer, vae, text_encoder, siglip, sched.shift)
