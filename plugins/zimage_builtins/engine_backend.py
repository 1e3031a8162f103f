"""The bridge from the registry's torch-free world to the engine: one ``Backend`` per loaded variant.

Only plugins import this module, and only inside their factories, so the registry and the server
never import torch. Variants that read the same text encoder and VAE files share one loaded copy
(reference counted). LoRAs are merged in place per request and removed bit-exactly.
"""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from zimage_mcp.engine.edit import img2img, inpaint
from zimage_mcp.engine.errors import GenerationCancelled as EngineCancelled
from zimage_mcp.engine.errors import WeightsError as EngineWeightsError
from zimage_mcp.engine.layout import ModelFiles, resolve_model_files
from zimage_mcp.engine.loader import (
    default_dtype,
    load_scheduler,
    load_text_encoder_from,
    load_transformer,
    load_vae,
    resolve_device,
)
from zimage_mcp.engine.lora_apply import LoraManager
from zimage_mcp.engine.pipeline import GenerationOutput, ZImagePipeline
from zimage_mcp.engine.speed import optimize
from zimage_mcp.engine.warm_up import warm_up
from zimage_mcp.contract import (
    BackendLoadError,
    GenerationCancelled,
    InvalidRequestError,
    OutOfMemoryError,
    UnsupportedEditError,
)
from zimage_mcp.contract import (
    BackendContext,
    GenerationRequest,
    GenerationResult,
    ProgressCallback,
    StopCheck,
    VariantSpec,
)

_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


