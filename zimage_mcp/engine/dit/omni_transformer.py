"""Omni mode of the S3-DiT: reference images (VAE and SigLIP2 tokens) and the target in one sequence.

One sample with N condition images holds, in diffusers' omni order,
    [caption segments 0..N+1 | VAE images 1..N, target | SigLIP images 1..N, target's 32 pads]
each piece padded to a multiple of 32 with its learned pad token. Axis 0 of the RoPE ids is a running
counter: segment j starts at c_j (c_0 = 1), its image sits at e_j = c_j + L_j, its SigLIP at e_j + 1,
and c_{j+1} = e_j + 2. Noisy tokens (the target, the caption segments from the prompt on, the target's
SigLIP pads) are modulated by c(t), clean ones by c(t = 1), in every modulated block and the final layer.
Everything but the target's tokens is step-independent and built once by ``prepare_omni``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from zimage_mcp.engine.config import TransformerConfig
from zimage_mcp.engine.dit.attention import AttentionBackend
from zimage_mcp.engine.dit.layers import Modulation, RMSNorm, TransformerBlock
from zimage_mcp.engine.dit.rope import image_pos_ids, rope_cos_sin
from zimage_mcp.engine.dit.transformer import PATCH_KEY, SEQ_MULTI_OF, ZImageTransformer, padded, patchify, unpatchify


def caption_segment_ids(seg_lens: list[int]) -> tuple[Tensor, list[int]]:
    """RoPE ids (sum padded(L_j), 3) of consecutive caption segments, and each segment's end e_j.

    diffusers 0.42 builds a segment's ids over its padded length and then appends (0, 0, 0) rows for its
    pads, and reads the concatenation by token index; segments after a padded one are therefore shifted.
    Reproduced as is: these are the ids the published omni code gives its tokens.
    """
    rows, ends, counter = [], [], 1
    for n in seg_lens:
        p = padded(n)
        ids = torch.zeros(2 * p - n, 3, dtype=torch.long)
        ids[:p, 0] = torch.arange(counter, counter + p)
        rows.append(ids)
        ends.append(counter + n)
        counter += n + 2  # one axis-0 slot for the VAE image, one for SigLIP
    total = sum(padded(n) for n in seg_lens)
    return torch.cat(rows)[:total], ends


def siglip_pos_ids(sh: int, sw: int, axis0: int, latent_hw: tuple[int, int]) -> Tensor:
    """SigLIP grid (sh, sw) at ``axis0``, spatial ids rescaled onto the image's latent grid. -> (padded, 3).

    As diffusers: fp32 id / max(n - 1, 1) * (latent side - 1), truncated to int (latent side, not tokens).
    """
    ids = image_pos_ids(sh, sw, padded(sh * sw), axis0).float()
    ids[:, 1] = ids[:, 1] / max(sh - 1, 1) * (latent_hw[0] - 1)
    ids[:, 2] = ids[:, 2] / max(sw - 1, 1) * (latent_hw[1] - 1)
    return ids.long()


@dataclass
class OmniConditioning:
    """Per-generation state of an omni forward, shared by every denoising step."""

    cond_tokens: Tensor  # (1, Nc, D) embedded condition-image tokens, pads included (shared by the batch)
    x_cos: Tensor  # (B, Nx, Dh/2) RoPE of the image sequence [conditions..., target]
    x_sin: Tensor
    x_noisy: Tensor  # (1, Nx, 1) bool
    base: Tensor  # (B, S, D) unified sequence with captions and SigLIP in place, zeros in the image slot
    cos: Tensor  # (B, S, Dh/2)
    sin: Tensor
    noisy: Tensor  # (B, S, 1) bool; batch padding counts as clean
    key_mask: Tensor | None  # (B, S) bool; None when every sample has the same length
    cap_lens: list[int]  # padded caption length per sample = offset of its image slot
    clean_mods: list[Modulation]  # c(t = 1) modulation of each noise_refiner block, then each layer
    grid: tuple[int, int]  # target tokens per column, per row
    target_at: int  # offset of the target's tokens inside the image sequence


class ZImageOmniTransformer(ZImageTransformer):
    """The S3-DiT plus the SigLIP2 branch (when ``cfg.siglip_feat_dim`` is set) and the omni forward."""

    def __init__(self, cfg: TransformerConfig, attn_backend: AttentionBackend = "sdpa") -> None:
        super().__init__(cfg, attn_backend)
        if cfg.siglip_feat_dim is not None:
            s, d = cfg.siglip_feat_dim, cfg.dim
            self.siglip_embedder = nn.Sequential(RMSNorm(s, cfg.norm_eps), nn.Linear(s, d))
            self.siglip_refiner = nn.ModuleList(
                [
                    TransformerBlock(d, cfg.n_heads, cfg.ffn_hidden, cfg.norm_eps, cfg.adaln_dim, False)
                    for _ in range(cfg.n_refiner_layers)
                ]
            )
            self.siglip_pad_token = nn.Parameter(torch.zeros(1, d))

    # -- per-generation preparation ---------------------------------------------------------------
    def _pad_rows(self, emb: Tensor, token: Tensor) -> Tensor:
        """(n, D) -> (padded(n), D), extra rows set to the learned pad ``token``; n = 0 gives 32 pads."""
        extra = padded(len(emb)) if len(emb) else SEQ_MULTI_OF
        return torch.cat([emb, token.to(emb.dtype).expand(extra - len(emb), -1)])

    def _embed_latent(self, latent: Tensor) -> Tensor:
        """One latent (C, h, w) -> (padded(h/p * w/p), D) tokens."""
        tokens = self.all_x_embedder[PATCH_KEY](patchify(latent[None].to(self.x_pad_token.dtype), self.cfg.patch_size))
        return self._pad_rows(tokens[0], self.x_pad_token)

    def _embed_siglip(self, feats: list[Tensor]) -> Tensor:
        """SigLIP features (h, w, S) per condition image -> refined (1, Ls, D), the target's 32 pads last."""
        dtype = self.siglip_pad_token.dtype
        pieces = []
        for f in feats:
            sh, sw, s = f.shape
            # diffusers flattens with permute(2, 0, 1).reshape(h*w, S): a reinterpretation, not a transpose.
            flat = f.to(dtype).permute(2, 0, 1).reshape(sh * sw, s)
            pieces.append(self._pad_rows(self.siglip_embedder(flat), self.siglip_pad_token))
        pieces.append(self._pad_rows(self.siglip_pad_token[:0], self.siglip_pad_token))
        return torch.cat(pieces)[None]  # (1, Ls, D)

    def prepare_omni(
        self,
        captions: list[list[Tensor]],
        cond_latents: list[Tensor],
        siglip_feats: list[Tensor] | None,
        latent_hw: tuple[int, int],
    ) -> OmniConditioning:
        """``captions``: per sample N+2 segment features (L_j, cap_dim), 1 when N = 0; ``cond_latents``: N clean
        latents (C, h, w) and ``siglip_feats``: N features (h', w', S), shared by the batch (None when N = 0)."""
        device, p = self.x_pad_token.device, self.cfg.patch_size
        n_cond = len(cond_latents)
        n_segs = n_cond + 2 if n_cond else 1  # text-only omni prompts are one segment
        if any(len(segs) != n_segs for segs in captions):
            raise ValueError(f"{n_cond} condition images need {n_segs} caption segments per sample")
        use_sig = n_cond > 0
        if use_sig and (siglip_feats is None or len(siglip_feats) != n_cond):
            raise ValueError(f"{n_cond} condition images need {n_cond} SigLIP feature maps")
        if use_sig and self.cfg.siglip_feat_dim is None:
            raise ValueError("this transformer has no SigLIP branch (siglip_feat_dim is not set)")
        tables = self._tables(device)
        b = len(captions)

        # caption segments: embed, pad each to 32, refine all of a sample together (no modulation)
        seg_lens = [[len(f) for f in segs] for segs in captions]
        caps = [
            torch.cat(
                [
                    self._pad_rows(self.cap_embedder(f.to(device, self.x_pad_token.dtype)), self.cap_pad_token)
                    for f in segs
                ]
            )
            for segs in captions
        ]
        cap_lens = [len(c) for c in caps]
        width = max(cap_lens)
        cap = caps[0].new_zeros(b, width, caps[0].shape[-1])
        cap_ids = torch.zeros(b, width, 3, dtype=torch.long)
        ends = []
        for i, (c, lens) in enumerate(zip(caps, seg_lens, strict=False)):
            cap[i, : len(c)] = c
            ids, e = caption_segment_ids(lens)
            cap_ids[i, : len(c)] = ids
            ends.append(e)
        cap_cos, cap_sin = rope_cos_sin(cap_ids.to(device), tables)
        cap_mask = None
        if any(n != width for n in cap_lens):
            cap_mask = torch.arange(width, device=device)[None] < torch.tensor(cap_lens, device=device)[:, None]
        for blk in self.context_refiner:
            cap = blk(cap, cap_cos, cap_sin, cap_mask, None, self.attn_backend)

        # image sequence: condition images (clean), then the target (noisy)
        grids = [(lat.shape[-2] // p, lat.shape[-1] // p) for lat in cond_latents]
        grids.append((latent_hw[0] // p, latent_hw[1] // p))  # the target comes last
        x_ids = torch.stack(
            [
                torch.cat([image_pos_ids(gh, gw, padded(gh * gw), axis0=e[j]) for j, (gh, gw) in enumerate(grids)])
                for e in ends
            ]
        )  # (B, Nx, 3)
        x_cos, x_sin = rope_cos_sin(x_ids.to(device), tables)
        sizes = [padded(gh * gw) for gh, gw in grids]
        x_noisy = torch.cat([torch.full((n,), j == n_cond) for j, n in enumerate(sizes)]).to(device)[None, :, None]
        d = cap.shape[-1]
        cond_tokens = (
            torch.cat([self._embed_latent(lat.to(device)) for lat in cond_latents])[None]
            if n_cond
            else cap.new_zeros(1, 0, d)
        )

        # SigLIP tokens (clean; the target's 32 pads noisy), refined once (no modulation)
        if use_sig:
            sig = self._embed_siglip([f.to(device) for f in siglip_feats])
            sig_ids = torch.stack(
                [
                    torch.cat(
                        [
                            siglip_pos_ids(f.shape[0], f.shape[1], e[j] + 1, tuple(lat.shape[-2:]))
                            for j, (f, lat) in enumerate(zip(siglip_feats, cond_latents, strict=False))
                        ]
                        + [torch.zeros(SEQ_MULTI_OF, 3, dtype=torch.long)]
                    )
                    for e in ends
                ]
            )
            sig_cos, sig_sin = rope_cos_sin(sig_ids.to(device), tables)
            for blk in self.siglip_refiner:
                sig = blk(sig, sig_cos[:1], sig_sin[:1], None, None, self.attn_backend)
            sig_noisy = torch.zeros(sig.shape[1], dtype=torch.bool, device=device)
            sig_noisy[-SEQ_MULTI_OF:] = True
        else:
            sig = cap.new_zeros(1, 0, d)
            sig_cos = sig_sin = cap_cos.new_zeros(b, 0, cap_cos.shape[-1])
            sig_noisy = torch.zeros(0, dtype=torch.bool, device=device)

        # unified [captions | images | SigLIP] per sample, batch-padded at the end
        nx, ns = x_ids.shape[1], sig.shape[1]
        lens = [n + nx + ns for n in cap_lens]
        s = max(lens)
        base = cap.new_zeros(b, s, d)
        cos = cap_cos.new_zeros(b, s, cap_cos.shape[-1])
        sin = torch.zeros_like(cos)
        noisy = torch.zeros(b, s, 1, dtype=torch.bool, device=device)
        for i, n in enumerate(cap_lens):
            base[i, :n], base[i, n + nx : lens[i]] = cap[i, :n], sig[0].to(cap.dtype)
            for dst, parts in ((cos, (cap_cos, x_cos, sig_cos)), (sin, (cap_sin, x_sin, sig_sin))):
                dst[i, : lens[i]] = torch.cat([parts[0][i, :n], parts[1][i], parts[2][i]])
            seg_noisy = [torch.full((padded(m),), j >= n_cond) for j, m in enumerate(seg_lens[i])]
            noisy[i, : lens[i], 0] = torch.cat([torch.cat(seg_noisy).to(device), x_noisy[0, :, 0], sig_noisy])
        key_mask = None
        if any(n != s for n in lens):
            key_mask = torch.arange(s, device=device)[None] < torch.tensor(lens, device=device)[:, None]

        c_clean = self.embed_time(torch.ones(1, device=device), cap.dtype)
        clean_mods = [blk.modulation(c_clean) for blk in (*self.noise_refiner, *self.layers)]
        return OmniConditioning(
            cond_tokens=cond_tokens,
            x_cos=x_cos,
            x_sin=x_sin,
            x_noisy=x_noisy,
            base=base,
            cos=cos,
            sin=sin,
            noisy=noisy,
            key_mask=key_mask,
            cap_lens=cap_lens,
            clean_mods=clean_mods,
            grid=grids[-1],
            target_at=sum(sizes[:-1]),
        )

    # -- per-step forward -------------------------------------------------------------------------
    def forward_omni(self, x: Tensor, t: Tensor, cond: OmniConditioning) -> Tensor:
        """Target latents x (B, C, H, W) in model dtype, t (B,) with 0 = noise. -> prediction (B, C, H, W)."""
        b = x.shape[0]
        c = self.embed_time(t, x.dtype)  # (B, adaln)
        target = torch.stack([self._embed_latent(xi) for xi in x])  # (B, Nt, D)
        img = torch.cat([cond.cond_tokens.to(x.dtype).expand(b, -1, -1), target], dim=1)  # (B, Nx, D)
        mods = iter(cond.clean_mods)
        for blk in self.noise_refiner:
            mod = _per_token(blk.modulation(c), next(mods), cond.x_noisy)
            img = blk(img, cond.x_cos, cond.x_sin, None, None, self.attn_backend, mod=mod)

        h = cond.base.to(x.dtype).clone()
        nx = img.shape[1]
        for i, n in enumerate(cond.cap_lens):
            h[i, n : n + nx] = img[i]
        for blk in self.layers:
            mod = _per_token(blk.modulation(c), next(mods), cond.noisy)
            h = blk(h, cond.cos, cond.sin, cond.key_mask, None, self.attn_backend, mod=mod)

        # The final layer is per token; the target's tokens are all noisy, so c(t) alone modulates them.
        gh, gw = cond.grid
        start = cond.target_at
        tokens = torch.stack([h[i, n + start : n + start + gh * gw] for i, n in enumerate(cond.cap_lens)])
        out = self.all_final_layer[PATCH_KEY](tokens, c)  # (B, N, p*p*C)
        return unpatchify(out, gh, gw, self.cfg.in_channels, self.cfg.patch_size)


def _per_token(noisy: Modulation, clean: Modulation, mask: Tensor) -> Modulation:
    """Per-sample (B, 1, D) noisy and (1, 1, D) clean values -> (B, S, D) chosen by ``mask`` (·, S, 1)."""
    return tuple(torch.where(mask, n, c) for n, c in zip(noisy, clean, strict=False))  # type: ignore[return-value]
