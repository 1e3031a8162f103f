"""Where a fresh process's first (uncompiled) request spends its time, against the same request run again.

    python benchmarks/probe_first_request.py --out DIR     # GPU: full-size random weights, 1024^2, 8 steps
    python benchmarks/probe_first_request.py --tiny        # CPU smoke run

A server's first image after a restart runs eagerly (compilation waits for idle time). Its phases took
2.6 s on an H200 against about 1.2 s for the same eager request once warm: one-time costs (library
handles, per-shape kernel plans, JIT kernels) that are not the model's work. This runs the pipeline as the
server sets it up (``optimize``), one eager request under ``compile_only`` with the CPU side profiled, then
the same request again, and reports both requests' phases and the operators whose CPU time grew most.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from components import build  # noqa: E402

from zimage_mcp.engine.device import prepare_runtime  # noqa: E402
from zimage_mcp.engine.dit.attention import best_backend  # noqa: E402
from zimage_mcp.engine.speed.compile_policy import compile_only  # noqa: E402
from zimage_mcp.engine.speed.optimize import optimize  # noqa: E402


def one_request(pipe: Any, size: int, steps: int) -> dict[str, Any]:
    start = time.perf_counter()
    with compile_only():
        out = pipe.generate("a lighthouse on a cliff at dusk", width=size, height=size, steps=steps, seed=1)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return {
        "wall_ms": round((time.perf_counter() - start) * 1000, 1),
        **{k: round(v * 1000, 1) if v < 100 else v for k, v in out.timings.items()},
    }


def cpu_ops(prof: Any) -> dict[str, float]:
    return {e.key: e.self_cpu_time_total / 1000 for e in prof.key_averages()}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--top", type=int, default=20)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args(argv)
    tiny = a.tiny or not torch.cuda.is_available()
    device = torch.device("cpu" if tiny else "cuda")
    pipe = build(tiny, device, torch.float32 if tiny else torch.bfloat16).ours
    size = 256 if tiny else a.size
    pipe.transformer.attn_backend = best_backend(device)  # as the server's loader picks it
    prepare_runtime(device, False)  # what the server's start does before a first load (no compiler)
    optimize(pipe)
    from torch.profiler import ProfilerActivity, profile

    report: dict[str, Any] = {"size": size, "steps": a.steps}
    with profile(activities=[ProfilerActivity.CPU]) as first_prof:
        report["first"] = one_request(pipe, size, a.steps)
    with profile(activities=[ProfilerActivity.CPU]) as second_prof:
        report["second"] = one_request(pipe, size, a.steps)
    first, second = cpu_ops(first_prof), cpu_ops(second_prof)
    grown = sorted(((ms - second.get(op, 0.0), op) for op, ms in first.items()), reverse=True)[: a.top]
    report["cpu_ms_grown_by_op"] = [[round(ms, 1), op] for ms, op in grown]
    print(json.dumps(report), flush=True)
    if a.out:
        a.out.mkdir(parents=True, exist_ok=True)
        (a.out / "probe_first_request.json").write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
