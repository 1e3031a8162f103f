"""Loading a Z-Image ControlNet-Union from a diffusers folder or a single safetensors file.

A folder holds ``config.json`` plus ``diffusion_pytorch_model.safetensors`` (or shards with an index).
A single file uses the same key names and carries no config: the release is read off the keys and
shapes (as diffusers' single-file loader does), and the layer places come from the published table.
2.0 files may carry ``control_noise_refiner.*`` tensors whose ``before_proj`` is zero; diffusers drops
them and so do we. Every other key is audited strictly.
"""

from __future__ import annotations

from pathlib import Path

import torch

from zimage_mcp.engine.config import read_json
from zimage_mcp.engine.dit.controlnet import ControlNetConfig, ZImageControlNet
from zimage_mcp.engine.errors import WeightsError
from zimage_mcp.engine.weights.files import StateDict, load_strict, read_files, shard_files

CONFIG_NAME = "config.json"
INDEX_NAME = "diffusion_pytorch_model.safetensors.index.json"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
EMBED_KEY = "control_all_x_embedder.2-1.weight"
REFINER_PREFIX = "control_noise_refiner."
REFINER_GATE = "control_noise_refiner.0.before_proj.weight"  # zero (or absent) in 2.0, trained in 2.1

# Main-layer places by number of control blocks. Config, not weights: published values for the
# 30-layer DiT, plus the tiny test preset (2 layers).
KNOWN_PLACES: dict[int, tuple[int, ...]] = {
    15: tuple(range(0, 30, 2)),  # 2.0 / 2.1
    6: tuple(range(0, 30, 5)),  # v1
    3: (0, 14, 28),  # 2.1 lite
    2: (0, 1),  # tiny test preset (engine.tiny_controlnet)
}
PUBLISHED_REFINER_PLACES = (0, 1)


def _block_ids(sd: StateDict, prefix: str) -> set[int]:
    return {int(k.split(".")[1]) for k in sd if k.startswith(prefix)}


def _refiner_is_dead(sd: StateDict) -> bool:
    gate = sd.get(REFINER_GATE)
    return gate is None or not bool(torch.any(gate != 0))


def infer_controlnet_config(sd: StateDict, source: str) -> ControlNetConfig:
    """Read the architecture and release off a single file's keys and shapes."""
    try:
        dim, token_dim = sd[EMBED_KEY].shape
        head_dim = sd["control_layers.0.attention.norm_q.weight"].shape[0]
    except KeyError as e:
        raise WeightsError(f"{source}: not a Z-Image ControlNet (no {e.args[0]})") from e
    n_control = len(_block_ids(sd, "control_layers."))
    if n_control not in KNOWN_PLACES:
        raise WeightsError(
            f"{source}: cannot infer control_layers_places for {n_control} control layers "
            f"(known: {sorted(KNOWN_PLACES)}); load it from a folder with a config.json"
        )
    refiner = _block_ids(sd, REFINER_PREFIX)
    if not refiner or REFINER_GATE in sd and _refiner_is_dead(sd):
        mode, n_refiner, refiner_places = "control_layers", 2, PUBLISHED_REFINER_PLACES
    elif REFINER_GATE in sd:
        mode, n_refiner, refiner_places = "control_noise_refiner", len(refiner), tuple(range(len(refiner)))
    else:
        mode, n_refiner, refiner_places = None, len(refiner), tuple(range(len(refiner)))
    try:
        return ControlNetConfig(
            control_layers_places=KNOWN_PLACES[n_control],
            control_refiner_layers_places=refiner_places,
            control_in_dim=int(token_dim) // 4,
            add_control_noise_refiner=mode,
            dim=int(dim),
            n_refiner_layers=n_refiner,
            n_heads=int(dim) // int(head_dim),
            n_kv_heads=int(dim) // int(head_dim),
            norm_eps=1e-5,
            qk_norm=True,
        )
    except ValueError as e:
        raise WeightsError(f"{source}: {e}") from e


def read_controlnet_config(path: Path) -> ControlNetConfig:
    data = read_json(Path(path))
    try:
        return ControlNetConfig.from_dict(data)
    except (TypeError, ValueError) as e:
        raise WeightsError(f"{path}: {e}") from e


def load_controlnet(
    path: Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, config: Path | None = None
) -> ZImageControlNet:
    """A diffusers-format ControlNet folder, or a single .safetensors file (config inferred unless given)."""
    path = Path(path)
    if path.is_dir():
        files = shard_files(path, INDEX_NAME, WEIGHTS_NAME)
        config = config if config is not None else path / CONFIG_NAME
    else:
        files = [path]
    source = ", ".join(str(f) for f in files)
    sd = read_files(files, dtype, device)
    cfg = read_controlnet_config(config) if config is not None else infer_controlnet_config(sd, source)
    if cfg.add_control_noise_refiner == "control_layers":
        if not _refiner_is_dead(sd):
            raise WeightsError(
                f"{source}: the config says 2.0 ('control_layers') but {REFINER_GATE} is trained (a 2.1 file?)"
            )
        sd = {k: v for k, v in sd.items() if not k.startswith(REFINER_PREFIX)}  # unused in 2.0, as diffusers
    with torch.device("meta"):
        model = ZImageControlNet(cfg)
    load_strict(model, sd, source)
    return model.eval().requires_grad_(False)
