"""A JSON-ready summary of a LoRA file: dialect, ranks, alphas, targeted layers, and the base it fits."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from zimage_mcp.engine.config import TRANSFORMER_PRESETS
from zimage_mcp.engine.weights.lora_dialects import Delta, LokrDelta, load_lora

_BASES = {
    TRANSFORMER_PRESETS["turbo"].dim: "Z-Image Turbo/Base (6B)",
    TRANSFORMER_PRESETS["tiny"].dim: "tiny test model",
}

# module name (without block index) -> how the model dim shows in the delta's (out, in) shape
_DIM_OF: tuple[tuple[str, Any], ...] = (
    (r"attention\.(to_q|to_k|to_v|to_out\.0)|feed_forward\.w[13]|all_final_layer\.2-1\.linear", lambda o, i: i),
    (r"feed_forward\.w2|all_x_embedder\.2-1|cap_embedder\.1|all_final_layer\.2-1\.adaLN_modulation\.1", lambda o, i: o),
    (r"adaLN_modulation\.0", lambda o, i: o // 4),
)
_BLOCK = re.compile(r"^(layers|noise_refiner|context_refiner)\.(\d+)\.(.+)$")


def _model_dim(deltas: dict[str, Delta]) -> int | None:
    for name, delta in deltas.items():
        m = _BLOCK.match(name)
        sub = m.group(3) if m else name
        for pattern, pick in _DIM_OF:
            if re.fullmatch(pattern, sub):
                return int(pick(*delta.shape))
    return None


def _ranges(indices: list[int]) -> str:
    """[0, 1, 2, 5] -> "0-2,5"."""
    runs: list[list[int]] = []
    for i in sorted(set(indices)):
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return ",".join(f"{a}-{b}" if a != b else f"{a}" for a, b in runs)


def _group(names: list[str]) -> dict[str, dict[str, Any]]:
    """Module names -> {"layers.*.attention.to_q": {"count": 30, "blocks": "0-29"}, "cap_embedder.1": {...}}."""
    blocks: dict[str, list[int]] = {}
    for name in names:
        m = _BLOCK.match(name)
        key = f"{m.group(1)}.*.{m.group(3)}" if m else name
        blocks.setdefault(key, []).extend([int(m.group(2))] if m else [])
    return {k: {"count": max(len(v), 1), "blocks": _ranges(v) if v else None} for k, v in sorted(blocks.items())}


def inspect_lora(path: Path) -> dict[str, Any]:
    """Describe ``path`` without applying it; keys that cannot be placed are listed, not raised."""
    lora = load_lora(Path(path), strict=False)
    all_deltas = [d for deltas in lora.deltas.values() for d in deltas.values()]
    dim = _model_dim(lora.deltas["transformer"])
    if dim is None:
        base = "unknown (no transformer weights)"
    else:
        base = _BASES.get(dim, f"unknown dim {dim}")
    return {
        "file": str(path),
        "dialect": lora.dialect,
        "kind": sorted({"lokr" if isinstance(d, LokrDelta) else "lora" for d in all_deltas}),
        "ranks": sorted({d.rank for d in all_deltas if d.rank is not None}),
        "alphas": sorted({d.alpha for d in all_deltas if d.alpha is not None}),
        "scales": sorted({round(d.scale, 6) for d in all_deltas}),
        "modules": {component: len(deltas) for component, deltas in lora.deltas.items()},
        "targets": {component: _group(list(deltas)) for component, deltas in lora.deltas.items() if deltas},
        "dim": dim,
        "base": base,
        "dropped_duplicates": list(lora.dropped),
        "unplaced_keys": list(lora.unmatched),
    }


__all__ = ["inspect_lora"]
