"""fp8 GEMM weights: rowwise scales, the error they add, and what the conversion keeps and frees."""

from __future__ import annotations

import pytest
import torch

from zimage_mcp.engine.config import TRANSFORMER_PRESETS
from zimage_mcp.engine.dit.transformer import ZImageTransformer
from zimage_mcp.engine.weights.fp8 import EAGER_ROWS, FP8, FP8_MAX, Float8Linear, dequantized, rowwise


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def test_float8_linear_is_close_to_the_full_precision_product() -> None:
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(96, 64, generator=gen) / 8
    w[3] *= 50  # one loud output row: rowwise scales keep the other rows' precision
    x = torch.randn(2, 40, 64, generator=gen)
    layer = Float8Linear(w)
    assert layer.weight_fp8.dtype == FP8 and layer.weight_scale.shape == (1, 96)
    assert _rel(dequantized(layer), w) < 0.04  # e4m3 keeps 3 mantissa bits: ~2-3 % per element
    assert _rel(dequantized(layer)[:3], w[:3]) < 0.04
    out = layer(x)
    assert out.shape == (2, 40, 96) and out.dtype == x.dtype
    assert _rel(out, x @ w.t()) < 0.06
    assert layer(x.bfloat16()).dtype == torch.bfloat16
    assert layer.state_dict() == {}  # buffers are not checkpoint tensors


@pytest.mark.parametrize("fused", [False, True])
def test_transformer_to_fp8_keeps_checkpoint_names_and_frees_bf16(fused: bool) -> None:
    torch.manual_seed(0)
    model = ZImageTransformer(TRANSFORMER_PRESETS["tiny"]).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.1)
    x, t = torch.randn(1, 16, 32, 32), torch.tensor([0.4])
    feats = [torch.randn(20, model.cfg.cap_feat_dim)]
    with torch.no_grad():
        ref = model(x, t, feats)
        names = set(model.state_dict())
        if fused:
            model.fuse_projections()
        before = sum(p.numel() for p in model.parameters())
        model.to_fp8(keep_bf16=True)
        assert set(model.state_dict()) == names and model.precision == "fp8+bf16"
        kept = model(x, t, feats)
        model.to_fp8(keep_bf16=False)
        freed = model(x, t, feats)
    assert model.precision == "fp8"
    assert 0 < _rel(kept, ref) < 0.05 and torch.equal(kept, freed)
    blk = model.layers[0]
    assert blk.attention.to_q.weight.numel() == 0 and blk.attention.to_out[0].weight.numel() == 0
    assert isinstance(blk.attention.qkv, Float8Linear) and isinstance(blk.feed_forward.w2, Float8Linear)
    d, f = model.cfg.dim, model.cfg.ffn_hidden
    gemm_weights = len(model.blocks()) * (4 * d * d + 3 * d * f)  # q, k, v, out, w1, w2, w3
    assert before - sum(p.numel() for p in model.parameters()) == gemm_weights


@pytest.mark.parametrize("rows", [1, 5, EAGER_ROWS, 2 * EAGER_ROWS + 7])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_uncompiled_quantization_is_bit_identical_to_the_fused_one(rows: int, dtype: torch.dtype) -> None:
    """A first request quantizes activations eagerly, in row chunks and without full-size fp32 copies; the values
    and scales must be exactly those of the one-expression form that torch.compile fuses (chunk edges included)."""
    gen = torch.Generator().manual_seed(rows)
    x = (torch.randn(rows, 96, generator=gen) * torch.logspace(-3, 3, rows)[:, None]).to(dtype)
    x[0] = 0  # an all-zero row: the scale's floor
    xf = x.float()
    scale = xf.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / FP8_MAX
    fused = (xf / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8)
    before = x.clone()
    values, scales = rowwise(x)
    assert torch.equal(x, before)  # the input is left as it was (an fp32 weight is quantized at load too)
    assert torch.equal(scales, scale)
    assert torch.equal(values.view(torch.uint8), fused.view(torch.uint8))
