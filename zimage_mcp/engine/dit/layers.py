"""Building blocks of the S3-DiT. Attribute names match the checkpoint keys (``to_q``, ``w1``, ...)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zimage_mcp.engine.dit.attention import AttentionBackend, attention
from zimage_mcp.engine.dit.qk_rope_kernel import qk_norm_rope
from zimage_mcp.engine.dit.rms_norm import rms_normalize
from zimage_mcp.engine.dit.rope import apply_rope

Modulation = tuple[Tensor, Tensor, Tensor, Tensor]


def fuse_rows(*linears: nn.Linear) -> nn.Linear:
    """One bias-free Linear whose (sum N_i, K) weight concatenates the inputs' by rows; each input's weight
    is re-pointed at its slice (no extra memory, and in-place LoRA merges reach the fused GEMM)."""
    fused = torch.cat([lin.weight.detach() for lin in linears], dim=0)
    start = 0
    for lin in linears:
        n = lin.weight.shape[0]
        lin.weight = nn.Parameter(fused[start : start + n], requires_grad=False)
        start += n
    out = nn.Linear(fused.shape[1], fused.shape[0], bias=False, device="meta")
    out.weight = nn.Parameter(fused, requires_grad=False)
    return out


def set_unregistered(owner: nn.Module, name: str, module: nn.Module | None) -> None:
    """``owner.name = module`` kept out of the module tree: a fused projection's weight views (or replaces)
    checkpoint-named weights, so the state dict must not list it a second time."""
    object.__setattr__(owner, name, module)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        # Statistics in fp32, then rounded to the weight dtype before scaling (as the reference does).
        return rms_normalize(x, self.eps, self.weight.dtype) * self.weight


class TimestepEmbedder(nn.Module):
    """Sinusoid (cos first, fp32) -> Linear -> SiLU -> Linear. t is already multiplied by t_scale."""

    def __init__(self, out_size: int, mid_size: int = 1024, freq_size: int = 256) -> None:
        super().__init__()
        self.freq_size = freq_size
        self.mlp = nn.Sequential(nn.Linear(freq_size, mid_size), nn.SiLU(), nn.Linear(mid_size, out_size))

    def forward(self, t: Tensor) -> Tensor:
        half = self.freq_size // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t.float()[:, None] * freqs[None]
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (B, 256)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))


class Attention(nn.Module):
    def __init__(self, dim: int, n_heads: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.n_heads = n_heads
        head_dim = dim // n_heads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(dim, dim, bias=False)
        self.to_v = nn.Linear(dim, dim, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim, bias=False)])
        self.norm_q = RMSNorm(head_dim, eps)
        self.norm_k = RMSNorm(head_dim, eps)

        self.qkv: nn.Module | None = None  # D -> 3D after fuse() (unregistered; to_q/k/v weights view it)
        self.fused_rope = False  # QK-norm + RoPE in one Triton kernel (CUDA); see use_fused_rope()

    def fuse(self) -> None:
        """One (3D, D) GEMM instead of three; the checkpoint-named parameters stay, as views into it."""
        if self.qkv is None:
            set_unregistered(self, "qkv", fuse_rows(self.to_q, self.to_k, self.to_v))

    def _qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x (B, S, D) -> q, k, v each (B, S, H, Dh)."""
        if self.qkv is not None:
            q, k, v = self.qkv(x).unflatten(-1, (3, self.n_heads, -1)).unbind(-3)  # from (B, S, 3D)
            return q, k, v
        return tuple(lin(x).unflatten(-1, (self.n_heads, -1)) for lin in (self.to_q, self.to_k, self.to_v))

    def forward(
        self, x: Tensor, cos: Tensor, sin: Tensor, key_mask: Tensor | None, backend: AttentionBackend
    ) -> Tensor:
        q, k, v = self._qkv(x)
        if self.fused_rope and q.is_cuda:  # one Triton kernel per tensor (engine/qk_rope_kernel.py)
            q = qk_norm_rope(q, self.norm_q.weight, cos, sin, self.norm_q.eps)
            k = qk_norm_rope(k, self.norm_k.weight, cos, sin, self.norm_k.eps)
        else:
            q = apply_rope(self.norm_q(q), cos, sin)  # QK-norm before RoPE
            k = apply_rope(self.norm_k(k), cos, sin)
        out = attention(q, k, v, key_mask, backend)  # (B, S, D)
        return self.to_out[0](out)


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x), no biases."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)

        self.w13: nn.Module | None = None  # D -> 2H after fuse() (unregistered; w1/w3 weights view it)

    def fuse(self) -> None:
        if self.w13 is None:
            set_unregistered(self, "w13", fuse_rows(self.w1, self.w3))

    def forward(self, x: Tensor) -> Tensor:
        if self.w13 is not None:
            a, b = self.w13(x).chunk(2, dim=-1)  # (..., 2H) -> two (..., H)
            return self.w2(F.silu(a) * b)
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class TransformerBlock(nn.Module):
    """Sandwich-norm block. Modulated: 1+scale and tanh gates from c (no shift, no SiLU before adaLN)."""

    def __init__(self, dim: int, n_heads: int, ffn_hidden: int, eps: float, adaln_dim: int, modulation: bool) -> None:
        super().__init__()
        self.attention = Attention(dim, n_heads)
        self.feed_forward = FeedForward(dim, ffn_hidden)
        self.attention_norm1 = RMSNorm(dim, eps)
        self.attention_norm2 = RMSNorm(dim, eps)
        self.ffn_norm1 = RMSNorm(dim, eps)
        self.ffn_norm2 = RMSNorm(dim, eps)
        self.modulation_enabled = modulation
        if modulation:
            self.adaLN_modulation = nn.Sequential(nn.Linear(adaln_dim, 4 * dim))

    def modulation(self, c: Tensor) -> Modulation:
        """c (B, adaln_dim) -> (scale_msa, gate_msa, scale_mlp, gate_mlp), each (B, 1, D), already 1+s / tanh(g)."""
        scale_msa, gate_msa, scale_mlp, gate_mlp = self.adaLN_modulation(c).unsqueeze(1).chunk(4, dim=2)
        return 1.0 + scale_msa, gate_msa.tanh(), 1.0 + scale_mlp, gate_mlp.tanh()

    def forward(
        self,
        x: Tensor,
        cos: Tensor,
        sin: Tensor,
        key_mask: Tensor | None = None,
        c: Tensor | None = None,
        backend: AttentionBackend = "sdpa",
        mod: Modulation | None = None,
    ) -> Tensor:
        """``c`` gives one modulation per sample; ``mod`` may instead give per-token values (B, S, D)."""
        if not self.modulation_enabled:
            x = x + self.attention_norm2(self.attention(self.attention_norm1(x), cos, sin, key_mask, backend))
            return x + self.ffn_norm2(self.feed_forward(self.ffn_norm1(x)))
        if mod is None:
            assert c is not None, "a modulated block needs c or mod"
            mod = self.modulation(c)
        scale_msa, gate_msa, scale_mlp, gate_mlp = mod
        h = self.attention(self.attention_norm1(x) * scale_msa, cos, sin, key_mask, backend)
        x = x + gate_msa * self.attention_norm2(h)
        h = self.feed_forward(self.ffn_norm1(x) * scale_mlp)
        return x + gate_mlp * self.ffn_norm2(h)


class FinalLayer(nn.Module):
    """LayerNorm (no affine) * (1 + Linear(SiLU(c))) -> Linear. The only adaLN with a SiLU in front."""

    def __init__(self, dim: int, out_features: int, adaln_dim: int) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(dim, out_features)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(adaln_dim, dim))

    def forward(self, x: Tensor, c: Tensor | None = None, scale: Tensor | None = None) -> Tensor:
        """``scale`` (B, S, D) overrides the per-sample 1 + Linear(SiLU(c)) (per-token modulation)."""
        if scale is None:
            assert c is not None
            scale = 1.0 + self.adaLN_modulation(c).unsqueeze(1)  # (B, 1, D)
        return self.linear(self.norm_final(x) * scale)
