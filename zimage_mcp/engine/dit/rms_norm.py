"""RMS normalisation as both reference models spell it: statistics in fp32, rounded once to a dtype.

The DiT's ``RMSNorm`` (diffusers) and Qwen3's (transformers) both normalise in fp32 and round the result
before multiplying by their weight; only the dtype they round to differs. ``F.rms_norm`` without a weight
does exactly that when the dtype is the input's own, in one fused kernel on CUDA, where the spelled-out
form launches seven outside a compiled graph: on an H200 those took 23 ms of a 125 ms uncompiled 1024²
DiT forward (128 norms, ``benchmarks/results/2026-12-02-e/1_eager_dit_kernels.txt``). Compiled graphs see
the same decomposition as before (Inductor decomposes ``_fused_rms_norm`` and fuses it as it did the
spelled-out form).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def rms_normalize(x: Tensor, eps: float, dtype: torch.dtype) -> Tensor:
    """x / sqrt(mean(x², last dim) + eps), computed in fp32 and rounded once to ``dtype``; same shape as x."""
    if x.dtype == dtype:
        return F.rms_norm(x, (x.shape[-1],), None, eps)
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(dtype)
