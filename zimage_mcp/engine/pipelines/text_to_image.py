"""Text-to-image: encode prompts -> seeded noise -> denoise -> decode -> PIL images.

The pipeline owns no scheduler state: the schedule is a list of floats from ``sampler.get_sigmas``
and the loop is ``denoise``. img2img and inpainting reuse the same loop (see ``img2img.py``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
import PIL.Image
import torch
from PIL.Image import Image
from torch import Tensor

from zimage_mcp.engine.dit.transformer import Conditioning, ZImageTransformer
from zimage_mcp.engine.errors import GenerationCancelled
from zimage_mcp.engine.pipelines.arguments import check_args, expand_seeds
from zimage_mcp.engine.pipelines.host_copy import PendingPixels
from zimage_mcp.engine.pipelines.phase_clock import PhaseClock
from zimage_mcp.engine.pipelines.sampler import cfg_combine, euler_step, get_sigmas, guidance_at, model_time, noise_like
from zimage_mcp.engine.pipelines.step_cache import FirstBlockCache
from zimage_mcp.engine.vae.model import AutoencoderKL, denormalize_latents, tensor_to_images

StepCallback = Callable[[int, int], None]
Cond = TypeVar("Cond")  # the model's per-generation conditioning (text-to-image or Omni)
StopCheck = Callable[[], bool]


@dataclass
class GenerationOutput:
    """What a generation made. With ``ZImagePipeline.defer_host_copy`` the pixels may still be on their way to
    the host (``pending``): ``images`` stays empty and ``timings`` lacks the phases until ``wait()`` or
    ``arrays()``, which any thread may call."""

    images: list[Image]
    seeds: list[int]
    timings: dict[str, float] = field(default_factory=dict)
    latents: Tensor | None = None  # final fp32 latents (B, 16, H/8, W/8), for tests and quality gates
    notes: list[str] = field(default_factory=list)  # e.g. how an input image was resized
    pending: PendingPixels | None = None

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of every image, known without waiting."""
        if self.pending is not None:
            return self.pending.width, self.pending.height
        return self.images[0].size

    def arrays(self) -> list[np.ndarray]:
        """One (H, W, 3) uint8 array per image: the host copy's own (no PIL round trip) once it is done."""
        if self.pending is None:
            return [np.asarray(im.convert("RGB")) for im in self.images]
        arrays = self.pending.arrays()
        self.timings.update(self.pending.timings())
        return arrays

    def wait(self) -> GenerationOutput:
        """The output with its pixels on the host as ``images`` and its phase timings filled in."""
        if self.pending is not None and not self.images:
            self.images = [PIL.Image.fromarray(a) for a in self.arrays()]
        return self


@dataclass
class Guidance:
    """Classifier-free guidance settings for one generation."""

    scale: float = 0.0
    truncation: float = 1.0
    normalization: float = 0.0


