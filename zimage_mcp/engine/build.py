"""The one way to build a pipeline from paths and explicit options, with components shared across pipelines."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any, Literal

import torch

from zimage_mcp.engine.device import default_dtype, release_cached_memory, resolve_device
from zimage_mcp.engine.dit.attention import AttentionBackend
from zimage_mcp.engine.errors import WeightsError
from zimage_mcp.engine.pipelines.text_to_image import ZImagePipeline
from zimage_mcp.engine.speed.optimize import OptimizeMode, check_fp8_support, fuses_projections, optimize
from zimage_mcp.engine.weights.components import folder_shift, load_text_encoder_from, load_transformer, load_vae
from zimage_mcp.engine.weights.layout import ModelFiles, resolve_model_files

DEFAULT_SHIFT = 3.0  # where no scheduler config says otherwise (a bare single file)
Architecture = Literal["text_to_image", "omni"]


class SharedComponents:
    """Text encoders and VAEs loaded once per (kind, files, device, dtype), handed out with a reference
    count: Turbo and Base read the same text_encoder/ and vae/, so they hold one copy between them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[tuple, list[Any]] = {}  # key -> [component, reference count]

    def acquire(self, key: tuple, build: Callable[[], Any]) -> Any:
        with self._lock:
            if key not in self._items:
                self._items[key] = [build(), 0]
            self._items[key][1] += 1
            return self._items[key][0]

    def release(self, *keys: tuple) -> None:
        with self._lock:
            for key in keys:
                item = self._items.get(key)
                if item is not None:
                    item[1] -= 1
                    if item[1] <= 0:
                        del self._items[key]

    def count(self) -> int:
        return len(self._items)


def load_pipeline(
    folder: Path | None = None,
    *,
    transformer_file: Path | None = None,
    vae_file: Path | None = None,
    text_encoder_file: Path | None = None,
    architecture: Architecture = "text_to_image",
    device: str | torch.device = "auto",
    dtype: torch.dtype | None = None,
    vae_dtype: torch.dtype | None = None,
    shift: float | None = None,
    attn_backend: AttentionBackend | None = None,
    optimize_mode: OptimizeMode = "off",
    fp8: bool = False,
    offload_text_encoder: bool = False,
    step_cache: float = 0.0,
    shared: SharedComponents | None = None,
) -> ZImagePipeline:
    """Load a text-to-image (Turbo/Base) or Omni pipeline from a diffusers folder (plus single-file
    overrides, text-to-image only) and apply the speed settings.

    ``shift`` None uses the folder's ``scheduler_config.json`` (3.0 where there is none; the folder's
    value is kept in ``pipe.folder_shift``). ``shared`` lets pipelines hold one text encoder and VAE
    between them; release them with ``shared.release(*pipe.shared_keys)``. ``offload_text_encoder``
    keeps the text encoder in host memory (16 GB cards; text-to-image only). ``vae_dtype`` None runs the
    VAE in ``dtype`` on CUDA, as diffusers' ``torch_dtype`` does (its decode in bf16 is 1.9x faster than
    fp32 at 1024² on an H200), and in float32 on the CPU; float32 keeps the reference pipelines' upcast.
    Raises ``WeightsError`` for bad files and ``InvalidArgument`` for options the device cannot honour (fp8),
    before loading anything.
    """
    dev = resolve_device(device)
    dt = dtype or default_dtype(dev)
    vae_dt = vae_dtype or (dt if dev.type == "cuda" else torch.float32)
    if fp8:
        check_fp8_support(dev)
    shared = shared or SharedComponents()
    held: list[tuple] = []

    def acquire(key: tuple, build: Callable[[], Any]) -> Any:
        component = shared.acquire(key, build)
        held.append(key)
        return component

    started = time.perf_counter()
    try:
        if architecture == "omni":
            if transformer_file or vae_file or text_encoder_file:
                raise WeightsError("an Omni pipeline loads from its folder only, not from single files")
            if folder is None:
                raise WeightsError("no model given: pass the Omni model folder")
            pipe: ZImagePipeline = _omni(Path(folder), dev, dt, vae_dt, attn_backend, acquire)
        else:
            files = resolve_model_files(folder, transformer_file, vae_file, text_encoder_file)
            fuse = fuses_projections(optimize_mode, dev) or fp8
            pipe = _text_to_image(
                files, dev, dt, vae_dt, attn_backend, offload_text_encoder, acquire, fuse=fuse, fp8=fp8
            )
        pipe.shared_keys = tuple(held)
        if shift is not None:
            pipe.shift = shift
        pipe.step_cache = step_cache
        read = time.perf_counter()
        optimize(pipe, optimize_mode, fp8=fp8)
        pipe.load_timings = {"read": read - started, "optimize": time.perf_counter() - read}
    except BaseException:
        shared.release(*held)
        raise
    finally:
        release_cached_memory(dev)  # the load's transients, so the device-wide peak is what the model holds
    return pipe


