"""Test-side LoRA writers: one tiny PEFT/diffusers LoRA, re-spelled in every other dialect.

A LoRA is handled here as ``Modules``: our module name -> (A (r, in), B (out, r)), plus one alpha.
``write_peft_lora`` makes the reference file with peft and diffusers' own save path; the ``to_*``
functions produce the same weights under another dialect's names (so every dialect must give the
same merged model), and ``lokr_state_dict`` makes an ai-toolkit LoKr file.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from diffusers import ZImagePipeline, ZImageTransformer2DModel
from peft import LoraConfig
from peft.tuners.lokr.layer import factorization
from peft.utils import get_peft_model_state_dict
from safetensors.torch import save_file
from torch import Tensor

from zimage_mcp.engine.config import TRANSFORMER_PRESETS

Modules = dict[str, tuple[Tensor, Tensor]]

TINY = TRANSFORMER_PRESETS["tiny"]
TARGET_REGEX = (
    r"^(layers|noise_refiner|context_refiner)\.\d+\."
    r"(attention\.(to_q|to_k|to_v|to_out\.0)|feed_forward\.w[123]|adaLN_modulation\.0)$"
)
ATTN_REGEX = r"^(layers|noise_refiner|context_refiner)\.\d+\.attention\.(to_q|to_k|to_v|to_out\.0)$"


def diffusers_transformer(seed: int) -> ZImageTransformer2DModel:
    """diffusers' model on the tiny preset with seeded random weights (norms and pads made non-trivial)."""
    torch.manual_seed(seed)
    kwargs = {k: v for k, v in TINY.to_json_dict().items() if k != "_class_name"}
    model = ZImageTransformer2DModel(**kwargs).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "pad_token" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    return model


def write_peft_lora(
    directory: Path,
    *,
    rank: int = 4,
    alpha: float = 8.0,
    seed: int = 0,
    target: str = TARGET_REGEX,
    name: str = "lora.safetensors",
) -> Path:
    """A diffusers-format LoRA (``transformer.`` keys, LoraConfig in the header) with random A and B."""
    model = diffusers_transformer(1000 + seed)
    torch.manual_seed(seed)
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=target, init_lora_weights=False)
    model.add_adapter(config, adapter_name="made")
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0.0, 0.3)
    layers = get_peft_model_state_dict(model, adapter_name="made")
    ZImagePipeline.save_lora_weights(
        directory, transformer_lora_layers=layers, weight_name=name, transformer_lora_adapter_metadata=config.to_dict()
    )
    return Path(directory) / name


def peft_modules(sd: dict[str, Tensor]) -> Modules:
    """``transformer.X.lora_A/B.weight`` -> {X: (A, B)}."""
    names = {k.removeprefix("transformer.").removesuffix(".lora_A.weight") for k in sd if k.endswith(".lora_A.weight")}
    return {n: (sd[f"transformer.{n}.lora_A.weight"], sd[f"transformer.{n}.lora_B.weight"]) for n in names}


def _alpha(value: float) -> Tensor:
    return torch.tensor(value, dtype=torch.float32)


def _fuse_qkv(mods: Modules, block: str) -> tuple[Tensor, Tensor]:
    """Stack q/k/v: A = cat(A_q, A_k, A_v) (3r, in), B = blockdiag(B_q, B_k, B_v) (3*out, 3r)."""
    pairs = [mods[f"{block}.attention.to_{p}"] for p in "qkv"]
    return torch.cat([a for a, _ in pairs]), torch.block_diag(*[b for _, b in pairs])


def _blocks(mods: Modules) -> list[str]:
    return sorted({n.split(".attention.")[0] for n in mods if ".attention.to_q" in n})


def to_ai_toolkit(mods: Modules, alpha: float) -> dict[str, Tensor]:
    sd: dict[str, Tensor] = {}
    for n, (a, b) in mods.items():
        sd |= {
            f"diffusion_model.{n}.lora_A.weight": a,
            f"diffusion_model.{n}.lora_B.weight": b,
            f"diffusion_model.{n}.alpha": _alpha(alpha),
        }
    return sd


