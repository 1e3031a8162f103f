"""img2img and inpainting against diffusers' ZImageImg2ImgPipeline / ZImageInpaintPipeline (tiny, fp32, CPU)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.engine.reference_runs import assert_latents_match, our_pixels, reference_run
from zimage_mcp.engine import InvalidArgument, load_pipeline
from zimage_mcp.engine.pipelines.img2img import fit_image, img2img, inpaint

PROMPT = "a watercolor of a harbour at dawn"


@pytest.fixture(scope="module")
def ours(tiny_dir: Path):
    return load_pipeline(tiny_dir, device="cpu", dtype=torch.float32)


@pytest.fixture(scope="module")
def source() -> Image.Image:
    rng = np.random.default_rng(0)
    base = np.linspace(0, 255, 256, dtype=np.float32)[None, :, None] * np.ones((256, 1, 3), np.float32)
    return Image.fromarray(np.clip(base + rng.normal(0, 25, (256, 256, 3)), 0, 255).astype(np.uint8))


@pytest.mark.parametrize(("strength", "steps"), [(1.0, 4), (0.6, 8), (0.125, 8), (0.5, 3)])
def test_img2img_matches_diffusers(tiny_dir: Path, ours, source: Image.Image, strength: float, steps: int) -> None:
    from diffusers import ZImageImg2ImgPipeline

    ref = ZImageImg2ImgPipeline.from_pretrained(tiny_dir, dtype=torch.float32)
    ref.set_progress_bar_config(disable=True)
    want_latents, want = reference_run(
        ref, 9, PROMPT, image=source, strength=strength, num_inference_steps=steps, guidance_scale=0.0
    )
    out = img2img(ours, source, PROMPT, strength=strength, steps=steps, guidance=0.0, seed=9)
    assert_latents_match(out.latents, want_latents)
    assert np.abs(our_pixels(ours, out.latents) - want).max() <= 1e-4


def test_img2img_with_cfg_matches_diffusers(tiny_dir: Path, ours, source: Image.Image) -> None:
    from diffusers import ZImageImg2ImgPipeline

    ref = ZImageImg2ImgPipeline.from_pretrained(tiny_dir, dtype=torch.float32)
    ref.set_progress_bar_config(disable=True)
    want_latents, want = reference_run(
        ref,
        2,
        PROMPT,
        image=source,
        strength=0.7,
        num_inference_steps=5,
        guidance_scale=3.0,
        negative_prompt="ugly",
    )
    out = img2img(ours, source, PROMPT, strength=0.7, steps=5, guidance=3.0, negative_prompt="ugly", seed=2)
    assert_latents_match(out.latents, want_latents)
    assert np.abs(our_pixels(ours, out.latents) - want).max() <= 1e-4


def _random_mask(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    m = np.zeros((256, 256), np.uint8)
    for _ in range(3):
        x, y, w, h = rng.integers(0, 200, 4)
        m[y : y + 16 + h // 4, x : x + 16 + w // 4] = 255
    return Image.fromarray(m)


@pytest.mark.parametrize("strength", [1.0, 0.75])
def test_inpaint_matches_diffusers(tiny_dir: Path, ours, source: Image.Image, strength: float) -> None:
    from diffusers import ZImageInpaintPipeline

    mask = _random_mask(int(strength * 100))
    ref = ZImageInpaintPipeline.from_pretrained(tiny_dir, dtype=torch.float32)
    ref.set_progress_bar_config(disable=True)
    # diffusers blends the kept region in latent space at every step and never pastes back in image space,
    # so its latent output is the blended latents before the decode, and ours (paste_back or not) must match
    want_latents, want = reference_run(
        ref, 4, PROMPT, image=source, mask_image=mask, strength=strength, num_inference_steps=4, guidance_scale=0.0
    )
    out = inpaint(ours, source, mask, PROMPT, strength=strength, steps=4, guidance=0.0, seed=4, paste_back=False)
    assert_latents_match(out.latents, want_latents)
    assert np.abs(our_pixels(ours, out.latents) - want).max() <= 1e-4


def test_paste_back_keeps_untouched_pixels_bit_exact(ours, source: Image.Image) -> None:
    mask = _random_mask(1)
    out = inpaint(ours, source, mask, PROMPT, steps=2, seed=1, mask_grow=2, mask_blur=1.5)
    got, src = np.asarray(out.images[0]), np.asarray(source)
    far = np.asarray(mask.filter(__import__("PIL.ImageFilter").ImageFilter.MaxFilter(15))) == 0
    assert np.array_equal(got[far], src[far])
    assert not np.array_equal(got, src)  # the masked area did change
    drift = inpaint(ours, source, mask, PROMPT, steps=2, seed=1, paste_back=False)
    assert not np.array_equal(np.asarray(drift.images[0])[far], src[far])  # without paste-back, the VAE drifts


def test_inputs_are_fitted_and_the_note_says_how(ours) -> None:
    odd = Image.new("L", (301, 200), 128)  # grayscale, not a multiple of 16
    img, note = fit_image(odd)
    assert img.mode == "RGB" and img.size == (384, 256) and "resized" in note
    img, note = fit_image(odd, 256, 256, mode="crop")
    assert img.size == (256, 256) and "center-cropped" in note
    out = img2img(ours, odd, PROMPT, strength=0.5, steps=2, seed=0)
    assert out.images[0].size == (384, 256) and out.notes


@pytest.mark.parametrize("strength", [0.0, -0.1, 1.5])
def test_bad_strength_names_the_argument(ours, source: Image.Image, strength: float) -> None:
    with pytest.raises(ValueError, match=r"^strength: must be in \(0, 1\]"):
        img2img(ours, source, PROMPT, strength=strength, steps=4, seed=0)


@pytest.mark.parametrize("size", [(300, 100), (255, 256), (512, 512)])
def test_a_mask_not_exactly_the_image_size_is_refused(ours, source: Image.Image, size: tuple[int, int]) -> None:
    """The server resizes masks (it owns the tolerance); the engine takes exactly-sized ones only."""
    with pytest.raises(InvalidArgument, match=r"^mask: must be exactly the image's size") as err:
        inpaint(ours, source, Image.new("L", size, 255), PROMPT, steps=2, seed=0)
    assert err.value.field == "mask"


def test_a_mask_follows_its_image_through_the_resize(ours) -> None:
    odd = Image.new("RGB", (300, 200), (90, 120, 150))
    mask = Image.new("L", (300, 200), 0)
    mask.paste(255, (0, 0, 150, 200))  # left half repainted
    out = inpaint(ours, odd, mask, PROMPT, steps=2, seed=0)
    assert out.images[0].size == (384, 256) and out.notes
    right = np.asarray(out.images[0])[:, 200:]
    assert (right == np.asarray(odd.resize((384, 256), Image.LANCZOS))[:, 200:]).all()  # pasted back
