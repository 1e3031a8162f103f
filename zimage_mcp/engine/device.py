"""Device and dtype policy: the DiT and text encoder in bf16 on a GPU (fp32 on the CPU), the VAE in fp32."""

from __future__ import annotations

import importlib

import torch


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def default_dtype(device: torch.device) -> torch.dtype:
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def release_cached_memory(device: torch.device) -> None:
    """Hand the caching allocator's free blocks back to the driver (load transients, fused-away pieces)."""
    if device.type == "cuda" and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def use_expandable_segments() -> bool:
    """Let the CUDA caching allocator grow segments in place instead of keeping same-size blocks apart:
    less fragmentation, so a lower device-wide peak for the same tensors. False where this torch lacks it."""
    # torch 2.10+ moved the setter (the old one still works there, with a FutureWarning on stderr).
    setter = getattr(torch._C, "_accelerator_setAllocatorSettings", None) or getattr(
        torch.cuda.memory, "_set_allocator_settings", None
    )
    try:
        setter("expandable_segments:True")
    except (TypeError, AttributeError, RuntimeError):
        return False
    return True


def limit_memory(device: torch.device, limit_bytes: int) -> float | None:
    """Test aid: cap this process's CUDA caching allocator at ``limit_bytes`` (emulating a smaller card);
    returns the fraction set, or None on a device without one (CPU: a no-op)."""
    if device.type != "cuda":
        return None
    total = torch.cuda.get_device_properties(device).total_memory
    fraction = min(1.0, limit_bytes / total)
    torch.cuda.set_per_process_memory_fraction(fraction, device)
    return fraction


def prepare_device(device: torch.device, tune_allocator: bool, limit_bytes: int | None) -> float | None:
    """Before the first CUDA allocation: expandable segments (``tune_allocator``: the user set no allocator
    config of their own) and the test-only cap; returns the memory fraction set, if any."""
    if device.type != "cuda":
        return None
    if tune_allocator:
        use_expandable_segments()
    return limit_memory(device, limit_bytes) if limit_bytes else None


def prepare_runtime(device: torch.device, compile: bool) -> None:
    """Do ahead of a first load what it would otherwise wait for, loading no weights: create the CUDA
    context and import the text encoder (our Qwen3 and the ``tokenizers`` library: no ``transformers``)
    and, when ``compile``, torch.compile's dynamo and inductor (several seconds together on a GPU host).
    Idempotent; safe on any thread."""
    modules = ["tokenizers", "zimage_mcp.engine.text.qwen3"]
    if device.type == "cuda":
        torch.empty(1, device=device)  # the context; the caching allocator keeps this one block
        # cuBLAS's handle and workspace, created by a first GEMM (part of the 0.19 s that a fresh process's
        # first request spent more in GEMM calls than its second, benchmarks/probe_first_request.py)
        eye = torch.eye(8, device=device, dtype=torch.bfloat16)
        torch.mm(eye, eye)
        modules.append("zimage_mcp.engine.dit.qk_rope_kernel")  # imports Triton
    if compile:
        modules += ["torch._dynamo", "torch._inductor.compile_fx"]
    for name in modules:
        importlib.import_module(name)
