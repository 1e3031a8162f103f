"""Which tensors set the memory peak of an uncompiled VAE decode (a server's first request decodes eagerly).

    python benchmarks/probe_vae_memory.py --out DIR        # GPU: the FLUX VAE at full size, random weights
    python benchmarks/probe_vae_memory.py --tiny           # CPU smoke run (no device memory to trace)

The decode runs under the CUDA allocator's history; the report gives the peak above the weights and the
largest tensors alive at that moment, each with the line of ours that allocated it. (On an H200 at 1024^2:
2.43 GiB, at the last upsampler: a 1 GiB allocation by its conv (cuDNN's workspace), the upsampled input and
the conv's output, 512 MiB each, and the previous block's output, then still referenced by the decoder's
block loop; the decoder now runs layer by layer.)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from zimage_mcp.engine.config import VAE_PRESETS
from zimage_mcp.engine.vae.model import AutoencoderKL


def our_frame(frames: list[dict[str, Any]]) -> str:
    for f in frames:
        if "zimage_mcp" in f.get("filename", ""):
            return f"{Path(f['filename']).name}:{f['line']} {f['name']}"
    return frames[0]["name"] if frames else "?"


def peak_from_history(snapshot: dict[str, Any], top: int) -> dict[str, Any]:
    """Replay the allocator's events: the peak of live bytes and what was alive then."""
    live: dict[int, tuple[int, str]] = {}
    current = peak = 0
    at_peak: list[tuple[int, str]] = []
    for event in snapshot["device_traces"][0]:
        action, addr = event["action"], event["addr"]
        if action == "alloc":
            live[addr] = (event["size"], our_frame(event.get("frames", [])))
            current += event["size"]
            if current > peak:
                peak, at_peak = current, list(live.values())
        elif action in ("free_requested", "free_completed") and addr in live:
            current -= live.pop(addr)[0]
    at_peak.sort(reverse=True)
    return {
        "peak_mib": round(peak / 2**20, 1),
        "live_at_peak": [{"mib": round(size / 2**20, 1), "allocated_by": where} for size, where in at_peak[:top]],
    }


def decode_peak(vae: AutoencoderKL, z: torch.Tensor, top: int) -> dict[str, Any]:
    with torch.inference_mode():
        vae.decode(z)  # once untraced: cuDNN's handles and workspaces exist before the trace
        torch.cuda.synchronize()
        torch.cuda.memory._record_memory_history(max_entries=200_000)
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        t = time.perf_counter()
        vae.decode(z)
        torch.cuda.synchronize()
        ms = (time.perf_counter() - t) * 1000
        snapshot = torch.cuda.memory._snapshot()
        torch.cuda.memory._record_memory_history(enabled=None)
    return {
        "decode_ms": round(ms, 1),
        "max_allocated_over_weights_mib": round((torch.cuda.max_memory_allocated() - start) / 2**20, 1),
        **peak_from_history(snapshot, top),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--top", type=int, default=8)
    ap.add_argument("--tiny", action="store_true", help="CPU: checks the script runs; nothing is traced")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args(argv)
    if a.tiny or not torch.cuda.is_available():
        vae = AutoencoderKL(VAE_PRESETS["tiny"]).eval()
        with torch.inference_mode():
            out = vae.decode(torch.randn(1, vae.cfg.latent_channels, 8, 8))
        report: dict[str, Any] = {"skipped": "no CUDA device: nothing to trace", "decoded": list(out.shape)}
    else:
        torch.backends.cudnn.benchmark = False  # as an uncompiled request runs (compile_policy)
        vae = AutoencoderKL(VAE_PRESETS["flux"]).to("cuda", torch.bfloat16).eval()
        z = torch.randn(1, vae.cfg.latent_channels, a.size // 8, a.size // 8, device="cuda", dtype=torch.bfloat16)
        report = {"size": a.size, **decode_peak(vae, z, a.top)}
    print(json.dumps(report), flush=True)
    if a.out:
        a.out.mkdir(parents=True, exist_ok=True)
        (a.out / "probe_vae_memory.json").write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
