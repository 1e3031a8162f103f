"""Flow-matching sampler as pure functions.

Convention, stated once:
- Noise level sigma in [0, 1]: x_sigma = sigma * noise + (1 - sigma) * x0 (sigma = 1 is pure noise).
- The DiT takes t = 1 - sigma (0 = noise, 1 = clean), computed as (1000 - 1000*sigma) / 1000 like the
  reference, and multiplies by t_scale = 1000 inside.
- The DiT predicts v_model ~ x0 - noise, pointing towards data. The ODE velocity dx/dsigma is -v_model,
  so the Euler step is x_next = x + (sigma_next - sigma) * (-v_model).
- Latents stay fp32 between steps; only the model input is cast to the model dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor


def get_sigmas(steps: int, shift: float) -> list[float]:
    """steps + 1 sigmas: linspace(1, 1/N, N) warped by the static shift S*s / (1 + (S-1)*s), then 0."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    s = torch.linspace(1.0, 1.0 / steps, steps, dtype=torch.float32)
    # fp32 throughout, as the reference scheduler computes it (numpy float32)
    sigmas = shift * s / (1 + (shift - 1) * s)
    return sigmas.tolist() + [0.0]


def model_time(sigma: float) -> float:
    """The DiT's t for a noise level (0 = noise, 1 = clean), rounded as the reference rounds it."""
    ts = torch.tensor(sigma, dtype=torch.float32) * 1000.0
    return float((1000.0 - ts) / 1000.0)


def euler_step(x: Tensor, model_out: Tensor, sigma: float, sigma_next: float) -> Tensor:
    """One Euler step of the flow ODE in fp32. model_out is the DiT prediction (not yet negated)."""
    return x.float() + (sigma_next - sigma) * (-model_out.float())


def cfg_combine(pos: Tensor, neg: Tensor, guidance: float, normalization: float = 0.0) -> Tensor:
    """pos + g*(pos - neg) per sample (g = 0 means no CFG), optionally clamping ||pred|| <= c*||pos||."""
    pos, neg = pos.float(), neg.float()
    pred = pos + guidance * (pos - neg)
    if normalization > 0.0:
        dims = tuple(range(1, pred.ndim))
        pos_norm = torch.linalg.vector_norm(pos, dim=dims, keepdim=True)
        pred_norm = torch.linalg.vector_norm(pred, dim=dims, keepdim=True)
        limit = pos_norm * normalization
        pred = torch.where(pred_norm > limit, pred * (limit / pred_norm), pred)
    return pred


def guidance_at(guidance: float, t: float, cfg_truncation: float) -> float:
    """CFG is dropped (g = 0) on steps whose t = 1 - sigma is past ``cfg_truncation``."""
    if cfg_truncation <= 1.0 and t > cfg_truncation:
        return 0.0
    return guidance


def img2img_start(steps: int, strength: float) -> int:
    """Index of the first sigma kept for img2img: int(N - min(N*strength, N)) (reference semantics)."""
    init = min(steps * strength, steps)
    return int(max(steps - init, 0))


def noise_like(shape: tuple[int, ...], seed: int) -> Tensor:
    """Standard normal fp32 noise from a CPU generator, so a seed gives the same image on any device."""
    gen = torch.Generator("cpu").manual_seed(seed)
    return torch.randn(shape, generator=gen, dtype=torch.float32)
