"""Speed settings applied after loading: lossless ones by default, fp8 weights only when asked for.

``optimize(pipe, mode)`` is what the server's backends call. ``auto`` does everything on CUDA and
nothing on the CPU (where the tests compare bit for bit with the reference).
"""

from __future__ import annotations

from typing import Literal

import torch

from zimage_mcp.engine.dit import qk_rope_kernel
from zimage_mcp.engine.errors import InvalidArgument
from zimage_mcp.engine.pipelines.text_to_image import ZImagePipeline
from zimage_mcp.engine.speed.compile_policy import compile_module
from zimage_mcp.engine.vae.model import AutoencoderKL

OptimizeMode = Literal["auto", "compile", "fuse", "off"]
OPTIMIZE_MODES = ("auto", "compile", "fuse", "off")


def check_fp8_support(device: torch.device) -> None:
    """fp8 GEMMs need fp8 tensor cores: CUDA compute capability 8.9 or newer."""
    if not (device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)):
        raise InvalidArgument(
            "fp8", f"fp8 weights need a CUDA GPU with fp8 tensor cores (compute capability 8.9+), not {device}"
        )


def fuses_projections(mode: OptimizeMode, device: torch.device) -> bool:
    """Whether ``optimize(pipe, mode)`` fuses q/k/v and w1/w3 (the loader can then read them fused)."""
    return not (mode == "off" or (mode == "auto" and device.type != "cuda"))


def optimize_vae(vae: AutoencoderKL, compile: bool = True) -> None:
    """channels_last convolutions (tensor-core friendly) and a compiled decoder (fused GroupNorm+SiLU)."""
    vae.to(memory_format=torch.channels_last)
    if compile:
        compile_module(vae.decoder, "vae", dynamic=False)


def optimize(pipe: ZImagePipeline, mode: OptimizeMode = "auto", fp8: bool = False) -> None:
    """``auto``/``compile``: everything below; ``fuse``: all but compilation; ``off``: nothing (fp8 aside).

    Lossless (same math, rounding aside): q/k/v and w1/w3 fused into single GEMMs; on CUDA, the text
    encoder's layers compiled and replayed as CUDA graphs (when it lives on the GPU), QK-norm + RoPE as one
    Triton kernel, regionally compiled DiT blocks, a channels-last compiled VAE decoder. ``auto`` does
    nothing on the CPU, where the tests compare bit for bit with the reference. ``fp8`` (opt-in, lossy)
    stores the blocks' GEMM weights in fp8 and frees the bf16 copies; it needs a GPU with fp8 tensor cores.
    """
    device = pipe.device
    if mode not in OPTIMIZE_MODES:
        raise InvalidArgument("optimize", f"must be one of {', '.join(OPTIMIZE_MODES)}, got {mode!r}")
    if fp8:
        check_fp8_support(device)
    active = fuses_projections(mode, device)
    if active:
        pipe.transformer.fuse_projections()
    if fp8:
        pipe.transformer.to_fp8(keep_bf16=False)
    if not active:
        return
    if device.type == "cuda":
        # cuDNN's benchmark mode stays off: its picks for the decoder's 1024^2 convs were no faster than the
        # heuristics' (the engine's compiled decode 39.9 ms with them, the server's 39.8-40.6 ms reusing the
        # plans an uncompiled request had cached), and one of them took a 1 GiB workspace (RESULTS §17).
        if pipe.text_encoder.device.type == "cuda":
            pipe.text_encoder.use_cuda_graphs()
        if qk_rope_kernel.available():
            pipe.transformer.use_fused_rope()
    if mode in ("auto", "compile"):
        if pipe.text_encoder.device.type == "cuda":  # in host memory (low-VRAM mode) it stays eager
            pipe.text_encoder.compile_layers()
        pipe.transformer.compile_blocks(dynamic=False)
        optimize_vae(pipe.vae, compile=True)
    elif device.type == "cuda":
        optimize_vae(pipe.vae, compile=False)
