"""rms_normalize keeps both reference spellings' rounding: fp32 statistics, one rounding to the dtype asked."""

from __future__ import annotations

import pytest
import torch

from zimage_mcp.engine.dit.rms_norm import rms_normalize


def spelled_out(x: torch.Tensor, eps: float, dtype: torch.dtype) -> torch.Tensor:
    """diffusers' and transformers' RMSNorm before the weight, as they write it."""
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(dtype)


@pytest.mark.parametrize(
    ("dtype_in", "dtype_out"),
    [
        (torch.float32, torch.float32),
        (torch.bfloat16, torch.bfloat16),
        (torch.float16, torch.float16),
        (torch.bfloat16, torch.float32),  # a bf16 caption into an fp32 DiT: no rounding to bf16 on the way
        (torch.float32, torch.bfloat16),
    ],
)
def test_bit_equal_to_the_reference_spelling(dtype_in: torch.dtype, dtype_out: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(2, 37, 384, generator=gen) * 4).to(dtype_in)  # (B, S, D); D of the tiny DiT
    out = rms_normalize(x, 1e-5, dtype_out)
    assert out.dtype == dtype_out
    assert out.shape == x.shape
    assert torch.equal(out, spelled_out(x, 1e-5, dtype_out))


def test_eps_is_used() -> None:
    x = torch.full((1, 8), 1e-3)
    assert torch.allclose(rms_normalize(x, 1.0, torch.float32), x / (1e-6 + 1.0) ** 0.5)
    assert torch.allclose(rms_normalize(x, 0.0, torch.float32), torch.ones(1, 8))
