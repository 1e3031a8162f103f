"""Our engine against diffusers 0.42.1 in the same job, on the same weights and settings.

    python benchmarks/bench_engine.py                       # GPU: full size, random weights
    python benchmarks/bench_engine.py --rows 1024 512 base  # a subset of rows
    python benchmarks/bench_engine.py --tiny                # CPU smoke run (CI keeps it from rotting)
Timing: CUDA-synchronised, warm-up first, medians over --runs (>= 5). Peak memory per row.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from components import Components, build  # noqa: E402
from floors import flop_floor_ms, kernel_floor_ms  # noqa: E402

PROMPT = (
    "A cinematic photo of a red fox standing in fresh snow at golden hour, shallow depth of field, "
    "soft rim light, 85mm lens, highly detailed fur"
)
NEGATIVE = "blurry, low quality, watermark"
ROWS = {  # name: (width, height, steps, guidance, batch)
    "1024": (1024, 1024, 8, 0.0, 1),
    "512": (512, 512, 8, 0.0, 1),
    "768": (768, 768, 8, 0.0, 1),
    "1280x720": (1280, 720, 8, 0.0, 1),
    "2048": (2048, 2048, 8, 0.0, 1),
    "base": (1024, 1024, 50, 4.0, 1),
    "batch2": (1024, 1024, 8, 0.0, 2),
}
TINY_ROWS = {"1024": (256, 256, 4, 0.0, 1), "base": (256, 256, 4, 4.0, 1), "batch2": (256, 256, 4, 0.0, 2)}


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def timed(fn: Callable[[], object], dev: torch.device, runs: int, warmup: int = 1) -> float:
    """Median wall time in ms of ``runs`` synchronised calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    sync(dev)
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        sync(dev)
        out.append((time.perf_counter() - t) * 1000)
    return statistics.median(out)


def resident_gib(*modules: torch.nn.Module) -> float:
    """GiB of distinct CUDA storages held by the modules' parameters and buffers (shared ones once)."""
    seen: dict[int, int] = {}
    for m in modules:
        for t in [*m.parameters(), *m.buffers()]:
            if t.is_cuda:
                st = t.untyped_storage()
                seen[st.data_ptr()] = st.nbytes()
    return sum(seen.values()) / 2**30


def peak_gib(fn: Callable[[], object], dev: torch.device, *modules: torch.nn.Module) -> float:
    """Peak memory of one engine during ``fn``: its own resident weights + the call's transient peak.

    Both engines live in one process and share most weight tensors (but not the fused copies), so the
    device-wide peak would count the other engine's tensors too."""
    if dev.type != "cuda":
        return float("nan")
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    fn()
    sync(dev)
    return resident_gib(*modules) + (torch.cuda.max_memory_allocated(dev) - before) / 2**30


def ours_modules(c: Components) -> tuple[torch.nn.Module, ...]:
    return c.ours.transformer, c.ours.vae, c.ours.text_encoder.model


def ref_modules(c: Components) -> tuple[torch.nn.Module, ...]:
    return c.ref.transformer, c.ref.vae, c.ref.text_encoder


