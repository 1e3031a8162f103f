"""Test-side parity helpers: diffusers' run before and after its VAE decode, ours decoded, the latent check.

Tiny-model pixels clip to 0 or 1 in large areas after the decode, so the parity tests compare the latents
before the VAE (diffusers' ``output_type="latent"``) as well as the pixels.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def reference_run(ref: Any, seed: int, *args: Any, **kw: Any) -> tuple[torch.Tensor, np.ndarray]:
    """diffusers' latents before the VAE and its decoded pixels, each run with the same CPU seed."""

    def run(output_type: str) -> Any:
        return ref(*args, generator=torch.Generator("cpu").manual_seed(seed), output_type=output_type, **kw).images

    return run("latent"), run("np")


def our_pixels(pipe: Any, latents: torch.Tensor) -> np.ndarray:
    """Our decode of ``latents`` (B, 16, h, w) as diffusers' ``output_type="np"`` lays it out: (B, H, W, 3)."""
    return pipe.decode_pixels(latents).permute(0, 2, 3, 1).numpy()


def assert_latents_match(got: torch.Tensor, want: torch.Tensor) -> None:
    """The latents carry the comparison: many tiny-model pixels clip to 0 or 1 after the decode."""
    assert got.shape == want.shape
    assert (got.float() - want.float()).abs().max().item() <= 1e-4 * max(1.0, want.abs().max().item())
