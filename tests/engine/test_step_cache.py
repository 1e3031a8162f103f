"""First-block cache: off by default, exact when nothing is skipped, one state per CFG pass."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from zimage_mcp.engine import load_pipeline

PROMPT = "a lighthouse on a cliff at dusk"


@pytest.fixture(scope="module")
def pipe(tiny_dir: Path):
    return load_pipeline(tiny_dir, device="cpu", dtype=torch.float32)


def _run(pipe, threshold: float, guidance: float = 0.0, steps: int = 6, negative: str = "") -> torch.Tensor:
    pipe.step_cache = threshold
    try:
        return pipe.generate(PROMPT, negative, 256, 256, steps, guidance, seed=3).latents
    finally:
        pipe.step_cache = 0.0


def test_off_by_default_and_exact_when_no_step_is_skipped(pipe) -> None:
    assert pipe.step_cache == 0.0
    plain = _run(pipe, 0.0)
    assert pipe.last_step_cache is None
    never = _run(pipe, 1e-30)  # nothing is ever that close: every step runs in full, through the cache's code
    assert pipe.last_step_cache.steps == 6 and pipe.last_step_cache.skipped == 0
    assert len(pipe.last_step_cache.changes) == 5 and all(c > 0 for c in pipe.last_step_cache.changes)
    assert torch.equal(plain, never)


def test_a_loose_threshold_skips_every_step_after_the_first(pipe) -> None:
    plain = _run(pipe, 0.0)
    loose = _run(pipe, 1e9)
    assert (pipe.last_step_cache.steps, pipe.last_step_cache.skipped) == (6, 5)
    assert torch.isfinite(loose).all() and not torch.equal(loose, plain)


@pytest.mark.parametrize("cfg_mode", ["sequential", "batched"])
def test_cfg_passes_keep_separate_caches(pipe, cfg_mode: str) -> None:
    pipe.cfg_mode = cfg_mode
    try:
        # a negative prompt padded to another length than the prompt: two passes unless batched with a mask
        _run(pipe, 1e9, guidance=4.0, steps=5, negative="blurry, low quality, watermark, " * 6)
    finally:
        pipe.cfg_mode = "auto"
    cache = pipe.last_step_cache
    passes = 2 if cfg_mode == "sequential" else 1  # two conditionings, or one batched [pos, neg]
    assert cache.steps == 5 * passes and cache.skipped == 5 * passes - passes
