"""Omni (reference-image editing): our engine vs diffusers' ZImageOmniPipeline on tiny random models (fp32, CPU)."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.engine.reference_runs import assert_latents_match, our_pixels, reference_run
from zimage_mcp.engine import load_pipeline
from zimage_mcp.engine.config import TRANSFORMER_PRESETS, replace
from zimage_mcp.engine.dit.omni_transformer import ZImageOmniTransformer
from zimage_mcp.engine.errors import GenerationCancelled, WeightsError
from zimage_mcp.engine.presets.tiny_omni import make_tiny_omni
from zimage_mcp.engine.text.omni_prompt import encode_segments, omni_segments
from zimage_mcp.engine.text.siglip import fit_reference

PROMPT = "make the sky purple and add a small red boat"
NEG = "blurry, low quality"


def _image(w: int, h: int, seed: int, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, len(mode)), dtype=np.uint8).squeeze(), mode)


def _pipes(folder: Path):
    from diffusers import ZImageOmniPipeline

    ref = ZImageOmniPipeline.from_pretrained(folder, dtype=torch.float32)
    ref.set_progress_bar_config(disable=True)
    # The reference hands its VAE image.bfloat16(), which an fp32 VAE refuses; run the same bf16-rounded
    # pixels in fp32 (our engine rounds its VAE input the same way).
    encode = ref.vae.encode
    ref.vae.encode = lambda x, *a, **k: encode(x.float(), *a, **k)
    return load_pipeline(folder, architecture="omni", device="cpu", dtype=torch.float32), ref


@pytest.fixture(scope="module")
def omni(tmp_path_factory: pytest.TempPathFactory):
    return _pipes(make_tiny_omni(tmp_path_factory.mktemp("omni") / "Z-Image-Omni-Tiny", seed=0))


# -- transformer ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("seg_lens", "cond_hw", "sig_hw", "target_hw"),
    [
        ([[5, 7, 20]], [(8, 8)], [(4, 4)], (8, 8)),  # one reference, captions need pads
        ([[5, 7, 40, 3], [5, 7, 11, 3]], [(8, 12), (6, 6)], [(3, 5), (4, 4)], (10, 8)),  # CFG-like batch, 2 refs
        ([[5, 33, 20]], [(16, 16)], [(7, 6)], (8, 8)),  # reference larger than the target
        ([[9]], [], [], (8, 8)),  # no reference: one segment, no SigLIP
    ],
)
def test_omni_forward_matches_diffusers(seg_lens, cond_hw, sig_hw, target_hw) -> None:
    from diffusers import ZImageTransformer2DModel

    cfg = replace(TRANSFORMER_PRESETS["tiny"], siglip_feat_dim=24)
    torch.manual_seed(sum(map(sum, seg_lens)))
    ref = ZImageTransformer2DModel(**{k: v for k, v in cfg.to_json_dict().items() if not k.startswith("_")}).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(0.0, 0.2)
    ours = ZImageOmniTransformer(cfg).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    b = len(seg_lens)
    caps = [[torch.randn(n, 32) for n in segs] for segs in seg_lens]
    conds = [torch.randn(16, h, w) for h, w in cond_hw]
    sigs = [torch.randn(h, w, 24) for h, w in sig_hw]
    x, t = torch.randn(b, 16, *target_hw), torch.rand(b)
    with torch.no_grad():
        want = ref(
            [[c.unsqueeze(1) for c in conds] + [x[i].unsqueeze(1)] for i in range(b)],
            t,
            caps,
            siglip_feats=[sigs + [None] if conds else None for _ in range(b)],
            image_noise_mask=[[0] * len(conds) + [1] for _ in range(b)],
            return_dict=False,
        )[0]
        want = torch.stack(want).squeeze(2)
        cond = ours.prepare_omni(caps, conds, sigs, target_hw)
        got = ours.forward_omni(x, t, cond)
        again = ours.forward_omni(x, t, cond)  # the prepared state is reusable across steps
    assert got.shape == x.shape
    assert (got - want).abs().max().item() <= 1e-4 * max(1.0, want.abs().max().item())
    assert torch.equal(got, again)


# -- whole pipeline -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("seed", "refs", "size", "guidance", "extra"),
    [
        (1, [(256, 256)], (256, 256), 0.0, {}),  # one reference, CFG off
        (2, [(256, 256), (208, 304)], (256, 256), 4.0, {}),  # two references of different sizes, CFG on
        # size from the reference; 2 steps run at t = 0 and 0.25, so a 0.2 cutoff drops CFG on the second
        (3, [(290, 230)], (None, None), 3.0, {"cfg_truncation": 0.2, "cfg_normalization": 1.2}),
    ],
)
def test_edit_matches_diffusers(tmp_path: Path, seed: int, refs, size, guidance: float, extra: dict) -> None:
    ours, ref = _pipes(make_tiny_omni(tmp_path / "omni", seed=seed))
    images = [_image(w, h, seed + i) for i, (w, h) in enumerate(refs)]
    width, height = size
    out = ours.edit(
        PROMPT, images, negative_prompt=NEG, width=width, height=height, steps=2, guidance=guidance, seed=seed, **extra
    )
    got = our_pixels(ours, out.latents)

    want_latents, want = reference_run(
        ref,
        seed,
        image=images,
        prompt=PROMPT,
        negative_prompt=NEG,
        width=width,
        height=height,
        num_inference_steps=2,
        guidance_scale=guidance,
        **extra,
    )
    assert_latents_match(out.latents, want_latents)
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-4
    if width is None:
        assert out.images[0].size == (288, 224)
    if "cfg_truncation" in extra:  # the cutoff is crossed: without it the same call gives other latents
        untruncated = ours.edit(
            PROMPT,
            images,
            negative_prompt=NEG,
            width=width,
            height=height,
            steps=2,
            guidance=guidance,
            seed=seed,
            **{**extra, "cfg_truncation": 1.0},
        )
        assert (untruncated.latents - out.latents).abs().max().item() > 1e-2


def test_prompt_segments_and_features_match_diffusers(omni) -> None:
    ours, ref = omni
    want = ref.encode_prompt(PROMPT, do_classifier_free_guidance=False, num_condition_images=2)[0][0]
    segs = omni_segments(PROMPT, 2)
    assert len(segs) == 4 and segs[0] == "<|im_start|>user\n<|vision_start|>"
    got = encode_segments(ours.text_encoder, segs)
    assert [g.shape for g in got] == [w.shape for w in want]
    assert max((g - w).abs().max().item() for g, w in zip(got, want, strict=False)) <= 1e-4
    # markers written by the user at the front give exactly the default segments
    assert omni_segments("<|vision_start|><|vision_end|>" * 2 + PROMPT, 2) == segs


def test_reference_resize_and_crop_match_diffusers() -> None:
    from diffusers.pipelines.flux2.image_processor import Flux2ImageProcessor

    proc = Flux2ImageProcessor(vae_scale_factor=16)
    big = _image(1100, 1000, 0)  # over 1 MP
    for width, height in ((None, None), (512, 512)):
        resized, crop = fit_reference(big, width, height)
        want = proc._resize_to_target_area(big, width * height if width else 1024 * 1024)
        assert resized.size == want.size and np.array_equal(np.array(resized), np.array(want))
        w, h = want.size[0] // 16 * 16, want.size[1] // 16 * 16
        want_px = proc.preprocess(want, height=h, width=w, resize_mode="crop")
        assert crop.size == (w, h)
        assert torch.equal(torch.from_numpy(np.array(crop)).permute(2, 0, 1)[None] / 255.0 * 2 - 1, want_px)


# -- errors, callbacks ----------------------------------------------------------------------------
def test_marker_count_mismatch_is_a_value_error(omni) -> None:
    ours, _ = omni
    with pytest.raises(ValueError, match=r"^prompt: has 1 .* but 2 reference image\(s\)"):
        omni_segments("put <|vision_start|><|vision_end|> on the left", 2)
    with pytest.raises(ValueError, match=r"^prompt: has 2 "):
        ours.edit("<|vision_start|><|vision_end|><|vision_start|><|vision_end|> swap", [_image(64, 64, 0)], steps=1)
    with pytest.raises(ValueError, match=r"^prompt: vision markers must come as adjacent"):
        omni_segments("<|vision_start|>cat<|vision_end|>", 1)


def test_too_many_or_bad_reference_images(omni) -> None:
    ours, _ = omni
    img = _image(64, 64, 0)
    with pytest.raises(ValueError, match=r"^images: at most 4 reference images are allowed, got 5"):
        ours.edit(PROMPT, [img] * 5, steps=1)
    with pytest.raises(ValueError, match=r"^images: at most 1 reference images are allowed, got 2"):
        ours.edit(PROMPT, [img] * 2, steps=1, max_images=1)
    with pytest.raises(ValueError, match=r"^images: give at least one"):
        ours.edit(PROMPT, [], steps=1)
    with pytest.raises(ValueError, match=r"^images\[1\]: must be a PIL image"):
        ours.edit(PROMPT, [img, "cat.png"], steps=1)
    png = io.BytesIO()
    _image(96, 96, 1).save(png, format="PNG")
    truncated = Image.open(io.BytesIO(png.getvalue()[:200]))
    with pytest.raises(ValueError, match=r"^images\[0\]: unreadable image"):
        ours.edit(PROMPT, [truncated], steps=1)


def test_rgba_and_grey_references_are_converted_to_rgb(omni) -> None:
    ours, _ = omni
    rgba, grey = _image(64, 80, 2, "RGBA"), _image(64, 80, 3, "L")
    a = ours.edit(PROMPT, [rgba, grey], width=256, height=256, steps=1, guidance=0.0, seed=4)
    b = ours.edit(
        PROMPT, [rgba.convert("RGB"), grey.convert("RGB")], width=256, height=256, steps=1, guidance=0.0, seed=4
    )
    assert torch.equal(a.latents, b.latents)


def test_callbacks_and_cancellation(omni) -> None:
    ours, _ = omni
    img = _image(64, 64, 5)
    seen: list[tuple[int, int]] = []
    ours.edit(
        PROMPT, [img], width=256, height=256, steps=2, guidance=0.0, seed=1, on_step=lambda i, n: seen.append((i, n))
    )
    assert seen == [(1, 2), (2, 2)]
    with pytest.raises(GenerationCancelled):
        ours.edit(
            PROMPT,
            [img],
            width=256,
            height=256,
            steps=4,
            guidance=0.0,
            seed=1,
            should_stop=lambda: len(seen) >= 3,
            on_step=lambda i, n: seen.append((i, n)),
        )
    assert len(seen) == 3


def test_missing_components_are_listed_in_one_error(tmp_path: Path) -> None:
    folder = make_tiny_omni(tmp_path / "omni", seed=0)
    shutil.rmtree(folder / "siglip")
    shutil.rmtree(folder / "siglip_processor")
    (folder / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(WeightsError) as err:
        load_pipeline(folder, architecture="omni", device="cpu", dtype=torch.float32)
    msg = str(err.value)
    assert str(folder) in msg
    for part in (
        "siglip (siglip/config.json",
        "siglip_processor (siglip_processor/preprocessor_config.json",
        "vae (vae/diffusion_pytorch_model.safetensors",
    ):
        assert part in msg
    assert "transformer (" not in msg and "text_encoder (" not in msg


def test_siglip_weights_are_loaded_strictly(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    folder = make_tiny_omni(tmp_path / "omni", seed=0)
    file = folder / "siglip" / "model.safetensors"
    sd = load_file(str(file))
    del sd["post_layernorm.weight"]
    save_file(sd, str(file))
    with pytest.raises(WeightsError, match=r"missing keys \['post_layernorm.weight'\]"):
        load_pipeline(folder, architecture="omni", device="cpu", dtype=torch.float32)
