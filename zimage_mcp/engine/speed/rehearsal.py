"""Pay a fresh process's one-time GPU costs while the weights are still being read.

A process's first request pays for more than its work: cuBLAS picks a kernel for each new GEMM shape, CUDA
loads each kernel's module on its first launch, cuDNN builds a plan for each convolution shape, and Triton
loads its kernels. On an H200 that was about 0.9 s of the first 1024² image after a restart (text encoding
+146 ms, denoising +615 ms, decoding +130 ms against the same uncompiled request once warm), paid after the
load, one cost after the other.

``rehearse`` pays them during the load instead. It builds a stand-in pipeline: the real classes at the real
widths, one layer per stack (each stack's GEMM shapes, with a fraction of its weights), and small random
weights. It then runs a request's stages at the size the first request will likely ask for, with the same
speed settings and nothing compiled. It must run on the thread that will run the requests, because PyTorch
keeps cuDNN's plans per thread. It must also overlap the weights' reading, which runs on other threads. The
decoder goes first: at 1024² its activations take about 2 GiB, while the weights read so far are few.
"""

from __future__ import annotations

import contextlib
import gc
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from zimage_mcp.engine.config import VAE_PRESETS, TransformerConfig, VAEConfig
from zimage_mcp.engine.device import release_cached_memory
from zimage_mcp.engine.dit.attention import AttentionBackend, best_backend
from zimage_mcp.engine.dit.transformer import ZImageTransformer
from zimage_mcp.engine.pipelines.sampler import get_sigmas
from zimage_mcp.engine.pipelines.text_to_image import Guidance, ZImagePipeline
from zimage_mcp.engine.speed.compile_policy import compile_only
from zimage_mcp.engine.speed.optimize import OptimizeMode, fuses_projections, optimize
from zimage_mcp.engine.text.qwen3 import TextEncoder
from zimage_mcp.engine.text.qwen3_model import Qwen3TextConfig, Qwen3TextModel, read_config
from zimage_mcp.engine.vae.model import AutoencoderKL
from zimage_mcp.engine.weights.layout import ModelFiles

# What the stand-ins and their activations take at most beside the weights being read (1024², bf16): an
# uncompiled decode's activations 2.1 GiB, the DiT's one set of block weights 0.4 GB, the rest a few hundred MB.
HEADROOM_BYTES = 4 * 2**30
# Prompt lengths in tokens (the chat template included) in the text encoder's usual length buckets, 64 and 128
PROMPT_LENGTHS = (56, 120)


StandInConfigs = tuple[TransformerConfig, Qwen3TextConfig, VAEConfig]


def stand_in_configs(files: ModelFiles) -> StandInConfigs | None:
    """The widths a stand-in needs, from a folder's config files; None where one must be inferred from the
    weights (single files), which the rehearsal does not attempt."""
    if files.transformer_config is None or files.text_encoder_config is None:
        return None
    vae = VAEConfig.from_json(files.vae_config) if files.vae_config is not None else VAE_PRESETS["flux"]
    return TransformerConfig.from_json(files.transformer_config), read_config(files.text_encoder_config), vae


def room_to_rehearse(files: ModelFiles, device: torch.device) -> bool:
    """Whether the device has room for every weight file of ``files`` plus the stand-ins at once (a 24 GB
    card loading 20 GB does not: its first request then pays the one-time costs as before)."""
    if device.type != "cuda":
        return False
    weights = sum(Path(f).stat().st_size for f in (*files.transformer, *files.text_encoder, *files.vae))
    free, _total = torch.cuda.mem_get_info(device)
    return free >= weights + HEADROOM_BYTES


