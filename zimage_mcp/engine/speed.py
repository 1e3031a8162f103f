"""Speed settings applied after loading, all lossless: fused projections, regional compile, VAE layout.

``optimize(pipe, mode)`` is what the server's backends call. ``auto`` does everything on CUDA and
nothing on the CPU (where the tests compare bit for bit with the reference).
"""

from __future__ import annotations

import torch

from zimage_mcp.engine.pipeline import ZImagePipeline
from zimage_mcp.engine.vae import AutoencoderKL


def optimize_vae(vae: AutoencoderKL, compile: bool = True) -> None:
    """channels_last convolutions (tensor-core friendly) and a compiled decoder (fused GroupNorm+SiLU)."""
    vae.to(memory_format=torch.channels_last)
    if compile:
        vae.decoder.compile(dynamic=False)


def optimize(pipe: ZImagePipeline, mode: str = "auto") -> None:
    """``auto``/``compile``: fuse + compile the DiT blocks and the VAE decoder; ``fuse``: fusion only."""
    device = pipe.device
    if mode == "off" or (mode == "auto" and device.type != "cuda"):
        return
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes per size bucket: let cuDNN pick conv kernels
    pipe.transformer.fuse_projections()
    if mode in ("auto", "compile"):
        pipe.transformer.compile_blocks(dynamic=False)
        optimize_vae(pipe.vae, compile=True)
    # The text encoder stays eager: TextEncoder.compile() exists (32-token buckets, static shapes) but
    # has not been validated on a GPU yet, so it is not switched on for users.
    elif device.type == "cuda":
        optimize_vae(pipe.vae, compile=False)
