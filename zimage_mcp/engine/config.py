"""Architecture configs as frozen dataclasses, with presets and strict ``config.json`` readers.

Every architecture field must be stated: there are no silent defaults. ``from_json`` maps the
checkpoint's ``config.json`` explicitly and raises on unknown or missing keys, naming the file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from zimage_mcp.engine.errors import WeightsError


def read_json(path: Path) -> dict[str, Any]:
    """A config file as a dict; WeightsError naming the file when it is missing or not a JSON object."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise WeightsError(f"missing config file: {path}") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise WeightsError(f"config file {path} is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise WeightsError(f"config file {path} must hold a JSON object")
    return data


def _strict_kwargs(path: Path, data: dict[str, Any], known: set[str], ignored: set[str]) -> dict[str, Any]:
    """Keep the known keys; refuse anything that is neither known nor a bookkeeping key."""
    unknown = sorted(k for k in data if k not in known and k not in ignored and not k.startswith("_"))
    if unknown:
        raise WeightsError(f"{path}: unknown config keys {unknown}; expected only {sorted(known)}")
    return {k: v for k, v in data.items() if k in known}


@dataclass(frozen=True)
class TransformerConfig:
    """The S3-DiT transformer (``transformer/config.json``)."""

    in_channels: int
    dim: int
    n_layers: int
    n_refiner_layers: int
    n_heads: int
    n_kv_heads: int
    norm_eps: float
    qk_norm: bool
    cap_feat_dim: int
    rope_theta: float
    t_scale: float
    axes_dims: tuple[int, ...]
    axes_lens: tuple[int, ...]
    all_patch_size: tuple[int, ...] = (2,)
    all_f_patch_size: tuple[int, ...] = (1,)
    siglip_feat_dim: int | None = None  # set only for the Omni (Edit) architecture

    def __post_init__(self) -> None:
        if self.dim % self.n_heads != 0:
            raise ValueError(f"dim {self.dim} is not divisible by n_heads {self.n_heads}")
        if sum(self.axes_dims) != self.head_dim:
            raise ValueError(f"axes_dims {self.axes_dims} must sum to head_dim {self.head_dim}")
        if len(self.axes_dims) != len(self.axes_lens):
            raise ValueError("axes_dims and axes_lens must have the same length")
        if self.n_kv_heads != self.n_heads:
            raise ValueError("grouped-query attention (n_kv_heads != n_heads) is not part of Z-Image")
        if tuple(self.all_patch_size) != (2,) or tuple(self.all_f_patch_size) != (1,):
            raise ValueError("only patch size 2 and frame patch size 1 are published for Z-Image")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def patch_size(self) -> int:
        return self.all_patch_size[0]

    @property
    def ffn_hidden(self) -> int:
        return int(self.dim / 3 * 8)

    @property
    def adaln_dim(self) -> int:
        return min(self.dim, 256)

    @classmethod
    def from_json(cls, path: Path) -> TransformerConfig:
        data = read_json(path)
        names = {f.name for f in fields(cls)}
        kw = _strict_kwargs(path, data, names, ignored=set())
        optional = {"all_patch_size", "all_f_patch_size", "siglip_feat_dim"}
        missing = sorted(names - optional - set(kw))
        if missing:
            raise WeightsError(f"{path}: missing config keys {missing}")
        for key in ("axes_dims", "axes_lens", "all_patch_size", "all_f_patch_size"):
            if key in kw:
                kw[key] = tuple(kw[key])
        try:
            return cls(**kw)
        except (TypeError, ValueError) as e:
            raise WeightsError(f"{path}: {e}") from e

    def to_json_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"_class_name": "ZImageTransformer2DModel"}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "siglip_feat_dim" and v is None:
                continue
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out