class ZImagePipeline:
    def __init__(
        self,
        transformer: ZImageTransformer,
        vae: AutoencoderKL,
        text_encoder,
        shift: float,
        offload_text_encoder: bool = False,
    ) -> None:
        self.transformer = transformer
        self.vae = vae
        self.text_encoder = text_encoder  # engine.text_encoder.TextEncoder
        self.shift = shift
        # Low-VRAM mode for 16 GB cards: Qwen3-4B (8 GB) lives and runs in host memory; only its
        # features (a few hundred KB) cross to the GPU. The embedding cache makes repeated prompts free.
        self.offload_text_encoder = offload_text_encoder
        self.cfg_mode = "auto"  # "batched" | "sequential" | "auto"
        self.vae_tiling = offload_text_encoder  # low-VRAM mode also bounds the decoder's transient
        self.step_cache = 0.0  # > 0: first-block cache threshold (opt-in, lossy; engine/step_cache.py)
        self.last_step_cache: FirstBlockCache | None = None  # the last generation's cache (steps skipped)
        self.folder_shift: float | None = None  # the model folder's scheduler shift, if it has one
        self.shared_keys: tuple[tuple, ...] = ()  # components held in a build.SharedComponents
        self.load_timings: dict[str, float] = {}  # seconds: "read" (weights to the device), "optimize"
        # Return before the pixels reach the host (GenerationOutput.pending): a server releases the GPU to the
        # next request while this one's decode runs, and waits for the pixels on another thread.
        self.defer_host_copy = False
        if offload_text_encoder:
            self.text_encoder.model.to("cpu")

    @property
    def device(self) -> torch.device:
        return self.transformer.x_pad_token.device

    @property
    def dtype(self) -> torch.dtype:
        return self.transformer.x_pad_token.dtype

    # -- stages -----------------------------------------------------------------------------------
    def encode_prompts(self, prompts: list[str]) -> list[Tensor]:
        return [f.to(self.device) for f in self.text_encoder.encode(prompts)]

    def initial_noise(self, seeds: list[int], height: int, width: int) -> Tensor:
        """(B, 16, H/8, W/8) fp32 noise, one CPU generator per image, moved to the device."""
        shape = (1, self.transformer.cfg.in_channels, 2 * (height // 16), 2 * (width // 16))
        return torch.cat([noise_like(shape, s) for s in seeds]).to(self.device)

    def decode_raw(self, latents: Tensor) -> Tensor:
        """DiT latents (B, 16, h, w) -> decoder output (B, 3, 8h, 8w) in about [-1, 1], on the device."""
        z = denormalize_latents(latents.to(self.vae_dtype), self.vae.cfg)
        if self.vae_tiling:
            from zimage_mcp.engine.vae.tiling import decode_tiled

            return torch.cat([decode_tiled(self.vae, zi[None]) for zi in z])  # one image at a time
        return self.vae.decode(z)

    def decode_pixels(self, latents: Tensor) -> Tensor:
        """DiT latents (B, 16, h, w) -> images (B, 3, 8h, 8w) in [0, 1], fp32 on the CPU."""
        return (self.decode_raw(latents).float() / 2 + 0.5).clamp(0, 1).cpu()

    def decode(self, latents: Tensor) -> list[Image]:
        return tensor_to_images(self.decode_raw(latents))

    @property
    def vae_dtype(self) -> torch.dtype:
        return next(self.vae.parameters()).dtype

    def euler_loop(
        self,
        latents: Tensor,
        sigmas: list[float],
        cond_pos: Cond,
        make_cond_both: Callable[[], Cond | tuple[Cond, Cond]] | None,
        guidance: Guidance,
        forward: Callable[[Tensor, Tensor, Cond], Tensor],
        on_step: StepCallback | None = None,
        should_stop: StopCheck | None = None,
        after_step: Callable[[int, Tensor], Tensor] | None = None,
    ) -> Tensor:
        """The Euler loop over ``sigmas`` (len N+1) with CFG, truncation, cancellation and callbacks.

        ``make_cond_both()`` builds the CFG conditioning on first use (None: no CFG): one batched
        [positive, negative] conditioning, or a (positive, negative) pair run as two passes.
        ``forward(x, t, cond)`` is the model call; x holds B samples or the CFG batch (2B).
        ``after_step(i, x)`` lets inpainting blend.
        """
        b = latents.shape[0]
        cond_both: Cond | tuple[Cond, Cond] | None = None
        n = len(sigmas) - 1
        for i in range(n):
            if should_stop is not None and should_stop():
                raise GenerationCancelled(f"cancelled before step {i + 1} of {n}")
            t = model_time(sigmas[i])
            g = guidance_at(guidance.scale, t, guidance.truncation) if make_cond_both is not None else 0.0
            x_in = latents.to(self.dtype)
            t_b = torch.full((b,), t, device=self.device)
            if g > 0:
                cond_both = cond_both or make_cond_both()
                if isinstance(cond_both, tuple):  # two unmasked passes: the fast attention kernels take no mask
                    pos_out, neg_out = forward(x_in, t_b, cond_both[0]), forward(x_in, t_b, cond_both[1])
                else:
                    out = forward(torch.cat([x_in, x_in]), torch.cat([t_b, t_b]), cond_both)
                    pos_out, neg_out = out[:b], out[b:]
                pred = cfg_combine(pos_out, neg_out, g, guidance.normalization)
            else:
                pred = forward(x_in, t_b, cond_pos)
            latents = euler_step(latents, pred, sigmas[i], sigmas[i + 1])
            if after_step is not None:
                latents = after_step(i, latents)
            if on_step is not None:
                on_step(i + 1, n)
        return latents

    def denoise(
        self,
        latents: Tensor,
        sigmas: list[float],
        pos: list[Tensor],
        neg: list[Tensor] | None,
        guidance: Guidance,
        on_step: StepCallback | None = None,
        should_stop: StopCheck | None = None,
        after_step: Callable[[int, Tensor], Tensor] | None = None,
        forward: Callable[[Tensor, Tensor, Conditioning], Tensor] | None = None,
    ) -> Tensor:
        """``euler_loop`` with text-to-image conditioning from caption features ``pos`` / ``neg``.

        ``forward(x, t, cond)`` replaces the DiT call (the ControlNet adds its hints there).
        """
        model = self.transformer
        hw = (latents.shape[-2], latents.shape[-1])
        cond_pos = model.prepare(pos, hw)

        def cond_both() -> Conditioning | tuple[Conditioning, Conditioning]:
            assert neg is not None
            # positive and negative in one batch; captions differ in length -> key-padding mask
            both = model.prepare(pos + neg, hw)
            if both.key_mask is not None and not self._batch_masked_cfg():
                return cond_pos, model.prepare(neg, hw)
            return both

        if forward is None and self.step_cache > 0:
            forward = self.last_step_cache = FirstBlockCache(model, self.step_cache)
        return self.euler_loop(
            latents,
            sigmas,
            cond_pos,
            cond_both if neg is not None else None,
            guidance,
            forward or model.forward_prepared,
            on_step,
            should_stop,
            after_step,
        )

    def sample(
        self,
        latents: Tensor,
        sigmas: list[float],
        seeds: list[int],
        prompt: str,
        negative_prompt: str,
        guidance: Guidance,
        on_step: StepCallback | None,
        should_stop: StopCheck | None,
        t0: float,
        timings: dict[str, float] | None = None,
        after_step: Callable[[int, Tensor], Tensor] | None = None,
        forward: Callable[[Tensor, Tensor, Conditioning], Tensor] | None = None,
    ) -> GenerationOutput:
        """Encode the prompts, denoise ``latents`` over ``sigmas``, decode; timings counted from ``t0``."""
        clock = PhaseClock(self.device, t0)
        count = latents.shape[0]
        use_cfg = guidance.scale > 0
        feats = self.encode_prompts([prompt] + ([negative_prompt] if use_cfg else []))
        pos, neg = [feats[0]] * count, ([feats[1]] * count if use_cfg else None)
        clock.mark("encode")
        latents = self.denoise(latents, sigmas, pos, neg, guidance, on_step, should_stop, after_step, forward)
        clock.mark("denoise")
        return self.finish(latents, clock, seeds, dict(timings or {}))

    def finish(
        self, latents: Tensor, clock: PhaseClock, seeds: list[int], timings: dict[str, float]
    ) -> GenerationOutput:
        """Queue the decode and the pixels' copy to the host (the one synchronisation a generation needs), then
        wait for them unless ``defer_host_copy`` leaves that to whoever reads the output."""
        pending = PendingPixels(self.decode_raw(latents), clock)
        out = GenerationOutput(images=[], seeds=seeds, timings=timings, latents=latents, pending=pending)
        return out if self.defer_host_copy else out.wait()

    def _batch_masked_cfg(self) -> bool:
        """Batch CFG with a key-padding mask, or run two unmasked passes (``cfg_mode``)."""
        if self.cfg_mode != "auto":
            return self.cfg_mode == "batched"
        # On CUDA the mask rules out cuDNN/flash attention, which costs more than the batching saves.
        return self.device.type != "cuda"

    # -- text to image ----------------------------------------------------------------------------
    @torch.inference_mode()
    def generate(
        self,
        prompt: str,
        negative_prompt: str = "",
        width: int = 1024,
        height: int = 1024,
        steps: int = 8,
        guidance: float = 0.0,
        seed: int | None = None,
        cfg_truncation: float = 1.0,
        cfg_normalization: float = 0.0,
        count: int = 1,
        shift: float | None = None,
        on_step: StepCallback | None = None,
        should_stop: StopCheck | None = None,
    ) -> GenerationOutput:
        check_args(prompt, width, height, steps, count, seed)
        seeds, t0 = expand_seeds(seed, count), time.perf_counter()
        latents = self.initial_noise(seeds, height, width)
        sigmas = get_sigmas(steps, self.shift if shift is None else shift)
        return self.sample(
            latents,
            sigmas,
            seeds,
            prompt,
            negative_prompt,
            Guidance(guidance, cfg_truncation, cfg_normalization),
            on_step,
            should_stop,
            t0,
        )
