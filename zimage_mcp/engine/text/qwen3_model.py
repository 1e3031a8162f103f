"""Qwen3 decoder stack in plain PyTorch, for the text encoder (no ``transformers`` on the first request's path).

Importing ``transformers``' Qwen3 pulls in torch._dynamo, torch._inductor and sympy (seconds before a first
image); this is the same network in ~200 lines. Parameter names are exactly those of ``transformers``'
``Qwen3Model`` (``layers.N.self_attn.q_proj.weight``, ...), so published checkpoints and text-encoder LoRAs
apply unchanged, and the numerics follow it op for op (RMSNorm in fp32, q/k norms before RoPE, rotate-half
RoPE from fp32 cos/sin, SDPA with GQA), which the tests check against ``transformers`` itself.

Every decoder layer takes plain tensors, so each can be compiled on its own, and with no padding mask the
forward has no host sync and no branch on tensor values: it can be captured as a CUDA graph.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zimage_mcp.engine.dit.attention import plan_free_kernels
from zimage_mcp.engine.dit.rms_norm import rms_normalize
from zimage_mcp.engine.errors import WeightsError


@dataclass(frozen=True)
class Qwen3TextConfig:
    """The fields of a Qwen3 ``config.json`` the decoder needs (Qwen3-4B: 2560 hidden, 36 layers, 32/8 heads)."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    intermediate_size: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1e6
    max_position_embeddings: int = 40960

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], source: str) -> Qwen3TextConfig:
        """Read a ``transformers``-written Qwen3 config (4.x or 5.x layout); WeightsError naming ``source``
        and the field for what this decoder does not implement."""

        def refuse(field: str, why: str) -> WeightsError:
            return WeightsError(f"text-encoder config {source}: {field} {why}")

        def number(field: str, kind: type, default: Any = None, value: Any = None) -> Any:
            value = raw.get(field) if value is None else value
            value = default if value is None else value  # transformers reads null as "the default" too
            if value is None:
                raise refuse(field, "is missing")
            if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int):
                raise refuse(field, f"must be {'a number' if kind is float else 'an integer'}, not {value!r}")
            return kind(value)

        if raw.get("hidden_act", "silu") != "silu":
            raise refuse("hidden_act", f"{raw['hidden_act']!r} is not supported (only 'silu')")
        if raw.get("attention_bias", False):
            raise refuse("attention_bias", "true is not supported (Qwen3 has no attention biases)")
        # transformers 4.x writes rope_theta + rope_scaling (null for plain RoPE); 5.x writes rope_parameters.
        rope_field = "rope_scaling" if raw.get("rope_scaling") else "rope_parameters"
        rope = raw.get(rope_field) or {}
        if not isinstance(rope, Mapping):
            raise refuse(rope_field, f"must be an object, not {rope!r}")
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type != "default":
            raise refuse(f"{rope_field}.rope_type", f"{rope_type!r} is not supported (only 'default' RoPE)")
        theta = number("rope_theta", float, 10000.0, rope.get("rope_theta"))  # transformers' default theta
        n_layers = number("num_hidden_layers", int)
        # As transformers derives them: layers from max_window_layers on slide when use_sliding_window.
        window = raw.get("sliding_window", 4096) if raw.get("use_sliding_window", False) else None
        first_sliding = raw.get("max_window_layers", 28)
        derived = [
            "sliding_attention" if window is not None and i >= first_sliding else "full_attention"
            for i in range(n_layers)
        ]
        layer_types = raw.get("layer_types") or derived
        if any(t != "full_attention" for t in layer_types):
            field = "layer_types" if raw.get("layer_types") else "use_sliding_window"
            raise refuse(field, "asks for sliding-window attention, which is not supported (full attention only)")
        heads = number("num_attention_heads", int)
        return cls(
            vocab_size=number("vocab_size", int),
            hidden_size=number("hidden_size", int),
            num_hidden_layers=n_layers,
            num_attention_heads=heads,
            num_key_value_heads=number("num_key_value_heads", int, heads),  # transformers: None means MHA
            head_dim=number("head_dim", int, 128),  # transformers' Qwen3Config default
            intermediate_size=number("intermediate_size", int),
            rms_norm_eps=number("rms_norm_eps", float, 1e-6),
            rope_theta=theta,
            max_position_embeddings=number("max_position_embeddings", int, 32768),
        )


