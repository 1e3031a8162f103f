"""Warm-up compiles exactly the shapes a request then uses, and skips what is not compiled."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from zimage_mcp.engine import load_pipeline
from zimage_mcp.engine.speed.warm_up import warm_up


@pytest.fixture
def pipe(tiny_dir: Path):
    return load_pipeline(tiny_dir, device="cpu", dtype=torch.float32)


def test_without_compilation_only_the_text_encoder_is_touched(pipe) -> None:
    assert not pipe.transformer.compiled
    assert list(warm_up(pipe, [(256, 256)])) == ["text encoder"]


def test_a_size_the_engine_refuses_fails_before_any_work(pipe) -> None:
    steps = warm_up(pipe, [(256, 250)])
    with pytest.raises(ValueError, match="height: must be a multiple of 16"):
        next(steps)
    assert not any(prompt == "warm-up" for prompt, _ in pipe.text_encoder._cache)  # nothing ran


@pytest.mark.slow
def test_warmed_shapes_do_not_compile_again(pipe) -> None:
    prompt = "a lighthouse on a cliff at dusk"
    tokens = int(pipe.encode_prompts([prompt])[0].shape[0])
    stats = torch._dynamo.utils.counters["stats"]
    torch._dynamo.reset()
    pipe.transformer.compile_blocks(dynamic=False)
    try:
        labels = list(warm_up(pipe, [(256, 256), (384, 256)], caption_lengths=(tokens,)))
        assert labels == ["text encoder", f"256x256, {tokens}-token captions", f"384x256, {tokens}-token captions"]
        warmed = stats["unique_graphs"]
        assert warmed > 0
        pipe.generate(prompt, "", 256, 256, 2, 0.0, seed=1)
        pipe.generate(prompt, "", 384, 256, 2, 0.0, seed=1)
        assert stats["unique_graphs"] == warmed  # the requests found every shape compiled
    finally:
        for blk in pipe.transformer.blocks():
            blk._compiled_call_impl = None
        torch._dynamo.reset()
