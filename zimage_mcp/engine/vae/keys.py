"""VAE key dialects: BFL/ComfyUI ``ae.safetensors`` <-> ours (= diffusers ``AutoencoderKL``).

Supported input: BFL names (``encoder.down.{i}.block.{j}``, ``mid.attn_1.{q,k,v,proj_out}`` as 1x1 convs,
``decoder.up.{k}`` with the up-block index REVERSED), optionally prefixed ``vae.`` or ``first_stage_model.``.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from torch import Tensor

from zimage_mcp.engine.errors import WeightsError

BFL_PREFIXES = ("first_stage_model.", "vae.")

# Placeholders in the rename table; `u` is an up-block index, reversed between the two dialects.
_SLOTS = {
    "s": r"encoder|decoder",
    "i": r"\d+",
    "j": r"\d+",
    "u": r"\d+",
    "r": r"norm1|conv1|norm2|conv2",
    "p": r"weight|bias",
}

# (BFL template, our template, is_1x1_conv_vs_linear)
_RULES: list[tuple[str, str, bool]] = [
    ("{s}.conv_in.{p}", "{s}.conv_in.{p}", False),
    ("{s}.conv_out.{p}", "{s}.conv_out.{p}", False),
    ("{s}.norm_out.{p}", "{s}.conv_norm_out.{p}", False),
    ("encoder.down.{i}.block.{j}.{r}.{p}", "encoder.down_blocks.{i}.resnets.{j}.{r}.{p}", False),
    ("encoder.down.{i}.block.{j}.nin_shortcut.{p}", "encoder.down_blocks.{i}.resnets.{j}.conv_shortcut.{p}", False),
    ("encoder.down.{i}.downsample.conv.{p}", "encoder.down_blocks.{i}.downsamplers.0.conv.{p}", False),
    ("{s}.mid.block_1.{r}.{p}", "{s}.mid_block.resnets.0.{r}.{p}", False),
    ("{s}.mid.block_2.{r}.{p}", "{s}.mid_block.resnets.1.{r}.{p}", False),
    ("{s}.mid.attn_1.norm.{p}", "{s}.mid_block.attentions.0.group_norm.{p}", False),
    ("{s}.mid.attn_1.q.{p}", "{s}.mid_block.attentions.0.to_q.{p}", True),
    ("{s}.mid.attn_1.k.{p}", "{s}.mid_block.attentions.0.to_k.{p}", True),
    ("{s}.mid.attn_1.v.{p}", "{s}.mid_block.attentions.0.to_v.{p}", True),
    ("{s}.mid.attn_1.proj_out.{p}", "{s}.mid_block.attentions.0.to_out.0.{p}", True),
    ("decoder.up.{u}.block.{j}.{r}.{p}", "decoder.up_blocks.{u}.resnets.{j}.{r}.{p}", False),
    ("decoder.up.{u}.block.{j}.nin_shortcut.{p}", "decoder.up_blocks.{u}.resnets.{j}.conv_shortcut.{p}", False),
    ("decoder.up.{u}.upsample.conv.{p}", "decoder.up_blocks.{u}.upsamplers.0.conv.{p}", False),
]


def _compile(template: str) -> re.Pattern[str]:
    parts = re.split(r"\{(\w)\}", template)  # literal, slot, literal, slot, ...
    regex = "".join(re.escape(p) if n % 2 == 0 else f"(?P<{p}>{_SLOTS[p]})" for n, p in enumerate(parts))
    return re.compile(regex)


_TABLE = [(_compile(bfl), bfl, _compile(ours), ours, conv) for bfl, ours, conv in _RULES]


def _rename(key: str, to_ours: bool, num_up_blocks: int) -> tuple[str, bool] | None:
    """New name for ``key`` and whether it is a 1x1-conv/Linear weight; None when no rule matches."""
    for bfl_re, bfl_t, ours_re, ours_t, conv in _TABLE:
        m = (bfl_re if to_ours else ours_re).fullmatch(key)
        if m is None:
            continue
        slots = m.groupdict()
        if "u" in slots:
            u = int(slots["u"])
            if not 0 <= u < num_up_blocks:
                return None
            slots["u"] = str(num_up_blocks - 1 - u)  # BFL decoder.up.{k} <-> ours up_blocks.{n-1-k}
        return (ours_t if to_ours else bfl_t).format(**slots), conv and slots["p"] == "weight"
    return None


def _convert(
    sd: dict[str, Tensor], to_ours: bool, num_up_blocks: int, reshape: Callable[[Tensor], Tensor]
) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    unknown: list[str] = []
    for key, value in sd.items():
        renamed = _rename(key, to_ours, num_up_blocks)
        if renamed is None:
            unknown.append(key)
            continue
        new_key, is_conv_weight = renamed
        if new_key in out:
            raise WeightsError(f"VAE key {key!r} duplicates another key (both map to {new_key!r})")
        out[new_key] = reshape(value) if is_conv_weight else value
    if unknown:
        src = "BFL" if to_ours else "diffusers"
        raise WeightsError(f"unknown {src} VAE keys ({len(unknown)}): {sorted(unknown)[:10]}")
    return out


def _strip_prefix(key: str) -> str:
    for prefix in BFL_PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix) :]
    return key


def _squeeze_1x1(w: Tensor) -> Tensor:
    return w.reshape(w.shape[0], w.shape[1]) if w.ndim == 4 else w  # (O, I, 1, 1) -> (O, I)


def _unsqueeze_1x1(w: Tensor) -> Tensor:
    return w.reshape(*w.shape, 1, 1) if w.ndim == 2 else w  # (O, I) -> (O, I, 1, 1)


def is_bfl_vae_state_dict(sd: dict[str, Tensor]) -> bool:
    """True when the keys use BFL/ComfyUI naming (``encoder.down.N``, ``decoder.up.N``, ``*.mid.block_1``)."""
    pattern = re.compile(r"(encoder|decoder)\.(down\.\d+|up\.\d+|mid\.(block_\d|attn_1))\.")
    return any(pattern.match(_strip_prefix(k)) for k in sd)


def convert_bfl_vae_state_dict(sd: dict[str, Tensor], num_up_blocks: int = 4) -> dict[str, Tensor]:
    """BFL/ComfyUI ``ae.safetensors`` state dict -> ours; raises ``WeightsError`` naming unknown keys."""
    stripped = {_strip_prefix(k): v for k, v in sd.items()}
    if len(stripped) != len(sd):
        seen = [_strip_prefix(k) for k in sd]
        dupes = sorted({k for k in seen if seen.count(k) > 1})
        raise WeightsError(f"VAE keys appear under more than one prefix (vae./first_stage_model./none): {dupes[:10]}")
    return _convert(stripped, to_ours=True, num_up_blocks=num_up_blocks, reshape=_squeeze_1x1)


def to_bfl_vae_state_dict(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """Ours -> BFL naming (inverse of ``convert_bfl_vae_state_dict``), e.g. to write a tiny ``ae.safetensors``."""
    ups = [int(m.group(1)) for k in sd if (m := re.match(r"decoder\.up_blocks\.(\d+)\.", k))]
    return _convert(sd, to_ours=False, num_up_blocks=max(ups, default=-1) + 1, reshape=_unsqueeze_1x1)


__all__ = ["convert_bfl_vae_state_dict", "is_bfl_vae_state_dict", "to_bfl_vae_state_dict"]
