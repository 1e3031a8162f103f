"""A random tiny Z-Image in exactly the published layouts, for tests and demos on a CPU.

``make_tiny(DIR)`` writes a diffusers-format folder (model_index.json, sharded transformer with its
index, VAE, sharded Qwen3 text encoder, a real BPE tokenizer with the Qwen chat template, scheduler
config) plus the same weights as ComfyUI single files under ``DIR/comfy/`` (fused-qkv DiT with the
``model.diffusion_model.`` prefix, a BFL ``ae.safetensors`` VAE and a Qwen3 text-encoder file).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from zimage_mcp.engine.config import SCHEDULER_PRESETS, TRANSFORMER_PRESETS, VAE_PRESETS
from zimage_mcp.engine.dit.transformer import ZImageTransformer
from zimage_mcp.engine.presets.tiny_text import write_tiny_text_encoder, write_tiny_tokenizer
from zimage_mcp.engine.vae.keys import to_bfl_vae_state_dict
from zimage_mcp.engine.vae.model import AutoencoderKL
from zimage_mcp.engine.weights.files import read_files, to_comfy_transformer

MODEL_INDEX = {
    "_class_name": "ZImagePipeline",
    "_diffusers_version": "0.36.0.dev0",
    "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
    "text_encoder": ["transformers", "Qwen3Model"],
    "tokenizer": ["transformers", "Qwen2Tokenizer"],
    "transformer": ["diffusers", "ZImageTransformer2DModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}


def _randomize(module: nn.Module, gen: torch.Generator, std: float = 0.05) -> None:
    """Default init leaves norms at 1 and pads at 0; perturb everything so parity tests bite."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            parts = name.split(".")
            if len(parts) >= 2 and "norm" in parts[-2] and parts[-1] == "weight":
                p.copy_(1.0 + 0.1 * noise)
            elif name.endswith("pad_token"):
                p.copy_(noise)
            elif p.ndim >= 2:
                p.copy_(noise * (1.0 / p.shape[1]) ** 0.5)
            else:
                p.copy_(std * noise)


def write_sharded(sd: dict[str, Tensor], folder: Path, stem: str, index_name: str, shards: int) -> None:
    """Save like diffusers/HF do: ``{stem}-0000k-of-0000n.safetensors`` plus an index with a weight_map."""
    keys = sorted(sd)
    per = -(-len(keys) // shards)
    weight_map: dict[str, str] = {}
    for k in range(shards):
        name = f"{stem}-{k + 1:05d}-of-{shards:05d}.safetensors"
        part = {key: sd[key].contiguous() for key in keys[k * per : (k + 1) * per]}
        save_file(part, str(folder / name), metadata={"format": "pt"})
        weight_map.update({key: name for key in part})
    total = sum(t.numel() * t.element_size() for t in sd.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / index_name).write_text(json.dumps(index, indent=2))


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def make_tiny(dir: Path, seed: int = 0, shift: float | None = None, vae_shards: int = 1) -> Path:
    """Write the tiny model to ``dir`` (created) and return it. The transformer and text encoder are
    sharded in two, as published; ``vae_shards`` > 1 shards the VAE too (with an index)."""
    root = Path(dir)
    gen = torch.Generator().manual_seed(seed)
    _write_json(root / "model_index.json", MODEL_INDEX)
    sched = SCHEDULER_PRESETS["tiny"]
    _write_json(
        root / "scheduler" / "scheduler_config.json",
        {
            "_class_name": "FlowMatchEulerDiscreteScheduler",
            "_diffusers_version": "0.36.0.dev0",
            "num_train_timesteps": 1000,
            "use_dynamic_shifting": False,
            "shift": sched.shift if shift is None else shift,
        },
    )

    tcfg = TRANSFORMER_PRESETS["tiny"]
    transformer = ZImageTransformer(tcfg)
    _randomize(transformer, gen)
    tsd = transformer.state_dict()
    _write_json(root / "transformer" / "config.json", {**tcfg.to_json_dict(), "_diffusers_version": "0.36.0.dev0"})
    write_sharded(
        tsd, root / "transformer", "diffusion_pytorch_model", "diffusion_pytorch_model.safetensors.index.json", 2
    )

    vcfg = VAE_PRESETS["tiny"]
    vae = AutoencoderKL(vcfg)
    _randomize(vae, gen)
    vsd = {k: v.contiguous() for k, v in vae.state_dict().items()}
    _write_json(root / "vae" / "config.json", {**vcfg.to_json_dict(), "_diffusers_version": "0.36.0.dev0"})
    if vae_shards > 1:
        write_sharded(
            vsd, root / "vae", "diffusion_pytorch_model", "diffusion_pytorch_model.safetensors.index.json", vae_shards
        )
    else:
        save_file(vsd, str(root / "vae" / "diffusion_pytorch_model.safetensors"), metadata={"format": "pt"})

    write_tiny_tokenizer(root / "tokenizer")
    write_tiny_text_encoder(root / "text_encoder", seed=seed + 1, shards=2)

    comfy = root / "comfy"
    for sub in ("diffusion_models", "vae", "text_encoders"):
        (comfy / sub).mkdir(parents=True, exist_ok=True)
    csd = to_comfy_transformer(tsd, prefix="model.diffusion_model.")
    csd["model.diffusion_model.norm_final.weight"] = torch.ones(tcfg.dim)  # the stray Lumina key real files carry
    save_file({k: v.contiguous() for k, v in csd.items()}, str(comfy / "diffusion_models" / "z_image_tiny.safetensors"))
    save_file({k: v.contiguous() for k, v in to_bfl_vae_state_dict(vsd).items()}, str(comfy / "vae" / "ae.safetensors"))
    te_files = sorted((root / "text_encoder").glob("model-*.safetensors"))
    save_file(read_files(te_files, None), str(comfy / "text_encoders" / "qwen_3_tiny.safetensors"))
    return root
