"""LoRA parity on the tiny preset, fp32 CPU: diffusers + peft (the oracle) vs our transformer + LoraManager.

Every dialect file holds the same weights as one PEFT/diffusers LoRA (rank 4, alpha 8, so alpha matters),
so every dialect must reproduce the oracle. Fixtures ``lora_files`` / ``base_seed`` are meant to be reused
by whole-pipeline tests.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import ZImagePipeline
from safetensors.torch import load_file

from tests.engine.lora_dialects import (
    TINY,
    diffusers_transformer,
    lokr_state_dict,
    peft_modules,
    save,
    to_ai_toolkit,
    to_comfyui,
    to_dot,
    to_kohya,
    write_peft_lora,
)
from tests.engine.reference_runs import assert_latents_match, our_pixels, reference_run
from zimage_mcp.engine.dit.transformer import ZImageTransformer
from zimage_mcp.engine.weights.lora_apply import LoraManager

TOL = 1e-4
ALPHA, RANK = 8.0, 4
PROMPT = "a photo of a cat sitting on a mat, 35mm"
DIFFUSERS_READS = {"diffusers", "ai-toolkit", "kohya", "dot", "lokr", "lokr-rank"}  # ComfyUI-native: diffusers can't


@pytest.fixture(scope="module")
def lora_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The reference LoRA in every dialect, a second LoRA (other rank/alpha/targets), and two LoKr files."""
    d = tmp_path_factory.mktemp("loras")
    files = {"diffusers": write_peft_lora(d, rank=RANK, alpha=ALPHA, seed=0)}
    files["second"] = write_peft_lora(
        d, rank=2, alpha=3.0, seed=1, name="second.safetensors", target=r".*attention\.(to_q|to_v)$"
    )
    mods = peft_modules(load_file(files["diffusers"]))
    files["ai-toolkit"] = save(to_ai_toolkit(mods, ALPHA), d / "ai_toolkit.safetensors")
    files["kohya"] = save(to_kohya(mods, ALPHA), d / "kohya_fused.safetensors")
    files["kohya-split"] = save(to_kohya(mods, ALPHA, fused_qkv=False), d / "kohya_split.safetensors")
    files["comfyui"] = save(to_comfyui(mods, ALPHA), d / "comfyui.safetensors")
    files["dot"] = save(to_dot(mods, ALPHA), d / "dot.safetensors")
    base = diffusers_transformer(0)
    files["lokr"] = save(lokr_state_dict(base), d / "lokr.safetensors")
    files["lokr-rank"] = save(lokr_state_dict(base, rank=2, alpha=3.0, seed=1), d / "lokr_rank.safetensors")
    return files


@pytest.fixture
def base_seed() -> int:
    return 0


def _inputs() -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    g = torch.Generator().manual_seed(7)
    return torch.randn(1, 16, 8, 8, generator=g), torch.tensor([0.3]), [torch.randn(7, TINY.cap_feat_dim, generator=g)]


def diffusers_out(seed: int, adapters: list[tuple[Path, float]]) -> torch.Tensor:
    """The oracle: diffusers' transformer with each file loaded by ``ZImageLoraLoaderMixin`` and weighted."""
    model = diffusers_transformer(seed)
    names = []
    for i, (path, _) in enumerate(adapters):
        sd, metadata = ZImagePipeline.lora_state_dict(str(path), return_lora_metadata=True)
        ZImagePipeline.load_lora_into_transformer(sd, transformer=model, adapter_name=f"a{i}", metadata=metadata)
        names.append(f"a{i}")
    if names:
        model.set_adapters(names, weights=[w for _, w in adapters])
    x, t, cap = _inputs()
    with torch.no_grad():
        return model([x[0].unsqueeze(1)], t, cap, return_dict=False)[0][0].squeeze(1)


def ours_model(seed: int) -> ZImageTransformer:
    model = ZImageTransformer(TINY).eval()
    model.load_state_dict(diffusers_transformer(seed).state_dict(), strict=True)
    return model