def row(c: Components, name: str, spec: tuple, runs: int) -> dict:
    w, h, steps, g, b = spec
    dev, ours, ref = c.device, c.ours, c.ref
    neg = NEGATIVE if g > 0 else ""

    def ours_e2e() -> object:
        ours.text_encoder.clear_cache()  # time a fresh prompt, not the cache
        return ours.generate(PROMPT, neg, w, h, steps, g, seed=0, count=b)

    def ref_e2e() -> object:
        return ref(
            PROMPT,
            height=h,
            width=w,
            num_inference_steps=steps,
            guidance_scale=g,
            negative_prompt=neg or None,
            num_images_per_prompt=b,
            generator=torch.Generator("cpu").manual_seed(0),
        )

    with torch.inference_mode():
        feats = ours.encode_prompts([PROMPT])
        x = torch.randn(b, 16, h // 8, w // 8, device=dev, dtype=c.dtype)
        t = torch.full((b,), 0.5, device=dev)
        cond = ours.transformer.prepare(feats * b, (h // 8, w // 8))
        lat = torch.randn(1, 16, h // 8, w // 8, device=dev)
        r = {"row": name, "size": f"{w}x{h}", "steps": steps, "guidance": g, "batch": b}
        r["ours_e2e_ms"] = timed(ours_e2e, dev, runs)
        r["ref_e2e_ms"] = timed(ref_e2e, dev, runs)
        r["ours_forward_ms"] = timed(lambda: ours.transformer.forward_prepared(x, t, cond), dev, runs)
        xs = [xi.unsqueeze(1) for xi in x]
        r["ref_forward_ms"] = timed(lambda: ref.transformer(xs, t, feats * b, return_dict=False), dev, runs)
        r["ours_text_ms"] = timed(lambda: (ours.text_encoder.clear_cache(), ours.encode_prompts([PROMPT])), dev, runs)
        r["ref_text_ms"] = timed(
            lambda: ref.encode_prompt(PROMPT, device=dev, do_classifier_free_guidance=False), dev, runs
        )
        r["ours_vae_ms"] = timed(lambda: ours.decode(lat), dev, runs)
        r["ref_vae_ms"] = timed(
            lambda: ref.image_processor.postprocess(
                ref.vae.decode((lat.to(ref.vae.dtype) / 0.3611) + 0.1159, return_dict=False)[0], output_type="pil"
            ),
            dev,
            runs,
        )
        r["ours_peak_gib"] = peak_gib(ours_e2e, dev, *ours_modules(c))
        r["ref_peak_gib"] = peak_gib(ref_e2e, dev, *ref_modules(c))
        r["caption_tokens"] = int(feats[0].shape[0])
    r["speedup_e2e"] = r["ref_e2e_ms"] / r["ours_e2e_ms"]
    r["speedup_forward"] = r["ref_forward_ms"] / r["ours_forward_ms"]
    return r


def offload_row(c: Components, name: str, spec: tuple, runs: int) -> dict:
    """Low-VRAM mode: ours only (diffusers needs accelerate's offload hooks, not installed here)."""
    w, h, steps, g, b = spec

    def ours_e2e() -> object:
        c.ours.text_encoder.clear_cache()
        return c.ours.generate(PROMPT, NEGATIVE if g > 0 else "", w, h, steps, g, seed=0, count=b)

    with torch.inference_mode():
        r = {"row": name + "+offload_te", "size": f"{w}x{h}", "steps": steps, "guidance": g, "batch": b}
        r["ours_e2e_ms"] = timed(ours_e2e, c.device, runs)
        r["ours_text_ms_on_cpu"] = timed(
            lambda: (c.ours.text_encoder.clear_cache(), c.ours.encode_prompts([PROMPT])), c.device, runs
        )
        r["ours_peak_gib"] = peak_gib(ours_e2e, c.device, *ours_modules(c))
    return r


def first_image_ms(c: Components, spec: tuple) -> float:
    """Time to the first image once the weights are in memory, compilation included."""
    w, h, steps, g, b = spec
    t = time.perf_counter()
    with torch.inference_mode():
        c.ours.generate(PROMPT, "", w, h, steps, g, seed=0, count=b)
    sync(c.device)
    return (time.perf_counter() - t) * 1000


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny", action="store_true", help="CPU smoke run on the tiny presets")
    ap.add_argument("--rows", nargs="*", default=None)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument(
        "--optimize",
        choices=["off", "fuse", "compile"],
        default="compile",
        help="ours through engine.speed.optimize, exactly as the server runs it",
    )
    ap.add_argument("--fp8", action="store_true", help="ours with fp8 GEMM weights (opt-in, lossy mode)")
    ap.add_argument("--compile-ref", action="store_true", help="also compile diffusers (compile_repeated_blocks)")
    ap.add_argument("--vae-dtype", choices=["float32", "bfloat16"], default="bfloat16")
    ap.add_argument("--attn", default=None, help="attention backend for ours (sdpa, cudnn, flash, efficient)")
    ap.add_argument("--offload-te", action="store_true", help="low-VRAM: text encoder in host memory")
    ap.add_argument("--cfg-mode", choices=["auto", "batched", "sequential"], default="auto")
    ap.add_argument("--floor", action="store_true", help="time the kernel floor of one 1024^2 forward")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    dev = "cpu" if args.tiny else "cuda"
    dtype = torch.float32 if args.tiny else torch.bfloat16
    c = build(args.tiny, dev, dtype, vae_dtype=getattr(torch, args.vae_dtype) if not args.tiny else torch.float32)
    from zimage_mcp.engine.dit.attention import best_backend
    from zimage_mcp.engine.speed.optimize import optimize

    c.ours.transformer.attn_backend = args.attn or best_backend(c.device)
    c.ours.cfg_mode = args.cfg_mode
    if args.offload_te:  # before optimize(), which then leaves the host-side encoder eager
        c.ours.offload_text_encoder = True
        c.ours.vae_tiling = True  # as ZImagePipeline(offload_text_encoder=True) sets it
        c.ours.text_encoder.model.to("cpu")
        c.ref.text_encoder.to("cpu")  # shares storage with ours: both must move for the GPU copy to go
        torch.cuda.empty_cache()
    optimize(c.ours, args.optimize, fp8=args.fp8)
    table = TINY_ROWS if args.tiny else ROWS
    names = args.rows or list(table)
    results: list[dict] = []
    setup = {
        "device": torch.cuda.get_device_name() if dev == "cuda" else "cpu",
        "torch": torch.__version__,
        "optimize": args.optimize,
        "fp8": args.fp8,
        "vae_dtype": args.vae_dtype,
        "attn": c.ours.transformer.attn_backend,
        "offload_te": args.offload_te,
        "cfg_mode": args.cfg_mode,
        "te_cuda_graphs": c.ours.text_encoder.cuda_graphs,
        "fused_rope": c.ours.transformer.layers[0].attention.fused_rope,
    }
    if args.optimize == "compile" and not args.tiny:
        setup["first_image_ms_incl_compile"] = first_image_ms(c, table[names[0]])
    if args.compile_ref:
        c.ref.transformer.compile_repeated_blocks(fullgraph=True)
    print(json.dumps({"setup": setup}), flush=True)
    if args.floor and not args.tiny:  # first, on a GPU not yet heated by minutes of rows
        with torch.inference_mode():
            caption = int(c.ours.encode_prompts([PROMPT])[0].shape[0])
        floor = kernel_floor_ms(c.ours.transformer.cfg, 4096, caption, dev)
        floor["flop_floor_ms"] = flop_floor_ms(c.ours.transformer.cfg, 4096, caption, floor["peak_tflops"])
        print(json.dumps({"floor_1024": floor}), flush=True)
        results.append({"floor_1024": floor})
    for name in names:
        r = offload_row(c, name, table[name], args.runs) if args.offload_te else row(c, name, table[name], args.runs)
        print(json.dumps(r), flush=True)
        results.append(r)
    if args.json:
        args.json.write_text(json.dumps({"setup": setup, "results": results}, indent=2))
    return results


if __name__ == "__main__":
    main()
