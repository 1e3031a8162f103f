"""Which compile cache fits this process: compiled kernels are only valid for one torch build and one GPU.

The caller (the bridge) owns the folder and the environment; the engine only names the subfolder.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch


def compile_cache_key(device: torch.device) -> str:
    """``torch-2.6.0+cu124-nvidia-h200-sm90``-like: torch version, GPU name and compute capability ("cpu" off CUDA)."""
    parts = [f"torch-{torch.__version__}"]
    if device.type == "cuda" and torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability(device)
        parts += [torch.cuda.get_device_name(device), f"sm{major}{minor}"]
    else:
        parts.append(device.type)
    return re.sub(r"[^A-Za-z0-9.+_-]+", "-", "-".join(parts)).strip("-").lower()


def choose_compile_cache(
    device: torch.device, base: str | None, explicit: bool, inherited: str | None
) -> tuple[Path, str] | None:
    """The folder torch.compile should use, and why (for the log); None: leave torch's own default.

    A base folder the user set (``explicit``) wins over an inherited ``TORCHINDUCTOR_CACHE_DIR``; an
    inherited one wins over the default base. Base folders get a ``compile_cache_key`` subfolder; an
    inherited folder is used as it is.
    """
    if base and (explicit or not inherited):
        folder = Path(base).expanduser() / compile_cache_key(device)
        why = "[runtime] compile_cache" if explicit else "the default"
        if inherited and Path(inherited) != folder:
            why += f", instead of the inherited TORCHINDUCTOR_CACHE_DIR={inherited}"
        return folder, why
    if inherited:
        return Path(inherited), "the inherited TORCHINDUCTOR_CACHE_DIR"
    return None