def ours_out(model: ZImageTransformer) -> torch.Tensor:
    x, t, cap = _inputs()
    with torch.no_grad():
        return model(x, t, cap)[0]


@pytest.mark.parametrize("dialect", ["diffusers", "ai-toolkit", "kohya", "kohya-split", "comfyui", "dot"])
def test_dialect_matches_diffusers(lora_files: dict[str, Path], base_seed: int, dialect: str) -> None:
    oracle_file = lora_files[dialect if dialect in DIFFUSERS_READS else "diffusers"]
    ref = diffusers_out(base_seed, [(oracle_file, 1.0)])
    model = ours_model(base_seed)
    plain = ours_out(model)
    LoraManager(model).set_adapters([(lora_files[dialect], 1.0)])
    out = ours_out(model)
    assert (out - plain).abs().max() > 1e-2  # the LoRA does something
    assert (out - ref).abs().max() <= TOL


@pytest.mark.parametrize("dialect", ["lokr", "lokr-rank"])
def test_lokr_matches_diffusers(lora_files: dict[str, Path], base_seed: int, dialect: str) -> None:
    ref = diffusers_out(base_seed, [(lora_files[dialect], 1.0)])
    model = ours_model(base_seed)
    plain = ours_out(model)
    LoraManager(model).set_adapters([(lora_files[dialect], 1.0)])
    out = ours_out(model)
    assert (out - plain).abs().max() > 1e-2
    assert (out - ref).abs().max() <= TOL


def test_two_adapters_with_scales(lora_files: dict[str, Path], base_seed: int) -> None:
    adapters = [(lora_files["kohya"], 0.7), (lora_files["second"], -1.3)]
    ref = diffusers_out(base_seed, [(lora_files["diffusers"], 0.7), (lora_files["second"], -1.3)])
    model = ours_model(base_seed)
    manager = LoraManager(model)
    manager.set_adapters(adapters)
    assert (ours_out(model) - ref).abs().max() <= TOL
    manager.set_adapters([(lora_files["second"], 0.5)])  # switching never accumulates
    assert (ours_out(model) - diffusers_out(base_seed, [(lora_files["second"], 0.5)])).abs().max() <= TOL
    manager.clear()
    assert (ours_out(model) - diffusers_out(base_seed, [])).abs().max() <= TOL


@pytest.mark.parametrize("dialect", ["kohya", "comfyui"])
def test_pipeline_latents_with_lora_match_diffusers(tiny_dir: Path, lora_files: dict[str, Path], dialect: str) -> None:
    """The whole text-to-image loop with a weighted LoRA: latents before the decode, then the pixels."""
    from zimage_mcp.engine import load_pipeline

    args = dict(width=256, height=256, num_inference_steps=3, guidance_scale=2.0, negative_prompt="blurry")
    ref = ZImagePipeline.from_pretrained(tiny_dir, dtype=torch.float32)
    ref.set_progress_bar_config(disable=True)
    ref.load_lora_weights(str(lora_files["diffusers"]), adapter_name="a")
    ref.set_adapters(["a"], adapter_weights=[0.8])

    want_latents, want = reference_run(ref, 6, PROMPT, **args)

    ours = load_pipeline(tiny_dir, device="cpu", dtype=torch.float32)
    kw = dict(width=256, height=256, steps=3, guidance=2.0, negative_prompt="blurry", seed=6)
    plain = ours.generate(PROMPT, **kw).latents
    LoraManager(ours.transformer).set_adapters([(lora_files[dialect], 0.8)])
    latents = ours.generate(PROMPT, **kw).latents
    assert (latents - plain).abs().max().item() > 1e-2  # the LoRA does something
    assert_latents_match(latents, want_latents)
    got = our_pixels(ours, latents)
    assert np.abs(got - want).max() <= 1e-4
