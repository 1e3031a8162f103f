"""The engine's argument rules, one function per rule: sizes, prompt, steps, count, seed, strength."""

from __future__ import annotations

import random

from zimage_mcp.engine.errors import InvalidArgument
from zimage_mcp.engine.pipelines.sampler import img2img_start

SIZE_MIN, SIZE_MAX, SIZE_MULTIPLE = 256, 2048, 16  # 16 = VAE factor 8 x patch size 2
MAX_STEPS = 100
MAX_COUNT = 16
MAX_SEED = 2**64 - 1


def check_size(width: object, height: object) -> None:
    """The one size rule: both sides multiples of 16 within 256..2048."""
    for name, v in (("width", width), ("height", height)):
        if not isinstance(v, int) or v % SIZE_MULTIPLE or not SIZE_MIN <= v <= SIZE_MAX:
            raise InvalidArgument(name, f"must be a multiple of {SIZE_MULTIPLE} in {SIZE_MIN}..{SIZE_MAX}, got {v!r}")


def check_args(prompt: str, width: int, height: int, steps: int, count: int, seed: int | None) -> None:
    """Raise InvalidArgument naming the first bad argument and what is allowed."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise InvalidArgument("prompt", "must be a non-empty string")
    check_size(width, height)
    if not isinstance(steps, int) or not 1 <= steps <= MAX_STEPS:
        raise InvalidArgument("steps", f"must be an integer in 1..{MAX_STEPS}, got {steps!r}")
    if not isinstance(count, int) or not 1 <= count <= MAX_COUNT:
        raise InvalidArgument("count", f"must be an integer in 1..{MAX_COUNT}, got {count!r}")
    if seed is not None and (not isinstance(seed, int) or not 0 <= seed <= MAX_SEED):
        raise InvalidArgument("seed", f"must be an integer in 0..2**64-1, got {seed!r}")


def check_strength(strength: float, steps: int) -> None:
    """img2img strength in (0, 1] that leaves at least one denoising step."""
    if not isinstance(strength, (int, float)) or not 0.0 < strength <= 1.0:
        raise InvalidArgument("strength", f"must be in (0, 1], got {strength!r}")
    if steps - img2img_start(steps, strength) < 1:
        raise InvalidArgument(
            "strength", f"{strength} leaves no denoising step at steps={steps}; raise strength or steps"
        )


def expand_seeds(seed: int | None, count: int) -> list[int]:
    """seed, seed + 1, ... (random when None): image i of a batch gets the noise of a batch of one."""
    if seed is None:
        seed = random.randrange(2**63)
    return [(seed + i) % (MAX_SEED + 1) for i in range(count)]
