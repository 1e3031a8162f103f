"""The rules several layers apply, defined once: size, steps, guidance and count bounds, weight formats, masks.

Each check returns ``None`` when the value is allowed, else the reason with what is allowed, so a caller
can wrap it in its own error: the server in ``InvalidRequestError(field, ...)`` for a tool argument, the
catalogue in ``RegistryError`` naming the file and key of a variant's defaults.
"""

from __future__ import annotations

import math
import os

from zimage_mcp.contract.variant import Limits

MAX_COUNT = 4  # images per request, whatever a variant's limits.max_count says
PICKLE_SUFFIXES = (".ckpt", ".pt", ".bin", ".pth")
WEIGHTS_SUFFIX = ".safetensors"
MASK_ASPECT_TOLERANCE = 0.01  # a mask of another size must match the image's aspect ratio within 1 %


def snap_size(value: int, limits: Limits) -> int:
    """``value`` rounded down to the size multiple and clamped into ``min_side..max_side``."""
    step = limits.size_multiple
    return max(limits.min_side, min(limits.max_side, (value // step) * step))


def fit_size(width: int, height: int, limits: Limits) -> tuple[int, int]:
    """A ``width`` x ``height`` image's size scaled into the limits (aspect kept) and snapped."""
    scale = min(1.0, limits.max_side / max(width, height))
    if min(width, height) * scale < limits.min_side:
        scale = max(scale, limits.min_side / min(width, height))
    return snap_size(round(width * scale), limits), snap_size(round(height * scale), limits)


def size_problem(value: int, limits: Limits) -> str | None:
    """Why ``value`` is not an allowed width or height, or ``None``."""
    if value % limits.size_multiple or not limits.min_side <= value <= limits.max_side:
        allowed = f"multiples of {limits.size_multiple} from {limits.min_side} to {limits.max_side}"
        return f"{value} is not allowed for this variant; use {allowed}"
    return None


def steps_problem(value: int, limits: Limits) -> str | None:
    if not limits.min_steps <= value <= limits.max_steps:
        return f"{value} is out of range; use {limits.min_steps}-{limits.max_steps}"
    return None


def guidance_problem(value: float, limits: Limits) -> str | None:
    if not (math.isfinite(value) and limits.min_guidance <= value <= limits.max_guidance):
        return f"{value} is out of range; use {limits.min_guidance}-{limits.max_guidance}"
    return None


def max_count(limits: Limits) -> int:
    return min(MAX_COUNT, limits.max_count)


def count_problem(value: int, limits: Limits) -> str | None:
    if not 1 <= value <= max_count(limits):
        return f"{value} is out of range; use 1-{max_count(limits)}"
    return None


def is_pickle(path: str | os.PathLike[str]) -> bool:
    """Pickle checkpoints can run code when loaded: they are listed as refused and never opened."""
    return os.fspath(path).lower().endswith(PICKLE_SUFFIXES)


def weights_file_problem(path: str | os.PathLike[str]) -> str | None:
    """Why a weights or LoRA file is refused (a pickle, or not ``.safetensors``), or ``None``."""
    if is_pickle(path):
        return "pickle formats are never loaded"
    if not os.fspath(path).lower().endswith(WEIGHTS_SUFFIX):
        return f"not a {WEIGHTS_SUFFIX} file"
    return None


def same_aspect(size: tuple[int, int], other: tuple[int, int]) -> bool:
    """Whether two (width, height) sizes have the same aspect ratio within ``MASK_ASPECT_TOLERANCE``."""
    aspect = size[0] / size[1]
    return abs(other[0] / other[1] - aspect) <= MASK_ASPECT_TOLERANCE * aspect
