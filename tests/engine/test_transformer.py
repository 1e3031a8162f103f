"""The S3-DiT against diffusers' ZImageTransformer2DModel on tiny configs (fp32, CPU)."""

from __future__ import annotations

import pytest
import torch

from tests.engine.conftest import diffusers_tiny_transformer
from zimage_mcp.engine.config import TRANSFORMER_PRESETS
from zimage_mcp.engine.dit.transformer import ZImageTransformer, patchify, unpatchify


def _pair(seed: int) -> tuple[torch.nn.Module, ZImageTransformer]:
    ref = diffusers_tiny_transformer(seed)
    ours = ZImageTransformer(TRANSFORMER_PRESETS["tiny"]).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours


@pytest.mark.parametrize(
    ("latent_hw", "cap_lens"),
    [
        ((16, 16), [32]),  # no padding anywhere
        ((16, 16), [20]),  # caption needs pads
        ((10, 14), [40]),  # non-square; 35 image tokens -> 29 image pads
        ((16, 6), [7, 45]),  # batch of two, different caption lengths -> key-padding mask
        ((12, 12), [33, 33]),  # batch of two, same length
    ],
)
def test_forward_matches_diffusers(latent_hw: tuple[int, int], cap_lens: list[int]) -> None:
    ref, ours = _pair(seed=sum(cap_lens) + latent_hw[0])
    b = len(cap_lens)
    x = torch.randn(b, 16, *latent_hw)
    t = torch.rand(b)
    caps = [torch.randn(n, 32) for n in cap_lens]
    with torch.no_grad():
        want = torch.stack(ref([xi.unsqueeze(1) for xi in x], t, caps, return_dict=False)[0]).squeeze(2)
        got = ours(x, t, caps)
    assert got.shape == x.shape
    assert torch.isfinite(got).all()
    assert (got - want).abs().max().item() <= 1e-4


def test_prepared_conditioning_is_reusable_across_steps() -> None:
    _, ours = _pair(seed=1)
    x, caps = torch.randn(1, 16, 8, 8), [torch.randn(11, 32)]
    with torch.no_grad():
        cond = ours.prepare(caps, (8, 8))
        for t in (0.1, 0.7):
            tt = torch.tensor([t])
            assert torch.equal(ours.forward_prepared(x, tt, cond), ours(x, tt, caps))


def test_patchify_is_channel_fastest_and_invertible() -> None:
    x = torch.arange(2 * 16 * 4 * 6, dtype=torch.float32).view(2, 16, 4, 6)
    tokens = patchify(x)
    assert tokens.shape == (2, 6, 64)
    # first token, feature index ((ph*2)+pw)*16 + c: c fastest
    assert tokens[0, 0, 1].item() == x[0, 1, 0, 0].item()
    assert tokens[0, 0, 16].item() == x[0, 0, 0, 1].item()
    assert torch.equal(unpatchify(tokens, 2, 3, 16), x)


def test_timestep_convention_changes_output() -> None:
    """t = 0 is noise and t = 1 is clean: the model must see them differently (catches a dropped t_scale)."""
    _, ours = _pair(seed=2)
    x, caps = torch.randn(1, 16, 8, 8), [torch.randn(5, 32)]
    with torch.no_grad():
        a = ours(x, torch.tensor([0.0]), caps)
        b = ours(x, torch.tensor([1.0]), caps)
    assert (a - b).abs().max() > 1e-3
