"""The bridge from the registry's torch-free world to the engine: one ``Backend`` per loaded variant.

Only plugins import this module, and only inside their factories, so the registry and the server
never import torch. Variants that read the same text encoder and VAE files share one loaded copy
(reference counted). LoRAs are merged in place per request and removed bit-exactly.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from functools import cache, partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zimage_builtins.compile_queue import CompileQueue
from zimage_builtins.engine_loading import SHARED, load, module_bytes
from zimage_mcp.contract import (
    BackendContext,
    BackendLoadError,
    GenerationCancelled,
    GenerationRequest,
    GenerationResult,
    InvalidRequestError,
    OutOfMemoryError,
    Pixels,
    ProgressCallback,
    StopCheck,
    UnsupportedEditError,
    VariantSpec,
)
from zimage_mcp.engine.device import release_cached_memory
from zimage_mcp.engine.errors import GenerationCancelled as EngineCancelled
from zimage_mcp.engine.errors import InvalidArgument
from zimage_mcp.engine.errors import WeightsError as EngineWeightsError
from zimage_mcp.engine.pipelines.img2img import img2img, inpaint
from zimage_mcp.engine.pipelines.text_to_image import GenerationOutput, StepCallback
from zimage_mcp.engine.speed.warm_up import warm_up
from zimage_mcp.engine.weights.lora_apply import LoraManager

log = logging.getLogger(__name__)


def _pixels(arrays: Callable[[], list[np.ndarray]], index: int) -> Pixels:
    """Image ``index`` of an engine output (``arrays``: its ``GenerationOutput.arrays``, cached, so a count > 1
    output converts or waits once, not once per image) as the contract's pixels."""
    return rgb_pixels(arrays()[index])


def rgb_pixels(rgb: np.ndarray) -> Pixels:
    """(H, W, 3) uint8 as the contract's RGB8 pixels (no encoding here), with its PNG scanlines Sub-filtered
    by numpy, whose loops release the GIL: filtered by the store's Pillow calls, which hold it, the filtering
    of 16 strips ran one after another, and a 16-core host encoded a 1024^2 image no faster with 16 workers
    than with 4."""
    height, width = rgb.shape[0], rgb.shape[1]
    data = rgb.tobytes()  # the one copy out of the engine's buffer; the filter below reads it in place
    a = np.frombuffer(data, np.uint8).reshape(height, width * 3)  # (H, 3W) bytes
    scanlines = bytearray(height * (1 + width * 3))  # filled in place below: no second copy into bytes
    rows = np.frombuffer(scanlines, np.uint8).reshape(height, 1 + width * 3)  # (H, 1 + 3W): filter byte, row
    rows[:, 0] = 1  # Sub
    rows[:, 1:4] = a[:, :3]  # the first pixel has no left neighbour
    np.subtract(a[:, 3:], a[:, :-3], out=rows[:, 4:])  # uint8 wraps: mod 256
    return Pixels(width, height, data, scanlines)


class MemoryHighWater:
    """Logs the CUDA allocator's peaks each time they rise, naming what raised them: the one place a user
    with a small card (or a benchmark) can see whether loading, an eager request or a compilation set the peak."""

    def __init__(self) -> None:
        self.reserved = 0

    def note(self, after: str) -> None:
        if not torch.cuda.is_available() or not torch.cuda.is_initialized():
            return
        reserved = torch.cuda.max_memory_reserved()
        if reserved > self.reserved:
            self.reserved = reserved
            log.info(
                "GPU memory high-water mark %.2f GiB reserved (%.2f GiB allocated at most; %.2f GiB reserved now) "
                "after %s",
                reserved / 2**30,
                torch.cuda.max_memory_allocated() / 2**30,
                torch.cuda.memory_reserved() / 2**30,
                after,
            )


HIGH_WATER = MemoryHighWater()