class _Shared:
    """Components loaded once per (kind, files, device, dtype) and handed out with a reference count."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[tuple, list[Any]] = {}

    def acquire(self, key: tuple, build: Callable[[], Any]) -> Any:
        with self._lock:
            if key not in self._items:
                self._items[key] = [build(), 0]
            self._items[key][1] += 1
            return self._items[key][0]

    def release(self, key: tuple) -> None:
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                item[1] -= 1
                if item[1] <= 0:
                    del self._items[key]

    def count(self) -> int:
        return len(self._items)


SHARED = _Shared()


def _module_bytes(*modules: Any) -> int:
    total = 0
    for m in modules:
        if isinstance(m, torch.nn.Module):
            total += sum(t.numel() * t.element_size() for t in (*m.parameters(), *m.buffers()))
    return total


def _png(image: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _invalid(err: ValueError) -> InvalidRequestError:
    field, _, msg = str(err).partition(": ")
    return InvalidRequestError(field, msg) if msg and " " not in field else InvalidRequestError("request", str(err))


def speed_up(pipe: ZImagePipeline, ctx: BackendContext, variant: str) -> None:
    """The configured speed settings; compile artefacts go to a folder that outlives the process."""
    if ctx.compile_cache_dir:
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", ctx.compile_cache_dir)  # the user's own choice wins
    try:
        optimize(pipe, ctx.optimize, fp8=ctx.fp8)
    except ValueError as e:
        raise BackendLoadError(f"{variant}: {e}") from e


class EngineBackend:
    """A loaded Turbo/Base-architecture variant: text-to-image, img2img and inpaint."""

    def __init__(self, spec: VariantSpec, ctx: BackendContext) -> None:
        self.spec = spec
        self.device = resolve_device(ctx.device)
        self.dtype = _DTYPES.get(ctx.dtype, default_dtype(self.device)) if self.device.type == "cuda" else torch.float32
        w = spec.weights
        try:
            files = resolve_model_files(
                folder=Path(w.path) if w.path else None, repo_id=w.repo_id,
                transformer_file=Path(w.single_file) if w.single_file else None, hf_home=ctx.hf_home,
            )
            # Low-VRAM mode loads the text encoder straight into host memory: DiT + encoder together
            # (~20 GB) would not fit the 16 GB cards this mode is for, even for a moment.
            te_device = torch.device("cpu") if ctx.offload_text_encoder else self.device
            self._keys = self._shared_keys(files, te_device)
            transformer = load_transformer(files.transformer, files.transformer_config, self.device, self.dtype)
            te = SHARED.acquire(self._keys[0], lambda: load_text_encoder_from(files, te_device, self.dtype))
            vae = SHARED.acquire(self._keys[1], lambda: load_vae(files.vae, files.vae_config, self.device))
        except EngineWeightsError as e:
            raise BackendLoadError(f"{spec.id}: {e}") from e
        shift = load_scheduler(files.scheduler_config, spec.defaults.shift).shift
        self.pipe = ZImagePipeline(transformer, vae, te, shift, offload_text_encoder=ctx.offload_text_encoder)
        self.pipe.step_cache = ctx.step_cache
        self.loras = LoraManager(transformer)
        speed_up(self.pipe, ctx, spec.id)
        self._controlnet_path = Path(w.controlnet) if w.controlnet else None
        self._controlnet: Any = None

    def controlnet(self) -> Any:
        """The paired ControlNet-Union, loaded on first use; it reuses this transformer's embedders."""
        if self._controlnet is None:
            if self._controlnet_path is None:
                raise UnsupportedEditError(
                    f"{self.spec.id} has no ControlNet configured; set [variants.{self.spec.id}.weights] controlnet "
                    "to a Z-Image-Turbo-Fun-Controlnet-Union folder or file"
                )
            from zimage_mcp.engine.controlnet_loader import load_controlnet

            try:
                cn = load_controlnet(self._controlnet_path, self.device, self.dtype)
                cn.check_base(self.pipe.transformer)
            except (EngineWeightsError, ValueError) as e:
                raise BackendLoadError(f"{self.spec.id} ControlNet: {e}") from e
            self._controlnet = cn
        return self._controlnet

    def _shared_keys(self, files: ModelFiles, te_device: torch.device) -> tuple[tuple, tuple]:
        te_key = ("text_encoder", files.text_encoder, str(te_device), str(self.dtype))
        return te_key, ("vae", (files.vae,), str(self.device))

    # -- Backend protocol -------------------------------------------------------------------------
    def vram_bytes(self) -> int:
        pipe = getattr(self, "pipe", None)
        return 0 if pipe is None else _module_bytes(pipe.transformer, pipe.vae, pipe.text_encoder.model)

    def unload(self) -> None:
        if getattr(self, "pipe", None) is None:
            return
        self.loras.clear()
        for key in self._keys:
            SHARED.release(key)
        self.pipe = None  # type: ignore[assignment]
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def warm_up(self, sizes: Sequence[tuple[int, int]]) -> Iterator[str]:
        """Compile the variant's default size and ``sizes`` ahead of the first request (engine/warm_up.py);
        one unit of work per ``next()``, so the caller can let requests in between."""
        if self.pipe is None:
            raise BackendLoadError(f"{self.spec.id} was unloaded")
        d = self.spec.defaults
        yield from warm_up(self.pipe, list(dict.fromkeys([(d.width, d.height), *sizes])))

    def generate(self, request: GenerationRequest, progress: ProgressCallback, should_stop: StopCheck) -> GenerationResult:
        if self.pipe is None:
            raise BackendLoadError(f"{self.spec.id} was unloaded")
        if request.loras and self.pipe.transformer.precision == "fp8":
            raise InvalidRequestError("loras", "LoRAs need the bf16 weights, and this server runs with fp8 "
                                      "weights (ZIMAGE_MCP_FP8=1); restart without it to use LoRAs")
        try:
            self.loras.set_adapters([(ref.file, ref.scale) for ref in request.loras])
        except EngineWeightsError as e:
            raise InvalidRequestError("loras", str(e)) from e
        except ValueError as e:
            raise _invalid(e) from e

        def on_step(i: int, n: int) -> None:
            progress("denoising", i, n, f"step {i}/{n}")
            if i == n:
                progress("decoding", 0, 1, "decoding")

        progress("encoding", 0, 1, "encoding prompt")
        try:
            out = self._run(request, on_step, should_stop)
        except EngineCancelled as e:
            raise GenerationCancelled(str(e)) from e
        except torch.cuda.OutOfMemoryError as e:
            torch.cuda.empty_cache()
            raise OutOfMemoryError(
                f"out of GPU memory at {request.width}x{request.height} with count={request.count}: lower width/height "
                f"or count, or unload other models ({e.__class__.__name__})"
            ) from e
        except ValueError as e:
            raise _invalid(e) from e
        size = out.images[0].size
        return GenerationResult(images=[_png(im) for im in out.images], seeds=out.seeds, width=size[0], height=size[1],
                                timings=dict(out.timings), notes=list(out.notes))

    def _run(self, r: GenerationRequest, on_step: Callable[[int, int], None], should_stop: StopCheck) -> GenerationOutput:
        common = dict(negative_prompt=r.negative_prompt, steps=r.steps, guidance=r.guidance, seed=r.seed, count=r.count,
                      cfg_truncation=r.cfg_truncation, cfg_normalization=r.cfg_normalization, shift=r.shift,
                      on_step=on_step, should_stop=should_stop)
        if r.mode is None:
            return self.pipe.generate(r.prompt, width=r.width, height=r.height, **common)
        if r.mode == "img2img" and r.image is not None:
            return img2img(self.pipe, r.image, r.prompt, strength=r.strength, **common)
        if r.mode == "inpaint" and r.image is not None and r.mask is not None:
            return inpaint(self.pipe, r.image, r.mask, r.prompt, strength=r.strength, **common)
        if r.mode == "control" and r.control is not None:
            return self._control(r, common)
        raise UnsupportedEditError(
            f"{self.spec.id} cannot do '{r.mode}' edits; it supports img2img, inpaint and (with a ControlNet) control"
        )

    def _control(self, r: GenerationRequest, common: dict) -> GenerationOutput:
        from zimage_mcp.engine.pipeline_control import control_generate, control_inpaint

        assert r.control is not None
        hint, detect = r.control.type, False
        if hint.startswith("photo-"):  # "photo-canny": compute the edge map from a photo (OpenCV)
            hint, detect = hint[len("photo-"):], True
        kw = dict(common, controlnet_conditioning_scale=r.control.scale, hint=hint, detect=detect,
                  width=r.width, height=r.height)
        if r.mask is not None and r.image is not None:
            return control_inpaint(self.pipe, self.controlnet(), r.image, r.mask, r.control.image, r.prompt, **kw)
        return control_generate(self.pipe, self.controlnet(), r.control.image, r.prompt, **kw)


