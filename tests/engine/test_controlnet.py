"""ControlNet-Union: parity with diffusers' ZImageControlNet(Inpaint)Pipeline on the tiny model, loading, hints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from tests.engine.reference_runs import assert_latents_match, our_pixels, reference_run
from zimage_mcp.engine import GenerationCancelled, WeightsError, load_pipeline
from zimage_mcp.engine.dit.controlnet import ControlNetConfig, ZImageControlNet
from zimage_mcp.engine.pipelines.control import control_generate, control_inpaint
from zimage_mcp.engine.pipelines.control_hints import canny_edges, check_hint_type
from zimage_mcp.engine.presets.tiny_controlnet import SINGLE_FILE, make_tiny_controlnet
from zimage_mcp.engine.weights.controlnet import load_controlnet

PROMPT = "a photo of a cat sitting on a mat, 35mm"
NEG = "blurry, low quality, watermark"  # a different caption length than the prompt
SIZE, STEPS = 256, 2


@pytest.fixture(scope="module")
def pipes(tiny_dir: Path):
    from diffusers import ZImagePipeline

    ref = ZImagePipeline.from_pretrained(tiny_dir, dtype=torch.float32)
    return load_pipeline(tiny_dir, device="cpu", dtype=torch.float32), ref.components


def _noise_image(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8))


def _mask() -> Image.Image:
    m = np.zeros((SIZE, SIZE), np.uint8)
    m[64:192, 40:168] = 255  # white = repaint
    return Image.fromarray(m)


def _ref_pipe(components: dict, cn_dir: Path, inpaint: bool):
    from diffusers import ZImageControlNetInpaintPipeline, ZImageControlNetModel, ZImageControlNetPipeline

    cls = ZImageControlNetInpaintPipeline if inpaint else ZImageControlNetPipeline
    pipe = cls(**components, controlnet=ZImageControlNetModel.from_pretrained(cn_dir, torch_dtype=torch.float32))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _ref_args(guidance: float) -> dict:
    return dict(negative_prompt=NEG, width=SIZE, height=SIZE, num_inference_steps=STEPS, guidance_scale=guidance)


@pytest.mark.parametrize(("release", "guidance"), [("2.0", 0.0), ("2.0", 4.0), ("2.1", 0.0), ("2.1", 4.0), ("v1", 0.0)])
def test_control_generate_matches_diffusers(pipes, tmp_path: Path, release: str, guidance: float) -> None:
    ours, components = pipes
    cn_dir = make_tiny_controlnet(tmp_path / "cn", release, seed=int(guidance) + 10)
    control = _noise_image(1)
    out = control_generate(
        ours,
        load_controlnet(cn_dir),
        control,
        PROMPT,
        negative_prompt=NEG,
        width=SIZE,
        height=SIZE,
        steps=STEPS,
        guidance=guidance,
        seed=5,
    )
    ref = _ref_pipe(components, cn_dir, inpaint=False)
    want_latents, want = reference_run(ref, 5, PROMPT, control_image=control, **_ref_args(guidance))
    assert_latents_match(out.latents, want_latents)
    got = our_pixels(ours, out.latents)
    assert got.shape == want.shape == (1, SIZE, SIZE, 3)
    assert np.abs(got - want).max() <= 1e-4
    if release == "2.1" and guidance == 0.0:  # the hints really change the image
        plain = ours.generate(PROMPT, width=SIZE, height=SIZE, steps=STEPS, seed=5)
        assert (plain.latents - out.latents).abs().max() > 1e-2


@pytest.mark.parametrize(("release", "guidance"), [("2.1", 0.0), ("2.0", 4.0)])
def test_control_inpaint_matches_diffusers(pipes, tmp_path: Path, release: str, guidance: float) -> None:
    ours, components = pipes
    cn_dir = make_tiny_controlnet(tmp_path / "cn", release, seed=20)
    image, mask, control = _noise_image(2), _mask(), _noise_image(3)
    out = control_inpaint(
        ours,
        load_controlnet(cn_dir),
        image,
        mask,
        control,
        PROMPT,
        negative_prompt=NEG,
        width=SIZE,
        height=SIZE,
        steps=STEPS,
        guidance=guidance,
        seed=9,
    )
    ref = _ref_pipe(components, cn_dir, inpaint=True)
    want_latents, want = reference_run(
        ref, 9, PROMPT, image=image, mask_image=mask, control_image=control, **_ref_args(guidance)
    )
    assert_latents_match(out.latents, want_latents)
    assert np.abs(our_pixels(ours, out.latents) - want).max() <= 1e-4


@pytest.mark.parametrize("release", ["v1", "2.0", "2.1"])
def test_single_file_equals_folder(tmp_path: Path, release: str) -> None:
    cn_dir = make_tiny_controlnet(tmp_path / "cn", release, seed=3)
    folder, single = load_controlnet(cn_dir), load_controlnet(cn_dir / SINGLE_FILE)
    assert single.cfg == folder.cfg and folder.cfg.release == release
    a, b = folder.state_dict(), single.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    if release == "2.0":  # the single file's zero control_noise_refiner tensors are dropped, as diffusers does
        assert any(k.startswith("control_noise_refiner.") for k in load_file(cn_dir / SINGLE_FILE))
        assert not any(k.startswith("control_noise_refiner.") for k in b)


def test_key_audit_names_file_and_keys(tmp_path: Path) -> None:
    cn_dir = make_tiny_controlnet(tmp_path / "cn", "2.1", seed=4)
    sd = load_file(cn_dir / SINGLE_FILE)
    sd["control_layers.0.extra.weight"] = torch.zeros(2)
    del sd["control_layers.1.after_proj.bias"]
    bad = tmp_path / "bad.safetensors"
    save_file(sd, str(bad))
    with pytest.raises(WeightsError, match=r"bad\.safetensors.*missing keys.*after_proj\.bias.*unexpected.*extra"):
        load_controlnet(bad)
    # a 2.0 config over weights with a trained refiner gate is refused, not silently dropped
    two = make_tiny_controlnet(tmp_path / "two", "2.0", seed=4)
    with pytest.raises(WeightsError, match="2.1 file"):
        load_controlnet(cn_dir / SINGLE_FILE, config=two / "config.json")


def test_dim_mismatch_names_both_dims(pipes) -> None:
    ours, _ = pipes
    cfg = ControlNetConfig(
        control_layers_places=(0, 1),
        control_refiner_layers_places=(0,),
        control_in_dim=33,
        add_control_noise_refiner="control_noise_refiner",
        dim=128,
        n_refiner_layers=1,
        n_heads=4,
        n_kv_heads=4,
        norm_eps=1e-5,
        qk_norm=True,
    )
    with pytest.raises(ValueError, match="ControlNet dim 128 does not match the base transformer dim 64"):
        control_generate(ours, ZImageControlNet(cfg), _noise_image(0), PROMPT, steps=1)


def test_unsupported_hint_type(pipes, tmp_path: Path) -> None:
    ours, _ = pipes
    cn = load_controlnet(make_tiny_controlnet(tmp_path / "cn", "v1", seed=5))
    with pytest.raises(ValueError, match=r"hint type 'scribble' is not supported by the loaded ControlNet \(v1\)"):
        control_generate(ours, cn, _noise_image(0), PROMPT, steps=1, hint="scribble")
    check_hint_type("scribble", "2.1")
    with pytest.raises(ValueError, match="only canny"):
        control_generate(ours, cn, _noise_image(0), PROMPT, steps=1, hint="depth", detect=True)
    with pytest.raises(ValueError, match="needs a 2.x ControlNet"):
        control_inpaint(ours, cn, _noise_image(0), _mask(), _noise_image(1), PROMPT, steps=1)


def test_canny_gives_an_edge_map() -> None:
    arr = np.zeros((64, 64, 3), np.uint8)
    arr[16:48, 16:48] = 200  # a bright square: edges on its border only
    edges = np.asarray(canny_edges(Image.fromarray(arr)))
    assert edges.shape == (64, 64, 3) and set(np.unique(edges)) == {0, 255}
    assert edges[16:48, 15:18].any() and not edges[24:40, 24:40].any() and not edges[:8].any()


def test_callbacks_and_cancellation(pipes, tmp_path: Path) -> None:
    ours, _ = pipes
    cn = load_controlnet(make_tiny_controlnet(tmp_path / "cn", "2.1", seed=6))
    seen: list[tuple[int, int]] = []
    out = control_generate(
        ours, cn, _noise_image(0), PROMPT, steps=2, seed=1, count=2, on_step=lambda i, n: seen.append((i, n))
    )
    assert seen == [(1, 2), (2, 2)] and out.seeds == [1, 2] and out.images[0].size == (SIZE, SIZE)
    with pytest.raises(GenerationCancelled):
        control_generate(
            ours,
            cn,
            _noise_image(0),
            PROMPT,
            steps=3,
            seed=1,
            should_stop=lambda: len(seen) >= 3,
            on_step=lambda i, n: seen.append((i, n)),
        )
    assert len(seen) == 3
