"""The 16-channel FLUX autoencoder (diffusers ``AutoencoderKL`` layout), latent scaling and image I/O.

Parameter names match diffusers' ``AutoencoderKL`` state dict 1:1; BFL/ComfyUI names are converted by
``vae_keys.py``. Run it in fp32 (the reference pipelines upcast the VAE; weights are stored 16-bit).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from zimage_mcp.engine.config import VAEConfig
from zimage_mcp.engine.vae.blocks import GN_EPS, DownBlock, MidBlock, UpBlock, banded_conv

LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0


class Encoder(nn.Module):
    """Image (B, 3, H, W) in [-1, 1] -> mean || logvar (B, 2*latent, H/8, W/8)."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        ch = cfg.block_out_channels
        self.conv_in = nn.Conv2d(cfg.in_channels, ch[0], 3, padding=1)
        self.down_blocks = nn.ModuleList(
            [
                DownBlock(ch[max(i - 1, 0)], ch[i], cfg.layers_per_block, cfg.norm_num_groups, i < len(ch) - 1)
                for i in range(len(ch))
            ]
        )
        self.mid_block = MidBlock(ch[-1], cfg.norm_num_groups, cfg.mid_block_add_attention)
        self.conv_norm_out = nn.GroupNorm(cfg.norm_num_groups, ch[-1], eps=GN_EPS)
        self.conv_out = nn.Conv2d(ch[-1], 2 * cfg.latent_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)  # spatial /2 in every block but the last
        x = self.mid_block(x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


class Decoder(nn.Module):
    """Raw latent (B, latent, h, w) -> image (B, 3, 8h, 8w), roughly in [-1, 1]."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        ch = tuple(reversed(cfg.block_out_channels))  # up_blocks.0 works at the widest, smallest level
        self.conv_in = nn.Conv2d(cfg.latent_channels, ch[0], 3, padding=1)
        self.mid_block = MidBlock(ch[0], cfg.norm_num_groups, cfg.mid_block_add_attention)
        # The decoder has one resnet more per block than the encoder.
        self.up_blocks = nn.ModuleList(
            [
                UpBlock(ch[max(i - 1, 0)], ch[i], cfg.layers_per_block + 1, cfg.norm_num_groups, i < len(ch) - 1)
                for i in range(len(ch))
            ]
        )
        self.conv_norm_out = nn.GroupNorm(cfg.norm_num_groups, ch[-1], eps=GN_EPS)
        self.conv_out = nn.Conv2d(ch[-1], cfg.out_channels, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        x = self.mid_block(self.conv_in(z))
        # Layer by layer rather than block by block: ``x = block(x)`` kept each block's input alive through the
        # whole block, and an uncompiled 1024^2 decode peaked at the last upsampler with the previous block's
        # 256 MiB output still held (benchmarks/probe_vae_memory.py). Same layers, same order.
        for block in self.up_blocks:
            for layer in block.layers():
                x = layer(x)  # spatial x2 at each block's upsampler
        return banded_conv(self.conv_out, F.silu(self.conv_norm_out(x), inplace=True))


class AutoencoderKL(nn.Module):
    """FLUX VAE: ``encode`` gives (mean, logvar), ``decode`` takes raw (de-normalized) latents."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(B, 3, H, W) in [-1, 1] -> (mean, logvar), each (B, latent, H/8, W/8); logvar clamped."""
        mean, logvar = self.encoder(x).chunk(2, dim=1)  # (B, 2*latent, h, w) -> 2 x (B, latent, h, w)
        return mean, logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)

    def decode(self, z: Tensor) -> Tensor:
        """Raw latent (B, latent, h, w) -> image (B, 3, 8h, 8w); apply ``denormalize_latents`` first."""
        return self.decoder(z)


def normalize_latents(z: Tensor, cfg: VAEConfig) -> Tensor:
    """VAE latent -> DiT latent space: (z - shift) * scale."""
    return (z - cfg.shift_factor) * cfg.scaling_factor


def denormalize_latents(z: Tensor, cfg: VAEConfig) -> Tensor:
    """DiT latent space -> VAE latent: z / scale + shift."""
    return z / cfg.scaling_factor + cfg.shift_factor


def sample_latents(
    mean: Tensor, logvar: Tensor, generator: torch.Generator | Sequence[torch.Generator] | None = None
) -> Tensor:
    """mean + exp(logvar / 2) * eps, drawing eps exactly like diffusers' ``DiagonalGaussianDistribution.sample``.

    A CPU generator draws on the CPU and the noise is then moved to ``mean.device`` (device-independent
    results); a list of generators draws one batch item each.
    """
    std = torch.exp(0.5 * logvar.clamp(LOGVAR_MIN, LOGVAR_MAX))
    gens = list(generator) if isinstance(generator, Sequence) else [generator]
    rand_device = mean.device
    if gens[0] is not None and gens[0].device.type == "cpu":
        rand_device = torch.device("cpu")
    if len(gens) == 1:
        eps = torch.randn(mean.shape, generator=gens[0], device=rand_device, dtype=mean.dtype)
    else:
        if len(gens) != mean.shape[0]:
            raise ValueError(f"got {len(gens)} generators for a batch of {mean.shape[0]}")
        one = (1, *mean.shape[1:])
        eps = torch.cat([torch.randn(one, generator=g, device=rand_device, dtype=mean.dtype) for g in gens])
    return mean + std * eps.to(mean.device)


def image_to_tensor(pil_images: Image.Image | Sequence[Image.Image]) -> Tensor:
    """PIL image(s) of one size -> fp32 (B, 3, H, W) in [-1, 1] (as diffusers' ``VaeImageProcessor``)."""
    images = [pil_images] if isinstance(pil_images, Image.Image) else list(pil_images)
    if not images:
        raise ValueError("image_to_tensor needs at least one image")
    sizes = {im.size for im in images}
    if len(sizes) != 1:
        raise ValueError(f"all images must have the same size, got {sorted(sizes)}")
    arr = np.stack([np.array(im.convert("RGB")).astype(np.float32) / 255.0 for im in images])  # (B, H, W, 3)
    x = torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()  # (B, H, W, 3) -> (B, 3, H, W)
    return 2.0 * x - 1.0


def to_rgb8(x: Tensor) -> Tensor:
    """(B, 3, H, W) in [-1, 1] -> (B, H, W, 3) uint8, contiguous, where ``x`` lives, rounding as diffusers'
    ``postprocess(output_type='pil')`` (same ops, same rounding: half to even).

    The fp32 arithmetic runs on the GPU after a decode and only uint8 crosses to the host: a quarter of the
    bytes, already in the row-major RGB order images are stored in, so the host makes no pass of its own."""
    u8 = ((x.float() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
    return u8.permute(0, 2, 3, 1).contiguous()  # (B, 3, H, W) -> (B, H, W, 3)


def tensor_to_images(x: Tensor) -> list[Image.Image]:
    """(B, 3, H, W) in [-1, 1] -> RGB PIL images (``to_rgb8``), waiting for the copy to the host."""
    return [Image.fromarray(a) for a in to_rgb8(x).cpu().numpy()]


__all__ = [
    "AutoencoderKL",
    "Encoder",
    "Decoder",
    "normalize_latents",
    "denormalize_latents",
    "sample_latents",
    "image_to_tensor",
    "tensor_to_images",
    "to_rgb8",
]