class OmniBackend(EngineBackend):
    """The Z-Image-Edit / Omni architecture: instruction edits with 1..N reference images (and text-to-image)."""

    def __init__(self, spec: VariantSpec, ctx: BackendContext) -> None:  # noqa: D107 - no super(): other loader
        from zimage_mcp.engine.layout import find_hf_snapshot
        from zimage_mcp.engine.loader_omni import load_omni_pipeline

        self.spec = spec
        self.device = resolve_device(ctx.device)
        self.dtype = _DTYPES.get(ctx.dtype, default_dtype(self.device)) if self.device.type == "cuda" else torch.float32
        folder = Path(spec.weights.path) if spec.weights.path else (
            find_hf_snapshot(spec.weights.repo_id, ctx.hf_home) if spec.weights.repo_id else None)
        if folder is None:
            raise BackendLoadError(f"{spec.id}: no weights found; set [variants.{spec.id}.weights] path")
        try:
            self.pipe = load_omni_pipeline(folder, self.device, self.dtype)
        except EngineWeightsError as e:
            raise BackendLoadError(f"{spec.id}: {e}") from e
        self._keys = ()
        self.loras = LoraManager(self.pipe.transformer)
        self._controlnet_path, self._controlnet = None, None
        speed_up(self.pipe, ctx, spec.id)

    def vram_bytes(self) -> int:
        pipe = getattr(self, "pipe", None)
        return 0 if pipe is None else super().vram_bytes() + _module_bytes(pipe.siglip.model)

    def _run(self, r: GenerationRequest, on_step: Callable[[int, int], None], should_stop: StopCheck) -> GenerationOutput:
        if r.mode is None:
            return super()._run(r, on_step, should_stop)
        if r.mode != "reference" or r.image is None:
            raise UnsupportedEditError(f"{self.spec.id} edits from reference images only (mode 'reference')")
        images = [r.image, *r.reference_images]
        outs = [self.pipe.edit(r.prompt, images, negative_prompt=r.negative_prompt, steps=r.steps, guidance=r.guidance,
                               seed=r.seed + i, cfg_truncation=r.cfg_truncation, cfg_normalization=r.cfg_normalization,
                               shift=r.shift, max_images=self.spec.limits.max_reference_images or 4,
                               on_step=on_step, should_stop=should_stop) for i in range(r.count)]
        first = outs[0]
        for o in outs[1:]:
            first.images += o.images
            first.seeds += o.seeds
        return first


def build_backend(spec: VariantSpec, ctx: BackendContext) -> EngineBackend:
    """The factory the built-in plugins hand to the registry: the Omni engine for edit variants."""
    return OmniBackend(spec, ctx) if spec.kind == "edit" else EngineBackend(spec, ctx)