@dataclass(frozen=True)
class VAEConfig:
    """The 16-channel FLUX autoencoder (``vae/config.json``)."""

    in_channels: int
    out_channels: int
    latent_channels: int
    block_out_channels: tuple[int, ...]
    layers_per_block: int
    norm_num_groups: int
    scaling_factor: float
    shift_factor: float
    mid_block_add_attention: bool = True

    # diffusers AutoencoderKL keys we accept but that do not change the architecture we build.
    _ACCEPTED = {
        "act_fn",
        "down_block_types",
        "up_block_types",
        "sample_size",
        "force_upcast",
        "use_quant_conv",
        "use_post_quant_conv",
        "latents_mean",
        "latents_std",
    }

    @classmethod
    def from_json(cls, path: Path) -> VAEConfig:
        data = read_json(path)
        names = {f.name for f in fields(cls)}
        kw = _strict_kwargs(path, data, names, ignored=cls._ACCEPTED)
        if data.get("act_fn", "silu") != "silu":
            raise WeightsError(f"{path}: act_fn {data['act_fn']!r} is not supported (only 'silu')")
        for key in ("use_quant_conv", "use_post_quant_conv"):
            if data.get(key, False):
                raise WeightsError(f"{path}: {key}=true is not part of the Z-Image VAE")
        missing = sorted(names - {"mid_block_add_attention"} - set(kw))
        if missing:
            raise WeightsError(f"{path}: missing config keys {missing}")
        kw["block_out_channels"] = tuple(kw["block_out_channels"])
        return cls(**kw)

    def to_json_dict(self) -> dict[str, Any]:
        n = len(self.block_out_channels)
        return {
            "_class_name": "AutoencoderKL",
            "act_fn": "silu",
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "latent_channels": self.latent_channels,
            "block_out_channels": list(self.block_out_channels),
            "down_block_types": ["DownEncoderBlock2D"] * n,
            "up_block_types": ["UpDecoderBlock2D"] * n,
            "layers_per_block": self.layers_per_block,
            "norm_num_groups": self.norm_num_groups,
            "scaling_factor": self.scaling_factor,
            "shift_factor": self.shift_factor,
            "mid_block_add_attention": self.mid_block_add_attention,
            "sample_size": 1024,
            "force_upcast": True,
            "use_quant_conv": False,
            "use_post_quant_conv": False,
        }


@dataclass(frozen=True)
class SchedulerConfig:
    """The flow-matching schedule (``scheduler/scheduler_config.json``); only ``shift`` matters."""

    shift: float
    num_train_timesteps: int = 1000

    @classmethod
    def from_json(cls, path: Path) -> SchedulerConfig:
        data = read_json(path)
        if data.get("use_dynamic_shifting", False):
            raise WeightsError(f"{path}: use_dynamic_shifting=true is not used by Z-Image")
        if "shift" not in data:
            raise WeightsError(f"{path}: missing config key 'shift'")
        return cls(shift=float(data["shift"]), num_train_timesteps=int(data.get("num_train_timesteps", 1000)))


TRANSFORMER_PRESETS: dict[str, TransformerConfig] = {
    # Turbo and Base share one architecture; they differ only in sampling defaults.
    "turbo": TransformerConfig(
        in_channels=16,
        dim=3840,
        n_layers=30,
        n_refiner_layers=2,
        n_heads=30,
        n_kv_heads=30,
        norm_eps=1e-5,
        qk_norm=True,
        cap_feat_dim=2560,
        rope_theta=256.0,
        t_scale=1000.0,
        axes_dims=(32, 48, 48),
        axes_lens=(1536, 512, 512),
    ),
    # A CPU-sized model with every structural feature (two axes of RoPE that differ, refiners, pads).
    "tiny": TransformerConfig(
        in_channels=16,
        dim=64,
        n_layers=2,
        n_refiner_layers=1,
        n_heads=2,
        n_kv_heads=2,
        norm_eps=1e-5,
        qk_norm=True,
        cap_feat_dim=32,
        rope_theta=256.0,
        t_scale=1000.0,
        axes_dims=(8, 12, 12),
        axes_lens=(1536, 512, 512),
    ),
}
TRANSFORMER_PRESETS["base"] = TRANSFORMER_PRESETS["turbo"]

VAE_PRESETS: dict[str, VAEConfig] = {
    "flux": VAEConfig(
        in_channels=3,
        out_channels=3,
        latent_channels=16,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        norm_num_groups=32,
        scaling_factor=0.3611,
        shift_factor=0.1159,
    ),
    "tiny": VAEConfig(
        in_channels=3,
        out_channels=3,
        latent_channels=16,
        block_out_channels=(32, 32, 64, 64),
        layers_per_block=1,
        norm_num_groups=8,
        scaling_factor=0.3611,
        shift_factor=0.1159,
    ),
}

SCHEDULER_PRESETS: dict[str, SchedulerConfig] = {
    "turbo": SchedulerConfig(shift=3.0),
    "base": SchedulerConfig(shift=6.0),
    "tiny": SchedulerConfig(shift=3.0),
}

__all__ = [
    "TransformerConfig",
    "VAEConfig",
    "SchedulerConfig",
    "TRANSFORMER_PRESETS",
    "VAE_PRESETS",
    "SCHEDULER_PRESETS",
    "replace",
]
