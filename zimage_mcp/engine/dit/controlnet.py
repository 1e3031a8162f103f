"""ControlNet-Union for Z-Image-Turbo (alibaba-pai "Fun-Controlnet-Union" v1, 2.0, 2.1 and lite).

The ControlNet stores only its own weights: a patch embedder for the control latent
(``control_all_x_embedder``), the control blocks (``control_layers``) and, depending on the release,
``control_noise_refiner``. Time embedding, image/caption embedders, refiners, pad tokens and RoPE
come from the base ``ZImageTransformer`` passed in at run time.

Hint flow, in the order diffusers' ``ZImageControlNetModel`` computes it (the parity oracle):
1. control tokens = control_all_x_embedder(patchify(control)), pad rows = the base's x_pad_token.
2. (2.x) a refiner stage runs over the image-only stream: its first ``len(control_refiner_layers_places)``
   hints (x scale) are added after those noise_refiner blocks of the *control branch's own* pass of the
   base refiner. 2.0 ("control_layers") reuses the control_layers stack for this stage; 2.1
   ("control_noise_refiner") has dedicated blocks. (v1 runs plain modulated blocks, no hints.)
3. control unified = [control stream, refined captions]; control block 0 adds before_proj(control) to
   the control branch's unified stream; block k emits hint_k = after_proj(c_k).
4. hint_k x scale is added to the base's main stream right after layer ``control_layers_places[k]``.
diffusers hands only step 4's hints to the base transformer: the base's own noise_refiner pass
receives no hints, so the image stream is refined twice (with hints for the control branch, without
for the base). We do the same.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Literal

import torch
from torch import Tensor, nn

from zimage_mcp.engine.dit.layers import TransformerBlock
from zimage_mcp.engine.dit.transformer import PATCH_KEY, Conditioning, ZImageTransformer, patchify

RefinerMode = Literal["control_layers", "control_noise_refiner"] | None
REFINER_MODES = (None, "control_layers", "control_noise_refiner")


@dataclass(frozen=True)
class ControlNetConfig:
    """diffusers ``ZImageControlNetModel`` config.json; every key stated, unknown keys refused."""

    control_layers_places: tuple[int, ...]
    control_refiner_layers_places: tuple[int, ...]
    control_in_dim: int
    add_control_noise_refiner: RefinerMode
    dim: int
    n_refiner_layers: int
    n_heads: int
    n_kv_heads: int
    norm_eps: float
    qk_norm: bool
    all_patch_size: tuple[int, ...] = (2,)
    all_f_patch_size: tuple[int, ...] = (1,)

    def __post_init__(self) -> None:
        places = list(self.control_layers_places)
        if not places or places[0] != 0 or places != sorted(set(places)):
            raise ValueError(f"control_layers_places must be increasing and start at 0, got {places}")
        if self.add_control_noise_refiner not in REFINER_MODES:
            raise ValueError(
                f"add_control_noise_refiner must be one of {REFINER_MODES}, got {self.add_control_noise_refiner!r}"
            )
        if self.dim % self.n_heads or self.n_kv_heads != self.n_heads:
            raise ValueError(f"dim {self.dim} / n_heads {self.n_heads} / n_kv_heads {self.n_kv_heads} do not fit")
        if not self.qk_norm:
            raise ValueError("qk_norm=false is not part of any published Z-Image ControlNet")
        if tuple(self.all_patch_size) != (2,) or tuple(self.all_f_patch_size) != (1,):
            raise ValueError("only patch size 2 and frame patch size 1 are published for Z-Image")

    @property
    def release(self) -> str:
        """'v1' (16-ch, plain refiner), '2.0' (refiner hints from control_layers), '2.1', 'lite' (3 layers)."""
        if self.add_control_noise_refiner is None:
            return "v1"
        if self.add_control_noise_refiner == "control_layers":
            return "2.0"
        return "lite" if len(self.control_layers_places) == 3 else "2.1"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ControlNetConfig:
        """Strict: keys starting with '_' are bookkeeping; anything else unknown or missing raises ValueError."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(k for k in data if k not in names and not k.startswith("_"))
        missing = sorted(names - {"all_patch_size", "all_f_patch_size"} - set(data))
        if unknown or missing:
            raise ValueError(f"unknown config keys {unknown}, missing config keys {missing}")
        kw = {k: v for k, v in data.items() if k in names}
        for key in ("control_layers_places", "control_refiner_layers_places", "all_patch_size", "all_f_patch_size"):
            if key in kw:
                kw[key] = tuple(kw[key])
        return cls(**kw)

    def to_json_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"_class_name": "ZImageControlNetModel"}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out


class ControlBlock(TransformerBlock):
    """A modulated block on the control stream; block 0 also owns ``before_proj``. Emits after_proj(c)."""

    def __init__(self, dim: int, n_heads: int, ffn_hidden: int, eps: float, adaln_dim: int, first: bool) -> None:
        super().__init__(dim, n_heads, ffn_hidden, eps, adaln_dim, modulation=True)
        self.before_proj = nn.Linear(dim, dim) if first else None
        self.after_proj = nn.Linear(dim, dim)

    def forward_control(
        self,
        c: Tensor,
        x: Tensor,
        cos: Tensor,
        sin: Tensor,
        key_mask: Tensor | None,
        t_emb: Tensor,
        base: ZImageTransformer,
    ) -> tuple[Tensor, Tensor]:
        """c, x (B, S, D) -> (next control state, hint), both (B, S, D). x is read by block 0 only."""
        if self.before_proj is not None:
            c = self.before_proj(c) + x
        c = self.forward(c, cos, sin, key_mask, t_emb, base.attn_backend)
        return c, self.after_proj(c)


