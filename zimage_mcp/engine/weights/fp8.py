"""Optional fp8 (e4m3) weights for the DiT's four big GEMMs per block; opt-in, never the default.

Rowwise scaling, as torchao's "float8 rowwise" recipe: one fp32 scale per weight output row, fixed at
conversion, and one per activation row (token), computed on the fly; ``torch._scaled_mm`` multiplies the
fp8 operands on the tensor cores (2x the bf16 rate on Hopper) and applies both scales in its epilogue.
The adaLN, embedders, final layer and norms stay in bf16. ``swap_to_fp8`` swaps modules: the layers
themselves only know plain ``nn.Linear``. Quality is measured, not assumed:
``benchmarks/bench_engine.py --fp8`` compares full 8-step runs against bf16 (relative error, PSNR).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

FP8 = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8).max  # 448


EAGER_ROWS = 1024  # rows quantized at a time outside torch.compile: bounds the fp32 scratch


def rowwise(x: Tensor) -> tuple[Tensor, Tensor]:
    """x (R, K) -> fp8 values (R, K) and fp32 scales (R, 1) with x ~= values * scales."""
    if torch.compiler.is_compiling():  # one fused kernel; no scratch to bound
        xf = x.float()
        scale = xf.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / FP8_MAX
        return (xf / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8), scale
    return _rowwise_lean(x)


def _rowwise_lean(x: Tensor) -> tuple[Tensor, Tensor]:
    """``rowwise`` run eagerly (a first request runs uncompiled) without its four full-size fp32 temporaries:
    at 1024^2 the FFN's down projection quantizes (4.2k, 10240) activations, so those were 0.5 GiB on an 8 GB
    card's budget. The same values: max|x| is exact in x's dtype, and each row's quantization is independent."""
    lo, hi = torch.aminmax(x, dim=1, keepdim=True)  # no |x| copy
    scale = torch.maximum(-lo, hi).float().clamp_(min=1e-12).div_(FP8_MAX)  # (R, 1)
    out = torch.empty(x.shape, dtype=FP8, device=x.device)
    for start in range(0, x.shape[0], EAGER_ROWS):
        rows = slice(start, start + EAGER_ROWS)
        # a copy even when x is fp32 already (.float() would return x itself, and div_ would overwrite it)
        out[rows] = x[rows].to(torch.float32, copy=True).div_(scale[rows]).clamp_(-FP8_MAX, FP8_MAX)
    return out, scale


class Float8Linear(nn.Module):
    """A bias-free linear layer with an (N, K) fp8 weight. Its buffers stay out of the state dict;
    ``bf16_weight`` (kept or emptied) holds the checkpoint name of the Linear it replaces."""

    weight_fp8: Tensor
    weight_scale: Tensor

    def __init__(
        self,
        weight: Tensor | None,
        bf16_weight: nn.Parameter | None = None,
        quantized: tuple[Tensor, Tensor] | None = None,
    ) -> None:
        """From a weight (quantized here) or from ``quantized`` = ``rowwise(weight)`` done earlier (at load)."""
        super().__init__()
        if bf16_weight is not None:
            self.weight = bf16_weight
        if quantized is None:
            assert weight is not None
            quantized = rowwise(weight.detach())
        data, scale = quantized
        self.register_buffer("weight_fp8", data, persistent=False)  # (N, K)
        self.register_buffer("weight_scale", scale.t().contiguous(), persistent=False)  # (1, N)

    @property
    def out_features(self) -> int:
        return self.weight_fp8.shape[0]

    def forward(self, x: Tensor) -> Tensor:
        """x (..., K) bf16 -> (..., N) in x's dtype."""
        lead = x.shape[:-1]
        xq, xs = rowwise(x.reshape(-1, x.shape[-1]))  # (M, K) fp8, (M, 1)
        # _scaled_mm wants its second operand column-major: the transposed row-major weight is exactly that.
        out = torch._scaled_mm(xq, self.weight_fp8.t(), scale_a=xs, scale_b=self.weight_scale, out_dtype=x.dtype)
        return out.reshape(*lead, self.out_features)


def dequantized(layer: Float8Linear) -> Tensor:
    """The (N, K) fp32 weight that ``layer`` actually multiplies by (for error reports)."""
    return layer.weight_fp8.float() * layer.weight_scale.t()


def released(weight: Tensor) -> nn.Parameter:
    """An empty stand-in for a bf16 weight an fp8 copy replaces (the fp8 mode's memory saving)."""
    return nn.Parameter(weight.new_empty(0), requires_grad=False)


def _fp8(linear: nn.Module, named: bool, keep_bf16: bool) -> Float8Linear:
    """``linear`` as a Float8Linear (an existing one is reused, so a second swap changes no result);
    ``named``: it carries a checkpoint name, kept through ``bf16_weight``."""
    if isinstance(linear, Float8Linear):
        if not keep_bf16 and "weight" in linear._parameters:
            linear.weight = released(linear.weight)
        return linear
    weight = linear.weight
    return Float8Linear(weight, (weight if keep_bf16 else released(weight)) if named else None)


def swap_to_fp8(model: nn.Module, keep_bf16: bool = False) -> None:
    """fp8 weights for every block's qkv, out, w13 and w2 GEMMs of a Z-Image DiT; opt-in, lossy.

    q/k/v and w1/w3 are fused first (lossless), then the fused projections, ``to_out.0`` and ``w2`` are
    swapped for ``Float8Linear``. State-dict names are kept; with ``keep_bf16=False`` the bf16 weights
    are freed (emptied), so LoRAs can no longer be merged, and ``model.precision`` says so.
    """
    from zimage_mcp.engine.dit.layers import set_unregistered

    for blk in model.blocks():
        att, ff = blk.attention, blk.feed_forward
        att.fuse()
        ff.fuse()
        set_unregistered(att, "qkv", _fp8(att.qkv, named=False, keep_bf16=keep_bf16))
        set_unregistered(ff, "w13", _fp8(ff.w13, named=False, keep_bf16=keep_bf16))
        att.to_out[0] = _fp8(att.to_out[0], named=True, keep_bf16=keep_bf16)
        ff.w2 = _fp8(ff.w2, named=True, keep_bf16=keep_bf16)
        if not keep_bf16:
            for lin in (att.to_q, att.to_k, att.to_v, ff.w1, ff.w3):
                lin.weight = released(lin.weight)
    model.precision = "fp8" if not keep_bf16 else "fp8+bf16"
