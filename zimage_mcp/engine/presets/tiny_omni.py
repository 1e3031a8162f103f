"""A random tiny Z-Image Omni in the layout of diffusers' ``ZImageOmniPipeline``, for tests on a CPU.

``make_tiny_omni(DIR)`` writes model_index.json, scheduler, a sharded transformer with a SigLIP branch,
VAE, tokenizer and text encoder (as ``make_tiny``), plus ``siglip/`` (a tiny Siglip2VisionModel) and
``siglip_processor/`` (a Siglip2ImageProcessor config). The DiT's ``siglip_feat_dim`` is SigLIP's width.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import Siglip2VisionConfig, Siglip2VisionModel

from zimage_mcp.engine.config import SCHEDULER_PRESETS, TRANSFORMER_PRESETS, VAE_PRESETS, replace
from zimage_mcp.engine.dit.omni_transformer import ZImageOmniTransformer
from zimage_mcp.engine.presets.tiny import MODEL_INDEX, _randomize, _write_json, write_sharded
from zimage_mcp.engine.presets.tiny_text import write_tiny_text_encoder, write_tiny_tokenizer
from zimage_mcp.engine.vae.model import AutoencoderKL

OMNI_MODEL_INDEX = {
    **MODEL_INDEX,
    "_class_name": "ZImageOmniPipeline",
    "siglip": ["transformers", "Siglip2VisionModel"],
    "siglip_processor": ["transformers", "Siglip2ImageProcessor"],
}

# 16 px patches, a 4x4 learned position grid (resized per image), at most 64 patches per image.
TINY_SIGLIP = Siglip2VisionConfig(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_patches=16, patch_size=16
)
TINY_SIGLIP_MAX_PATCHES = 64


def make_tiny_omni(dir: Path, seed: int = 0) -> Path:
    """Write the tiny Omni model to ``dir`` (created) and return it."""
    root = Path(dir)
    gen = torch.Generator().manual_seed(seed)
    _write_json(root / "model_index.json", OMNI_MODEL_INDEX)
    _write_json(
        root / "scheduler" / "scheduler_config.json",
        {
            "_class_name": "FlowMatchEulerDiscreteScheduler",
            "num_train_timesteps": 1000,
            "use_dynamic_shifting": False,
            "shift": SCHEDULER_PRESETS["tiny"].shift,
        },
    )

    tcfg = replace(TRANSFORMER_PRESETS["tiny"], siglip_feat_dim=TINY_SIGLIP.hidden_size)
    transformer = ZImageOmniTransformer(tcfg)
    _randomize(transformer, gen)
    _write_json(root / "transformer" / "config.json", tcfg.to_json_dict())
    write_sharded(
        transformer.state_dict(),
        root / "transformer",
        "diffusion_pytorch_model",
        "diffusion_pytorch_model.safetensors.index.json",
        2,
    )

    vcfg = VAE_PRESETS["tiny"]
    vae = AutoencoderKL(vcfg)
    _randomize(vae, gen)
    _write_json(root / "vae" / "config.json", vcfg.to_json_dict())
    save_file(
        {k: v.contiguous() for k, v in vae.state_dict().items()},
        str(root / "vae" / "diffusion_pytorch_model.safetensors"),
        metadata={"format": "pt"},
    )

    write_tiny_tokenizer(root / "tokenizer")
    write_tiny_text_encoder(root / "text_encoder", seed=seed + 1, shards=2)

    torch.manual_seed(seed)  # Siglip2VisionModel's own init draws from the global generator
    siglip = Siglip2VisionModel(TINY_SIGLIP)
    _randomize(siglip, gen)
    (root / "siglip").mkdir(parents=True, exist_ok=True)
    TINY_SIGLIP.to_json_file(str(root / "siglip" / "config.json"))
    save_file(
        {k: v.contiguous() for k, v in siglip.state_dict().items()},
        str(root / "siglip" / "model.safetensors"),
        metadata={"format": "pt"},
    )
    _write_json(
        root / "siglip_processor" / "preprocessor_config.json",
        {
            "image_processor_type": "Siglip2ImageProcessor",
            "do_resize": True,
            "resample": 2,
            "do_rescale": True,
            "rescale_factor": 1 / 255,
            "do_normalize": True,
            "image_mean": [0.5] * 3,
            "image_std": [0.5] * 3,
            "patch_size": TINY_SIGLIP.patch_size,
            "max_num_patches": TINY_SIGLIP_MAX_PATCHES,
        },
    )
    return root