def _invalid(err: InvalidArgument) -> InvalidRequestError:
    return InvalidRequestError(err.field, err.allowed)


class EngineBackend:
    """A loaded Turbo/Base-architecture variant: text-to-image, img2img and inpaint."""

    def __init__(self, spec: VariantSpec, ctx: BackendContext) -> None:
        self.spec = spec
        self.pipe = load(spec, ctx, "text_to_image")
        self.pipe.defer_host_copy = True  # the server waits for the pixels after releasing the GPU
        HIGH_WATER.note(f"loading {spec.id}")
        self.loras = LoraManager(self.pipe.transformer)
        self._controlnet_path = Path(spec.weights.controlnet) if spec.weights.controlnet else None
        self._controlnet: Any = None
        self._compile_queue = CompileQueue(self._replay) if ctx.defer_compile else None

    def controlnet(self) -> Any:
        """The paired ControlNet-Union, loaded on first use; it reuses this transformer's embedders."""
        if self._controlnet is None:
            if self._controlnet_path is None:
                raise UnsupportedEditError(
                    f"{self.spec.id} has no ControlNet configured; set [variants.{self.spec.id}.weights] controlnet "
                    "to a Z-Image-Turbo-Fun-Controlnet-Union folder or file"
                )
            from zimage_mcp.engine.weights.controlnet import load_controlnet

            try:
                cn = load_controlnet(self._controlnet_path, self.pipe.device, self.pipe.dtype)
                cn.check_base(self.pipe.transformer)
            except (EngineWeightsError, ValueError) as e:
                raise BackendLoadError(f"{self.spec.id} ControlNet: {e}") from e
            self._controlnet = cn
        return self._controlnet

    # -- Backend protocol -------------------------------------------------------------------------
    def vram_bytes(self) -> int:
        pipe = getattr(self, "pipe", None)
        return 0 if pipe is None else module_bytes(pipe.transformer, pipe.vae, pipe.text_encoder.model)

    def unload(self) -> None:
        if getattr(self, "pipe", None) is None:
            return
        if torch.cuda.is_initialized():  # false without CUDA, and before any work on it
            # The last request's decode may still be running (generate returns once it is queued): its weights
            # must not be freed for a load on another stream to reuse while it reads them.
            torch.cuda.synchronize()
        self.loras.clear()
        if self._compile_queue is not None:
            self._compile_queue.clear()
        SHARED.release(*self.pipe.shared_keys)
        device, self.pipe = self.pipe.device, None  # type: ignore[assignment]
        release_cached_memory(device)

    def warm_up(self, sizes: Sequence[tuple[int, int]]) -> Iterator[str]:
        """Compile the variant's default size and ``sizes`` ahead of the first request (engine/warm_up.py);
        one unit of work per ``next()``, so the caller can let requests in between."""
        if self.pipe is None:
            raise BackendLoadError(f"{self.spec.id} was unloaded")
        d = self.spec.defaults
        yield from warm_up(self.pipe, list(dict.fromkeys([(d.width, d.height), *sizes])))

    def compile_pending(self) -> bool:
        return self.pipe is not None and self._compile_queue is not None and self._compile_queue.pending()

    def compile_next(self) -> str | None:
        """One unit of the deferred compilation (``compile_queue``); the caller holds the GPU."""
        if self.pipe is None or self._compile_queue is None:
            return None
        # The cache still holds what the eager request used, while the CUDA graphs captured next take their own
        # pool (an 8 GB card's margin); after it, the compiler's scratch: what stays is the weights and the pools.
        release_cached_memory(self.pipe.device)
        label = self._compile_queue.next()
        release_cached_memory(self.pipe.device)
        HIGH_WATER.note(f"compiling {self.spec.id}: {label}")
        return label

    def _replay(self, request: GenerationRequest) -> None:
        with self.pipe.text_encoder.uncached():  # the prompt's features are cached; the encoder must run
            self._run(request, lambda _i, _n: None, lambda: False)

    def generate(
        self, request: GenerationRequest, progress: ProgressCallback, should_stop: StopCheck
    ) -> GenerationResult:
        if self.pipe is None:
            raise BackendLoadError(f"{self.spec.id} was unloaded")
        if request.loras and self.pipe.transformer.precision == "fp8":
            raise InvalidRequestError(
                "loras",
                "LoRAs need the bf16 weights, and this server runs with fp8 "
                "weights ([runtime] fp8 = true in your registry file); set fp8 = false "
                "there and restart to use LoRAs",
            )
        try:
            self.loras.set_adapters([(ref.file, ref.scale) for ref in request.loras])
        except EngineWeightsError as e:
            raise InvalidRequestError("loras", self._lora_mismatch(request, e)) from e
        except InvalidArgument as e:
            raise _invalid(e) from e

        def on_step(i: int, n: int) -> None:
            progress("denoising", i, n, f"step {i}/{n}")
            if i == n:
                progress("decoding", 0, 1, "decoding")

        progress("encoding", 0, 1, "encoding prompt")
        try:
            with self._compile_queue.request(request) if self._compile_queue is not None else nullcontext():
                out = self._run(request, on_step, should_stop)
        except EngineCancelled as e:
            raise GenerationCancelled(str(e)) from e
        except torch.cuda.OutOfMemoryError as e:
            release_cached_memory(self.pipe.device)
            raise OutOfMemoryError(
                f"out of GPU memory at {request.width}x{request.height} with count={request.count}: lower width/height "
                f"or count, or unload other models ({e.__class__.__name__})"
            ) from e
        except InvalidArgument as e:
            raise _invalid(e) from e
        HIGH_WATER.note(f"a {request.width}x{request.height} request on {self.spec.id}")
        width, height = out.size
        arrays = cache(out.arrays)
        return GenerationResult(
            # Made by the server after the GPU lock is released: the wait for the decode's copy to the host (the
            # next request's work is queued behind it meanwhile), the copy out and the row filter (12 ms of a
            # 1024^2 request's GPU-locked part on a 2-core machine when Pillow's tobytes did it).
            images=[partial(_pixels, arrays, i) for i in range(len(out.seeds))],
            seeds=out.seeds,
            width=width,
            height=height,
            timings=out.timings,  # the engine adds its phases once the pixels are on the host
            notes=list(out.notes),
        )

    def _lora_mismatch(self, request: GenerationRequest, err: Exception) -> str:
        """The engine's error with the LoRA named, what it fits (from its shapes) and what it was applied to."""
        from zimage_mcp.engine.weights.lora_inspect import inspect_lora

        ref = next((r for r in request.loras if Path(r.file).name in str(err)), None)
        if ref is None:
            return str(err)
        try:
            fits = inspect_lora(Path(ref.file))["base"]
        except Exception:  # noqa: BLE001 - the file may be unreadable; the engine's message still stands
            fits = "unknown"
        return (
            f"LoRA {ref.name!r} does not fit {self.spec.id} ({self.spec.title}); it fits: {fits}; "
            f"it was applied to {self.spec.id}. Details: {err}"
        )

    def _run(self, r: GenerationRequest, on_step: StepCallback, should_stop: StopCheck) -> GenerationOutput:
        common = _sampling(r, on_step, should_stop)
        # the server fitted edit inputs to the variant's limits (contract.rules.fit_size): width/height are final
        size = {"width": r.width, "height": r.height}
        if r.mode is None:
            return self.pipe.generate(r.prompt, **size, count=r.count, **common)
        if r.mode == "img2img" and r.image is not None:
            return img2img(self.pipe, r.image, r.prompt, strength=r.strength, **size, count=r.count, **common)
        if r.mode == "inpaint" and r.image is not None and r.mask is not None:
            return inpaint(self.pipe, r.image, r.mask, r.prompt, strength=r.strength, **size, count=r.count, **common)
        if r.mode == "control" and r.control is not None:
            return self._control(r, common)
        raise UnsupportedEditError(
            f"{self.spec.id} cannot do '{r.mode}' edits; it supports img2img, inpaint and (with a ControlNet) control"
        )

    def _control(self, r: GenerationRequest, common: dict[str, Any]) -> GenerationOutput:
        from zimage_mcp.engine.pipelines.control import control_generate, control_inpaint

        assert r.control is not None
        hint, detect = r.control.type, False
        if hint.startswith("photo-"):  # "photo-canny": compute the edge map from a photo (OpenCV)
            hint, detect = hint[len("photo-") :], True
        control = {
            "controlnet_conditioning_scale": r.control.scale,
            "hint": hint,
            "detect": detect,
            "width": r.width,
            "height": r.height,
            "count": r.count,
        }
        if r.mask is not None and r.image is not None:
            return control_inpaint(
                self.pipe, self.controlnet(), r.image, r.mask, r.control.image, r.prompt, **control, **common
            )
        return control_generate(self.pipe, self.controlnet(), r.control.image, r.prompt, **control, **common)


