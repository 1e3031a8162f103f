"""Instruction editing with reference images (Z-Image Omni / Edit): ``OmniPipeline.edit``.

Per generation: prompt segments -> Qwen3 features; each reference -> VAE-mode latent and SigLIP2
features; ``prepare_omni`` builds everything step-independent once. Per step one omni forward (two
samples, positive and negative, while CFG is on), then the same Euler step as text-to-image.
Defaults are those of diffusers' ``ZImageOmniPipeline``: 50 steps, guidance 5.0, no CFG truncation or
normalization; the target size defaults to the (cropped) size of the last reference image.
"""

from __future__ import annotations

import time

import torch
from PIL.Image import Image
from torch import Tensor

from zimage_mcp.engine.dit.omni_transformer import ZImageOmniTransformer
from zimage_mcp.engine.errors import InvalidArgument
from zimage_mcp.engine.pipelines.arguments import SIZE_MAX, SIZE_MIN, check_args, expand_seeds
from zimage_mcp.engine.pipelines.phase_clock import PhaseClock
from zimage_mcp.engine.pipelines.sampler import get_sigmas
from zimage_mcp.engine.pipelines.text_to_image import (
    GenerationOutput,
    Guidance,
    StepCallback,
    StopCheck,
    ZImagePipeline,
)
from zimage_mcp.engine.text.omni_prompt import encode_segments, omni_segments
from zimage_mcp.engine.text.siglip import SiglipEncoder, check_reference, encode_reference, fit_reference
from zimage_mcp.engine.vae.model import AutoencoderKL

OMNI_STEPS, OMNI_GUIDANCE = 50, 5.0
MAX_IMAGES = 4


class OmniPipeline(ZImagePipeline):
    """Text-to-image (inherited ``generate``) plus ``edit`` with 1..max_images reference images."""

    transformer: ZImageOmniTransformer

    def __init__(
        self, transformer: ZImageOmniTransformer, vae: AutoencoderKL, text_encoder, siglip: SiglipEncoder, shift: float
    ) -> None:
        super().__init__(transformer, vae, text_encoder, shift)
        self.siglip = siglip

    # -- stages -----------------------------------------------------------------------------------
    def references(
        self, images: list[Image], width: int | None, height: int | None, max_images: int
    ) -> tuple[list[Tensor], list[Tensor], tuple[int, int]]:
        """Check and encode the references -> (latents (16, h, w), SigLIP features (h', w', S), last crop (W, H))."""
        _check_count(images, max_images)
        fitted = [fit_reference(check_reference(img, i), width, height) for i, img in enumerate(images)]
        latents = [encode_reference(self.vae, crop).to(self.device) for _, crop in fitted]
        feats = [self.siglip.features(resized).to(self.device) for resized, _ in fitted]
        return latents, feats, fitted[-1][1].size

    # -- editing ----------------------------------------------------------------------------------
    @torch.inference_mode()
    def edit(
        self,
        prompt: str,
        images: list[Image],
        negative_prompt: str = "",
        width: int | None = None,
        height: int | None = None,
        steps: int = OMNI_STEPS,
        guidance: float = OMNI_GUIDANCE,
        seed: int | None = None,
        cfg_truncation: float = 1.0,
        cfg_normalization: float = 0.0,
        shift: float | None = None,
        max_images: int = MAX_IMAGES,
        on_step: StepCallback | None = None,
        should_stop: StopCheck | None = None,
    ) -> GenerationOutput:
        """Edit/compose from ``images`` (PIL, 1..max_images) following ``prompt``; one output image.

        InvalidArgument names the argument: prompt/negative_prompt (marker count), images, width, height, steps, seed.
        """
        check_args(prompt, width or 1024, height or 1024, steps, 1, seed)
        _check_count(images, max_images)
        pos_segs = omni_segments(prompt, len(images), "prompt")
        use_cfg = guidance > 0
        neg_segs = omni_segments(negative_prompt, len(images), "negative_prompt") if use_cfg else []
        seed = expand_seeds(seed, 1)[0]
        clock = PhaseClock(self.device, time.perf_counter())
        latents_ref, feats, (w_ref, h_ref) = self.references(images, width, height, max_images)
        width, height = width or w_ref, height or h_ref
        for name, v in (("width", width), ("height", height)):
            if v > SIZE_MAX:
                raise InvalidArgument(
                    name, f"the last reference image gives {v}; pass {name} in {SIZE_MIN}..{SIZE_MAX}"
                )
        caps = encode_segments(self.text_encoder, pos_segs + neg_segs)
        pos, neg = caps[: len(pos_segs)], caps[len(pos_segs) :]
        clock.mark("encode")

        latents = self.initial_noise([seed], height, width)
        hw = (latents.shape[-2], latents.shape[-1])
        model = self.transformer
        cond_pos = model.prepare_omni([pos], latents_ref, feats, hw)
        latents = self.euler_loop(
            latents,
            get_sigmas(steps, self.shift if shift is None else shift),
            cond_pos,
            lambda: model.prepare_omni([pos, neg], latents_ref, feats, hw),
            Guidance(guidance, cfg_truncation, cfg_normalization),
            model.forward_omni,
            on_step,
            should_stop,
        )
        clock.mark("denoise")
        return self.finish(latents, clock, [seed], {})


def _check_count(images: object, max_images: int) -> None:
    if not isinstance(images, (list, tuple)) or not images:
        raise InvalidArgument("images", "give at least one reference image (a list of PIL images)")
    if len(images) > max_images:
        raise InvalidArgument("images", f"at most {max_images} reference images are allowed, got {len(images)}")
