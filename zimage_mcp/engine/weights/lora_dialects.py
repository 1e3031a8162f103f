"""LoRA / LoKr files in the dialects seen for Z-Image, normalised to our module names.

Our modules carry diffusers' names (``layers.3.attention.to_q``), so normalising is renaming plus two
special handlers, table-driven like diffusers' ``_convert_non_diffusers_z_image_lora_to_diffusers``:

- diffusers / PEFT: ``transformer.<name>.lora_A/lora_B.weight``; alpha from the PEFT ``LoraConfig`` JSON
  in the safetensors header (``lora_adapter_metadata``, keys ``transformer.r`` ... or unprefixed); no
  alpha anywhere => scale 1. Raw PEFT dumps (``base_model.model.``, ``.lora_A.default.weight``) too.
- ai-toolkit: ``diffusion_model.<name>.lora_A/lora_B.weight`` (+ ``.alpha``); LoKr ``.lokr_w1/_w2``
  (or their ``_a``/``_b`` factors) + ``.alpha``.
- kohya: ``lora_unet_layers_0_attention_to_q.lora_down/lora_up.weight`` + ``.alpha``; the native-tree
  form ``..._attention_qkv`` (fused: the up matrix splits into 3 row blocks sharing one down) and
  ``..._attention_out``. ``lycoris_`` is read the same way.
- ComfyUI native: ``diffusion_model.`` + ComfyUI names (``attention.qkv``, ``attention.out``,
  ``q_norm``/``k_norm``, ``x_embedder``, ``final_layer``).
- dot format (Anime-Z style): ``layers.0.attention.to.q.lora.down.weight``; the redundant fused
  ``qkv.lora.*`` and bare ``out.lora.*`` copies are dropped when the split keys exist (as diffusers does).
- text encoder (optional): ``text_encoder.`` / ``base_model.model.text_encoder.`` / ``lora_te_`` keys,
  normalised to ``Qwen3Model`` names (``layers.0.self_attn.q_proj``).

Alpha is folded exactly as diffusers does: a LoRA's scale is ``alpha / rank`` (``alpha / sqrt(r)`` for
rsLoRA metadata), 1 without alpha; a LoKr's ``alpha / rank`` applies only when a factor is
rank-decomposed (full factors take no alpha). Keys that cannot be placed are collected, never dropped.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor

from zimage_mcp.engine.errors import WeightsError
from zimage_mcp.engine.weights.files import require_safetensors

METADATA_KEY = "lora_adapter_metadata"  # diffusers' LORA_ADAPTER_METADATA_KEY

# (prefix, component, underscored): longest first; underscored names are un-flattened on "_".
_PREFIXES: tuple[tuple[str, str, bool], ...] = (
    ("base_model.model.text_encoder.", "text_encoder", False),
    ("text_encoder.", "text_encoder", False),
    ("lora_te_", "text_encoder", True),
    ("model.diffusion_model.", "transformer", False),
    ("diffusion_model.", "transformer", False),
    ("transformer.", "transformer", False),
    ("base_model.model.", "transformer", False),
    ("lora_unet_", "transformer", True),
    ("lycoris_", "transformer", True),
    ("", "transformer", False),
)

_SUFFIXES: tuple[tuple[str, str], ...] = (
    (".lora_A.weight", "down"),
    (".lora_B.weight", "up"),
    (".lora_down.weight", "down"),
    (".lora_up.weight", "up"),
    (".lora.down.weight", "down"),
    (".lora.up.weight", "up"),
    (".alpha", "alpha"),
    (".lokr_w1", "w1"),
    (".lokr_w1_a", "w1_a"),
    (".lokr_w1_b", "w1_b"),
    (".lokr_w2", "w2"),
    (".lokr_w2_a", "w2_a"),
    (".lokr_w2_b", "w2_b"),
)

# Module names with "_" inside, restored after splitting on "_" (kohya) or "." (dot format); longest first.
_WORDS = sorted(
    (
        "all_final_layer",
        "all_x_embedder",
        "adaLN_modulation",
        "noise_refiner",
        "context_refiner",
        "feed_forward",
        "cap_embedder",
        "t_embedder",
        "x_embedder",
        "final_layer",
        "to_out",
        "to_q",
        "to_k",
        "to_v",
        "q_norm",
        "k_norm",
        "norm_q",
        "norm_k",
        "self_attn",
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    ),
    key=len,
    reverse=True,
)
_WORD_RES = [(re.compile(r"(?<![^.])" + re.escape(w.replace("_", ".")) + r"(?![^.])"), w) for w in _WORDS]

# ComfyUI-native names -> ours (the fused qkv and the bare out are the special handlers below).
_RENAMES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\.attention\.q_norm$"), ".attention.norm_q"),
    (re.compile(r"\.attention\.k_norm$"), ".attention.norm_k"),
    (re.compile(r"^x_embedder$"), "all_x_embedder.2-1"),
    (re.compile(r"^final_layer\."), "all_final_layer.2-1."),
)

_BLOCK = r"(layers|noise_refiner|context_refiner)\.\d+\."
TARGETS: dict[str, re.Pattern[str]] = {
    "transformer": re.compile(
        rf"{_BLOCK}(attention\.(to_q|to_k|to_v|to_out\.0|norm_q|norm_k)|feed_forward\.w[123]|adaLN_modulation\.0)"
        r"|all_x_embedder\.2-1|all_final_layer\.2-1\.(linear|adaLN_modulation\.1)|t_embedder\.mlp\.[02]|cap_embedder\.1"
    ),
    "text_encoder": re.compile(r"layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)"),
}

_COMFY_NATIVE = re.compile(
    r"\.attention\.(qkv|out|q_norm|k_norm)\.|^(model\.)?diffusion_model\.(x_embedder|final_layer)\."
)
# (name, detect(keys)); the first match names the file's dialect
DIALECTS: tuple[tuple[str, Callable[[list[str]], bool]], ...] = (
    ("ai-toolkit-lokr", lambda ks: any(".lokr_" in k for k in ks)),
    ("kohya", lambda ks: any(k.startswith(("lora_unet_", "lycoris_", "lora_te_")) for k in ks)),
    ("dot", lambda ks: any(k.endswith(".lora.down.weight") for k in ks)),
    ("comfyui", lambda ks: any("diffusion_model." in k and _COMFY_NATIVE.search(k) for k in ks)),
    ("ai-toolkit", lambda ks: any(k.startswith("diffusion_model.") for k in ks)),
    ("diffusers", lambda ks: True),
)


@dataclass(frozen=True)
class LoraDelta:
    """delta W = scale * up @ down; ``down`` (r, in), ``up`` (out, r)."""

    key: str  # the file key of ``down``, for error messages
    down: Tensor
    up: Tensor
    alpha: float | None
    scale: float

    @property
    def rank(self) -> int:
        return self.down.shape[0]

    @property
    def shape(self) -> tuple[int, int]:
        return (self.up.shape[0], self.down.shape[1])

    def weight(self, device: torch.device | str = "cpu") -> Tensor:
        return (self.up.to(device, torch.float32) @ self.down.to(device, torch.float32)) * self.scale


@dataclass(frozen=True)
class LokrDelta:
    """delta W = scale * kron(w1, w2), with rank-decomposed factors already multiplied out."""

    key: str
    w1: Tensor
    w2: Tensor
    alpha: float | None
    scale: float
    rank: int | None  # None when both factors are full matrices

    @property
    def shape(self) -> tuple[int, int]:
        return (self.w1.shape[0] * self.w2.shape[0], self.w1.shape[1] * self.w2.shape[1])

    def weight(self, device: torch.device | str = "cpu") -> Tensor:
        return torch.kron(self.w1.to(device, torch.float32), self.w2.to(device, torch.float32)) * self.scale


Delta = LoraDelta | LokrDelta


@dataclass(frozen=True)
class NormalizedLora:
    """One adapter file: per component ("transformer", "text_encoder"), module name -> delta."""

    source: str
    dialect: str
    deltas: dict[str, dict[str, Delta]]
    unmatched: tuple[str, ...]
    dropped: tuple[str, ...]  # redundant duplicates removed on purpose (dot format)


def detect_dialect(keys: list[str]) -> str:
    return next(name for name, detect in DIALECTS if detect(keys))


def _parse_key(key: str) -> tuple[str, str, str] | None:
    """File key -> (component, module name in our tree, kind), or None if no table entry fits."""
    k = key.replace(".default.", ".")  # PEFT adapter name in raw dumps
    match = next(((sfx, kd) for sfx, kd in _SUFFIXES if k.endswith(sfx)), None)
    if match is None:
        return None
    k, kind = k[: -len(match[0])], match[1]
    component, prefix, underscored = next((c, p, u) for p, c, u in _PREFIXES if k.startswith(p))
    module = k[len(prefix) :]
    if underscored:
        module = module.replace("_", ".")
    for pattern, word in _WORD_RES:
        module = pattern.sub(word, module)
    if component == "text_encoder":
        return component, module.removeprefix("model."), kind
    for pattern, new in _RENAMES:
        module = pattern.sub(new, module)
    return component, module, kind


def _special_handlers(groups: dict[tuple[str, str], dict[str, tuple[str, Tensor]]]) -> list[str]:
    """Split fused ``attention.qkv`` and rename bare ``attention.out``; drop them next to split keys."""
    dropped: list[str] = []
    for comp, module in [g for g in groups if g[1].endswith((".attention.qkv", ".attention.out"))]:
        slot = groups.pop((comp, module))
        block, fused = module.rsplit(".", 1)
        names = [f"{block}.to_q", f"{block}.to_k", f"{block}.to_v"] if fused == "qkv" else [f"{block}.to_out.0"]
        if any((comp, n) in groups for n in names):
            dropped.extend(key for key, _ in slot.values())
            continue
        if fused == "out":
            groups[(comp, names[0])] = slot
            continue
        if "up" not in slot or slot["up"][1].shape[0] % 3:
            groups[(comp, module)] = slot  # stays unplaceable
            continue
        for name, up in zip(names, slot["up"][1].chunk(3, dim=0), strict=False):
            groups[(comp, name)] = {**slot, "up": (slot["up"][0], up.contiguous())}
    return dropped


def _peft_config(metadata: Mapping[str, str] | None, component: str) -> dict[str, Any] | None:
    raw = (metadata or {}).get(METADATA_KEY)
    if not raw:
        return None
    try:
        cfg = json.loads(raw)
    except json.JSONDecodeError as e:
        raise WeightsError(f"LoRA header field {METADATA_KEY!r} is not valid JSON: {e}") from e
    prefixed = {k.removeprefix(f"{component}."): v for k, v in cfg.items() if k.startswith(f"{component}.")}
    if prefixed:
        return prefixed
    return cfg if component == "transformer" and "lora_alpha" in cfg else None


def _pattern_value(patterns: Mapping[str, Any] | None, module: str, default: Any) -> Any:
    """peft's ``get_pattern_key`` lookup for ``rank_pattern`` / ``alpha_pattern``."""
    for pattern in patterns or {}:
        if re.match(rf"(.*\.)?({pattern})$", module):
            return patterns[pattern]  # type: ignore[index]
    return default