def read_config(path: Path) -> Qwen3TextConfig:
    """``text_encoder/config.json`` -> config; WeightsError naming the file when missing or unsupported."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"missing text-encoder config: looked for {path}")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise WeightsError(f"text-encoder config {path} is unreadable: {e}") from e
    if not isinstance(raw, dict):
        raise WeightsError(f"text-encoder config {path} is unreadable: not a JSON object")
    return Qwen3TextConfig.from_dict(raw, str(path))


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        # As transformers: normalise in fp32, round back to the activation dtype, then scale.
        return self.weight * rms_normalize(x, self.eps, x.dtype)


class RotaryEmbedding(nn.Module):
    """cos/sin tables of plain RoPE (rotate-half layout), computed in fp32 and cast to the activations."""

    def __init__(self, head_dim: int, theta: float) -> None:
        super().__init__()
        # On the CPU even when the model is built on ``meta``, as transformers computes it (move it with
        # ``.to(device)``); not in the checkpoint, so not persistent.
        exponents = torch.arange(0, head_dim, 2, dtype=torch.float32, device="cpu") / head_dim
        self.register_buffer("inv_freq", 1.0 / (theta**exponents), persistent=False)  # (head_dim/2,)

    def forward(self, length: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        positions = torch.arange(length, device=self.inv_freq.device, dtype=torch.float32)
        freqs = positions[:, None] * self.inv_freq[None, :]  # (L, head_dim/2)
        emb = torch.cat((freqs, freqs), dim=-1)[None, None]  # (1, 1, L, head_dim): broadcasts over (B, heads)
        return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class Qwen3Attention(nn.Module):
    def __init__(self, cfg: Qwen3TextConfig) -> None:
        super().__init__()
        self.head_dim = cfg.head_dim
        self.groups = cfg.num_attention_heads // cfg.num_key_value_heads  # query heads per key/value head
        self.q_proj = nn.Linear(cfg.hidden_size, cfg.num_attention_heads * cfg.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.hidden_size, cfg.num_key_value_heads * cfg.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.hidden_size, cfg.num_key_value_heads * cfg.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.num_attention_heads * cfg.head_dim, cfg.hidden_size, bias=False)
        self.q_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps)  # per head, before RoPE
        self.k_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None) -> Tensor:
        b, n, _ = x.shape  # (B, L, hidden)
        q = self.q_norm(self.q_proj(x).view(b, n, -1, self.head_dim)).transpose(1, 2)  # (B, H, L, D)
        k = self.k_norm(self.k_proj(x).view(b, n, -1, self.head_dim)).transpose(1, 2)  # (B, Hkv, L, D)
        v = self.v_proj(x).view(b, n, -1, self.head_dim).transpose(1, 2)  # (B, Hkv, L, D)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        scale = self.head_dim**-0.5
        with plan_free_kernels(x.device):  # a new prompt length must not build a cuDNN plan on a request's path
            out = self._attend(q, k, v, mask, scale)
        return self.o_proj(out.transpose(1, 2).reshape(b, n, -1))  # (B, H, L, D) -> (B, L, H*D) -> (B, L, hidden)

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, scale: float) -> Tensor:
        if mask is None:
            # The causal flag keeps SDPA's flash kernels; GQA is done inside them, as transformers does.
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=self.groups > 1)
        else:
            # With an explicit mask the GQA kernels fall back to the math path on CUDA, so repeat the
            # key/value heads instead (transformers' repeat_kv): (B, Hkv, L, D) -> (B, H, L, D).
            k = k.repeat_interleave(self.groups, dim=1) if self.groups > 1 else k
            v = v.repeat_interleave(self.groups, dim=1) if self.groups > 1 else v
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
        return out  # (B, H, L, D)


class Qwen3MLP(nn.Module):
    def __init__(self, cfg: Qwen3TextConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Qwen3Layer(nn.Module):
    """Pre-norm decoder layer; plain-tensor arguments so ``torch.compile`` can take it alone."""

    def __init__(self, cfg: Qwen3TextConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Qwen3Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = Qwen3MLP(cfg)

    def forward(self, hidden: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None = None) -> Tensor:
        hidden = hidden + self.self_attn(self.input_layernorm(hidden), cos, sin, mask)
        return hidden + self.mlp(self.post_attention_layernorm(hidden))


def causal_padding_mask(mask: Tensor) -> Tensor:
    """Key-padding mask (B, L), True = real token -> SDPA boolean mask (B, 1, L, L): query i attends to key j
    when j <= i and j is a real token (transformers' causal and padding mask functions, combined)."""
    n = mask.shape[1]
    causal = torch.ones(n, n, dtype=torch.bool, device=mask.device).tril()  # (L, L)
    return causal[None, None] & mask.bool()[:, None, None, :]


class Qwen3TextModel(nn.Module):
    """Embeddings, decoder layers and final norm of Qwen3, with ``transformers``' ``Qwen3Model`` names.

    The text encoder drops the last layer and replaces ``norm`` with an identity (see ``qwen3._build``).
    The token-embedding table may live in host memory while the layers run on a GPU (``qwen3._build`` puts
    it there): a prompt gathers a few hundred of its 151,936 rows, and Qwen3-4B's table is 0.72 GiB of bf16
    that a 24 GB card needs for activations.
    """

    def __init__(self, cfg: Qwen3TextConfig) -> None:
        super().__init__()
        self.config = cfg
        # Left uninitialised (the checkpoint fills it): nn.Embedding's normal_ init on the meta device goes
        # through torch._refs, which imports torch._dynamo (seconds, on the first request's path).
        self.embed_tokens = nn.Embedding(
            cfg.vocab_size, cfg.hidden_size, _weight=torch.empty(cfg.vocab_size, cfg.hidden_size)
        )
        self.layers = nn.ModuleList(Qwen3Layer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm: nn.Module = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(cfg.head_dim, cfg.rope_theta)

    @property
    def device(self) -> torch.device:
        """Where the layers run (the embedding table may be elsewhere)."""
        return self.rotary_emb.inv_freq.device

    def embed(self, input_ids: Tensor) -> Tensor:
        """input_ids (B, L) on any device -> embeddings (B, L, hidden) on the layers' device."""
        table = self.embed_tokens.weight
        return self.embed_tokens(input_ids.to(table.device)).to(self.device)

    def forward(self, input_ids: Tensor, mask: Tensor | None = None) -> Tensor:
        """input_ids (B, L) -> hidden states (B, L, hidden). ``mask`` (B, L), True = real token; None is
        plain causal attention (right padding needs no mask: no real token sees a later pad)."""
        return self.run_layers(self.embed(input_ids), mask)

    def run_layers(self, hidden: Tensor, mask: Tensor | None = None) -> Tensor:
        """Embeddings (B, L, hidden) on the layers' device -> hidden states (B, L, hidden)."""
        cos, sin = self.rotary_emb(hidden.shape[1], hidden.dtype)  # (1, 1, L, head_dim) each
        attn_mask = None if mask is None else causal_padding_mask(mask)  # (B, 1, L, L)
        for layer in self.layers:
            hidden = layer(hidden, cos, sin, attn_mask)
        return self.norm(hidden)
