"""Does the initial noise's copy to the GPU hold up a request? (RESULTS §23: ``prepare`` took 4.1-4.3 ms on an H100
host, the CPU generator alone about 0.4 ms.)

Each request draws its noise from a CPU generator (a seed gives the same image on any device) and copies it to
the GPU. A copy from pageable memory waits for the stream and returns only once the bytes are staged; from
pinned memory with ``non_blocking`` the CPU goes on at once to launch the next work. This times both, each
after the same idle pause as ``bench_server.py`` (the GPU's clocks fall while it idles), alternating, followed
by a launch-bound stand-in for the text encoder (many small kernels) and one synchronisation:

    python3 benchmarks/probe_initial_noise.py --runs 15        # one JSON line per variant

Nothing of the product reads it: benchmarks only.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from zimage_mcp.engine.pipelines.sampler import noise_like


def noise(shape: tuple[int, ...], seed: int, variant: str, device: torch.device) -> torch.Tensor:
    cpu = noise_like(shape, seed)
    if variant == "pinned" and device.type == "cuda":
        return cpu.pin_memory().to(device, non_blocking=True)
    return cpu.to(device)


def stand_in(x: torch.Tensor, w: torch.Tensor, layers: int) -> torch.Tensor:
    """About as many small launches as the text encoder's forward (36 layers, a handful of kernels each)."""
    h = x.flatten(1)[:, : w.shape[0]].to(w.dtype)
    for _ in range(layers):
        h = torch.nn.functional.silu(h @ w) * 0.5 + h
    return h


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=512, help="image side in pixels (the latent is side/8)")
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--pause", type=float, default=1.0, help="idle seconds before each timed request")
    parser.add_argument("--layers", type=int, default=144)
    parser.add_argument("--device", default="cuda", help="cpu only checks that the script runs")
    args = parser.parse_args()
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    shape = (1, 16, 2 * (args.size // 16), 2 * (args.size // 16))
    w = torch.randn(1024, 1024, device=device, dtype=torch.bfloat16) * 0.02
    variants = ("pageable", "pinned")
    for variant in variants * 3:  # warm-up: the CUDA context, the pinned allocator's first block
        stand_in(noise(shape, 0, variant, device), w, args.layers)
    sync()
    assert torch.equal(noise(shape, 7, "pageable", device), noise(shape, 7, "pinned", device))
    times: dict[str, dict[str, list[float]]] = {v: {"noise": [], "total": []} for v in variants}
    for run in range(args.runs):
        for variant in variants if run % 2 == 0 else variants[::-1]:
            time.sleep(args.pause)
            t0 = time.perf_counter()
            x = noise(shape, run, variant, device)
            t1 = time.perf_counter()
            stand_in(x, w, args.layers)
            sync()
            t2 = time.perf_counter()
            times[variant]["noise"].append((t1 - t0) * 1000)
            times[variant]["total"].append((t2 - t0) * 1000)
    for variant, spans in times.items():
        row = {"probe": "initial_noise", "variant": variant, "size": args.size, "pause_s": args.pause}
        row.update({f"{k}_ms": round(statistics.median(v), 3) for k, v in spans.items()})
        row.update({f"{k}_ms_all": [round(t, 3) for t in v] for k, v in spans.items()})
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