def _build(module: str, slot: dict[str, tuple[str, Tensor]], peft: dict[str, Any] | None) -> Delta | None:
    kinds = set(slot)
    alpha = float(slot["alpha"][1].item()) if "alpha" in slot else None
    if kinds - {"alpha"} == {"down", "up"}:
        (key, down), (up_key, up) = slot["down"], slot["up"]
        if down.ndim != 2 or up.ndim != 2 or up.shape[1] != down.shape[0]:
            raise WeightsError(f"LoRA key {key!r} {tuple(down.shape)} does not pair with {up_key!r} {tuple(up.shape)}")
        rank, scale = down.shape[0], 1.0
        if alpha is not None:
            scale = alpha / rank
        elif peft is not None:
            r = _pattern_value(peft.get("rank_pattern"), module, peft.get("r", rank))
            alpha = float(_pattern_value(peft.get("alpha_pattern"), module, peft.get("lora_alpha", r)))
            scale = alpha / math.sqrt(r) if peft.get("use_rslora") else alpha / r
        return LoraDelta(key, down, up, alpha, scale)
    factors = kinds - {"alpha"}
    expected = ({"w1"} if "w1" in factors else {"w1_a", "w1_b"}) | ({"w2"} if "w2" in factors else {"w2_a", "w2_b"})
    if factors == expected:
        w1 = slot["w1"][1] if "w1" in slot else slot["w1_a"][1].float() @ slot["w1_b"][1].float()
        w2 = slot["w2"][1] if "w2" in slot else slot["w2_a"][1].float() @ slot["w2_b"][1].float()
        rank = slot["w2_b"][1].shape[0] if "w2_b" in slot else slot["w1_b"][1].shape[0] if "w1_b" in slot else None
        scale = alpha / rank if alpha is not None and rank is not None else 1.0
        if alpha is None and peft is not None:
            scale = float(peft.get("alpha", 1.0)) / float(peft.get("r", 1.0))
        key = slot["w1" if "w1" in slot else "w1_a"][0]
        return LokrDelta(key, w1, w2, alpha, scale, rank)
    return None


