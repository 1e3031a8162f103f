"""Attention through one function whose backend is an explicit argument (never global state)."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
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
# cuDNN's attention builds an execution plan per shape, compiling kernels at run time: 2.2 s of CPU time in a
# fresh process's first uncompiled 1024^2 request on an H200, whose 8 steps then take 1 s
# (benchmarks/probe_first_request.py). That pays off only inside a compiled graph, whose shapes repeat and
# whose first call runs in idle time (compile_policy); outside one, attention takes kernels without plans
# (flash, 10 ms slower a forward at 1024^2; the memory-efficient kernel where a mask rules flash out).
PLAN_FREE_KERNELS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def attention(
    q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor | None = None, backend: AttentionBackend = "sdpa"
) -> Tensor:
    """q, k, v (B, S, H, Dh); key_mask (B, S) bool, True = attend. -> (B, S, H*Dh)."""
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, S, Dh)
    mask = key_mask[:, None, None, :] if key_mask is not None else None
    kernels = _SDPA_KERNELS.get(backend)
    if backend == "cudnn" and not torch.compiler.is_compiling():
        kernels = PLAN_FREE_KERNELS  # an uncompiled call: no per-shape plan (see above)
    elif mask is not None and backend in ("cudnn", "flash"):
        kernels = _MASKED_KERNELS  # these kernels take no arbitrary mask: fall back, never fail
    ctx = sdpa_kernel(kernels) if kernels else nullcontext()
    with ctx:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return out.transpose(1, 2).flatten(2)


def plan_free_kernels(device: torch.device) -> AbstractContextManager[None]:
    """SDPA without cuDNN's attention on CUDA, compiled or not (a no-op elsewhere): for attention whose
    shapes vary from call to call, such as the text encoder's prompt lengths."""
    return sdpa_kernel(PLAN_FREE_KERNELS) if device.type == "cuda" else nullcontext()


def best_backend(device: torch.device) -> AttentionBackend:
    """cuDNN attention on Hopper (measured fastest for these shapes, in compiled graphs), plain SDPA dispatch
    elsewhere."""
    if device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 9:
        return "cudnn"
    return "sdpa"