def _native(mods: Modules, alpha: float) -> dict[str, tuple[Tensor, Tensor, float]]:
    """ComfyUI/original module tree: fused ``attention.qkv`` (alpha x3 for the 3x rank), bare ``attention.out``."""
    out: dict[str, tuple[Tensor, Tensor, float]] = {}
    for block in _blocks(mods):
        a, b = _fuse_qkv(mods, block)
        out[f"{block}.attention.qkv"] = (a, b, 3 * alpha)
    for n, (a, b) in mods.items():
        if ".attention.to_" in n and not n.endswith("to_out.0"):
            continue
        out[n.replace(".attention.to_out.0", ".attention.out")] = (a, b, alpha)
    return out


def to_kohya(mods: Modules, alpha: float, *, fused_qkv: bool = True) -> dict[str, Tensor]:
    """``lora_unet_<name with _>.lora_down/up.weight`` + ``.alpha``; native tree (qkv/out) when ``fused_qkv``."""
    tree = _native(mods, alpha) if fused_qkv else {n: (a, b, alpha) for n, (a, b) in mods.items()}
    sd: dict[str, Tensor] = {}
    for n, (a, b, al) in tree.items():
        k = "lora_unet_" + n.replace(".", "_")
        sd |= {f"{k}.lora_down.weight": a, f"{k}.lora_up.weight": b, f"{k}.alpha": _alpha(al)}
    return sd


def to_comfyui(mods: Modules, alpha: float) -> dict[str, Tensor]:
    """``diffusion_model.<ComfyUI name>.lora_down/up.weight`` + ``.alpha`` (fused qkv, bare out)."""
    sd: dict[str, Tensor] = {}
    for n, (a, b, al) in _native(mods, alpha).items():
        sd |= {
            f"diffusion_model.{n}.lora_down.weight": a,
            f"diffusion_model.{n}.lora_up.weight": b,
            f"diffusion_model.{n}.alpha": _alpha(al),
        }
    return sd


def to_dot(mods: Modules, alpha: float, *, duplicates: bool = True) -> dict[str, Tensor]:
    """``diffusion_model.layers.0.attention.to.q.lora.down.weight``; alpha folded into up; redundant qkv/out."""
    sd: dict[str, Tensor] = {}
    for n, (a, b) in mods.items():
        rank = a.shape[0]
        k = "diffusion_model." + n.replace(".to_q", ".to.q").replace(".to_k", ".to.k").replace(".to_v", ".to.v")
        sd |= {f"{k}.lora.down.weight": a, f"{k}.lora.up.weight": b * (alpha / rank)}
    if duplicates:
        for block in _blocks(mods):
            a, b = _fuse_qkv(mods, block)
            sd |= {
                f"diffusion_model.{block}.attention.qkv.lora.down.weight": a,
                f"diffusion_model.{block}.attention.qkv.lora.up.weight": b * (alpha / a.shape[0] * 3),
            }
            a, b = mods[f"{block}.attention.to_out.0"]
            sd |= {
                f"diffusion_model.{block}.attention.out.lora.down.weight": a.clone(),
                f"diffusion_model.{block}.attention.out.lora.up.weight": b * (alpha / a.shape[0]),
            }
    return sd


def lokr_state_dict(
    model: torch.nn.Module,
    target: str = ATTN_REGEX,
    *,
    factor: int = 4,
    rank: int | None = None,
    alpha: float = 2.0,
    seed: int = 0,
) -> dict[str, Tensor]:
    """ai-toolkit LoKr: ``diffusion_model.<name>.lokr_w1`` + ``lokr_w2`` (or ``lokr_w2_a/_b`` with ``rank``)."""
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, Tensor] = {}
    for n, mod in model.named_modules():
        if not re.match(target, n):
            continue
        (out_l, out_k), (in_m, in_n) = factorization(mod.out_features, factor), factorization(mod.in_features, factor)
        k = f"diffusion_model.{n}"
        sd[f"{k}.lokr_w1"] = torch.randn(out_l, in_m, generator=g) * 0.3
        if rank is None:
            sd[f"{k}.lokr_w2"] = torch.randn(out_k, in_n, generator=g) * 0.1
        else:
            sd[f"{k}.lokr_w2_a"] = torch.randn(out_k, rank, generator=g) * 0.3
            sd[f"{k}.lokr_w2_b"] = torch.randn(rank, in_n, generator=g) * 0.3
        sd[f"{k}.alpha"] = _alpha(alpha)
    return sd


def save(sd: dict[str, Tensor], path: Path, metadata: dict[str, str] | None = None) -> Path:
    save_file({k: v.contiguous().clone() for k, v in sd.items()}, str(path), metadata=metadata)
    return Path(path)
