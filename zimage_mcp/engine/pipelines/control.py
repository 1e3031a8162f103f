"""ControlNet text-to-image and ControlNet inpainting on top of a loaded ``ZImagePipeline``.

Same seeding, schedule, CFG and callbacks as ``ZImagePipeline.generate``; the model call is
``controlnet.controlled_forward``. The control input has ``control_in_dim`` channels:
[control latent 16 | mask 1 (1 = keep) | masked-image latent 16] for 2.x, where plain control fills
the last 17 with zeros. Latents come from the VAE *mode* (mean), normalized, as diffusers does.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL.Image import Image
from torch import Tensor

from zimage_mcp.engine.dit.controlnet import ZImageControlNet, controlled_forward
from zimage_mcp.engine.dit.transformer import Conditioning
from zimage_mcp.engine.errors import InvalidArgument
from zimage_mcp.engine.pipelines.arguments import SIZE_MULTIPLE, check_args, expand_seeds
from zimage_mcp.engine.pipelines.control_hints import RESAMPLE, prepare_hint, resize_hint
from zimage_mcp.engine.pipelines.sampler import get_sigmas
from zimage_mcp.engine.pipelines.text_to_image import (
    GenerationOutput,
    Guidance,
    StepCallback,
    StopCheck,
    ZImagePipeline,
)
from zimage_mcp.engine.vae.model import image_to_tensor, normalize_latents

DEFAULT_CONTROL_SCALE = 0.75


def encode_image(pipe: ZImagePipeline, pixels: Tensor) -> Tensor:
    """(B, 3, H, W) in [-1, 1] -> normalized VAE-mode latents (B, 16, H/8, W/8) on the pipeline's device."""
    mean, _ = pipe.vae.encode(pixels.to(pipe.device, pipe.vae_dtype))
    return normalize_latents(mean, pipe.vae.cfg)


def control_input(latent: Tensor, in_dim: int, mask: Tensor | None = None, masked: Tensor | None = None) -> Tensor:
    """(B, 16, h, w) control latent [+ mask (B, 1, h, w), masked-image latent (B, 16, h, w)] -> (B, in_dim, h, w)."""
    if (mask is None) != (masked is None):
        raise ValueError("control_input: give both mask and masked (the masked-image latent), or neither")
    parts = [latent] if mask is None or masked is None else [latent, mask.to(latent), masked.to(latent)]
    x = torch.cat(parts, dim=1)
    if x.shape[1] > in_dim:
        raise ValueError(f"control input has {x.shape[1]} channels but the ControlNet takes {in_dim}")
    if x.shape[1] < in_dim:
        x = torch.cat([x, x.new_zeros(x.shape[0], in_dim - x.shape[1], *x.shape[2:])], dim=1)
    return x