def _text_to_image(
    files: ModelFiles,
    device: torch.device,
    dtype: torch.dtype,
    vae_dtype: torch.dtype,
    attn_backend: AttentionBackend | None,
    offload_text_encoder: bool,
    acquire: Callable[[tuple, Callable[[], Any]], Any],
    *,
    fuse: bool = False,
    fp8: bool = False,
) -> ZImagePipeline:
    # Low-VRAM mode loads the text encoder straight into host memory: DiT + encoder together (~20 GB)
    # would not fit the 16 GB cards this mode is for, even for a moment.
    te_device = torch.device("cpu") if offload_text_encoder else device
    # The DiT reads on its own threads while the text encoder and VAE are read here: the components'
    # files stream to the device side by side (each reader is itself parallel over shards and chunks).
    with ThreadPoolExecutor(1, thread_name_prefix="zimage-dit") as pool:
        dit = pool.submit(
            load_transformer,
            files.transformer,
            files.transformer_config,
            device,
            dtype,
            attn_backend,
            fuse=fuse,
            fp8=fp8,
        )
        try:
            text_encoder = acquire(
                ("text_encoder", files.text_encoder, str(te_device), str(dtype)),
                lambda: load_text_encoder_from(files, te_device, dtype),
            )
            vae = acquire(
                ("vae", files.vae, str(device), str(vae_dtype)),
                lambda: load_vae(files.vae, files.vae_config, device, vae_dtype),
            )
        finally:
            wait([dit])  # never leave a reader running behind an error
        transformer = dit.result()
    from_folder = folder_shift(files.scheduler_config)
    pipe = ZImagePipeline(
        transformer,
        vae,
        text_encoder,
        DEFAULT_SHIFT if from_folder is None else from_folder,
        offload_text_encoder=offload_text_encoder,
    )
    pipe.folder_shift = from_folder
    return pipe


def _omni(
    folder: Path,
    device: torch.device,
    dtype: torch.dtype,
    vae_dtype: torch.dtype,
    attn_backend: AttentionBackend | None,
    acquire: Callable[[tuple, Callable[[], Any]], Any],
) -> ZImagePipeline:
    """Every Omni component from ``folder`` (offline); the VAE in ``vae_dtype`` as for text-to-image.
    The Omni pipeline keeps its text encoder on ``device`` (no low-VRAM mode yet)."""
    from zimage_mcp.engine.pipelines.omni import OmniPipeline
    from zimage_mcp.engine.text.qwen3 import load_text_encoder
    from zimage_mcp.engine.text.siglip import load_siglip
    from zimage_mcp.engine.weights.files import DIFFUSERS_WEIGHTS, shard_files
    from zimage_mcp.engine.weights.omni import load_omni_transformer, missing_components

    if not folder.is_dir():
        raise WeightsError(f"Omni model folder not found: {folder}")
    missing = missing_components(folder)
    if missing:
        raise WeightsError(f"{folder} is not a complete Z-Image Omni folder; missing components: {'; '.join(missing)}")
    transformer = load_omni_transformer(folder / "transformer", device, dtype, attn_backend)
    vae_files = tuple(shard_files(folder / "vae", *DIFFUSERS_WEIGHTS))
    vae = acquire(
        ("vae", vae_files, str(device), str(vae_dtype)),
        lambda: load_vae(vae_files, folder / "vae" / "config.json", device, vae_dtype),
    )
    te_files = tuple(shard_files(folder / "text_encoder", "model.safetensors.index.json", "model.safetensors"))
    text_encoder = acquire(
        ("text_encoder", te_files, str(device), str(dtype)),
        lambda: load_text_encoder(folder / "text_encoder", folder / "tokenizer", device, dtype),
    )
    siglip = load_siglip(folder / "siglip", folder / "siglip_processor", device, dtype)
    if siglip.hidden_size != transformer.cfg.siglip_feat_dim:
        raise WeightsError(
            f"{folder}: SigLIP2 width {siglip.hidden_size} does not match the transformer's "
            f"siglip_feat_dim {transformer.cfg.siglip_feat_dim}"
        )
    from_folder = folder_shift(folder / "scheduler" / "scheduler_config.json")
    pipe = OmniPipeline(transformer, vae, text_encoder, siglip, DEFAULT_SHIFT if from_folder is None else from_folder)
    pipe.folder_shift = from_folder
    return pipe
