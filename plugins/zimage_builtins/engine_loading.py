"""Loading a pipeline with the server's settings: compile cache, device preparation, timings in the log.

Split from ``engine_backend`` (the Backend classes); only plugins import it, inside hooks and factories.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import torch

from zimage_mcp.contract import BackendContext, BackendLoadError, VariantSpec
from zimage_mcp.engine.build import Architecture, SharedComponents, load_pipeline
from zimage_mcp.engine.device import prepare_device, prepare_runtime, resolve_device
from zimage_mcp.engine.errors import InvalidArgument
from zimage_mcp.engine.errors import WeightsError as EngineWeightsError
from zimage_mcp.engine.speed.compile_cache import choose_compile_cache

log = logging.getLogger(__name__)
_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


SHARED = SharedComponents()  # Turbo and Base (and Omni) hold one text encoder and VAE per set of files


def module_bytes(*modules: Any) -> int:
    total = 0
    for m in modules:
        if isinstance(m, torch.nn.Module):
            total += sum(t.numel() * t.element_size() for t in (*m.parameters(), *m.buffers()))
    return total


INDUCTOR_CACHE = "TORCHINDUCTOR_CACHE_DIR"


def use_compile_cache(ctx: BackendContext, device: torch.device) -> Path | None:
    """Point torch.compile at a folder that outlives the process (``engine.speed.compile_cache`` says which:
    ``[runtime] compile_cache`` > an inherited ``TORCHINDUCTOR_CACHE_DIR`` > the default), create it, log it."""
    chosen = choose_compile_cache(
        device, ctx.compile_cache_dir, ctx.compile_cache_explicit, os.environ.get(INDUCTOR_CACHE)
    )
    if chosen is not None:
        folder, why = chosen
        (log.warning if "instead of" in why else log.info)("compile cache: %s (%s)", folder, why)
        folder.mkdir(parents=True, exist_ok=True)
        os.environ[INDUCTOR_CACHE] = str(folder)
    return None if chosen is None else chosen[0]


_PREPARED: set[str] = set()  # devices whose allocator settings and cap are in place (once per process)


def _prepare_device(ctx: BackendContext, device: torch.device) -> None:
    if str(device) in _PREPARED:
        return
    _PREPARED.add(str(device))
    tune = not {"PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF"} & set(os.environ)  # the user's config wins
    limit = int(ctx.gpu_memory_limit_gb * 2**30) if ctx.gpu_memory_limit_gb else None
    if (fraction := prepare_device(device, tune, limit)) is not None:
        log.warning(
            "test_gpu_memory_gb: CUDA memory capped at %s GiB (fraction %.3f)", ctx.gpu_memory_limit_gb, fraction
        )


_READY: set[tuple[str, str | None, bool]] = set()  # (device, compile cache setting) already set up here


def _ready_device(ctx: BackendContext) -> torch.device:
    """The device, with the compile cache pointed at its folder and the allocator set up, once per process
    and setting: a second pass (the load after the start-up preparation) found our own variable and logged
    it as "the inherited TORCHINDUCTOR_CACHE_DIR"."""
    device = resolve_device(ctx.device)
    key = (str(device), ctx.compile_cache_dir, ctx.compile_cache_explicit)
    if key not in _READY:
        use_compile_cache(ctx, device)
        _prepare_device(ctx, device)
        _READY.add(key)
    return device


# A preparation and a load never run at once: transformers' lazy modules (SigLIP for the Omni variant) are not
# safe to import from two threads ("cannot import name 'Qwen3Config'" when a first request raced the start-up
# thread, before the text encoder was ours).
_PREPARING = threading.Lock()


def prepare(ctx: BackendContext) -> None:
    """At server start (``zimage_prepare``): compile cache, allocator, CUDA context and the imports a first
    load and compile need, so the first request does not wait for them."""
    started = time.perf_counter()
    with _PREPARING:
        device = _ready_device(ctx)
        # With compilation deferred, the first request runs eagerly: dynamo and inductor (seconds of imports)
        # are imported by the first background compilation instead.
        compiles_first = device.type == "cuda" and ctx.optimize in ("auto", "compile") and not ctx.defer_compile
        prepare_runtime(device, compile=compiles_first)
    log.info("engine ready for a first load in %.1f s (%s)", time.perf_counter() - started, device)


def load(spec: VariantSpec, ctx: BackendContext, architecture: Architecture) -> Any:
    """The engine's one build function with the server's settings; compile artefacts go to a folder
    that outlives the process."""
    w = spec.weights
    if not w.path:  # the registry resolves repo ids to a snapshot folder before calling the factory
        raise BackendLoadError(f"{spec.id}: no weights found; set [variants.{spec.id}.weights] path")
    started = time.perf_counter()
    with _PREPARING:  # held through the load: its imports must not overlap a preparation's
        device = _ready_device(ctx)
        prepared = time.perf_counter()
        pipe = _load_pipeline(spec, ctx, architecture, device)
    t = pipe.load_timings
    size = module_bytes(pipe.transformer, pipe.vae, pipe.text_encoder.model) / 1e9
    log.info(
        "%s loaded in %.1f s: device and imports %.1f s, weights %.1f s (%.1f GB, %.1f GB/s), optimize %.1f s",
        spec.id,
        time.perf_counter() - started,
        prepared - started,
        t["read"],
        size,
        size / max(t["read"], 1e-6),
        t["optimize"],
    )
    return pipe


def _load_pipeline(spec: VariantSpec, ctx: BackendContext, architecture: Architecture, device: torch.device) -> Any:
    w = spec.weights
    try:
        return load_pipeline(
            Path(w.path),
            transformer_file=Path(w.single_file) if w.single_file else None,
            vae_file=Path(w.vae_file) if w.vae_file else None,
            text_encoder_file=Path(w.text_encoder_file) if w.text_encoder_file else None,
            architecture=architecture,
            device=device,
            dtype=_DTYPES.get(ctx.dtype) if device.type == "cuda" else torch.float32,
            vae_dtype=_DTYPES.get(ctx.vae_dtype) if device.type == "cuda" else None,
            # None: the folder's scheduler config decides (3.0 without one); set only by a user's defaults.shift
            shift=spec.defaults.shift,
            optimize_mode=ctx.optimize,
            fp8=ctx.fp8,
            offload_text_encoder=ctx.offload_text_encoder and architecture == "text_to_image",
            step_cache=ctx.step_cache,
            shared=SHARED,
        )
    except (EngineWeightsError, InvalidArgument) as e:
        raise BackendLoadError(f"{spec.id}: {e}") from e
