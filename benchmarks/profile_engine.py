"""Where the time goes: kernel profiles and one-variable experiments on our engine alone (no timings of
diffusers here; bench_engine.py does the same-job comparison).

    python benchmarks/profile_engine.py --out DIR      # GPU, full size, random weights
    python benchmarks/profile_engine.py --tiny          # CPU smoke run (CI)

Sections, each recorded even if a later one fails: text encoder eager vs CUDA graphs vs compiled layers
under graphs (accuracy against an fp32 copy); one compiled 1024^2 DiT forward profiled by kernel class; the
same forward replayed as one CUDA graph (is it launch-bound?); VAE decode; where an end-to-end call leaves
the GPU idle (``e2e_gaps``, best with ``--server-setup``); the opt-in step cache against the same seed
without it; fp8 vs bf16 over a full 8-step run (speed, latent error, PSNR); peak memory of the low-VRAM
modes. Writes ``profile.json`` and the kernel tables to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_engine import PROMPT, ours_modules, peak_gib, resident_gib, sync, timed  # noqa: E402
from components import Components, build  # noqa: E402

KERNEL_CLASSES = (  # first match wins; names of cuBLAS/cuDNN/Triton kernels on Hopper
    ("attention", ("fmha", "flash", "attention", "cudnn_generated_fort_native_sdpa", "sdpa")),
    ("gemm", ("gemm", "nvjet", "xmma", "cutlass", "sm90_", "scaled_mm", "splitk")),
    ("conv", ("conv", "implicit", "winograd", "fprop", "dgrad")),
    ("triton (fused elementwise)", ("triton",)),
    ("copy", ("copy", "memcpy", "memset", "cat", "elementwise_kernel", "vectorized")),
)


def kernel_class(name: str) -> str:
    low = name.lower()
    for cls, keys in KERNEL_CLASSES:
        if any(k in low for k in keys):
            return cls
    return "other"


def profile_kernels(fn: Callable[[], object], reps: int, out: Path | None, label: str) -> dict:
    """GPU time per call by kernel class, plus the top kernels (written to ``out/label.txt``)."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    sync(torch.device("cuda"))
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            fn()
        sync(torch.device("cuda"))
    classes: dict[str, float] = {}
    rows = []
    for ev in prof.key_averages():
        us = getattr(ev, "device_time_total", None) or getattr(ev, "cuda_time_total", 0.0)
        if not us or ev.key.startswith("ProfilerStep"):
            continue
        if getattr(ev, "device_type", None) is not None and "CUDA" not in str(ev.device_type):
            continue
        classes[kernel_class(ev.key)] = classes.get(kernel_class(ev.key), 0.0) + us / 1000 / reps
        rows.append((us / 1000 / reps, ev.count // reps, ev.key))
    rows.sort(reverse=True)
    if out is not None:
        text = "\n".join(f"{ms:9.3f} ms  x{n:<4d} {name[:160]}" for ms, n, name in rows[:60])
        (out / f"{label}.txt").write_text(text + "\n")
    return {
        "gpu_ms_by_class": {k: round(v, 3) for k, v in sorted(classes.items(), key=lambda kv: -kv[1])},
        "gpu_ms_total": round(sum(classes.values()), 3),
        "top": [[round(ms, 3), n, name[:120]] for ms, n, name in rows[:12]],
    }


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """a, b in [0, 1]."""
    mse = torch.mean((a.float() - b.float()) ** 2).item()
    return float("inf") if mse == 0 else 10 * math.log10(1.0 / mse)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def text_section(c: Components, runs: int) -> dict:
    te = c.ours.text_encoder
    r: dict = {}
    with torch.inference_mode():
        eager = te.encode([PROMPT])[0]
        r["tokens"] = int(eager.shape[0])
        r["eager_ms"] = timed(lambda: (te.clear_cache(), te.encode([PROMPT])), c.device, runs)
        if c.device.type != "cuda":
            return r
        te.use_cuda_graphs()
        t = time.perf_counter()
        te.clear_cache()
        graphed = te.encode([PROMPT])[0]
        sync(c.device)
        r["first_graph_call_ms_incl_capture"] = (time.perf_counter() - t) * 1000
        r["graph_ms"] = timed(lambda: (te.clear_cache(), te.encode([PROMPT])), c.device, runs)
        r["graph_vs_eager_rel_err"] = rel(graphed, eager)
        r["graph_batch2_ms"] = timed(
            lambda: (te.clear_cache(), te.encode([PROMPT, "blurry, low quality"])), c.device, runs
        )
        r["cached_ms"] = timed(lambda: te.encode([PROMPT]), c.device, runs)
        r["graph_shapes"] = [list(s) for s in te.graph_shapes]
        r.update(text_compiled_experiment(c, runs, eager))
    return r


def text_compiled_experiment(c: Components, runs: int, eager: torch.Tensor) -> dict:
    """Experiment: Inductor-fused decoder layers (norms, RoPE, silu·mul in a few kernels) under the same
    CUDA graphs, in three compile variants. Where the graphed encoder's GPU time goes comes first (kernel
    classes, eager). Accuracy is judged against an fp32 copy of the encoder, next to bf16 eager's own
    error. The encoder is restored to plain graphs afterwards."""
    import copy

    te = c.ours.text_encoder
    r: dict = {}
    te.use_cuda_graphs(False)
    prof = profile_kernels(lambda: (te.clear_cache(), te.encode([PROMPT])), 2, None, "text_kernels")
    r["eager_gpu_ms_by_class"], r["eager_gpu_ms_total"], r["eager_top"] = (
        prof["gpu_ms_by_class"],
        prof["gpu_ms_total"],
        prof["top"][:8],
    )
    bf16_model = te.model
    te.model = copy.deepcopy(bf16_model).float()
    te.clear_cache()
    fp32 = te.encode([PROMPT])[0]
    te.model = bf16_model
    del bf16_model
    torch.cuda.empty_cache()
    r["eager_bf16_vs_fp32_rel_err"] = rel(eager, fp32.to(eager.dtype))
    long_prompt = ", ".join([PROMPT] * 3)  # another length bucket: does a new length recompile?
    variants = {
        "static": {"dynamic": False},
        "static_emulate": {"dynamic": False, "options": {"emulate_precision_casts": True}},
        "dynamic_emulate": {"dynamic": True, "options": {"emulate_precision_casts": True}},
    }
    for name, kwargs in variants.items():
        v: dict = {}
        try:
            torch._dynamo.reset()
            for layer in te.model.layers:
                layer.compile(**kwargs)
            te.use_cuda_graphs()
            for call, prompt in (("first", PROMPT), ("new_bucket", long_prompt)):
                t = time.perf_counter()
                te.clear_cache()
                got = te.encode([prompt])[0]
                sync(c.device)
                v[f"{call}_call_ms_incl_compile"] = (time.perf_counter() - t) * 1000
                if call == "first":
                    v["vs_eager_rel_err"] = rel(got, eager)
                    v["vs_fp32_rel_err"] = rel(got, fp32.to(got.dtype))
            v["ms"] = timed(lambda: (te.clear_cache(), te.encode([PROMPT])), c.device, runs)
            v["long_ms"] = timed(lambda: (te.clear_cache(), te.encode([long_prompt])), c.device, runs)
            v["batch2_ms"] = timed(
                lambda: (te.clear_cache(), te.encode([PROMPT, "blurry, low quality"])), c.device, runs
            )
        except Exception as e:  # one variant failing must not cost the others
            v["error"] = f"{type(e).__name__}: {e}"[:500]
        finally:
            for layer in te.model.layers:
                layer._compiled_call_impl = None  # back to the plain layers under fresh graphs
            te.use_cuda_graphs(False)
        r[f"compiled_{name}"] = v
    te.use_cuda_graphs()
    te.clear_cache()
    te.encode([long_prompt])
    r["graph_long_ms"] = timed(lambda: (te.clear_cache(), te.encode([long_prompt])), c.device, runs)
    return r


def dit_inputs(c: Components, feats: list[torch.Tensor], w: int, h: int) -> tuple:
    """Latents (1, 16, h/8, w/8), timestep and prepared conditioning of one forward at w x h."""
    x = torch.randn(1, 16, h // 8, w // 8, device=c.device, dtype=c.dtype)
    t = torch.full((1,), 0.5, device=c.device)
    return x, t, c.ours.transformer.prepare(feats, (h // 8, w // 8))


def first_call_ms(fn: Callable[[], object], device: torch.device) -> float:
    start = time.perf_counter()
    fn()
    sync(device)
    return (time.perf_counter() - start) * 1000


def dit_section(c: Components, runs: int, out: Path | None, label: str, size: int = 1024) -> dict:
    dit = c.ours.transformer
    r: dict = {}
    with torch.inference_mode():
        x, t, cond = dit_inputs(c, c.ours.encode_prompts([PROMPT]), size, size)
        r["first_forward_ms"] = first_call_ms(lambda: dit.forward_prepared(x, t, cond), c.device)
        r["forward_ms"] = timed(lambda: dit.forward_prepared(x, t, cond), c.device, runs)
        # CPU time to issue one forward (queue kept non-empty by a preceding one): launch-bound if ~ GPU time
        dit.forward_prepared(x, t, cond)
        start = time.perf_counter()
        dit.forward_prepared(x, t, cond)
        r["issue_ms"] = (time.perf_counter() - start) * 1000
        sync(c.device)
        if c.device.type == "cuda":
            r["profile"] = profile_kernels(lambda: dit.forward_prepared(x, t, cond), 3, out, label)
            graph = torch.cuda.CUDAGraph()
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                dit.forward_prepared(x, t, cond)
            torch.cuda.current_stream().wait_stream(side)
            with torch.cuda.graph(graph):
                static = dit.forward_prepared(x, t, cond)
            r["cuda_graph_forward_ms"] = timed(graph.replay, c.device, runs)
            r["cuda_graph_rel_err"] = rel(static, dit.forward_prepared(x, t, cond))
            del graph
    return r


def vae_section(c: Components, runs: int, out: Path | None, size: int = 1024) -> dict:
    from zimage_mcp.engine.speed.optimize import optimize_vae

    r: dict = {}
    with torch.inference_mode():
        lat = torch.randn(1, 16, size // 8, size // 8, device=c.device)
        r["eager_ms"] = timed(lambda: c.ours.decode(lat), c.device, runs)
        ref_px = c.ours.decode_pixels(lat)
        if c.device.type != "cuda":
            return r
        optimize_vae(c.ours.vae, compile=True)
        start = time.perf_counter()
        c.ours.decode(lat)
        sync(c.device)
        r["first_compiled_ms"] = (time.perf_counter() - start) * 1000
        r["compiled_ms"] = timed(lambda: c.ours.decode(lat), c.device, runs)
        r["decoder_only_ms"] = timed(lambda: c.ours.vae.decode(lat.to(c.ours.vae_dtype)), c.device, runs)
        r["compiled_vs_eager_rel_err"] = rel(c.ours.decode_pixels(lat), ref_px)
        r["profile"] = profile_kernels(lambda: c.ours.vae.decode(lat.to(c.ours.vae_dtype)), 2, out, "vae_kernels")
    return r


def fp8_section(c: Components, runs: int, out: Path | None, size: int = 1024) -> dict:
    """A full 8-step run in bf16, then the same seed with fp8 GEMM weights (bf16 kept for comparison)."""
    pipe, dit = c.ours, c.ours.transformer
    r: dict = {}
    with torch.inference_mode():
        base = pipe.generate(PROMPT, "", size, size, 8, 0.0, seed=0)
        base_px = pipe.decode_pixels(base.latents)
        dit.to_fp8(keep_bf16=True)
        r.update({f"fp8_{k}": v for k, v in dit_section(c, runs, out, "dit_fp8_kernels", size).items()})
        fp8 = pipe.generate(PROMPT, "", size, size, 8, 0.0, seed=0)
        r["latent_rel_err"] = rel(fp8.latents, base.latents)
        r["image_psnr_db"] = psnr(pipe.decode_pixels(fp8.latents), base_px)
        pipe.text_encoder.clear_cache()
        r["fp8_e2e_ms"] = timed(
            lambda: (pipe.text_encoder.clear_cache(), pipe.generate(PROMPT, "", size, size, 8, 0.0, seed=0)),
            c.device,
            runs,
        )
    return r


def low_vram_section(c: Components, size: int = 1024, fp8_only: bool = False) -> dict:
    """Peak with the text encoder in host memory and the tiled decode: bf16 DiT, or fp8 weights only.

    The bf16 case gives the encoder back to the GPU afterwards (CUDA graphs on), so later sections compare."""
    pipe = c.ours
    r: dict = {}
    pipe.text_encoder.use_cuda_graphs(False)
    pipe.text_encoder.model.to("cpu")
    c.ref.text_encoder.to("cpu")  # shares storage with ours: both must move for the GPU copy to go
    pipe.offload_text_encoder = True
    torch.cuda.empty_cache()
    if fp8_only:
        pipe.transformer.to_fp8(keep_bf16=False)
        torch.cuda.empty_cache()
    label = "fp8_only" if fp8_only else "bf16"

    def gen() -> object:
        pipe.text_encoder.clear_cache()
        return pipe.generate(PROMPT, "", size, size, 8, 0.0, seed=0)

    with torch.inference_mode():
        for tiling in (False, True):
            pipe.vae_tiling = tiling
            gen()
            r[f"{label}_peak_gib_tiling_{tiling}"] = peak_gib(gen, c.device, *ours_modules(c))
        r[f"{label}_e2e_ms"] = timed(gen, c.device, 3)
        r[f"{label}_resident_gib"] = resident_gib(*ours_modules(c))
        start = time.perf_counter()
        pipe.text_encoder.clear_cache()
        pipe.encode_prompts([PROMPT])
        r["text_on_host_ms"] = (time.perf_counter() - start) * 1000
    if not fp8_only:
        pipe.vae_tiling = pipe.offload_text_encoder = False
        pipe.text_encoder.model.to(c.device)
        c.ref.text_encoder.to(c.device)
        pipe.text_encoder.use_cuda_graphs()
    return r


def dit_variants_section(c: Components, runs: int, size: int = 1024, max_autotune: bool = False) -> dict:
    """The Triton QK-norm/RoPE kernel against the compiled baseline (alone, then in the whole forward,
    recompiled); the output is compared with the baseline's. Inductor's coordinate-descent tuning was
    tried the same way on 2026-11-22 and gained nothing (RESULTS.md)."""
    from zimage_mcp.engine.dit.layers import RMSNorm
    from zimage_mcp.engine.dit.qk_rope_kernel import qk_norm_rope
    from zimage_mcp.engine.dit.rope import apply_rope

    dit = c.ours.transformer
    r: dict = {}
    with torch.inference_mode():
        # the kernel alone at the real shapes, against the PyTorch path (eager)
        n_img = (size // 16) ** 2
        qkv = torch.randn(1, n_img + 64, 3 * dit.cfg.dim, device=c.device, dtype=c.dtype)
        q = qkv.unflatten(-1, (3, dit.cfg.n_heads, -1)).unbind(-3)[0]
        norm = RMSNorm(dit.cfg.head_dim, 1e-5).to(c.device, c.dtype)
        norm.weight.copy_(1 + 0.1 * torch.randn_like(norm.weight))
        cos, sin = (torch.randn(1, n_img + 64, dit.cfg.head_dim // 2, device=c.device) for _ in range(2))
        want, got = apply_rope(norm(q), cos, sin), qk_norm_rope(q, norm.weight, cos, sin, 1e-5)
        r["kernel_max_abs_diff"] = (want.float() - got.float()).abs().max().item()
        r["kernel_frac_elems_differ"] = (want != got).float().mean().item()
        r["kernel_ms"] = timed(lambda: qk_norm_rope(q, norm.weight, cos, sin, 1e-5), c.device, 20)
        r["torch_eager_ms"] = timed(lambda: apply_rope(norm(q), cos, sin), c.device, 20)
        compiled = torch.compile(lambda q: apply_rope(norm(q), cos, sin), dynamic=False)
        r["torch_compiled_ms"] = timed(lambda: compiled(q), c.device, 20)

        x, t, cond = dit_inputs(c, c.ours.encode_prompts([PROMPT]), size, size)
        base = dit.forward_prepared(x, t, cond)
        r["baseline_ms"] = timed(lambda: dit.forward_prepared(x, t, cond), c.device, runs)

        def measure(name: str) -> None:
            torch._dynamo.reset()
            start = time.perf_counter()
            out = dit.forward_prepared(x, t, cond)
            sync(c.device)
            r[f"{name}_first_ms"] = (time.perf_counter() - start) * 1000
            r[f"{name}_ms"] = timed(lambda: dit.forward_prepared(x, t, cond), c.device, runs)
            r[f"{name}_rel_err_vs_baseline"] = rel(out, base)
            prof = profile_kernels(lambda: dit.forward_prepared(x, t, cond), 2, None, name)
            r[f"{name}_gpu_ms_by_class"] = prof["gpu_ms_by_class"]
            r[f"{name}_top"] = prof["top"][:6]

        dit.use_fused_rope(True)
        measure("fused_rope")
        if max_autotune:  # Triton GEMM templates with the elementwise work fused into their epilogues
            dit.compile_blocks(dynamic=False, mode="max-autotune-no-cudagraphs")
            try:
                measure("max_autotune")
            finally:
                dit.compile_blocks(dynamic=False)
        dit.use_fused_rope(False)
        torch._dynamo.reset()  # the baseline again: Dynamo retraces, Inductor's on-disk cache serves the kernels
        start = time.perf_counter()
        dit.forward_prepared(x, t, cond)
        sync(c.device)
        r["baseline_first_ms_warm_compile_cache"] = (time.perf_counter() - start) * 1000
    return r


def step_cache_section(c: Components, size: int, base_steps: int, thresholds: tuple[float, ...]) -> dict:
    """Opt-in first-block cache (ZIMAGE_MCP_STEP_CACHE) against the same seed without it: Base-style
    many-step CFG sampling, then Turbo's 8 steps. Time, steps skipped, latent error and PSNR, and the
    relative change seen at each decision. Random weights do not follow a smooth trajectory, so their skip
    rate says little about real checkpoints; ``skip_all`` measures the time a skipped step costs."""
    pipe = c.ours
    r: dict = {}
    runs = (("base", base_steps, 4.0, "blurry, low quality, watermark"), ("turbo", 8, 0.0, ""))
    with torch.inference_mode():
        for name, steps, guidance, neg in runs:

            def gen(neg: str = neg, steps: int = steps, guidance: float = guidance) -> object:
                pipe.text_encoder.clear_cache()
                return pipe.generate(PROMPT, neg, size, size, steps, guidance, seed=0)

            pipe.step_cache = 0.0
            gen()  # warm: the compile of this shape happened in earlier sections or happens here
            start = time.perf_counter()
            plain = gen()
            sync(c.device)
            r[f"{name}_off_ms"] = (time.perf_counter() - start) * 1000
            plain_px = pipe.decode_pixels(plain.latents)
            # skip_all: every step after the first reuses the cache, the ceiling of what skipping saves
            cases = [(str(th), th) for th in (thresholds if name == "base" else thresholds[1:2])]
            for label, th in cases + ([("skip_all", 1e9)] if name == "base" else []):
                pipe.step_cache = th
                start = time.perf_counter()
                cached = gen()
                sync(c.device)
                cache = pipe.last_step_cache
                assert cache is not None
                r[f"{name}_{label}"] = {
                    "ms": (time.perf_counter() - start) * 1000,
                    "steps": cache.steps,
                    "skipped": cache.skipped,
                    "latent_rel_err": rel(cached.latents, plain.latents),
                    "image_psnr_db": psnr(pipe.decode_pixels(cached.latents), plain_px),
                    "changes": [round(x, 4) for x in cache.changes],
                }
        pipe.step_cache = 0.0
    return r


def shapes_section(c: Components, runs: int, tiny: bool) -> dict:
    """Static per-shape compiles (the server's) against one dynamic-shape compile (with and without the
    Triton QK-norm/RoPE kernel): the forward's speed at three sizes, the first call at each (a compile, or
    none), and how many graphs Dynamo made. Each variant is recorded even if another fails."""
    dit = c.ours.transformer
    stats = torch._dynamo.utils.counters["stats"]
    sizes = [(256, 256), (384, 384), (256, 384)] if tiny else [(1024, 1024), (768, 768), (1280, 720)]
    fused = dit.blocks()[0].attention.fused_rope
    r: dict = {}
    with torch.inference_mode():
        feats = c.ours.encode_prompts([PROMPT])
        for name, dynamic, rope_kernel in (
            ("static", False, fused),
            ("dynamic", True, fused),
            ("dynamic_no_rope_kernel", True, False),
        ):
            try:
                torch._dynamo.reset()
                dit.use_fused_rope(rope_kernel)
                dit.compile_blocks(dynamic=dynamic)
                before = stats["unique_graphs"]
                for w, h in sizes:
                    x, t, cond = dit_inputs(c, feats, w, h)

                    def fwd(x: torch.Tensor = x, t: torch.Tensor = t, cond: object = cond) -> object:
                        return dit.forward_prepared(x, t, cond)

                    r[f"{name}_{w}x{h}"] = {
                        "first_call_ms": first_call_ms(fwd, c.device),
                        "ms": timed(fwd, c.device, runs),
                    }
                r[f"{name}_graphs"] = stats["unique_graphs"] - before
            except Exception as e:  # noqa: BLE001 - recorded; the next variant still runs
                r[f"{name}_error"] = f"{type(e).__name__}: {e}"[:300]
        torch._dynamo.reset()
        dit.use_fused_rope(fused)
        dit.compile_blocks(dynamic=False)
    return r


def warm_up_section(c: Components, size: int, runs: int) -> dict:
    """What ZIMAGE_MCP_PRELOAD does at server start (engine/warm_up.py), unit by unit, then the first
    request after it: run with ``--server-setup`` and an empty TORCHINDUCTOR_CACHE_DIR for the cold case."""
    from zimage_mcp.engine.speed.warm_up import warm_up

    pipe = c.ours
    r: dict = {"units": []}
    start = last = time.perf_counter()
    for label in warm_up(pipe, [(size, size)]):
        sync(c.device)
        now = time.perf_counter()
        r["units"].append([label, round(now - last, 2)])
        last = now
    r["warm_up_s"] = round(last - start, 2)

    def request() -> object:
        pipe.text_encoder.clear_cache()
        return pipe.generate(PROMPT, "", size, size, 8, 0.0, seed=0)

    with torch.inference_mode():
        r["first_request_ms"] = first_call_ms(request, c.device)
        r["request_ms"] = timed(request, c.device, runs)
    return r


def e2e_gaps_section(c: Components, size: int) -> dict:
    """Where an end-to-end call is not GPU-bound: one traced 1024^2 Turbo call, the GPU's busy time
    (union of kernel intervals) against the wall time, and the largest idle gaps with the kernels around
    them and the host ops that start inside them."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    pipe = c.ours

    def once() -> object:
        pipe.text_encoder.clear_cache()
        return pipe.generate(PROMPT, "", size, size, 8, 0.0, seed=0)

    with torch.inference_mode():
        once()
        sync(c.device)
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            once()
            sync(c.device)
    events = prof.events()
    kernels = sorted((e.time_range.start, e.time_range.end, e.name) for e in events if e.device_type == DeviceType.CUDA)
    host = sorted((e.time_range.start, e.name) for e in events if e.device_type == DeviceType.CPU)
    wall = max(e.time_range.end for e in events) - min(e.time_range.start for e in events)
    busy, gaps, end, prev = 0.0, [], None, ""
    for start, stop, name in kernels:
        if end is None or start > end:
            if end is not None:
                gaps.append((start - end, end, prev, name))
            busy += stop - start
            end = stop
        elif stop > end:
            busy += stop - end
            end = stop
        prev = name
    gaps.sort(reverse=True)
    top = []
    for gap, at, before, after in gaps[:15]:
        inside = [n for t, n in host if at <= t < at + gap][:6]
        top.append(
            {
                "gap_ms": round(gap / 1000, 3),
                "at_ms": round((at - kernels[0][0]) / 1000, 1),
                "after_kernel": before[:80],
                "before_kernel": after[:80],
                "host_ops": inside,
            }
        )
    return {
        "wall_ms": round(wall / 1000, 2),
        "gpu_busy_ms": round(busy / 1000, 2),
        "gpu_idle_ms": round((wall - busy) / 1000, 2),
        "kernels": len(kernels),
        "gaps_over_0.1ms": sum(g[0] > 100 for g in gaps),
        "idle_in_gaps_over_0.1ms": round(sum(g[0] for g in gaps if g[0] > 100) / 1000, 2),
        "top_gaps": top,
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument(
        "--sections",
        nargs="*",
        default=["text", "dit", "dit_variants", "vae", "e2e", "step_cache", "low_vram", "fp8", "low_vram_fp8"],
    )
    ap.add_argument("--compile-tiny", action="store_true", help="--tiny: run the compile sections on the CPU too")
    ap.add_argument(
        "--max-autotune",
        action="store_true",
        help="dit_variants: also compile the blocks with mode=max-autotune-no-cudagraphs (minutes)",
    )
    ap.add_argument(
        "--server-setup",
        action="store_true",
        help="set up our engine with engine.speed.optimize (as the server does) instead of the "
        "experiments' baseline (fused projections + compiled blocks only)",
    )
    ap.add_argument(
        "--eager",
        action="store_true",
        help="run every section as a server's first request does, with nothing compiled (engine.speed."
        "compile_policy.compile_only: compiled parts run eagerly); with --server-setup, the first image's path",
    )
    args = ap.parse_args(argv)
    dev = "cpu" if args.tiny else "cuda"
    dtype = torch.float32 if args.tiny else torch.bfloat16
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    c = build(args.tiny, dev, dtype)
    report: dict = {
        "setup": {
            "device": torch.cuda.get_device_name() if dev == "cuda" else "cpu",
            "torch": torch.__version__,
            "build_s": round(time.perf_counter() - t, 1),
        }
    }
    size = 256 if args.tiny else 1024
    from zimage_mcp.engine.dit.attention import best_backend

    c.ours.transformer.attn_backend = best_backend(c.device)
    if dev == "cuda":
        torch.backends.cudnn.benchmark = True
    if args.server_setup:  # exactly what the server runs: engine.speed.optimize
        from zimage_mcp.engine.speed.optimize import optimize

        optimize(c.ours, "auto")
    else:  # the baseline the one-variable experiments start from
        c.ours.transformer.fuse_projections()
        if not args.tiny:
            c.ours.transformer.compile_blocks(dynamic=False)

    def e2e() -> dict:
        with torch.inference_mode():
            c.ours.text_encoder.clear_cache()

            def once() -> object:
                c.ours.text_encoder.clear_cache()
                return c.ours.generate(PROMPT, "", size, size, 8, 0.0, seed=0)

            return {"e2e_ms": timed(once, c.device, args.runs)}

    sections: dict[str, Callable[[], dict]] = {
        "text": lambda: text_section(c, args.runs),
        "dit": lambda: dit_section(c, args.runs, args.out, "dit_kernels", size),
        "dit_variants": lambda: dit_variants_section(c, args.runs, size, args.max_autotune) if dev == "cuda" else {},
        "vae": lambda: vae_section(c, args.runs, args.out, size),
        "e2e": e2e,
        "shapes": lambda: shapes_section(c, args.runs, args.tiny) if (dev == "cuda" or args.compile_tiny) else {},
        "warm_up": lambda: warm_up_section(c, size, args.runs),
        "e2e_gaps": lambda: e2e_gaps_section(c, size) if dev == "cuda" else {},
        "step_cache": lambda: step_cache_section(c, size, 6 if args.tiny else 50, (0.05, 0.1, 0.2)),
        "low_vram": lambda: low_vram_section(c, size) if dev == "cuda" else {},
        "fp8": lambda: fp8_section(c, args.runs, args.out, size),
        "low_vram_fp8": lambda: low_vram_section(c, size, fp8_only=True) if dev == "cuda" else {},
    }
    from contextlib import nullcontext

    from zimage_mcp.engine.speed.compile_policy import compile_only

    for name in args.sections:
        start = time.perf_counter()
        try:
            with compile_only() if args.eager else nullcontext():
                report[name] = sections[name]()
        except Exception as e:  # record and go on: one broken section must not cost the others
            report[name] = {"error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()[-2000:]}
        report[name]["section_s"] = round(time.perf_counter() - start, 1)
        print(json.dumps({name: report[name]}), flush=True)
        if args.out:
            (args.out / "profile.json").write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