def normalize_lora(
    state_dict: Mapping[str, Tensor],
    metadata: Mapping[str, str] | None = None,
    *,
    source: str = "<state dict>",
    strict: bool = True,
) -> NormalizedLora:
    """Any supported dialect -> ``NormalizedLora``; unplaceable keys raise ``WeightsError`` when ``strict``."""
    keys = list(state_dict)
    unmatched: list[str] = []
    groups: dict[tuple[str, str], dict[str, tuple[str, Tensor]]] = {}
    for key in keys:
        parsed = _parse_key(key)
        slot = groups.setdefault(parsed[:2], {}) if parsed is not None else None
        if parsed is None or slot is None or parsed[2] in slot:
            unmatched.append(key)  # no table entry fits, or a second spelling of a key already seen
            continue
        slot[parsed[2]] = (key, state_dict[key])
    dropped = _special_handlers(groups)
    deltas: dict[str, dict[str, Delta]] = {"transformer": {}, "text_encoder": {}}
    for (comp, module), slot in groups.items():
        delta = _build(module, slot, _peft_config(metadata, comp)) if TARGETS[comp].fullmatch(module) else None
        if delta is None:
            unmatched.extend(key for key, _ in slot.values())
        else:
            deltas[comp][module] = delta
    lora = NormalizedLora(source, detect_dialect(keys), deltas, tuple(sorted(unmatched)), tuple(sorted(dropped)))
    if strict and lora.unmatched:
        raise WeightsError(unmatched_message(lora))
    if strict and not any(deltas.values()):
        raise WeightsError(f"{source}: holds no LoRA or LoKr weights")
    return lora


def unmatched_message(lora: NormalizedLora) -> str:
    shown, more = lora.unmatched[:20], len(lora.unmatched) - 20
    tail = f" (and {more} more)" if more > 0 else ""
    return f"{lora.source}: {len(lora.unmatched)} keys cannot be placed on Z-Image modules: {list(shown)}{tail}"


def read_adapter(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Tensors and header metadata of a LoRA file (``.safetensors`` only)."""
    path = Path(path)
    require_safetensors(path)
    if not path.is_file():
        raise WeightsError(f"LoRA file not found: {path}")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise WeightsError(f"{path}: not a readable safetensors file (truncated or corrupt?): {e}") from e
    return tensors, metadata


def load_lora(path: Path, *, strict: bool = True) -> NormalizedLora:
    """Read and normalise one adapter file."""
    tensors, metadata = read_adapter(Path(path))
    return normalize_lora(tensors, metadata, source=str(path), strict=strict)


__all__ = [
    "DIALECTS",
    "TARGETS",
    "LoraDelta",
    "LokrDelta",
    "Delta",
    "NormalizedLora",
    "detect_dialect",
    "normalize_lora",
    "load_lora",
    "read_adapter",
    "unmatched_message",
]
