"""img2img and inpainting on the text-to-image DiT (diffusers' ZImageImg2Img/InpaintPipeline semantics).

Random draws follow the reference order for each image's CPU generator: the VAE posterior sample
first, then the noise. Start latent = sigma_start * noise + (1 - sigma_start) * z_image.
Inpainting (white = repaint) blends after every step: x <- (1 - m) * noised(z_image, sigma_next) + m * x,
with the clean z_image on the last step. ``paste_back`` then copies the untouched pixels from the input
so they stay bit-exact (the VAE round trip alone would drift).
"""

from __future__ import annotations

import time
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter
from torch import Tensor

from zimage_mcp.engine.errors import InvalidArgument
from zimage_mcp.engine.pipelines.arguments import (
    SIZE_MAX,
    SIZE_MIN,
    SIZE_MULTIPLE,
    check_args,
    check_size,
    check_strength,
    expand_seeds,
)
from zimage_mcp.engine.pipelines.sampler import get_sigmas, img2img_start
from zimage_mcp.engine.pipelines.text_to_image import (
    GenerationOutput,
    Guidance,
    StepCallback,
    StopCheck,
    ZImagePipeline,
)
from zimage_mcp.engine.vae.model import image_to_tensor, normalize_latents, sample_latents

FitMode = Literal["resize", "crop"]


def fit_size(w: int, h: int) -> tuple[int, int]:
    """The valid size closest to (w, h) with the same aspect: sides multiples of 16 within 256..2048."""
    scale = min(1.0, SIZE_MAX / max(w, h))
    scale = max(scale, SIZE_MIN / min(w, h))

    def snap(v: float) -> int:
        return int(min(SIZE_MAX, max(SIZE_MIN, round(v / SIZE_MULTIPLE) * SIZE_MULTIPLE)))

    return snap(w * scale), snap(h * scale)


def fit_image(
    image: Image.Image, width: int | None = None, height: int | None = None, mode: FitMode = "resize"
) -> tuple[Image.Image, str | None]:
    """Bring an input to a valid size. Returns the image and a note saying what was done (None if nothing).

    ``resize`` (default) scales to the nearest valid size keeping the aspect ratio (Lanczos);
    ``crop`` scales to cover the target and center-crops. Grayscale and RGBA inputs are converted to RGB
    (alpha is dropped: composite it yourself if it matters).
    """
    if image.mode != "RGB":
        image = image.convert("RGB")
    w, h = image.size
    if width and height:
        check_size(width, height)
    tw, th = (width, height) if width and height else fit_size(w, h)
    if (tw, th) == (w, h):
        return image, None
    fitted = _refit(image, tw, th, mode, Image.LANCZOS)
    if mode == "crop":
        return fitted, f"input {w}x{h} scaled and center-cropped to {tw}x{th}"
    return fitted, f"input {w}x{h} resized to {tw}x{th}"


def _refit(image: Image.Image, tw: int, th: int, mode: FitMode, resample: int) -> Image.Image:
    """Scale (``resize``) or scale-to-cover and center-crop (``crop``) to exactly ``tw`` x ``th``."""
    if image.size == (tw, th):
        return image
    if mode == "crop":
        w, h = image.size
        s = max(tw / w, th / h)
        rw, rh = max(tw, round(w * s)), max(th, round(h * s))
        image = image.resize((rw, rh), resample)
        left, top = (rw - tw) // 2, (rh - th) // 2
        return image.crop((left, top, left + tw, top + th))
    return image.resize((tw, th), resample)


def fit_mask(
    mask: Image.Image, image_size: tuple[int, int], fitted_size: tuple[int, int], mode: FitMode
) -> Image.Image:
    """The mask through the same resize/crop as its image; it must be exactly the input image's size
    (callers resize masks themselves and own any tolerance)."""
    if mask.size != image_size:
        raise InvalidArgument(
            "mask",
            f"must be exactly the image's size {image_size[0]}x{image_size[1]}, got {mask.size[0]}x{mask.size[1]}",
        )
    return _refit(mask.convert("L"), *fitted_size, mode, Image.NEAREST)


def prepare_mask(mask: Image.Image, grow: int = 0, blur: float = 0.0) -> Tensor:
    """Mask (white = repaint) -> (1, 1, H, W) fp32 in [0, 1]: binarized at 0.5, optionally grown and feathered."""
    m = mask.convert("L").point(lambda v: 255 if v >= 128 else 0)
    if grow > 0:
        m = m.filter(ImageFilter.MaxFilter(2 * grow + 1))
    if blur > 0:
        m = m.filter(ImageFilter.GaussianBlur(blur))
    return torch.from_numpy(np.asarray(m, dtype=np.float32) / 255.0)[None, None]


