"""Build the same components once for our engine and for diffusers, sharing the weight tensors.

Full size (``tiny=False``): the 6.15 B DiT, Qwen3-4B and the FLUX VAE with random weights, or the real
ones with ``model_dir``. Tiny: the CPU presets, so the benchmark scripts have a smoke mode that CI runs.
Only token counts matter for timing, so a small real BPE tokenizer stands in for Qwen's.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from zimage_mcp.engine.config import TRANSFORMER_PRESETS, VAE_PRESETS
from zimage_mcp.engine.dit.transformer import ZImageTransformer
from zimage_mcp.engine.pipelines.text_to_image import ZImagePipeline
from zimage_mcp.engine.text.qwen3 import TextEncoder
from zimage_mcp.engine.text.qwen3_model import Qwen3TextConfig, Qwen3TextModel
from zimage_mcp.engine.text.tokenizer import load_tokenizer
from zimage_mcp.engine.vae.model import AutoencoderKL

QWEN3_4B = dict(
    hidden_size=2560,
    num_hidden_layers=36,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=128,
    intermediate_size=9728,
    rms_norm_eps=1e-6,
    rope_theta=1e6,
    max_position_embeddings=40960,
    vocab_size=151936,
    tie_word_embeddings=True,
)
QWEN3_TINY = dict(
    hidden_size=32,
    num_hidden_layers=3,
    num_attention_heads=2,
    num_key_value_heads=1,
    head_dim=16,
    intermediate_size=64,
    rms_norm_eps=1e-6,
    rope_theta=1e6,
    max_position_embeddings=1024,
    vocab_size=2048,
    tie_word_embeddings=True,
)


@dataclass
class Components:
    ours: ZImagePipeline
    ref: Any  # diffusers.ZImagePipeline
    device: torch.device
    dtype: torch.dtype
    tiny: bool


def _init_(module: torch.nn.Module, seed: int) -> None:
    """Random weights with sane activation scales: N(0, 1/fan_in) matrices, norms near 1, small biases.

    Drawn on the module's own device (10 B parameters from a CPU generator took over a minute)."""
    device = next(module.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=gen, device=device)
            if p.ndim >= 2:
                std = p.shape[1] ** -0.5 if p.ndim == 2 else (p[0].numel()) ** -0.5
                p.copy_(noise * std)
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.05 * noise)
            else:
                p.copy_(0.02 * noise)


def _on(device: torch.device, build):
    with torch.device(device):
        return build()


def build(
    tiny: bool,
    device: str = "cuda",
    dtype: torch.dtype = torch.bfloat16,
    seed: int = 0,
    vae_dtype: torch.dtype | None = None,
) -> Components:
    from diffusers import AutoencoderKL as RefVAE
    from diffusers import FlowMatchEulerDiscreteScheduler, ZImageTransformer2DModel
    from diffusers import ZImagePipeline as RefPipe
    from transformers import AutoTokenizer, Qwen3Config, Qwen3Model

    from zimage_mcp.engine.presets.tiny_text import write_tiny_tokenizer

    dev = torch.device(device)
    tcfg = TRANSFORMER_PRESETS["tiny" if tiny else "turbo"]
    vcfg = VAE_PRESETS["tiny" if tiny else "flux"]
    vae_dtype = vae_dtype or dtype

    kwargs = {k: v for k, v in tcfg.to_json_dict().items() if not k.startswith("_")}
    ref_dit = _on(dev, lambda: ZImageTransformer2DModel(**kwargs)).to(dtype).eval()
    _init_(ref_dit, seed)
    with torch.device("meta"):
        dit = ZImageTransformer(tcfg)
    dit.load_state_dict(ref_dit.state_dict(), strict=True, assign=True)  # shares the tensors
    dit.eval().requires_grad_(False)

    vkw = {k: v for k, v in vcfg.to_json_dict().items() if not k.startswith("_")}
    ref_vae = _on(dev, lambda: RefVAE(**vkw)).to(vae_dtype).eval()
    _init_(ref_vae, seed + 1)
    with torch.device("meta"):
        vae = AutoencoderKL(vcfg)
    vae.load_state_dict(ref_vae.state_dict(), strict=True, assign=True)
    vae.eval().requires_grad_(False)

    qcfg = Qwen3Config(**(QWEN3_TINY if tiny else QWEN3_4B))
    ref_te = _on(dev, lambda: Qwen3Model(qcfg)).to(dtype).eval()
    _init_(ref_te, seed + 2)
    # ours runs the same weights minus the last layer and the final norm (features = layer 34's output)
    ours_cfg = Qwen3Config(**{**(QWEN3_TINY if tiny else QWEN3_4B), "num_hidden_layers": qcfg.num_hidden_layers - 1})
    with torch.device("meta"):
        te = Qwen3TextModel(Qwen3TextConfig.from_dict(ours_cfg.to_dict(), "the benchmark's Qwen3 config"))
    te.norm = torch.nn.Identity()
    sd = {
        k: v
        for k, v in ref_te.state_dict().items()
        if not k.startswith(f"layers.{qcfg.num_hidden_layers - 1}.") and k != "norm.weight"
    }
    te.load_state_dict(sd, strict=True, assign=True)
    te.rotary_emb.to(dev)  # its inv_freq is not a weight: computed off the meta device
    te.embed_tokens.to("cpu")  # in host memory, where the engine's loader keeps it (qwen3._build)
    te.eval().requires_grad_(False)

    tok_dir = Path(tempfile.mkdtemp()) / "tokenizer"
    write_tiny_tokenizer(tok_dir)
    tokenizer = AutoTokenizer.from_pretrained(tok_dir, local_files_only=True)  # diffusers' side

    ours = ZImagePipeline(dit, vae, TextEncoder(te, load_tokenizer(tok_dir)), shift=3.0)
    ref = RefPipe(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=ref_vae,
        text_encoder=ref_te,
        tokenizer=tokenizer,
        transformer=ref_dit,
    )
    ref.set_progress_bar_config(disable=True)
    return Components(ours=ours, ref=ref, device=dev, dtype=dtype, tiny=tiny)
