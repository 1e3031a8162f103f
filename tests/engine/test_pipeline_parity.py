"""Whole-pipeline parity: our engine vs diffusers' ZImagePipeline on the same tiny folder and seed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.engine.reference_runs import assert_latents_match, our_pixels, reference_run
from zimage_mcp.engine import load_pipeline

PROMPT = "a photo of a cat sitting on a mat, 35mm"


@pytest.fixture(scope="module")
def pipes(tiny_dir: Path):
    from diffusers import ZImagePipeline

    ref = ZImagePipeline.from_pretrained(tiny_dir, dtype=torch.float32)
    ref.set_progress_bar_config(disable=True)
    return load_pipeline(tiny_dir, device="cpu", dtype=torch.float32), ref


def _ours(pipe, **kw) -> tuple[torch.Tensor, np.ndarray]:
    out = pipe.generate(PROMPT, **kw)
    return out.latents, our_pixels(pipe, out.latents)


def _ref(ref, width: int, height: int, steps: int, guidance: float, seed: int, **kw) -> tuple[torch.Tensor, np.ndarray]:
    return reference_run(
        ref, seed, PROMPT, width=width, height=height, num_inference_steps=steps, guidance_scale=guidance, **kw
    )


@pytest.mark.parametrize(("width", "height"), [(256, 256), (256, 320)])
def test_turbo_settings_match_diffusers(pipes, width: int, height: int) -> None:
    ours, ref = pipes
    latents, got = _ours(ours, width=width, height=height, steps=8, guidance=0.0, seed=11)
    want_latents, want = _ref(ref, width, height, 8, 0.0, 11)
    assert_latents_match(latents, want_latents)
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-4


def test_base_settings_with_cfg_truncation_and_normalization_match_diffusers(pipes) -> None:
    """6 steps at shift 3 run at t = 0, .06, .14, .25, .40, .63: a 0.3 cutoff drops CFG on the last two."""
    ours, ref = pipes
    neg = "blurry, low quality, watermark, extra fingers"  # a different caption length than the prompt
    args = {
        "width": 256,
        "height": 256,
        "steps": 6,
        "guidance": 4.0,
        "seed": 3,
        "negative_prompt": neg,
        "cfg_normalization": 1.5,
    }
    latents, got = _ours(ours, **args, cfg_truncation=0.3)
    want_latents, want = _ref(ref, 256, 256, 6, 4.0, 3, negative_prompt=neg, cfg_truncation=0.3, cfg_normalization=1.5)
    assert_latents_match(latents, want_latents)
    assert np.abs(got - want).max() <= 1e-4
    # the cutoff is crossed: without it the same call gives other latents
    untruncated, _ = _ours(ours, **args, cfg_truncation=1.0)
    assert (untruncated - latents).abs().max().item() > 1e-2


def test_comfy_single_files_give_the_same_image_as_the_folder(tiny_dir: Path) -> None:
    comfy = tiny_dir / "comfy"
    folder = load_pipeline(tiny_dir, device="cpu", dtype=torch.float32)
    single = load_pipeline(
        tiny_dir,
        transformer_file=comfy / "diffusion_models" / "z_image_tiny.safetensors",
        vae_file=comfy / "vae" / "ae.safetensors",
        text_encoder_file=comfy / "text_encoders" / "qwen_3_tiny.safetensors",
        device="cpu",
        dtype=torch.float32,
    )
    a = folder.generate(PROMPT, width=256, height=256, steps=3, seed=5)
    b = single.generate(PROMPT, width=256, height=256, steps=3, seed=5)
    assert torch.equal(a.latents, b.latents)


def test_seed_determinism_and_count(pipes) -> None:
    ours, _ = pipes
    a = ours.generate(PROMPT, width=256, height=256, steps=2, seed=7, count=2)
    b = ours.generate(PROMPT, width=256, height=256, steps=2, seed=8)
    assert a.seeds == [7, 8]
    # image i of a batch uses seed + i: the same image as a batch of one (up to batched-matmul rounding)
    assert torch.allclose(a.latents[1:], b.latents, atol=1e-5)
    assert len(a.images) == 2 and a.images[0].size == (256, 256)


def test_callbacks_and_cancellation(pipes) -> None:
    from zimage_mcp.engine import GenerationCancelled

    ours, _ = pipes
    seen: list[tuple[int, int]] = []
    ours.generate(PROMPT, width=256, height=256, steps=3, seed=1, on_step=lambda i, n: seen.append((i, n)))
    assert seen == [(1, 3), (2, 3), (3, 3)]
    with pytest.raises(GenerationCancelled):
        ours.generate(
            PROMPT,
            width=256,
            height=256,
            steps=5,
            seed=1,
            should_stop=lambda: len(seen) >= 4,
            on_step=lambda i, n: seen.append((i, n)),
        )
    assert len(seen) == 4  # stopped within one step


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"width": 250}, "width"),
        ({"height": 4096}, "height"),
        ({"width": 128}, "width"),
        ({"steps": 0}, "steps"),
        ({"steps": 101}, "steps"),
        ({"prompt": ""}, "prompt"),
        ({"seed": -1}, "seed"),
        ({"count": 0}, "count"),
    ],
)
def test_bad_arguments_name_the_field_and_range(pipes, kwargs: dict, field: str) -> None:
    ours, _ = pipes
    args = {"prompt": PROMPT, "width": 256, "height": 256, "steps": 2} | kwargs
    with pytest.raises(ValueError, match=rf"^{field}: must be"):
        ours.generate(**args)
