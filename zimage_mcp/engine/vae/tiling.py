"""Tiled VAE decoding for low-VRAM mode: decode overlapping latent tiles and blend their seams.

At 1024^2 the full decoder's transient (full-resolution activations, conv workspaces) is several GiB on
top of the 12 GB DiT. Decoding 512 px tiles bounds it. It is an approximation, as in diffusers' tiled
decode: the decoder's mid-block attention sees one tile, not the whole latent; overlaps are blended
linearly so no seam shows. Off by default; the low-VRAM mode turns it on.
"""

from __future__ import annotations

import torch
from torch import Tensor

from zimage_mcp.engine.vae.model import AutoencoderKL

SCALE = 8  # pixels per latent cell


def _ramp(n: int, device: torch.device) -> Tensor:
    return (torch.arange(n, device=device, dtype=torch.float32) + 0.5) / n


def decode_tiled(vae: AutoencoderKL, z: Tensor, tile: int = 64, overlap: int = 16) -> Tensor:
    """z (B, 16, h, w) raw VAE latents -> (B, 3, 8h, 8w), decoding ``tile``-cell tiles that overlap."""
    b, _, h, w = z.shape
    if h <= tile and w <= tile:
        return vae.decode(z)
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap must be in 0..{tile - 1}, got {overlap}")
    step = tile - overlap
    out = torch.zeros(b, 3, h * SCALE, w * SCALE, device=z.device, dtype=torch.float32)
    weight = torch.zeros(1, 1, h * SCALE, w * SCALE, device=z.device, dtype=torch.float32)
    rows = list(range(0, max(h - overlap, 1), step))
    cols = list(range(0, max(w - overlap, 1), step))
    for top in rows:
        for left in cols:
            t0, l0 = min(top, max(h - tile, 0)), min(left, max(w - tile, 0))
            piece = vae.decode(z[:, :, t0 : t0 + tile, l0 : l0 + tile]).float()  # (B, 3, 8*th, 8*tw)
            ph, pw = piece.shape[-2:]
            mask = _blend_mask(ph, pw, overlap * SCALE, t0 > 0, l0 > 0, t0 + tile < h, l0 + tile < w, z.device)
            ys, xs = t0 * SCALE, l0 * SCALE
            out[:, :, ys : ys + ph, xs : xs + pw] += piece * mask
            weight[:, :, ys : ys + ph, xs : xs + pw] += mask
    return (out / weight).to(z.dtype)


def _blend_mask(
    ph: int, pw: int, ov: int, top: bool, left: bool, bottom: bool, right: bool, device: torch.device
) -> Tensor:
    """(1, 1, ph, pw) weights: 1 inside, linear ramps over the overlaps that touch a neighbour."""
    wy = torch.ones(ph, device=device)
    wx = torch.ones(pw, device=device)
    if ov > 0:
        ramp = _ramp(ov, device)
        if top:
            wy[:ov] = ramp
        if bottom:
            wy[-ov:] = ramp.flip(0)
        if left:
            wx[:ov] = ramp
        if right:
            wx[-ov:] = ramp.flip(0)
    return (wy[:, None] * wx[None, :])[None, None]
