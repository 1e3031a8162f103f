"""Which tensors set the memory peak of an uncompiled VAE decode (a server's first request decodes eagerly).

    python benchmarks/probe_vae_memory.py --out DIR        # GPU: the FLUX VAE at full size, random weights
    python benchmarks/probe_vae_memory.py --variants --out DIR  # also: layout x cuDNN autotuning x compiled
    python benchmarks/probe_vae_memory.py --server-path --out DIR  # the whole pipeline as the server runs it
    python benchmarks/probe_vae_memory.py --compare-bands --out DIR  # convs in row bands (banded_conv) vs whole
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
from zimage_mcp.engine.speed.optimize import optimize_vae
from zimage_mcp.engine.vae import blocks
from zimage_mcp.engine.vae.model import AutoencoderKL, to_rgb8

GIB = 2**30


def our_frame(frames: list[dict[str, Any]]) -> str:
    """The innermost line of ours on an allocation's stack, and in brackets the innermost frame when it is not
    ours: compiled code allocates in Inductor's generated module, under ``compile_policy.py``'s call."""

    def line(f: dict[str, Any]) -> str:
        return f"{Path(f['filename']).name}:{f['line']} {f['name']}"

    ours = next((f for f in frames if "zimage_mcp" in f.get("filename", "")), None)
    if ours is None:
        return " < ".join(line(f) for f in frames[:3]) or "?"
    return line(ours) if ours is frames[0] else f"{line(ours)} [{line(frames[0])}]"


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


def variant_peaks(size: int, channels_last: bool, autotune: bool, compiled: bool, runs: int = 5) -> dict[str, Any]:
    """One decoder set up as the server would (``optimize_vae``: channels_last, compiled) or not: the first
    call's peak (for a compiled decoder, what the idle-time compilation meets: tracing, Inductor and cuDNN's
    autotuning), then the steady peak and the median decode time, all above the weights."""
    torch.backends.cudnn.benchmark = autotune
    torch._dynamo.reset()
    vae = AutoencoderKL(VAE_PRESETS["flux"]).to("cuda", torch.bfloat16).eval()
    if channels_last:
        optimize_vae(vae, compile=compiled)
    z = torch.randn(1, vae.cfg.latent_channels, size // 8, size // 8, device="cuda", dtype=torch.bfloat16)
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    weights = torch.cuda.memory_allocated()
    reserved0 = torch.cuda.memory_reserved()
    torch.cuda.reset_peak_memory_stats()
    with torch.inference_mode():
        t = time.perf_counter()
        vae.decode(z)
        torch.cuda.synchronize()
        first_s = time.perf_counter() - t
        first = (torch.cuda.max_memory_allocated() - weights, torch.cuda.max_memory_reserved() - reserved0)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(runs):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            vae.decode(z)
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
    steady = (torch.cuda.max_memory_allocated() - weights, torch.cuda.max_memory_reserved() - reserved0)
    del vae, z
    torch.cuda.empty_cache()
    return {
        "size": size,
        "channels_last": channels_last,
        "cudnn_autotune": autotune,
        "compiled": compiled,
        "first_call_s": round(first_s, 2),
        "first_allocated_gib": round(first[0] / GIB, 3),
        "first_reserved_gib": round(first[1] / GIB, 3),
        "steady_allocated_gib": round(steady[0] / GIB, 3),
        "steady_reserved_gib": round(steady[1] / GIB, 3),
        "decode_ms": round(sorted(times)[len(times) // 2], 2),
    }


def server_path(size: int, top: int) -> dict[str, Any]:
    """The full-size pipeline set up as the server's default mode sets it up (``optimize``), one eager Base
    request with CFG under ``compile_only``, then the idle-time units (DiT, text, VAE) as the compile queue
    replays them: the allocator's peak above the weights in each, and what was alive at each unit's peak."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from components import build

    from zimage_mcp.engine.device import use_expandable_segments
    from zimage_mcp.engine.dit.attention import best_backend
    from zimage_mcp.engine.speed.compile_policy import compile_only
    from zimage_mcp.engine.speed.optimize import optimize

    use_expandable_segments()  # as the server's default allocator setting (engine_loading.prepare)
    c = build(False, torch.device("cuda"), torch.bfloat16)
    pipe = c.ours
    del c  # the reference's own tensors (its last text layer, norm and embedding table) go with it
    pipe.transformer.attn_backend = best_backend(pipe.device)  # as the server's loader picks it
    optimize(pipe)
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    weights = torch.cuda.memory_allocated()
    report: dict[str, Any] = {"size": size, "weights_gib": round(weights / GIB, 3)}

    def request(steps: int) -> None:
        pipe.generate("a lighthouse on a cliff at dusk", width=size, height=size, steps=steps, guidance=4.0, seed=1)

    for unit, allowed in (("eager request", set()), ("dit", {"dit"}), ("text", {"text"}), ("vae", {"vae"})):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        traced = unit in ("eager request", "vae")
        if traced:
            torch.cuda.memory._record_memory_history(max_entries=400_000)
        with torch.inference_mode(), compile_only(allowed):
            request(8 if unit == "eager request" else 2)
        torch.cuda.synchronize()
        row: dict[str, Any] = {
            "allocated_over_weights_gib": round((torch.cuda.max_memory_allocated() - weights) / GIB, 3),
            "reserved_gib": round(torch.cuda.max_memory_reserved() / GIB, 3),
        }
        if traced:
            snapshot = torch.cuda.memory._snapshot()
            torch.cuda.memory._record_memory_history(enabled=None)
            row.update(peak_from_history(snapshot, top))
        report[unit] = row
        print(json.dumps({unit: row}), flush=True)
    return report


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--top", type=int, default=8)
    ap.add_argument("--tiny", action="store_true", help="CPU: checks the script runs; nothing is traced")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--variants", action="store_true", help="also each layout x autotuning x compiled decoder")
    ap.add_argument("--server-path", action="store_true", help="only the whole pipeline, as the server runs it")
    ap.add_argument("--compare-bands", action="store_true", help="also with every conv whole: peaks, time, output")
    a = ap.parse_args(argv)
    if a.tiny or not torch.cuda.is_available():
        vae = AutoencoderKL(VAE_PRESETS["tiny"]).eval()
        with torch.inference_mode():
            out = vae.decode(torch.randn(1, vae.cfg.latent_channels, 8, 8))
        report: dict[str, Any] = {"skipped": "no CUDA device: nothing to trace", "decoded": list(out.shape)}
    elif a.server_path:
        report = server_path(a.size, a.top)
    else:
        torch.backends.cudnn.benchmark = False  # as an uncompiled request runs (compile_policy)
        vae = AutoencoderKL(VAE_PRESETS["flux"]).to("cuda", torch.bfloat16).eval()
        z = torch.randn(1, vae.cfg.latent_channels, a.size // 8, a.size // 8, device="cuda", dtype=torch.bfloat16)
        report = {"size": a.size, "band_bytes": blocks.BAND_BYTES, **decode_peak(vae, z, a.top)}
        if a.compare_bands:  # the same decode with every conv whole, as before banded_conv
            default, blocks.BAND_BYTES = blocks.BAND_BYTES, 2**62
            report["whole_convs"] = decode_peak(vae, z, a.top)
            with torch.inference_mode():
                whole = vae.decode(z).float()
                blocks.BAND_BYTES = default
                banded = vae.decode(z).float()
            report["banded_vs_whole"] = {
                "max_abs": (banded - whole).abs().max().item(),
                "mean_abs": (banded - whole).abs().mean().item(),
                "rgb8_pixels_differing": int((to_rgb8(banded) != to_rgb8(whole)).any(-1).sum().item()),
            }
        del vae, z
        if a.variants:
            report["variants"] = []
            # every eager layout; compiled only as the server compiles it (channels_last)
            for channels_last, compiled in ((False, False), (True, False), (True, True)):
                for autotune in (False, True):
                    row = variant_peaks(a.size, channels_last, autotune, compiled)
                    print(json.dumps(row), flush=True)
                    report["variants"].append(row)
    print(json.dumps(report), flush=True)
    if a.out:
        a.out.mkdir(parents=True, exist_ok=True)
        (a.out / "probe_vae_memory.json").write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
