"""Attention through one function whose backend is an explicit argument (never global state)."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

AttentionBackend = Literal["sdpa", "cudnn", "flash", "efficient", "math"]

_SDPA_KERNELS: dict[str, list[SDPBackend]] = {
    "cudnn": [SDPBackend.CUDNN_ATTENTION],
    "flash": [SDPBackend.FLASH_ATTENTION],
    "efficient": [SDPBackend.EFFICIENT_ATTENTION],
    "math": [SDPBackend.MATH],
}
_MASKED_KERNELS = [SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.MATH]


def attention(
    q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor | None = None, backend: AttentionBackend = "sdpa"
) -> Tensor:
    """q, k, v (B, S, H, Dh); key_mask (B, S) bool, True = attend. -> (B, S, H*Dh)."""
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, S, Dh)
    mask = key_mask[:, None, None, :] if key_mask is not None else None
    kernels = _SDPA_KERNELS.get(backend)
    if mask is not None and backend in ("cudnn", "flash"):
        kernels = _MASKED_KERNELS  # these kernels take no arbitrary mask: fall back, never fail
    ctx = sdpa_kernel(kernels) if kernels else nullcontext()
    with ctx:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return out.transpose(1, 2).flatten(2)


def best_backend(device: torch.device) -> AttentionBackend:
    """cuDNN attention on Hopper (measured fastest for these shapes), plain SDPA dispatch elsewhere."""
    if device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 9:
        return "cudnn"
    return "sdpa"