def inpaint_mask(mask: Image, width: int, height: int) -> Tensor:
    """White = repaint. -> binary (1, 1, H, W) float, resized then binarized like diffusers' mask processor."""
    arr = np.asarray(mask.resize((width, height), resample=RESAMPLE).convert("L"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr >= 0.5).float()[None, None]


def controlled_call(
    pipe: ZImagePipeline, controlnet: ZImageControlNet, control: Tensor, scale: float
) -> Callable[[Tensor, Tensor, Conditioning], Tensor]:
    """The model call ``ZImagePipeline.denoise`` takes: the DiT with hints; control (B, in_dim, h, w)."""
    control = control.to(pipe.device, pipe.dtype)

    def forward(x: Tensor, t: Tensor, cond: Conditioning) -> Tensor:
        # the CFG batch (2B) sees the same control for its negative half
        c = control if x.shape[0] == control.shape[0] else control.repeat(x.shape[0] // control.shape[0], 1, 1, 1)
        return controlled_forward(pipe.transformer, controlnet, x, t, cond, c, scale)

    return forward


def _default_size(image: Image, width: int | None, height: int | None) -> tuple[int, int]:
    w, h = image.size
    return (width or w - w % SIZE_MULTIPLE), (height or h - h % SIZE_MULTIPLE)


def _run(
    pipe: ZImagePipeline,
    controlnet: ZImageControlNet,
    control: Tensor,
    prompt: str,
    negative_prompt: str,
    width: int,
    height: int,
    steps: int,
    guidance: Guidance,
    seed: int | None,
    count: int,
    shift: float | None,
    scale: float,
    on_step: StepCallback | None,
    should_stop: StopCheck | None,
    t0: float,
) -> GenerationOutput:
    """Shared tail: seeds, noise, sigmas, then ``pipe.sample`` with the ControlNet in the model call."""
    seeds = expand_seeds(seed, count)
    timings = {"control": time.perf_counter() - t0}
    latents = pipe.initial_noise(seeds, height, width)
    sigmas = get_sigmas(steps, pipe.shift if shift is None else shift)
    forward = controlled_call(pipe, controlnet, control.repeat(count, 1, 1, 1), scale)
    return pipe.sample(
        latents,
        sigmas,
        seeds,
        prompt,
        negative_prompt,
        guidance,
        on_step,
        should_stop,
        t0,
        timings=timings,
        forward=forward,
    )


@torch.inference_mode()
def control_generate(
    pipe: ZImagePipeline,
    controlnet: ZImageControlNet,
    control_image: Image,
    prompt: str,
    negative_prompt: str = "",
    width: int | None = None,
    height: int | None = None,
    steps: int = 8,
    guidance: float = 0.0,
    seed: int | None = None,
    cfg_truncation: float = 1.0,
    cfg_normalization: float = 0.0,
    count: int = 1,
    shift: float | None = None,
    controlnet_conditioning_scale: float = DEFAULT_CONTROL_SCALE,
    hint: str | None = None,
    detect: bool = False,
    on_step: StepCallback | None = None,
    should_stop: StopCheck | None = None,
) -> GenerationOutput:
    """Text-to-image guided by ``control_image`` (a ready-made hint map, or a photo with ``detect`` for canny).

    Size defaults to the control image's, rounded down to a multiple of 16; the hint is resized to it.
    ``hint`` (e.g. "canny", "depth") is checked against the loaded release when given.
    """
    width, height = _default_size(control_image, width, height)
    check_args(prompt, width, height, steps, count, seed)
    controlnet.check_base(pipe.transformer)
    t0 = time.perf_counter()
    image = (
        prepare_hint(control_image, hint, controlnet.cfg.release, width, height, detect)
        if hint is not None
        else resize_hint(control_image, width, height)
    )
    latent = encode_image(pipe, image_to_tensor(image))  # (1, 16, h, w)
    control = control_input(latent, controlnet.cfg.control_in_dim)
    return _run(
        pipe,
        controlnet,
        control,
        prompt,
        negative_prompt,
        width,
        height,
        steps,
        Guidance(guidance, cfg_truncation, cfg_normalization),
        seed,
        count,
        shift,
        controlnet_conditioning_scale,
        on_step,
        should_stop,
        t0,
    )


@torch.inference_mode()
def control_inpaint(
    pipe: ZImagePipeline,
    controlnet: ZImageControlNet,
    image: Image,
    mask: Image,
    control_image: Image,
    prompt: str,
    negative_prompt: str = "",
    width: int | None = None,
    height: int | None = None,
    steps: int = 8,
    guidance: float = 0.0,
    seed: int | None = None,
    cfg_truncation: float = 1.0,
    cfg_normalization: float = 0.0,
    count: int = 1,
    shift: float | None = None,
    controlnet_conditioning_scale: float = DEFAULT_CONTROL_SCALE,
    hint: str | None = None,
    detect: bool = False,
    on_step: StepCallback | None = None,
    should_stop: StopCheck | None = None,
) -> GenerationOutput:
    """Repaint the white part of ``mask`` in ``image``, guided by ``control_image`` (2.x ControlNets only).

    As diffusers' ``ZImageControlNetInpaintPipeline``: the mask and masked image only condition the
    ControlNet; latents are not blended with the original between steps.
    """
    width, height = _default_size(image, width, height)
    check_args(prompt, width, height, steps, count, seed)
    controlnet.check_base(pipe.transformer)
    in_dim, latent_ch = controlnet.cfg.control_in_dim, pipe.transformer.cfg.in_channels
    if in_dim != 2 * latent_ch + 1:
        raise InvalidArgument(
            "mask",
            f"inpainting needs a 2.x ControlNet (control_in_dim {2 * latent_ch + 1}); "
            f"the loaded one ({controlnet.cfg.release}) takes {in_dim} channels",
        )
    t0 = time.perf_counter()
    hint_image = (
        prepare_hint(control_image, hint, controlnet.cfg.release, width, height, detect)
        if hint is not None
        else resize_hint(control_image, width, height)
    )
    latent = encode_image(pipe, image_to_tensor(hint_image))  # (1, 16, h, w)
    repaint = inpaint_mask(mask, width, height)  # (1, 1, H, W), 1 = repaint
    masked = encode_image(pipe, image_to_tensor(resize_hint(image, width, height)) * (repaint < 0.5))
    keep = F.interpolate(1 - repaint, size=masked.shape[-2:], mode="nearest")  # (1, 1, h, w), 1 = keep
    control = control_input(latent, in_dim, keep, masked)
    return _run(
        pipe,
        controlnet,
        control,
        prompt,
        negative_prompt,
        width,
        height,
        steps,
        Guidance(guidance, cfg_truncation, cfg_normalization),
        seed,
        count,
        shift,
        controlnet_conditioning_scale,
        on_step,
        should_stop,
        t0,
    )
