"""Optional fp8 (e4m3) weights for the DiT's four big GEMMs per block; opt-in, never the default.

Rowwise scaling, as torchao's "float8 rowwise" recipe: one fp32 scale per weight output row, fixed at
conversion, and one per activation row (token), computed on the fly; ``torch._scaled_mm`` multiplies the
fp8 operands on the tensor cores (2x the bf16 rate on Hopper) and applies both scales in its epilogue.
The adaLN, embedders, final layer and norms stay in bf16. Quality is measured, not assumed:
``benchmarks/bench_engine.py --fp8`` compares full 8-step runs against bf16 (relative error, PSNR).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

FP8 = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8).max  # 448


def _rowwise(x: Tensor) -> tuple[Tensor, Tensor]:
    """x (R, K) -> fp8 values (R, K) and fp32 scales (R, 1) with x ~= values * scales."""
    xf = x.float()
    scale = xf.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / FP8_MAX
    return (xf / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8), scale


class Float8Linear(nn.Module):
    """A bias-free linear layer with an (N, K) fp8 weight. Its buffers stay out of the state dict."""

    weight_fp8: Tensor
    weight_scale: Tensor

    def __init__(self, weight: Tensor) -> None:
        super().__init__()
        data, scale = _rowwise(weight.detach())
        self.register_buffer("weight_fp8", data, persistent=False)  # (N, K)
        self.register_buffer("weight_scale", scale.t().contiguous(), persistent=False)  # (1, N)

    @property
    def out_features(self) -> int:
        return self.weight_fp8.shape[0]

    def forward(self, x: Tensor) -> Tensor:
        """x (..., K) bf16 -> (..., N) in x's dtype."""
        lead = x.shape[:-1]
        xq, xs = _rowwise(x.reshape(-1, x.shape[-1]))  # (M, K) fp8, (M, 1)
        # _scaled_mm wants its second operand column-major: the transposed row-major weight is exactly that.
        out = torch._scaled_mm(xq, self.weight_fp8.t(), scale_a=xs, scale_b=self.weight_scale, out_dtype=x.dtype)
        return out.reshape(*lead, self.out_features)


def dequantized(layer: Float8Linear) -> Tensor:
    """The (N, K) fp32 weight that ``layer`` actually multiplies by (for error reports)."""
    return layer.weight_fp8.float() * layer.weight_scale.t()
