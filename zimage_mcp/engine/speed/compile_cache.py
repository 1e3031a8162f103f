"""Which compile cache fits this process: compiled kernels are only valid for one torch build and one GPU.

The caller (the bridge) owns the folder and the environment; the engine only names the subfolder.
"""

from __future__ import annotations

import re

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
