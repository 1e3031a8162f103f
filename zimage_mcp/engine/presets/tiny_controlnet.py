"""A random ControlNet-Union for the tiny base preset, in the diffusers layout and as a single file.

``make_tiny_controlnet(DIR, release)`` writes ``DIR/config.json`` and
``DIR/diffusion_pytorch_model.safetensors`` (what ``ZImageControlNetModel.from_pretrained`` reads) and
the same weights as one file at ``DIR / SINGLE_FILE``. The 2.0 single file also carries zero
``control_noise_refiner.*`` tensors, as the published 2.0 file does.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from zimage_mcp.engine.config import TRANSFORMER_PRESETS
from zimage_mcp.engine.dit.controlnet import ControlNetConfig, ZImageControlNet

SINGLE_FILE = "single/z_image_tiny_controlnet.safetensors"


def tiny_controlnet_config(release: str = "2.1") -> ControlNetConfig:
    """Tiny-preset configs for 'v1', '2.0' and '2.1' (lite needs more base layers than the tiny preset has)."""
    base = TRANSFORMER_PRESETS["tiny"]
    common = dict(
        control_layers_places=(0, 1),
        dim=base.dim,
        n_heads=base.n_heads,
        n_kv_heads=base.n_kv_heads,
        norm_eps=base.norm_eps,
        qk_norm=True,
    )
    refiner = tuple(range(base.n_refiner_layers))
    if release == "2.1":
        return ControlNetConfig(
            **common,
            control_refiner_layers_places=refiner,
            control_in_dim=33,
            add_control_noise_refiner="control_noise_refiner",
            n_refiner_layers=len(refiner),
        )
    if release == "2.0":  # the published 2.0 values for the refiner stage
        return ControlNetConfig(
            **common,
            control_refiner_layers_places=(0, 1),
            control_in_dim=33,
            add_control_noise_refiner="control_layers",
            n_refiner_layers=2,
        )
    if release == "v1":
        return ControlNetConfig(
            **common,
            control_refiner_layers_places=refiner,
            control_in_dim=16,
            add_control_noise_refiner=None,
            n_refiner_layers=len(refiner),
        )
    raise ValueError(f"release must be one of 'v1', '2.0', '2.1', got {release!r}")


def _randomize(module: nn.Module, gen: torch.Generator) -> None:
    """Norms near 1, matrices ~ 1/sqrt(fan_in), biases small: every weight (after_proj too) matters."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * noise)
            elif p.ndim >= 2:
                p.copy_(noise * (1.0 / p.shape[1]) ** 0.5)
            else:
                p.copy_(0.05 * noise)


def make_tiny_controlnet(dir: Path, release: str = "2.1", seed: int = 0) -> Path:
    """Write a random tiny ControlNet of ``release`` to ``dir`` (created) and return it."""
    root = Path(dir)
    cfg = tiny_controlnet_config(release)
    model = ZImageControlNet(cfg)
    _randomize(model, torch.Generator().manual_seed(seed))
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    root.mkdir(parents=True, exist_ok=True)
    config = {**cfg.to_json_dict(), "_diffusers_version": "0.36.0.dev0"}
    (root / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    save_file(sd, str(root / "diffusion_pytorch_model.safetensors"), metadata={"format": "pt"})
    single = dict(sd)
    if release == "2.0":
        dead = ZImageControlNet(tiny_controlnet_config("2.1")).control_noise_refiner.state_dict()
        single.update({f"control_noise_refiner.{k}": torch.zeros_like(v) for k, v in dead.items()})
    (root / SINGLE_FILE).parent.mkdir(parents=True, exist_ok=True)
    save_file(single, str(root / SINGLE_FILE))
    return root