class _Encoded:
    """Per-image generators, the clean image latent and the noise, drawn in the reference order."""

    def __init__(self, pipe: ZImagePipeline, image: Image.Image, seeds: list[int]) -> None:
        x = image_to_tensor(image).to(pipe.device, pipe.vae_dtype)
        mean, logvar = pipe.vae.encode(x)  # (1, 16, H/8, W/8) each
        latents, noises = [], []
        for s in seeds:
            gen = torch.Generator("cpu").manual_seed(s)
            z = sample_latents(mean.float(), logvar.float(), gen)  # draw 1: the posterior sample
            latents.append(normalize_latents(z, pipe.vae.cfg))
            noises.append(torch.randn(z.shape, generator=gen, dtype=torch.float32))  # draw 2: the noise
        self.image = torch.cat(latents).float().to(pipe.device)
        self.noise = torch.cat(noises).to(pipe.device)

    def noised(self, sigma: float) -> Tensor:
        return sigma * self.noise + (1.0 - sigma) * self.image


@torch.inference_mode()
def img2img(
    pipe: ZImagePipeline,
    image: Image.Image,
    prompt: str,
    strength: float = 0.6,
    negative_prompt: str = "",
    steps: int = 8,
    guidance: float = 0.0,
    seed: int | None = None,
    count: int = 1,
    cfg_truncation: float = 1.0,
    cfg_normalization: float = 0.0,
    shift: float | None = None,
    width: int | None = None,
    height: int | None = None,
    fit: FitMode = "resize",
    on_step: StepCallback | None = None,
    should_stop: StopCheck | None = None,
) -> GenerationOutput:
    """Re-draw ``image`` guided by ``prompt``; strength 1.0 starts from pure noise."""
    image, note = fit_image(image, width, height, fit)
    check_args(prompt, image.width, image.height, steps, count, seed)
    check_strength(strength, steps)
    seeds, t0 = expand_seeds(seed, count), time.perf_counter()
    enc = _Encoded(pipe, image, seeds)
    sigmas = get_sigmas(steps, pipe.shift if shift is None else shift)[img2img_start(steps, strength) :]
    out = pipe.sample(
        enc.noised(sigmas[0]),
        sigmas,
        seeds,
        prompt,
        negative_prompt,
        Guidance(guidance, cfg_truncation, cfg_normalization),
        on_step,
        should_stop,
        t0,
    )
    if note:
        out.notes.append(note)
    return out


@torch.inference_mode()
def inpaint(
    pipe: ZImagePipeline,
    image: Image.Image,
    mask: Image.Image,
    prompt: str,
    strength: float = 1.0,
    negative_prompt: str = "",
    steps: int = 8,
    guidance: float = 0.0,
    seed: int | None = None,
    count: int = 1,
    cfg_truncation: float = 1.0,
    cfg_normalization: float = 0.0,
    shift: float | None = None,
    width: int | None = None,
    height: int | None = None,
    fit: FitMode = "resize",
    mask_grow: int = 0,
    mask_blur: float = 0.0,
    paste_back: bool = True,
    on_step: StepCallback | None = None,
    should_stop: StopCheck | None = None,
) -> GenerationOutput:
    """Repaint the white area of ``mask`` (exactly ``image``'s size); the rest is kept (bit-exact with
    ``paste_back``)."""
    original = image.convert("RGB")
    image, note = fit_image(original, width, height, fit)
    check_args(prompt, image.width, image.height, steps, count, seed)
    check_strength(strength, steps)
    pixel_mask = prepare_mask(fit_mask(mask, original.size, image.size, fit), mask_grow, mask_blur)
    seeds, t0 = expand_seeds(seed, count), time.perf_counter()
    enc = _Encoded(pipe, image, seeds)
    latent_hw = enc.image.shape[-2:]
    m = F.interpolate(pixel_mask, size=tuple(latent_hw), mode="nearest").to(pipe.device)  # (1, 1, h, w)
    sigmas = get_sigmas(steps, pipe.shift if shift is None else shift)[img2img_start(steps, strength) :]
    n = len(sigmas) - 1

    def blend(i: int, x: Tensor) -> Tensor:
        keep = enc.image if i == n - 1 else enc.noised(sigmas[i + 1])
        return (1 - m) * keep + m * x

    out = pipe.sample(
        enc.noised(sigmas[0]),
        sigmas,
        seeds,
        prompt,
        negative_prompt,
        Guidance(guidance, cfg_truncation, cfg_normalization),
        on_step,
        should_stop,
        t0,
        after_step=blend,
    )
    if paste_back:  # composited on the host, so this waits for the pixels
        out.images, out.pending = paste_unmasked(image, out.wait().images, pixel_mask), None
    if note:
        out.notes.append(note)
    return out


def paste_unmasked(source: Image.Image, generated: list[Image.Image], pixel_mask: Tensor) -> list[Image.Image]:
    """Composite: generated where the mask is 1, the source pixels where it is 0 (soft in between)."""
    src = np.asarray(source, dtype=np.float32)
    m = pixel_mask[0, 0].numpy()[..., None]  # (H, W, 1)
    out = []
    for g in generated:
        mixed = src * (1 - m) + np.asarray(g, dtype=np.float32) * m
        out.append(Image.fromarray(np.where(m == 0, src, mixed).round().astype(np.uint8)))
    return out


__all__ = ["fit_image", "fit_mask", "fit_size", "img2img", "inpaint", "paste_unmasked", "prepare_mask"]
