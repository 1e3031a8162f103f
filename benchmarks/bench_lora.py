"""LoRA on the full-size DiT: swap time, per-step cost, and torch.compile recompiles across swaps.

python benchmarks/bench_lora.py [--rank 32] [--compile]   # GPU
python benchmarks/bench_lora.py --tiny                    # CPU smoke run
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_engine import sync, timed  # noqa: E402
from components import build  # noqa: E402

from zimage_mcp.engine.weights.lora_apply import LoraManager  # noqa: E402

TARGETS = (
    "attention.to_q",
    "attention.to_k",
    "attention.to_v",
    "attention.to_out.0",
    "feed_forward.w1",
    "feed_forward.w2",
    "feed_forward.w3",
)


def write_lora(path: Path, model: torch.nn.Module, rank: int, seed: int) -> Path:
    """A diffusers/PEFT-format LoRA on every attention and FFN projection of every main layer."""
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for i in range(len(model.layers)):
        for t in TARGETS:
            w = model.get_submodule(f"layers.{i}.{t}").weight
            out_f, in_f = w.shape
            sd[f"transformer.layers.{i}.{t}.lora_A.weight"] = torch.randn(rank, in_f, generator=gen) * in_f**-0.5
            sd[f"transformer.layers.{i}.{t}.lora_B.weight"] = torch.randn(out_f, rank, generator=gen) * 0.01
    save_file({k: v.to(torch.bfloat16).contiguous() for k, v in sd.items()}, str(path))
    return path


def unique_graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


@torch.inference_mode()
def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--rank", type=int, default=32)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args(argv)
    dev, dt = ("cpu", torch.float32) if args.tiny else ("cuda", torch.bfloat16)
    c = build(args.tiny, dev, dt)
    model = c.ours.transformer
    model.fuse_projections()
    tmp = Path(tempfile.mkdtemp())
    a = write_lora(tmp / "a.safetensors", model, args.rank, 1)
    b = write_lora(tmp / "b.safetensors", model, args.rank, 2)
    mgr = LoraManager(model)
    size = 256 if args.tiny else 1024
    feats = c.ours.encode_prompts(["a fox in the snow, golden hour"])
    x = torch.randn(1, 16, size // 8, size // 8, device=c.device, dtype=dt)
    t = torch.full((1,), 0.5, device=c.device)
    cond = model.prepare(feats, (size // 8, size // 8))
    if args.compile:
        model.compile_blocks(dynamic=False)
    fwd = lambda: model.forward_prepared(x, t, cond)  # noqa: E731
    r: dict = {
        "device": torch.cuda.get_device_name() if dev == "cuda" else "cpu",
        "rank": args.rank,
        "compiled": args.compile,
        "lora_modules": 7 * len(model.layers),
    }
    r["forward_no_lora_ms"] = timed(fwd, c.device, args.runs, warmup=2)
    graphs0 = unique_graphs()
    t0 = time.perf_counter()
    mgr.set_adapters([(a, 1.0)])
    sync(c.device)
    r["first_apply_s"] = time.perf_counter() - t0  # reads the file, saves originals, merges
    r["forward_lora_ms"] = timed(fwd, c.device, args.runs, warmup=1)
    swaps = []
    for i in range(args.runs):
        t0 = time.perf_counter()
        mgr.set_adapters([(b if i % 2 == 0 else a, 0.8)])
        sync(c.device)
        swaps.append(time.perf_counter() - t0)
        fwd()
    r["swap_s_median"] = statistics.median(swaps)
    r["swap_s_max"] = max(swaps)
    t0 = time.perf_counter()
    mgr.set_adapters([(a, 0.7), (b, -0.4)])
    sync(c.device)
    r["two_adapters_apply_s"] = time.perf_counter() - t0
    fwd()
    t0 = time.perf_counter()
    mgr.clear()
    sync(c.device)
    r["clear_s"] = time.perf_counter() - t0
    r["forward_after_clear_ms"] = timed(fwd, c.device, args.runs, warmup=1)
    r["per_step_overhead_pct"] = 100 * (r["forward_lora_ms"] / r["forward_no_lora_ms"] - 1)
    r["new_graphs_after_swaps"] = unique_graphs() - graphs0
    print(json.dumps(r), flush=True)
    return r


if __name__ == "__main__":
    main()
