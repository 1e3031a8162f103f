"""Loading the published layouts strictly: folders, shards, single files, and errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from zimage_mcp.engine import WeightsError, load_pipeline
from zimage_mcp.engine.config import TransformerConfig
from zimage_mcp.engine.weights.layout import find_diffusers_folder


def _copy(tiny_dir: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "model"
    shutil.copytree(tiny_dir, dst)
    return dst


def test_layout_is_the_published_one(tiny_dir: Path) -> None:
    files = find_diffusers_folder(tiny_dir)
    assert [p.name for p in files.transformer] == [
        "diffusion_pytorch_model-00001-of-00002.safetensors",
        "diffusion_pytorch_model-00002-of-00002.safetensors",
    ]
    index = json.loads((tiny_dir / "transformer" / "diffusion_pytorch_model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set().union(*(load_file(f).keys() for f in files.transformer))
    index = json.loads((tiny_dir / "model_index.json").read_text())
    assert index["transformer"] == ["diffusers", "ZImageTransformer2DModel"]
    assert (tiny_dir / "scheduler" / "scheduler_config.json").is_file()


def test_scheduler_shift_is_used(tiny_dir: Path, tmp_path: Path) -> None:
    model = _copy(tiny_dir, tmp_path)
    cfg = model / "scheduler" / "scheduler_config.json"
    cfg.write_text(json.dumps(json.loads(cfg.read_text()) | {"shift": 6.0}))
    assert load_pipeline(model, device="cpu").shift == 6.0


def test_fp32_weights_are_cast_on_load(tiny_dir: Path) -> None:
    pipe = load_pipeline(tiny_dir, device="cpu", dtype=torch.bfloat16)
    assert pipe.dtype == torch.bfloat16
    assert next(pipe.vae.parameters()).dtype == torch.float32  # the VAE stays fp32


def test_an_explicit_shift_wins_and_the_folders_is_reported(tiny_dir: Path, tmp_path: Path) -> None:
    model = _copy(tiny_dir, tmp_path)
    cfg = model / "scheduler" / "scheduler_config.json"
    cfg.write_text(json.dumps(json.loads(cfg.read_text()) | {"shift": 6.0}))
    pipe = load_pipeline(model, device="cpu", shift=4.5)
    assert pipe.shift == 4.5 and pipe.folder_shift == 6.0


def test_a_sharded_vae_loads_every_shard(tiny_dir: Path, tmp_path: Path) -> None:
    """Before: only the first VAE shard was read, so the strict audit failed on a sharded vae/."""
    from zimage_mcp.engine.presets.tiny import make_tiny

    sharded = load_pipeline(make_tiny(tmp_path / "m", vae_shards=3), device="cpu")
    assert len(find_diffusers_folder(tmp_path / "m").vae) == 3
    single = load_pipeline(tiny_dir, device="cpu")
    assert all(
        torch.equal(a, b)
        for a, b in zip(sharded.vae.state_dict().values(), single.vae.state_dict().values(), strict=True)
    )
    (tmp_path / "m" / "vae" / "diffusion_pytorch_model-00003-of-00003.safetensors").unlink()
    with pytest.raises(WeightsError, match="shards that are missing"):
        load_pipeline(tmp_path / "m", device="cpu")


def test_a_snapshot_folder_is_just_a_folder(tiny_dir: Path, tmp_path: Path) -> None:
    """The engine takes paths: finding a snapshot in the Hugging Face cache is the registry's job."""
    snap = tmp_path / "hf" / "hub" / "models--Tongyi-MAI--Z-Image-Turbo" / "snapshots" / "abc123"
    shutil.copytree(tiny_dir, snap)
    pipe = load_pipeline(snap, device="cpu")
    assert pipe.generate("x", width=256, height=256, steps=1, seed=0).images[0].size == (256, 256)
    with pytest.raises(TypeError):
        load_pipeline(repo_id="Tongyi-MAI/Z-Image-Turbo")  # type: ignore[call-arg]


def test_missing_component_says_what_and_where(tiny_dir: Path, tmp_path: Path) -> None:
    model = _copy(tiny_dir, tmp_path)
    shutil.rmtree(model / "vae")
    with pytest.raises(WeightsError, match=r"missing component folders \['vae'\]"):
        load_pipeline(model, device="cpu")


def test_truncated_shard_names_the_file(tiny_dir: Path, tmp_path: Path) -> None:
    model = _copy(tiny_dir, tmp_path)
    shard = model / "transformer" / "diffusion_pytorch_model-00002-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with pytest.raises(WeightsError, match="diffusion_pytorch_model-00002-of-00002.safetensors"):
        load_pipeline(model, device="cpu")


def test_unexpected_and_missing_keys_are_named(tiny_dir: Path, tmp_path: Path) -> None:
    model = _copy(tiny_dir, tmp_path)
    shard = model / "transformer" / "diffusion_pytorch_model-00001-of-00002.safetensors"
    sd = load_file(shard)
    dropped = sorted(sd)[0]
    del sd[dropped]
    sd["layers.0.attention.bogus.weight"] = torch.zeros(2)
    save_file(sd, shard)
    with pytest.raises(WeightsError) as err:
        load_pipeline(model, device="cpu")
    assert dropped in str(err.value) and "layers.0.attention.bogus.weight" in str(err.value)


def test_pickle_is_refused(tmp_path: Path, tiny_dir: Path) -> None:
    evil = tmp_path / "model.ckpt"
    evil.write_bytes(b"not even read")
    with pytest.raises(WeightsError, match="pickle"):
        load_pipeline(tiny_dir, transformer_file=evil, device="cpu")


def test_config_keys_are_strict(tmp_path: Path, tiny_dir: Path) -> None:
    data = json.loads((tiny_dir / "transformer" / "config.json").read_text())
    (tmp_path / "extra.json").write_text(json.dumps(data | {"n_layerz": 3}))
    with pytest.raises(WeightsError, match="n_layerz"):
        TransformerConfig.from_json(tmp_path / "extra.json")
    del data["dim"]
    (tmp_path / "missing.json").write_text(json.dumps(data))
    with pytest.raises(WeightsError, match="dim"):
        TransformerConfig.from_json(tmp_path / "missing.json")


def test_make_tiny_cli_then_generate_writes_png(tmp_path: Path) -> None:
    """The documented path: synthesize a model, generate from its folder, get a PNG."""
    from zimage_mcp.engine.presets.tiny import make_tiny

    model = make_tiny(tmp_path / "m", seed=3)
    img = load_pipeline(model, device="cpu").generate("a lighthouse", width=256, height=256, steps=2, seed=1).images[0]
    img.save(tmp_path / "out.png")
    assert (tmp_path / "out.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_vae_dtype_is_its_own_choice(tiny_dir: Path) -> None:
    """The CPU decodes in float32 whatever the model dtype; an explicit VAE dtype is honoured and keyed apart."""
    from zimage_mcp.engine import SharedComponents

    shared = SharedComponents()
    default = load_pipeline(tiny_dir, device="cpu", dtype=torch.bfloat16, shared=shared)
    assert {p.dtype for p in default.vae.parameters()} == {torch.float32}
    low = load_pipeline(tiny_dir, device="cpu", vae_dtype=torch.bfloat16, shared=shared)
    assert {p.dtype for p in low.vae.parameters()} == {torch.bfloat16}
    assert low.vae is not default.vae  # two dtypes are two shared components, never one reused for the other
    image = low.generate("a red square", width=256, height=256, steps=2, guidance=0.0, seed=1).images[0]
    assert image.size == (256, 256)
