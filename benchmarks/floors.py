"""The physical floors of one DiT forward: its GEMMs alone in cuBLAS plus its attention alone."""

from __future__ import annotations

import statistics

import torch
import torch.nn.functional as F

from zimage_mcp.engine.config import TransformerConfig
from zimage_mcp.engine.dit.transformer import padded


def _gemm_shapes(cfg: TransformerConfig, img_tokens: int, cap_tokens: int) -> list[tuple[int, int, int, int]]:
    """(count, M, K, N) per fused GEMM: qkv, out, w13, w2 for each block at its own sequence length."""
    d, f = cfg.dim, cfg.ffn_hidden
    n_img, n_cap = padded(img_tokens), padded(cap_tokens)
    shapes = []
    for count, m in ((cfg.n_layers, n_img + n_cap), (cfg.n_refiner_layers, n_img), (cfg.n_refiner_layers, n_cap)):
        shapes += [(count, m, d, 3 * d), (count, m, d, d), (count, m, d, 2 * f), (count, m, f, d)]
    return shapes


def _attn_shapes(cfg: TransformerConfig, img_tokens: int, cap_tokens: int) -> list[tuple[int, int]]:
    n_img, n_cap = padded(img_tokens), padded(cap_tokens)
    return [(cfg.n_layers, n_img + n_cap), (cfg.n_refiner_layers, n_img), (cfg.n_refiner_layers, n_cap)]


def flops(cfg: TransformerConfig, img_tokens: int, cap_tokens: int) -> float:
    gemm = sum(2 * c * m * k * n for c, m, k, n in _gemm_shapes(cfg, img_tokens, cap_tokens))
    attn = sum(4 * c * s * s * cfg.dim for c, s in _attn_shapes(cfg, img_tokens, cap_tokens))
    return float(gemm + attn)


def _time_ms(fn, reps: int = 20) -> float:
    """Median of ``reps`` launches timed with CUDA events (no host sync inside the timed region)."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
    for start, end in events:
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return statistics.median(start.elapsed_time(end) for start, end in events)


def peak_tflops() -> float:
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    ms = _time_ms(lambda: a @ a)
    return 2 * 8192**3 / (ms / 1000) / 1e12


def kernel_floor_ms(cfg: TransformerConfig, img_tokens: int, cap_tokens: int, device: str = "cuda") -> dict:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    gemm_ms = 0.0
    for count, m, k, n in _gemm_shapes(cfg, img_tokens, cap_tokens):
        a = torch.randn(m, k, device=device, dtype=torch.bfloat16)
        w = torch.randn(n, k, device=device, dtype=torch.bfloat16)
        gemm_ms += count * _time_ms(lambda a=a, w=w: F.linear(a, w))
    best = {}
    for name, backend in (
        ("cudnn", SDPBackend.CUDNN_ATTENTION),
        ("flash", SDPBackend.FLASH_ATTENTION),
        ("efficient", SDPBackend.EFFICIENT_ATTENTION),
    ):
        total = 0.0
        try:
            for count, s in _attn_shapes(cfg, img_tokens, cap_tokens):
                q = torch.randn(1, cfg.n_heads, s, cfg.head_dim, device=device, dtype=torch.bfloat16)
                with sdpa_kernel([backend]):
                    total += count * _time_ms(lambda q=q: F.scaled_dot_product_attention(q, q, q))
            best[name] = total
        except RuntimeError:
            continue
    attn_name = min(best, key=best.get)
    return {
        "gemm_ms": gemm_ms,
        "attention_ms": best[attn_name],
        "attention_backend": attn_name,
        "attention_all_ms": best,
        "kernel_floor_ms": gemm_ms + best[attn_name],
        "peak_tflops": peak_tflops(),
        "tflop_per_forward": flops(cfg, img_tokens, cap_tokens) / 1e12,
    }


def flop_floor_ms(cfg: TransformerConfig, img_tokens: int, cap_tokens: int, tflops: float) -> float:
    return flops(cfg, img_tokens, cap_tokens) / (tflops * 1e12) * 1000
