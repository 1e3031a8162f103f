from __future__ import annotations

import pytest
import torch

from zimage_mcp.engine.pipelines.sampler import (
    cfg_combine,
    euler_step,
    get_sigmas,
    guidance_at,
    img2img_start,
    model_time,
    noise_like,
)


def test_turbo_sigmas_match_the_published_grid() -> None:
    sig = get_sigmas(8, 3.0)
    assert len(sig) == 9 and sig[-1] == 0.0
    assert sig[:8] == pytest.approx([1.0, 0.9545, 0.9, 0.8333, 0.75, 0.6429, 0.5, 0.3], abs=1e-4)
    assert all(a > b for a, b in zip(sig, sig[1:], strict=False))


def test_sigmas_match_diffusers_scheduler() -> None:
    from diffusers import FlowMatchEulerDiscreteScheduler

    for steps, shift in ((8, 3.0), (50, 6.0), (1, 3.0)):
        sched = FlowMatchEulerDiscreteScheduler(shift=shift)
        sched.set_timesteps(sigmas=torch.linspace(1.0, 1 / steps, steps).tolist(), mu=0.7)
        assert get_sigmas(steps, shift) == pytest.approx(sched.sigmas.tolist(), abs=1e-7)


def test_euler_on_constant_velocity_is_exact() -> None:
    """With model output v = x0 - noise constant, integrating from sigma=1 to 0 lands on x0 exactly."""
    noise, x0 = torch.randn(1, 4, 2, 2), torch.randn(1, 4, 2, 2)
    x, sig = noise.clone(), get_sigmas(7, 3.0)
    for a, b in zip(sig, sig[1:], strict=False):
        x = euler_step(x, x0 - noise, a, b)
    assert torch.allclose(x, x0, atol=1e-5)


def test_model_time_flips_sigma() -> None:
    assert model_time(1.0) == 0.0 and model_time(0.0) == 1.0
    assert model_time(0.25) == pytest.approx(0.75)


def test_cfg_combine_and_normalization() -> None:
    pos, neg = torch.ones(2, 3), torch.zeros(2, 3)
    assert torch.equal(cfg_combine(pos, neg, 0.0), pos)
    assert torch.allclose(cfg_combine(pos, neg, 4.0), 5 * pos)
    clamped = cfg_combine(pos, neg, 4.0, normalization=1.5)
    assert torch.allclose(torch.linalg.vector_norm(clamped[0]), 1.5 * torch.linalg.vector_norm(pos[0]))


def test_cfg_truncation_drops_late_steps() -> None:
    assert guidance_at(4.0, 0.5, 0.7) == 4.0
    assert guidance_at(4.0, 0.8, 0.7) == 0.0
    assert guidance_at(4.0, 0.99, 1.0) == 4.0


def test_img2img_start_matches_reference_semantics() -> None:
    assert img2img_start(8, 1.0) == 0
    assert img2img_start(8, 0.6) == 3  # 5 steps starting at sigma .8333
    assert img2img_start(8, 0.125) == 7  # a single step left


def test_noise_is_seeded_on_cpu() -> None:
    assert torch.equal(noise_like((1, 16, 4, 4), 5), noise_like((1, 16, 4, 4), 5))
    assert not torch.equal(noise_like((1, 16, 4, 4), 5), noise_like((1, 16, 4, 4), 6))
