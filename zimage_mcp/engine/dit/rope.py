"""3-axis RoPE for the S3-DiT: frequency tables, position ids, and the interleaved rotation.

Z-Image rotates *consecutive pairs* (x0, x1), (x2, x3), ... of each head vector (the complex view),
not the rotate-half layout of Llama/Qwen. The Qwen3 text encoder uses the other layout: do not share.
"""

from __future__ import annotations

import torch
from torch import Tensor


def axis_angles(dims: tuple[int, ...], lens: tuple[int, ...], theta: float) -> list[Tensor]:
    """One (len_a, dim_a/2) fp32 table of angles per axis: angle[p, j] = p * theta^(-2j/dim_a)."""
    tables = []
    for d, n in zip(dims, lens, strict=False):
        # float64 then fp32, as the reference computes it, so angles agree to the last bit.
        freqs = 1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
        tables.append(torch.outer(torch.arange(n, dtype=torch.float64), freqs).float())
    return tables


def rope_cos_sin(pos_ids: Tensor, tables: list[Tensor]) -> tuple[Tensor, Tensor]:
    """pos_ids (..., 3) int -> cos, sin each (..., head_dim/2) fp32, axes concatenated in order."""
    angles = torch.cat([tab[pos_ids[..., a]] for a, tab in enumerate(tables)], dim=-1)
    # Via polar like the reference (cos/sin of the same fp32 angle), so tables match bit for bit.
    rot = torch.polar(torch.ones_like(angles), angles)
    return rot.real.contiguous(), rot.imag.contiguous()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x (B, S, H, Dh); cos/sin (B, S, Dh/2). Rotation in fp32, result cast back to x's dtype."""
    xf = x.float().unflatten(-1, (-1, 2))  # (B, S, H, Dh/2, 2)
    x0, x1 = xf[..., 0], xf[..., 1]
    c, s = cos.unsqueeze(2), sin.unsqueeze(2)  # broadcast over heads
    out = torch.stack((x0 * c - x1 * s, x0 * s + x1 * c), dim=-1)
    return out.flatten(-2).type_as(x)


def caption_pos_ids(padded_len: int) -> Tensor:
    """Caption token k (pads included) sits at (1 + k, 0, 0). -> (Lc, 3) int64."""
    ids = torch.zeros(padded_len, 3, dtype=torch.long)
    ids[:, 0] = torch.arange(1, padded_len + 1)
    return ids


def image_pos_ids(h_tokens: int, w_tokens: int, padded_len: int, axis0: int) -> Tensor:
    """Image token (row h, col w) sits at (axis0, h, w); image pad tokens at (0, 0, 0). -> (N_pad, 3)."""
    hh, ww = torch.meshgrid(torch.arange(h_tokens), torch.arange(w_tokens), indexing="ij")
    ids = torch.zeros(padded_len, 3, dtype=torch.long)
    n = h_tokens * w_tokens
    ids[:n, 0] = axis0
    ids[:n, 1] = hh.flatten()
    ids[:n, 2] = ww.flatten()
    return ids
