"""Compiled DiT blocks: one compile per (image size, caption bucket of 32 tokens), none for a shape seen
before, and the same numbers as eager (CPU Inductor, fp32)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from zimage_mcp.engine import load_pipeline


@pytest.mark.slow
def test_compiled_blocks_compile_once_per_shape_bucket(tiny_dir: Path, inductor_cache: Path) -> None:
    pipe = load_pipeline(tiny_dir, device="cpu", dtype=torch.float32)
    stats = torch._dynamo.utils.counters["stats"]

    def run(prompt: str, size: int) -> torch.Tensor:
        return pipe.generate(prompt, "", size, size, 2, 0.0, seed=0).latents

    eager = {size: run("a cat", size) for size in (256, 384)}
    torch._dynamo.reset()
    pipe.transformer.compile_blocks(dynamic=False)
    try:
        torch.testing.assert_close(run("a cat", 256), eager[256], rtol=1e-4, atol=1e-4)
        first = stats["unique_graphs"]
        assert first > 0
        assert any(inductor_cache.rglob("*.py")), "Inductor wrote outside the suite's own cache folder"
        run("a dog asleep on a mat", 256)  # another caption length, same 32-token bucket
        assert stats["unique_graphs"] == first
        torch.testing.assert_close(run("a cat", 384), eager[384], rtol=1e-4, atol=1e-4)
        second = stats["unique_graphs"]
        assert second > first  # a new size compiles...
        run("a cat", 256)
        run("a dog asleep on a mat", 384)
        assert stats["unique_graphs"] == second  # ...once: sizes and buckets seen before never do
    finally:
        for blk in pipe.transformer.blocks():
            blk._compiled_call_impl = None
        torch._dynamo.reset()
