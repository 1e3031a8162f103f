"""Tiled decoding (low-VRAM mode): right shape, seamless, and close to the full decode."""

from __future__ import annotations

import pytest
import torch

from zimage_mcp.engine.config import VAE_PRESETS
from zimage_mcp.engine.vae.model import AutoencoderKL
from zimage_mcp.engine.vae.tiling import decode_tiled


@pytest.fixture(scope="module")
def vae() -> AutoencoderKL:
    torch.manual_seed(0)
    return AutoencoderKL(VAE_PRESETS["tiny"]).eval()


@torch.no_grad()
def test_small_latents_are_decoded_whole(vae: AutoencoderKL) -> None:
    z = torch.randn(1, 16, 8, 8)
    assert torch.equal(decode_tiled(vae, z, tile=8), vae.decode(z))


@torch.no_grad()
def test_tiles_cover_everything_and_stay_close_to_the_full_decode(vae: AutoencoderKL) -> None:
    z = torch.randn(2, 16, 24, 40)  # not a multiple of the step: the last tiles are shifted back
    full = vae.decode(z)
    tiled = decode_tiled(vae, z, tile=16, overlap=8)
    assert tiled.shape == full.shape == (2, 3, 192, 320)
    assert torch.isfinite(tiled).all()
    # the mid-block attention sees one tile, so this is an approximation; the convolutions agree
    assert (tiled - full).abs().mean() < 0.25 * full.abs().mean()


@torch.no_grad()
def test_no_overlap_means_hard_tile_borders(vae: AutoencoderKL) -> None:
    z = torch.randn(1, 16, 32, 32)
    tiled = decode_tiled(vae, z, tile=16, overlap=0)
    corner = vae.decode(z[:, :, :16, :16])
    assert torch.allclose(tiled[:, :, :128, :128], corner, atol=1e-5)
    with pytest.raises(ValueError, match="overlap"):
        decode_tiled(vae, z, tile=16, overlap=16)


def test_low_vram_pipelines_decode_in_tiles(tmp_path) -> None:
    from zimage_mcp.engine import load_pipeline
    from zimage_mcp.engine.presets.tiny import make_tiny

    pipe = load_pipeline(make_tiny(tmp_path / "m"), device="cpu")
    assert pipe.vae_tiling is False
    from zimage_mcp.engine.pipelines.text_to_image import ZImagePipeline

    low = ZImagePipeline(pipe.transformer, pipe.vae, pipe.text_encoder, pipe.shift, offload_text_encoder=True)
    assert low.vae_tiling is True
    img = low.generate("a harbour", width=768, height=768, steps=1, seed=0).images[0]
    assert img.size == (768, 768)
