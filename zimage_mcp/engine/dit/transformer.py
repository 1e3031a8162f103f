"""The S3-DiT: a single-stream transformer over [image tokens, caption tokens].

Flow: patchify -> x_embedder -> noise_refiner (image only, modulated)
      cap_embedder -> context_refiner (caption only, unmodulated)
      -> unified [image, caption] -> 30 modulated layers -> final layer -> unpatchify.
Everything that does not depend on the timestep (caption refinement, RoPE tables, masks) is computed
once per generation by ``prepare`` and reused at every step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from zimage_mcp.engine.config import TransformerConfig
from zimage_mcp.engine.dit.attention import AttentionBackend
from zimage_mcp.engine.dit.layers import FinalLayer, RMSNorm, TimestepEmbedder, TransformerBlock
from zimage_mcp.engine.dit.rope import axis_angles, caption_pos_ids, image_pos_ids, rope_cos_sin
from zimage_mcp.engine.speed.compile_policy import compile_module

SEQ_MULTI_OF = 32  # both streams are padded to a multiple of 32 with learned pad tokens
PATCH_KEY = "2-1"  # ModuleDict key "{patch}-{f_patch}" used by the checkpoints


def padded(n: int) -> int:
    return n + (-n) % SEQ_MULTI_OF


def patchify(x: Tensor, p: int = 2) -> Tensor:
    """(B, C, H, W) -> (B, H/p * W/p, p*p*C), row-major tokens, channel fastest within a patch."""
    b, c, h, w = x.shape
    x = x.view(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1)  # (B, h, w, pH, pW, C)
    return x.reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(tokens: Tensor, h: int, w: int, c: int, p: int = 2) -> Tensor:
    """(B, h*w, p*p*C) -> (B, C, h*p, w*p); inverse of ``patchify``."""
    b = tokens.shape[0]
    x = tokens.view(b, h, w, p, p, c).permute(0, 5, 1, 3, 2, 4)  # (B, C, h, pH, w, pW)
    return x.reshape(b, c, h * p, w * p)


def _before_first_compile() -> None:
    import torch._dynamo

    from zimage_mcp.engine.dit import qk_rope_kernel

    # one graph per (size, caption bucket) and block kind: far more than torch's default limit of 8
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 256)
    qk_rope_kernel.register_compiled_op()


@dataclass
class Conditioning:
    """Per-generation state shared by every denoising step."""

    cap: Tensor  # (B, Lc_max, D) refined caption tokens (batch padding zeroed)
    img_cos: Tensor  # (B, N_pad, Dh/2)
    img_sin: Tensor
    cos: Tensor  # (B, N_pad + Lc_max, Dh/2) for the unified sequence
    sin: Tensor
    key_mask: Tensor | None  # (B, N_pad + Lc_max) bool; None when every caption has the same padded length
    grid: tuple[int, int]  # image tokens per column, per row


class ZImageTransformer(nn.Module):
    def __init__(self, cfg: TransformerConfig, attn_backend: AttentionBackend = "sdpa") -> None:
        super().__init__()
        self.cfg = cfg
        self.attn_backend: AttentionBackend = attn_backend
        d, p = cfg.dim, cfg.patch_size
        token_dim = p * p * cfg.in_channels
        self.all_x_embedder = nn.ModuleDict({PATCH_KEY: nn.Linear(token_dim, d)})
        self.all_final_layer = nn.ModuleDict({PATCH_KEY: FinalLayer(d, token_dim, cfg.adaln_dim)})

        def block(modulation: bool) -> TransformerBlock:
            return TransformerBlock(d, cfg.n_heads, cfg.ffn_hidden, cfg.norm_eps, cfg.adaln_dim, modulation)

        self.noise_refiner = nn.ModuleList([block(True) for _ in range(cfg.n_refiner_layers)])
        self.context_refiner = nn.ModuleList([block(False) for _ in range(cfg.n_refiner_layers)])
        self.t_embedder = TimestepEmbedder(cfg.adaln_dim, mid_size=1024)
        self.cap_embedder = nn.Sequential(RMSNorm(cfg.cap_feat_dim, cfg.norm_eps), nn.Linear(cfg.cap_feat_dim, d))
        self.x_pad_token = nn.Parameter(torch.zeros(1, d))
        self.cap_pad_token = nn.Parameter(torch.zeros(1, d))
        self.layers = nn.ModuleList([block(True) for _ in range(cfg.n_layers)])
        self._angles: dict[torch.device, list[Tensor]] = {}
        self.precision = "native"  # the loaded dtype; "fp8" after to_fp8()

    # -- speed: load-time fusion and regional compilation --------------------------------------------
    def blocks(self) -> list[TransformerBlock]:
        return [*self.noise_refiner, *self.context_refiner, *self.layers]

    def fuse_projections(self) -> None:
        """Fuse q/k/v and w1/w3 into single GEMMs; state-dict names and LoRA merging are unaffected."""
        for blk in self.blocks():
            blk.attention.fuse()
            blk.feed_forward.fuse()

    def use_fused_rope(self, enabled: bool = True) -> None:
        """QK-norm + RoPE as one Triton kernel per q and k on CUDA (same rounding; see qk_rope_kernel)."""
        from zimage_mcp.engine.dit.qk_rope_kernel import available

        if enabled and not available():
            raise RuntimeError("the fused QK-norm/RoPE kernel needs Triton and a CUDA device")
        for blk in self.blocks():
            blk.attention.fused_rope = enabled

    def to_fp8(self, keep_bf16: bool = False) -> None:
        """fp8 GEMM weights in every block (``weights/fp8.swap_to_fp8``); opt-in, lossy."""
        from zimage_mcp.engine.weights.fp8 import swap_to_fp8

        swap_to_fp8(self, keep_bf16)

    def compile_blocks(self, dynamic: bool | None = False, mode: str | None = None) -> None:
        """Regional torch.compile: each block class compiles once and is reused by every instance.

        ``dynamic=False`` specialises per sequence length (image tokens are a function of the size
        bucket, captions are padded to multiples of 32), so each new (size, caption bucket) pair costs
        one recompile; ``dynamic=True`` compiles once for all lengths. Nothing is compiled until a call
        that ``speed.compile_policy`` allows to.
        """
        for blk in self.blocks():
            compile_module(blk, "dit", before_first_compile=_before_first_compile, dynamic=dynamic, mode=mode)

    @property
    def compiled(self) -> bool:
        """Whether ``compile_blocks`` was applied (each new shape then costs a compile)."""
        return any(getattr(blk, "_compiled_call_impl", None) is not None for blk in self.blocks())

    # -- per-generation preparation ---------------------------------------------------------------
    def _tables(self, device: torch.device) -> list[Tensor]:
        if device not in self._angles:
            tabs = axis_angles(self.cfg.axes_dims, self.cfg.axes_lens, self.cfg.rope_theta)
            self._angles[device] = [t.to(device) for t in tabs]
        return self._angles[device]

    def embed_captions(self, cap_feats: list[Tensor]) -> tuple[Tensor, list[int]]:
        """Real-token features (L_i, cap_dim) -> (B, Lc_max, D) with learned pads; returns padded lengths."""
        lens = [padded(len(f)) for f in cap_feats]
        width = max(lens)
        emb = self.cap_embedder(torch.cat(cap_feats, dim=0).to(self.x_pad_token.dtype))  # (sum L_i, D)
        out = emb.new_zeros(len(cap_feats), width, emb.shape[-1])
        start = 0
        for i, f in enumerate(cap_feats):
            n = len(f)
            out[i, :n] = emb[start : start + n]
            out[i, n : lens[i]] = self.cap_pad_token
            start += n
        return out, lens

    def prepare(self, cap_feats: list[Tensor], latent_hw: tuple[int, int]) -> Conditioning:
        """Refine captions and build RoPE tables and masks for latents of size ``latent_hw``."""
        device = self.x_pad_token.device
        p = self.cfg.patch_size
        gh, gw = latent_hw[0] // p, latent_hw[1] // p
        n_pad = padded(gh * gw)
        cap, lens = self.embed_captions([f.to(device) for f in cap_feats])
        b, width = cap.shape[0], cap.shape[1]
        tables = self._tables(device)

        cap_ids = torch.zeros(b, width, 3, dtype=torch.long)
        img_ids = torch.stack([image_pos_ids(gh, gw, n_pad, axis0=n + 1) for n in lens])  # (B, N_pad, 3)
        for i, n in enumerate(lens):
            cap_ids[i, :n] = caption_pos_ids(n)
        cap_cos, cap_sin = rope_cos_sin(cap_ids.to(device), tables)
        img_cos, img_sin = rope_cos_sin(img_ids.to(device), tables)

        cap_mask = None
        if any(n != width for n in lens):
            cap_mask = torch.arange(width, device=device)[None, :] < torch.tensor(lens, device=device)[:, None]
        for blk in self.context_refiner:
            cap = blk(cap, cap_cos, cap_sin, cap_mask, None, self.attn_backend)
        if cap_mask is not None:
            cap = cap * cap_mask[..., None]
        key_mask = None
        if cap_mask is not None:
            key_mask = torch.cat([torch.ones(b, n_pad, dtype=torch.bool, device=device), cap_mask], dim=1)
        return Conditioning(
            cap=cap,
            img_cos=img_cos,
            img_sin=img_sin,
            cos=torch.cat([img_cos, cap_cos], dim=1),
            sin=torch.cat([img_sin, cap_sin], dim=1),
            key_mask=key_mask,
            grid=(gh, gw),
        )

    # -- per-step forward, in stages that ControlNet and Omni compose -----------------------------
    def embed_image(self, x: Tensor, cond: Conditioning) -> Tensor:
        """Latents (B, C, H, W) -> image tokens (B, N_pad, D), pad rows set to the learned x_pad_token."""
        img = self.all_x_embedder[PATCH_KEY](patchify(x, self.cfg.patch_size))  # (B, N, D)
        pad = cond.img_cos.shape[1] - img.shape[1]
        if pad:
            img = torch.cat([img, self.x_pad_token.to(img.dtype).expand(img.shape[0], pad, -1)], dim=1)
        return img

    def refine_image(
        self, img: Tensor, c: Tensor, cond: Conditioning, hints: dict[int, Tensor] | None = None
    ) -> Tensor:
        for i, blk in enumerate(self.noise_refiner):
            img = blk(img, cond.img_cos, cond.img_sin, None, c, self.attn_backend)
            if hints is not None and i in hints:
                img = img + hints[i]
        return img

    def unify(self, img: Tensor, cond: Conditioning) -> Tensor:
        return torch.cat([img, cond.cap.to(img.dtype)], dim=1)  # (B, N_pad + Lc_max, D)

    def run_layers(
        self,
        h: Tensor,
        c: Tensor,
        cond: Conditioning,
        hints: dict[int, Tensor] | None = None,
        span: slice = slice(None),
    ) -> Tensor:
        """The main layers in ``span`` (all by default); ``hints`` are keyed by absolute layer index."""
        for i, blk in enumerate(self.layers[span], start=span.start or 0):
            h = blk(h, cond.cos, cond.sin, cond.key_mask, c, self.attn_backend)
            if hints is not None and i in hints:
                h = h + hints[i]
        return h

    def finish(self, h: Tensor, c: Tensor, cond: Conditioning) -> Tensor:
        """Final layer on all tokens, keep the real image tokens, unpatchify -> (B, C, H, W)."""
        gh, gw = cond.grid
        out = self.all_final_layer[PATCH_KEY](h, c)[:, : gh * gw]  # (B, N, p*p*C)
        return unpatchify(out, gh, gw, self.cfg.in_channels, self.cfg.patch_size)

    def embed_time(self, t: Tensor, dtype: torch.dtype) -> Tensor:
        return self.t_embedder(t * self.cfg.t_scale).to(dtype)  # (B, 256)

    def forward_prepared(
        self,
        x: Tensor,
        t: Tensor,
        cond: Conditioning,
        hints: dict[int, Tensor] | None = None,
        refiner_hints: dict[int, Tensor] | None = None,
    ) -> Tensor:
        """x (B, C, H, W) latents in model dtype, t (B,) in [0, 1] with 0 = noise. -> (B, C, H, W)."""
        c = self.embed_time(t, x.dtype)
        img = self.refine_image(self.embed_image(x, cond), c, cond, refiner_hints)
        h = self.run_layers(self.unify(img, cond), c, cond, hints)
        return self.finish(h, c, cond)

    def forward(self, x: Tensor, t: Tensor, cap_feats: list[Tensor]) -> Tensor:
        return self.forward_prepared(x, t, self.prepare(cap_feats, (x.shape[-2], x.shape[-1])))