def _sampling(r: GenerationRequest, on_step: StepCallback, should_stop: StopCheck) -> dict[str, Any]:
    """The sampling arguments every engine call takes, from the request (one place for all five calls)."""
    return {
        "negative_prompt": r.negative_prompt,
        "steps": r.steps,
        "guidance": r.guidance,
        "seed": r.seed,
        "cfg_truncation": r.cfg_truncation,
        "cfg_normalization": r.cfg_normalization,
        "shift": r.shift,
        "on_step": on_step,
        "should_stop": should_stop,
    }


class OmniBackend(EngineBackend):
    """The Z-Image-Edit / Omni architecture: instruction edits with 1..N reference images (and text-to-image)."""

    def __init__(self, spec: VariantSpec, ctx: BackendContext) -> None:  # noqa: D107 - no super(): no ControlNet
        self.spec = spec
        self.pipe = load(spec, ctx, "omni")
        self.pipe.defer_host_copy = True
        HIGH_WATER.note(f"loading {spec.id}")
        self.loras = LoraManager(self.pipe.transformer)
        self._controlnet_path, self._controlnet = None, None
        self._compile_queue = CompileQueue(self._replay) if ctx.defer_compile else None

    def vram_bytes(self) -> int:
        pipe = getattr(self, "pipe", None)
        return 0 if pipe is None else super().vram_bytes() + module_bytes(pipe.siglip.model)

    def _run(self, r: GenerationRequest, on_step: StepCallback, should_stop: StopCheck) -> GenerationOutput:
        if r.mode is None:
            return super()._run(r, on_step, should_stop)
        if r.mode != "reference" or r.image is None:
            raise UnsupportedEditError(f"{self.spec.id} edits from reference images only (mode 'reference')")
        images = [r.image, *r.reference_images]
        common = _sampling(r, on_step, should_stop)
        max_images = self.spec.limits.max_reference_images or 4
        outs = [  # one edit per image asked for, seeds counting up (the Omni pipeline edits one at a time)
            self.pipe.edit(r.prompt, images, max_images=max_images, **{**common, "seed": r.seed + i})
            for i in range(r.count)
        ]
        if len(outs) == 1:
            return outs[0]
        return GenerationOutput(  # several edits' pixels in one output: each waited for
            images=[image for o in outs for image in o.wait().images],
            seeds=[seed for o in outs for seed in o.seeds],
            timings=outs[0].timings,
            notes=outs[0].notes,
        )


def build_backend(spec: VariantSpec, ctx: BackendContext) -> EngineBackend:
    """The factory the built-in plugins hand to the registry: the Omni engine for edit variants."""
    return OmniBackend(spec, ctx) if spec.kind == "edit" else EngineBackend(spec, ctx)
