"""compile_only: a request runs what is compiled for its shapes and the rest eagerly, compiling nothing;
the replay with a part allowed compiles it; eager runs under the policy are the plain eager numbers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from zimage_mcp.engine import load_pipeline
from zimage_mcp.engine.speed.compile_policy import compile_module, compile_only, may_compile
from zimage_mcp.engine.speed.cuda_graphs import ShapeGraphs


def _uncompile(pipe) -> None:  # noqa: ANN001 - the tiny pipeline
    for blk in pipe.transformer.blocks():
        blk._compiled_call_impl = None
    torch._dynamo.reset()


@pytest.mark.slow
def test_requests_never_compile_and_replays_do(tiny_dir: Path, inductor_cache: Path) -> None:
    pipe = load_pipeline(tiny_dir, device="cpu", dtype=torch.float32)

    def run(size: int = 256) -> torch.Tensor:
        return pipe.generate("a cat", "", size, size, 2, 0.0, seed=0).latents

    eager = run()
    torch._dynamo.reset()
    stats = torch._dynamo.utils.counters["stats"]
    pipe.transformer.compile_blocks(dynamic=False)
    try:
        before = stats["unique_graphs"]
        with compile_only() as policy:
            first = run()
        assert policy.missed == {"dit"}
        assert stats["unique_graphs"] == before  # the request compiled nothing
        assert torch.equal(first, eager)  # it ran the eager code itself

        with compile_only({"dit"}) as policy:  # the replay: the DiT may compile
            run()
        assert policy.missed == set()
        compiled = stats["unique_graphs"]
        assert compiled > before

        with compile_only() as policy:
            again = run()
        assert policy.missed == set()  # every block found its graph
        assert stats["unique_graphs"] == compiled
        torch.testing.assert_close(again, eager, rtol=1e-4, atol=1e-4)

        with compile_only() as policy:
            run(384)  # a new size: eager again, and recorded for a replay
        assert policy.missed == {"dit"}
        assert stats["unique_graphs"] == compiled
    finally:
        _uncompile(pipe)


class _Scale(nn.Module):
    """User code (dynamo does not trace torch's own modules as a top-level frame)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x * self.w) + 1


def test_outside_a_policy_everything_compiles_as_torch_does() -> None:
    compiles: list[int] = []

    def backend(gm: torch.fx.GraphModule, _inputs: list[torch.Tensor]):  # noqa: ANN202 - a dynamo backend
        compiles.append(1)
        return gm.forward

    layer = _Scale()
    compile_module(layer, "vae", backend=backend, dynamic=False)
    x = torch.randn(2, 4)
    assert may_compile("vae")
    torch.testing.assert_close(layer(x), layer._call_impl(x))
    assert len(compiles) == 1
    with compile_only({"dit"}) as policy:
        layer(x)  # compiled before: runs the graph
        assert len(compiles) == 1 and policy.missed == set()
        previous = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = True
        try:
            seen: list[bool] = []
            layer.register_forward_hook(lambda *_: seen.append(torch.backends.cudnn.benchmark))
            layer(torch.randn(5, 4))  # a new shape: eager, and no cuDNN autotuning either
            assert seen == [False] and torch.backends.cudnn.benchmark is True
        finally:
            torch.backends.cudnn.benchmark = previous
        assert policy.missed == {"vae"} and len(compiles) == 1
    torch._dynamo.reset()


def test_unknown_components_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown components"), compile_only({"unet"}):
        pass
    with pytest.raises(ValueError, match="unknown component"):
        compile_module(nn.Linear(2, 2), "unet")


def test_graphs_are_not_captured_for_a_new_shape_under_the_policy() -> None:
    calls: list[tuple[int, ...]] = []

    def fn(x: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(x.shape))
        return x * 2

    graphs = ShapeGraphs(fn, component="text")
    with compile_only() as policy:
        out = graphs(torch.ones(1, 32))  # on the CPU a capture would fail: it is not attempted
    assert policy.missed == {"text"} and graphs.shapes == [] and calls == [(1, 32)]
    assert torch.equal(out, torch.full((1, 32), 2.0))


def test_an_eager_request_never_imports_the_compiler(tiny_dir: Path) -> None:
    """Compilation set up at load, a first request under the policy: dynamo and inductor stay unimported
    (several seconds of imports on the first image's path)."""
    code = f"""
import sys, torch
from pathlib import Path
from zimage_mcp.engine import load_pipeline
from zimage_mcp.engine.speed.compile_policy import compile_only
from zimage_mcp.engine.speed.optimize import optimize_vae
pipe = load_pipeline(Path({str(tiny_dir)!r}), device="cpu", dtype=torch.float32)
pipe.transformer.compile_blocks(dynamic=False)
optimize_vae(pipe.vae, compile=True)
with compile_only() as policy:
    pipe.generate("a cat", "", 256, 256, 2, 0.0, seed=0)
print(sorted(policy.missed), "torch._dynamo" in sys.modules, "torch._inductor" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.split("\n")[-2] == "['dit', 'vae'] False False"


def test_a_replay_reaches_the_text_encoder_through_the_prompt_cache(tiny_dir: Path) -> None:
    pipe = load_pipeline(tiny_dir, device="cpu", dtype=torch.float32)
    runs: list[int] = []
    pipe.text_encoder.model.layers[0].register_forward_hook(lambda *_: runs.append(1))
    first = pipe.encode_prompts(["a cat"])[0]
    pipe.encode_prompts(["a cat"])
    assert len(runs) == 1  # cached
    with pipe.text_encoder.uncached():
        again = pipe.encode_prompts(["a cat"])[0]
    assert len(runs) == 2 and torch.equal(first, again)
    pipe.encode_prompts(["a cat"])
    assert len(runs) == 2  # the cache is on again
