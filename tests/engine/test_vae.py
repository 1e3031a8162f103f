"""The FLUX VAE on the tiny preset, fp32 CPU, against diffusers as an oracle (tests only)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL as DiffusersAutoencoderKL
from diffusers.image_processor import VaeImageProcessor
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from PIL import Image

from zimage_mcp.engine.config import VAE_PRESETS
from zimage_mcp.engine.errors import WeightsError
from zimage_mcp.engine.vae.keys import convert_bfl_vae_state_dict, is_bfl_vae_state_dict, to_bfl_vae_state_dict
from zimage_mcp.engine.vae.model import (
    AutoencoderKL,
    denormalize_latents,
    image_to_tensor,
    normalize_latents,
    sample_latents,
    tensor_to_images,
)

CFG = VAE_PRESETS["tiny"]
TOL = 1e-4


def _diffusers_vae(seed: int) -> DiffusersAutoencoderKL:
    torch.manual_seed(seed)
    kwargs = {k: v for k, v in CFG.to_json_dict().items() if k != "_class_name"}
    ref = DiffusersAutoencoderKL(**kwargs).eval()
    with torch.no_grad():  # GroupNorm weights/biases and biases are 1/0 at init: make them non-trivial
        for name, p in ref.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(0.2 * torch.randn_like(p))
    return ref


def _ours_from(sd: dict[str, torch.Tensor]) -> AutoencoderKL:
    ours = AutoencoderKL(CFG).eval()
    ours.load_state_dict(sd, strict=True)
    return ours


@pytest.fixture
def pair() -> tuple[DiffusersAutoencoderKL, AutoencoderKL]:
    ref = _diffusers_vae(seed=0)
    return ref, _ours_from(ref.state_dict())


def test_state_dict_keys_and_shapes_match_diffusers(pair: tuple[DiffusersAutoencoderKL, AutoencoderKL]) -> None:
    ref, ours = pair
    ref_shapes = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == ref_shapes
    # The decoder has layers_per_block + 1 resnets per up block; only non-final blocks resample.
    assert len(ours.decoder.up_blocks[0].resnets) == CFG.layers_per_block + 1
    assert "decoder.up_blocks.3.upsamplers.0.conv.weight" not in ref_shapes
    assert "encoder.down_blocks.3.downsamplers.0.conv.weight" not in ref_shapes


@pytest.mark.parametrize(("batch", "height", "width"), [(2, 64, 64), (1, 48, 80)])
def test_parity_with_diffusers(
    pair: tuple[DiffusersAutoencoderKL, AutoencoderKL], batch: int, height: int, width: int
) -> None:
    ref, ours = pair
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(batch, 3, height, width, generator=gen) * 2 - 1
    z = torch.randn(batch, CFG.latent_channels, height // 8, width // 8, generator=gen)
    with torch.no_grad():
        dist = ref.encode(x).latent_dist
        mean, logvar = ours.encode(x)
        ref_img, img = ref.decode(z).sample, ours.decode(z)
    assert mean.shape == logvar.shape == (batch, CFG.latent_channels, height // 8, width // 8)
    assert img.shape == (batch, 3, height, width)
    errs = {
        "mean": (mean - dist.mean).abs().max().item(),
        "logvar": (logvar - dist.logvar).abs().max().item(),
        "decode": (img - ref_img).abs().max().item(),
    }
    print(f"\nVAE parity {batch}x{height}x{width}: max abs err {errs}, |decode| max {ref_img.abs().max():.3g}")
    assert all(e <= TOL for e in errs.values()), errs


def test_logvar_is_clamped(pair: tuple[DiffusersAutoencoderKL, AutoencoderKL]) -> None:
    _, ours = pair
    with torch.no_grad():
        ours.encoder.conv_out.bias[CFG.latent_channels :] = 100.0  # push the logvar half out of range
        _, logvar = ours.encode(torch.zeros(1, 3, 16, 16))
    assert logvar.max().item() == 20.0


def test_bfl_round_trip(pair: tuple[DiffusersAutoencoderKL, AutoencoderKL]) -> None:
    _, ours = pair
    sd = ours.state_dict()
    bfl = to_bfl_vae_state_dict(sd)
    assert is_bfl_vae_state_dict(bfl) and not is_bfl_vae_state_dict(sd)
    # Spot-check the BFL dialect: reversed up index, 1x1-conv attention, renamed shortcut and norms.
    assert torch.equal(bfl["decoder.up.3.block.0.conv1.weight"], sd["decoder.up_blocks.0.resnets.0.conv1.weight"])
    assert torch.equal(bfl["decoder.up.1.upsample.conv.bias"], sd["decoder.up_blocks.2.upsamplers.0.conv.bias"])
    assert "decoder.up.0.upsample.conv.weight" not in bfl
    assert bfl["encoder.mid.attn_1.q.weight"].shape == (64, 64, 1, 1)
    assert "encoder.down.2.block.0.nin_shortcut.weight" in bfl and "encoder.norm_out.weight" in bfl
    back = convert_bfl_vae_state_dict(bfl)
    assert back.keys() == sd.keys() and all(torch.equal(back[k], sd[k]) for k in sd)

    prefixed = {f"first_stage_model.{k}": v for k, v in bfl.items()}
    assert is_bfl_vae_state_dict(prefixed)
    loaded = _ours_from(convert_bfl_vae_state_dict(prefixed))
    z = torch.randn(1, CFG.latent_channels, 4, 6, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(loaded.decode(z), ours.decode(z))


def test_unknown_bfl_key_raises(pair: tuple[DiffusersAutoencoderKL, AutoencoderKL]) -> None:
    _, ours = pair
    bfl = to_bfl_vae_state_dict(ours.state_dict())
    bfl["encoder.mid.attn_2.q.weight"] = torch.zeros(1)
    with pytest.raises(WeightsError, match=r"encoder\.mid\.attn_2\.q\.weight"):
        convert_bfl_vae_state_dict(bfl)
    with pytest.raises(WeightsError, match=r"decoder\.up\.7\.block\.0\.conv1\.weight"):
        convert_bfl_vae_state_dict({"decoder.up.7.block.0.conv1.weight": torch.zeros(1)})
    with pytest.raises(WeightsError, match=r"more than one prefix.*encoder\.conv_in\.bias"):
        convert_bfl_vae_state_dict({"encoder.conv_in.bias": torch.zeros(1), "vae.encoder.conv_in.bias": torch.zeros(1)})


def test_normalize_denormalize() -> None:
    z = torch.randn(1, 16, 3, 5, generator=torch.Generator().manual_seed(3))
    assert CFG.shift_factor == 0.1159 and CFG.scaling_factor == 0.3611
    torch.testing.assert_close(normalize_latents(z, CFG), (z - 0.1159) * 0.3611)
    torch.testing.assert_close(denormalize_latents(z, CFG), z / 0.3611 + 0.1159)
    torch.testing.assert_close(denormalize_latents(normalize_latents(z, CFG), CFG), z)
    torch.testing.assert_close(normalize_latents(denormalize_latents(z, CFG), CFG), z)


def test_sample_latents_matches_diffusers() -> None:
    gen = torch.Generator().manual_seed(4)
    mean = torch.randn(2, 16, 3, 5, generator=gen)
    logvar = torch.randn(2, 16, 3, 5, generator=gen) * 3
    ref = DiagonalGaussianDistribution(torch.cat([mean, logvar], dim=1)).sample(torch.Generator().manual_seed(42))
    ours = sample_latents(mean, logvar.clamp(-30, 20), torch.Generator().manual_seed(42))
    assert torch.equal(ours, ref)
    gens = [torch.Generator().manual_seed(s) for s in (5, 6)]
    ref = DiagonalGaussianDistribution(torch.cat([mean, logvar], dim=1)).sample(gens)
    ours = sample_latents(mean, logvar, [torch.Generator().manual_seed(s) for s in (5, 6)])
    assert torch.equal(ours, ref)


def test_image_conversions_match_vae_image_processor() -> None:
    rng = np.random.default_rng(7)
    pils = [Image.fromarray(rng.integers(0, 256, (24, 40, 3), dtype=np.uint8)) for _ in range(2)]
    proc = VaeImageProcessor(vae_scale_factor=8)
    x = image_to_tensor(pils)
    assert x.dtype == torch.float32 and x.shape == (2, 3, 24, 40)
    assert torch.equal(x, proc.preprocess(pils))
    y = torch.randn(2, 3, 8, 16, generator=torch.Generator().manual_seed(8)) * 1.2  # some values clip
    ours, ref = tensor_to_images(y), proc.postprocess(y, output_type="pil")
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(ours, ref, strict=True))
    assert np.array_equal(np.asarray(tensor_to_images(image_to_tensor(pils[0]))[0]), np.asarray(pils[0]))


def test_decoder_releases_each_block_output_before_the_next_upsampler() -> None:
    """An uncompiled decode peaks at an upsampler; the previous block's output must be gone by then (on an
    H200 at 1024^2 it was 256 MiB of that peak). The same layers run in the same order: the same output."""
    import weakref

    vae = AutoencoderKL(VAE_PRESETS["tiny"]).eval()
    decoder = vae.decoder
    block_outputs: list[weakref.ref] = []
    previous_alive: list[bool] = []

    def keep(_module: object, _args: object, out: torch.Tensor) -> None:
        block_outputs.append(weakref.ref(out))

    def check(_module: object, _args: object) -> None:
        previous_alive.append(block_outputs[-1]() is not None)

    handles = [block.layers()[-1].register_forward_hook(keep) for block in decoder.up_blocks]
    handles += [b.upsamplers[0].register_forward_pre_hook(check) for b in list(decoder.up_blocks)[1:] if b.upsamplers]
    z = torch.randn(1, vae.cfg.latent_channels, 8, 8)
    with torch.inference_mode():
        out = vae.decode(z)
        for handle in handles:
            handle.remove()
        x = decoder.mid_block(decoder.conv_in(z))
        for block in decoder.up_blocks:  # block by block, as before
            x = block(x)
        expected = decoder.conv_out(torch.nn.functional.silu(decoder.conv_norm_out(x)))
    assert previous_alive and not any(previous_alive)
    assert torch.equal(out, expected)


@pytest.mark.parametrize("kernel", [3, 1])
@pytest.mark.parametrize("band_bytes", [1, 3 * 8 * 4 * 5, 10**9])  # one row a band, 5 rows a band, whole
def test_a_banded_conv_is_the_whole_conv(kernel: int, band_bytes: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Row bands with their halo (zeros where the image ends) give the whole conv's output, edges included."""
    import zimage_mcp.engine.vae.blocks as blocks

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 5, kernel, padding=kernel // 2)
    x = torch.randn(2, 3, 17, 8)  # 17 rows: the last band is short
    monkeypatch.setattr(blocks, "BAND_BYTES", band_bytes)
    with torch.no_grad():
        banded, whole = blocks.banded_conv(conv, x), conv(x)
    assert banded.shape == whole.shape == (2, 5, 17, 8)
    torch.testing.assert_close(banded, whole, rtol=1e-5, atol=1e-6)


def test_a_decode_in_bands_keeps_parity_with_diffusers(
    pair: tuple[DiffusersAutoencoderKL, AutoencoderKL], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The uncompiled decoder's convs run in bands above BAND_BYTES (here: every conv, a few rows a band)."""
    import zimage_mcp.engine.vae.blocks as blocks

    ref, ours = pair
    z = torch.randn(1, CFG.latent_channels, 12, 10, generator=torch.Generator().manual_seed(3))
    calls: list[int] = []
    real_conv2d = torch.nn.functional.conv2d
    monkeypatch.setattr(blocks, "BAND_BYTES", 4096)
    monkeypatch.setattr(blocks.F, "conv2d", lambda *a, **k: calls.append(1) or real_conv2d(*a, **k))
    with torch.no_grad():
        img, ref_img = ours.decode(z), ref.decode(z).sample
    assert len(calls) > 50  # banded: many small convs
    assert (img - ref_img).abs().max().item() <= TOL