def _materialize(module: nn.Module, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """A module built on ``meta``, its parameters made on ``device`` in ``dtype`` with small random values
    (finite inputs for the kernels; nothing is learned) and its buffers (computed on the CPU) moved."""
    for sub in module.modules():
        for name, p in list(sub.named_parameters(recurse=False)):
            made = torch.empty(p.shape, device=device, dtype=dtype).normal_(0.0, 0.02)
            sub.register_parameter(name, nn.Parameter(made, requires_grad=False))
        for name, b in list(sub.named_buffers(recurse=False)):
            sub.register_buffer(name, b.to(device), persistent=name not in sub._non_persistent_buffers_set)
    return module.eval()


def stand_in_pipeline(
    configs: StandInConfigs,
    device: torch.device,
    dtype: torch.dtype,
    vae_dtype: torch.dtype,
    attn_backend: AttentionBackend | None = None,
    fuse: bool = False,
) -> ZImagePipeline:
    """The real classes at the real widths with one layer per stack: each GEMM, attention and convolution
    shape of a request, with random weights. The DiT's three blocks share one set of weights (``fuse``: with
    q/k/v and w1/w3 fused first, as ``optimize`` will), so the stand-in holds 0.4 GB of them at full size."""
    transformer, text_cfg, vae = configs
    with torch.device("meta"):
        dit = ZImageTransformer(
            replace(transformer, n_layers=1, n_refiner_layers=1), attn_backend or best_backend(device)
        )
        # One layer (the real encoder drops its last layer and norm: qwen3._build); a token table of 256 rows,
        # gathered on the host as the real one is.
        text_model = Qwen3TextModel(replace(text_cfg, num_hidden_layers=1, vocab_size=256))
        decoder = AutoencoderKL(vae)
    text_model.norm = nn.Identity()
    _materialize(text_model, device, dtype)
    text_model.embed_tokens.weight = nn.Parameter(text_model.embed_tokens.weight.cpu(), requires_grad=False)
    _materialize(dit, device, dtype)
    if fuse:
        dit.fuse_projections()
    for block in (dit.noise_refiner[0], dit.context_refiner[0]):
        _share_weights(block, dit.layers[0])
    return ZImagePipeline(dit, _materialize(decoder, device, vae_dtype), TextEncoder(text_model, None), 3.0)


def _share_weights(block: nn.Module, source: nn.Module) -> None:
    """Point every parameter of ``block`` (and its fused projections) at ``source``'s of the same name and
    shape; its own are freed. Kernels see the same shapes; values do not matter here."""
    theirs = dict(source.named_parameters())
    for name, p in list(block.named_parameters()):
        if name in theirs and theirs[name].shape == p.shape:
            owner, _, leaf = name.rpartition(".")
            setattr(block.get_submodule(owner), leaf, theirs[name])
    for part, fused in (("attention", "qkv"), ("feed_forward", "w13")):
        mine, source_fused = getattr(getattr(block, part), fused), getattr(getattr(source, part), fused)
        if mine is not None and source_fused is not None and mine.weight.shape == source_fused.weight.shape:
            object.__setattr__(getattr(block, part), fused, source_fused)  # unregistered, as fuse() sets it


@torch.inference_mode()
def rehearse(
    configs: StandInConfigs,
    device: torch.device,
    dtype: torch.dtype,
    vae_dtype: torch.dtype,
    size: tuple[int, int],
    optimize_mode: OptimizeMode,
    attn_backend: AttentionBackend | None = None,
) -> float:
    """Run a stand-in of one ``size`` (width, height) request with CFG, stage by stage, nothing compiled;
    returns the seconds it took. Its memory is handed back to the driver before it returns."""
    started = time.perf_counter()
    # Its own stream: the loader's uploads make the default stream wait for each tensor's copy, so kernels
    # queued there ran only as the load's copies drained (on an H100 the rehearsal took as long as the load).
    # For the same reason nothing here synchronizes the device or frees memory until the end.
    side = torch.cuda.Stream(device) if device.type == "cuda" else None
    with torch.cuda.stream(side) if side is not None else contextlib.nullcontext():
        fuse = fuses_projections(optimize_mode, device)
        pipe = stand_in_pipeline(configs, device, dtype, vae_dtype, attn_backend, fuse)
        optimize(pipe, optimize_mode)  # as load_pipeline does: fused projections, CUDA-graph wrappers, layouts
        width, height = size
        with compile_only():  # as a request runs before the idle-time compilation: every part eagerly
            latents = pipe.initial_noise([0], height, width)  # (1, 16, H/8, W/8)
            pipe.decode(latents)  # first: its ~2 GiB of activations, while the weights read so far are few
            # Features of prompts of PROMPT_LENGTHS real tokens (B, L, hidden) -> (L, hidden), as encode returns
            ids = [torch.ones(1, n, dtype=torch.long) for n in PROMPT_LENGTHS]
            feats = [pipe.text_encoder.encode_ids(i, pad_id=0)[0, : i.shape[1]] for i in ids]
            pipe.denoise(latents, get_sigmas(2, pipe.shift), [feats[0]], [feats[1]], Guidance(scale=4.0))  # CFG
            pipe.denoise(latents, get_sigmas(1, pipe.shift), [feats[1]], None, Guidance())
        if side is not None:
            side.synchronize()
    del pipe, latents, feats
    gc.collect()  # the compile wrappers tie each module to itself in a cycle: free the stand-in now, not later
    release_cached_memory(device)
    return time.perf_counter() - started
