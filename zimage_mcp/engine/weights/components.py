"""Loading the text-to-image components from files: meta-device construction, dialects, strict loading.

The VAE runs in fp32 like the reference pipelines (its weights are stored 16-bit); see ``device.py``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from zimage_mcp.engine.config import (
    TRANSFORMER_PRESETS,
    VAE_PRESETS,
    SchedulerConfig,
    TransformerConfig,
    VAEConfig,
    replace,
)
from zimage_mcp.engine.dit.attention import AttentionBackend, best_backend
from zimage_mcp.engine.dit.transformer import ZImageTransformer
from zimage_mcp.engine.errors import WeightsError
from zimage_mcp.engine.text.qwen3 import TextEncoder, load_text_encoder, load_text_encoder_file
from zimage_mcp.engine.vae.keys import convert_bfl_vae_state_dict, is_bfl_vae_state_dict
from zimage_mcp.engine.vae.model import AutoencoderKL
from zimage_mcp.engine.weights.files import (
    StateDict,
    convert_comfy_transformer,
    is_comfy_transformer,
    load_strict,
    read_files,
    read_shapes,
)
from zimage_mcp.engine.weights.fused_load import FusedLoad
from zimage_mcp.engine.weights.layout import ModelFiles


def infer_transformer_config(sd: StateDict, source: str) -> TransformerConfig:
    """A single file carries no config.json: read the architecture off the tensor shapes."""
    try:
        dim, cap_dim = sd["cap_embedder.1.weight"].shape
        head_dim = sd["layers.0.attention.norm_q.weight"].shape[0]
    except KeyError as e:
        raise WeightsError(f"{source}: not a Z-Image transformer (no {e.args[0]})") from e
    n_layers = len({k.split(".")[1] for k in sd if k.startswith("layers.")})
    n_refiner = len({k.split(".")[1] for k in sd if k.startswith("noise_refiner.")})
    base = TRANSFORMER_PRESETS["turbo"]
    # Published models split head_dim 128 as 32/48/48; smaller test models keep the 1/4, 3/8, 3/8 split.
    a0 = head_dim // 4
    axes = (a0, (head_dim - a0) // 2, head_dim - a0 - (head_dim - a0) // 2)
    siglip = sd["siglip_embedder.1.weight"].shape[1] if "siglip_embedder.1.weight" in sd else None
    return replace(
        base,
        dim=int(dim),
        cap_feat_dim=int(cap_dim),
        n_layers=n_layers,
        n_refiner_layers=n_refiner,
        n_heads=int(dim) // int(head_dim),
        n_kv_heads=int(dim) // int(head_dim),
        axes_dims=axes,
        siglip_feat_dim=siglip,
    )


def load_transformer(
    files: tuple[Path, ...],
    config: Path | None,
    device: torch.device,
    dtype: torch.dtype,
    attn_backend: AttentionBackend | None = None,
    *,
    fuse: bool = False,
    fp8: bool = False,
) -> ZImageTransformer:
    """Strictly loaded DiT. ``fuse``: q/k/v and w1/w3 read straight into fused buffers; ``fp8``: the blocks'
    GEMM weights quantized tensor by tensor on the way in (implies ``fuse``; no bf16 copy is ever held)."""
    source = ", ".join(str(f) for f in files)
    shapes = read_shapes(files)
    plan = None if is_comfy_transformer(shapes) or not (fuse or fp8) else FusedLoad(shapes, device, dtype, fp8)
    sd = read_files(files, dtype, device, placer=plan.place if plan else None)
    if is_comfy_transformer(sd):
        sd = convert_comfy_transformer(sd)
    cfg = TransformerConfig.from_json(config) if config is not None else infer_transformer_config(sd, source)
    with torch.device("meta"):
        model = ZImageTransformer(cfg, attn_backend or best_backend(device))
    load_strict(model, sd, source)
    if plan is not None:
        plan.attach(model)
    return model.eval().requires_grad_(False)


def load_vae(
    files: tuple[Path, ...], config: Path | None, device: torch.device, dtype: torch.dtype = torch.float32
) -> AutoencoderKL:
    """One file or every shard of one; the strict key audit covers their union."""
    sd = read_files(files, dtype, device)
    if is_bfl_vae_state_dict(sd):
        sd = convert_bfl_vae_state_dict(sd)
    cfg = VAEConfig.from_json(config) if config is not None else VAE_PRESETS["flux"]
    with torch.device("meta"):
        vae = AutoencoderKL(cfg)
    load_strict(vae, sd, ", ".join(str(f) for f in files))
    return vae.eval().requires_grad_(False)


def folder_shift(config: Path | None) -> float | None:
    """The shift of a ``scheduler/scheduler_config.json``, or None where there is none."""
    return SchedulerConfig.from_json(config).shift if config is not None else None


def load_text_encoder_from(files: ModelFiles, device: torch.device, dtype: torch.dtype) -> TextEncoder:
    """The published text_encoder/ folder, or a ComfyUI single file, with the folder's tokenizer."""
    config = files.text_encoder_config
    if config is not None and len(files.text_encoder) and files.text_encoder[0].parent == config.parent:
        return load_text_encoder(files.text_encoder_config.parent, files.tokenizer, device, dtype)
    return load_text_encoder_file(files.text_encoder[0], files.tokenizer, None, device, dtype)
