"""fp8 GEMM weights: rowwise scales, the error they add, and what the conversion keeps and frees."""

from __future__ import annotations

import pytest
import torch

from zimage_mcp.engine.config import TRANSFORMER_PRESETS
from zimage_mcp.engine.dit.transformer import ZImageTransformer
from zimage_mcp.engine.weights.fp8 import FP8, Float8Linear, dequantized


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