def _run_control(
    blocks: nn.ModuleList,
    c: Tensor,
    x: Tensor,
    cos: Tensor,
    sin: Tensor,
    key_mask: Tensor | None,
    t_emb: Tensor,
    base: ZImageTransformer,
) -> tuple[Tensor, list[Tensor]]:
    hints = []
    for blk in blocks:
        c, hint = blk.forward_control(c, x, cos, sin, key_mask, t_emb, base)
        hints.append(hint)
    return c, hints


class ZImageControlNet(nn.Module):
    def __init__(self, cfg: ControlNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.dim
        ffn, adaln = int(d / 3 * 8), min(d, 256)

        def control_block(first: bool) -> ControlBlock:
            return ControlBlock(d, cfg.n_heads, ffn, cfg.norm_eps, adaln, first)

        self.control_layers = nn.ModuleList([control_block(k == 0) for k in range(len(cfg.control_layers_places))])
        self.control_all_x_embedder = nn.ModuleDict({PATCH_KEY: nn.Linear(4 * cfg.control_in_dim, d)})
        mode = cfg.add_control_noise_refiner
        if mode == "control_noise_refiner":
            self.control_noise_refiner = nn.ModuleList([control_block(i == 0) for i in range(cfg.n_refiner_layers)])
        elif mode is None:
            self.control_noise_refiner = nn.ModuleList(
                [TransformerBlock(d, cfg.n_heads, ffn, cfg.norm_eps, adaln, True) for _ in range(cfg.n_refiner_layers)]
            )
        # "control_layers" (2.0): no refiner weights; the control_layers stack doubles as the refiner stage

    def check_base(self, base: ZImageTransformer) -> None:
        """ValueError unless this ControlNet fits ``base`` (dims, heads, layer places, input channels)."""
        b, c = base.cfg, self.cfg
        if c.dim != b.dim:
            raise ValueError(f"ControlNet dim {c.dim} does not match the base transformer dim {b.dim}")
        if c.n_heads != b.n_heads:
            raise ValueError(f"ControlNet n_heads {c.n_heads} does not match the base transformer n_heads {b.n_heads}")
        if c.control_layers_places[-1] >= b.n_layers:
            raise ValueError(
                f"control_layers_places {list(c.control_layers_places)} reach past the base "
                f"transformer's {b.n_layers} layers"
            )
        if c.control_in_dim < b.in_channels:
            raise ValueError(f"ControlNet control_in_dim {c.control_in_dim} < latent channels {b.in_channels}")

    def embed_control(self, control: Tensor, cond: Conditioning, base: ZImageTransformer) -> Tensor:
        """Control latent (B, control_in_dim, H, W) -> control tokens (B, N_pad, D), pad rows = x_pad_token."""
        ctrl = self.control_all_x_embedder[PATCH_KEY](patchify(control, base.cfg.patch_size))  # (B, N, D)
        pad = cond.img_cos.shape[1] - ctrl.shape[1]
        if pad:
            ctrl = torch.cat([ctrl, base.x_pad_token.to(ctrl.dtype).expand(ctrl.shape[0], pad, -1)], dim=1)
        return ctrl

    def hints(
        self, base: ZImageTransformer, img: Tensor, t_emb: Tensor, cond: Conditioning, control: Tensor, scale: float
    ) -> dict[int, Tensor]:
        """Main-layer hints {layer index: (B, S, D) hint x scale} for embedded image tokens ``img`` (B, N_pad, D)."""
        cfg = self.cfg
        ctrl = self.embed_control(control.to(img.dtype), cond, base)
        refiner_hints: dict[int, Tensor] | None = None
        mode = cfg.add_control_noise_refiner
        if mode is not None:
            blocks = self.control_layers if mode == "control_layers" else self.control_noise_refiner
            ctrl, hs = _run_control(blocks, ctrl, img, cond.img_cos, cond.img_sin, None, t_emb, base)
            refiner_hints = {p: hs[i] * scale for i, p in enumerate(cfg.control_refiner_layers_places)}
        img = base.refine_image(img, t_emb, cond, refiner_hints)  # the control branch's view of the image
        if mode is None:
            for blk in self.control_noise_refiner:
                ctrl = blk(ctrl, cond.img_cos, cond.img_sin, None, t_emb, base.attn_backend)
        unified = base.unify(img, cond)  # (B, N_pad + Lc, D)
        _, hs = _run_control(
            self.control_layers, base.unify(ctrl, cond), unified, cond.cos, cond.sin, cond.key_mask, t_emb, base
        )
        return {p: hs[k] * scale for k, p in enumerate(cfg.control_layers_places)}


def controlled_forward(
    base: ZImageTransformer,
    controlnet: ZImageControlNet,
    x: Tensor,
    t: Tensor,
    cond: Conditioning,
    control: Tensor,
    scale: float,
) -> Tensor:
    """The base DiT's prediction with ControlNet hints. x (B, 16, H, W), control (B, control_in_dim, H, W)."""
    t_emb = base.embed_time(t, x.dtype)
    img = base.embed_image(x, cond)  # (B, N_pad, D)
    hints = controlnet.hints(base, img, t_emb, cond, control, scale)
    img = base.refine_image(img, t_emb, cond)  # the base's own refiner pass gets no hints (as diffusers)
    h = base.run_layers(base.unify(img, cond), t_emb, cond, hints)
    return base.finish(h, t_emb, cond)
