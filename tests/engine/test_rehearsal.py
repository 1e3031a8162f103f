"""The load-time rehearsal (``engine/speed/rehearsal.py``): a stand-in with the real widths and one layer per
stack runs a request's stages on the loading thread while other threads read the weights.

What it saves (the GPU libraries' one-time costs) shows only on a GPU (``benchmarks/probe_first_request.py
--rehearse``). Here, on the CPU: the stand-in has every shape of the real model, the rehearsal runs end to end
from the published layout's configs, and a load that rehearses gives the same pipeline as one that does not.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path

import pytest
import torch

from zimage_mcp.engine import build, load_pipeline
from zimage_mcp.engine.speed import rehearsal
from zimage_mcp.engine.weights.layout import find_diffusers_folder


def test_the_stand_in_has_the_real_widths_with_one_layer_per_stack(tiny_dir: Path) -> None:
    files = find_diffusers_folder(tiny_dir)
    real = load_pipeline(tiny_dir, device="cpu")
    configs = rehearsal.stand_in_configs(files)
    assert configs is not None and configs[0] == real.transformer.cfg and configs[2] == real.vae.cfg
    stand_in = rehearsal.stand_in_pipeline(configs, torch.device("cpu"), torch.float32, torch.float32)
    assert len(stand_in.transformer.layers) == 1 and len(stand_in.transformer.noise_refiner) == 1
    assert len(stand_in.text_encoder.model.layers) == 1
    shapes = {n: p.shape for n, p in stand_in.transformer.named_parameters(remove_duplicate=False)}
    for name, p in real.transformer.named_parameters():  # every weight of block 0 and outside the stacks
        if name in shapes:
            assert shapes[name] == p.shape, name
    stacked = re.compile(r"^(layers|noise_refiner|context_refiner)\.(\d+)\.")
    first_of_each = {
        n for n, _ in real.transformer.named_parameters() if (m := stacked.match(n)) is None or m[2] == "0"
    }
    assert set(shapes) == first_of_each
    real_text = dict(real.text_encoder.model.named_parameters())
    for name, p in stand_in.text_encoder.model.named_parameters():
        if name != "embed_tokens.weight":  # 256 rows stand in for the vocabulary
            assert p.shape == real_text[name].shape, name
    assert stand_in.text_encoder.model.embed_tokens.weight.device.type == "cpu"  # gathered on the host, as real
    for a, b in zip(stand_in.vae.decoder.parameters(), real.vae.decoder.parameters(), strict=True):
        assert a.shape == b.shape
    assert all(torch.isfinite(p).all() for p in stand_in.transformer.parameters())


@pytest.mark.parametrize("fuse", [False, True])
def test_the_stand_ins_three_blocks_share_one_set_of_weights(tiny_dir: Path, fuse: bool) -> None:
    """At full size one block's weights are 0.4 GB: the refiners point at the main layer's (fused or not)."""
    configs = rehearsal.stand_in_configs(find_diffusers_folder(tiny_dir))
    assert configs is not None
    dit = rehearsal.stand_in_pipeline(configs, torch.device("cpu"), torch.float32, torch.float32, fuse=fuse).transformer
    main, noise, context = dit.layers[0], dit.noise_refiner[0], dit.context_refiner[0]
    for refiner in (noise, context):
        for part in ("attention.to_q", "attention.to_out.0", "feed_forward.w2", "feed_forward.w3"):
            assert refiner.get_submodule(part).weight is main.get_submodule(part).weight, part
        assert (refiner.attention.qkv is main.attention.qkv) and (refiner.feed_forward.w13 is main.feed_forward.w13)
        assert (refiner.attention.qkv is None) == (not fuse)
    assert noise.adaLN_modulation[0].weight is main.adaLN_modulation[0].weight


def test_a_rehearsal_runs_a_request_of_the_given_size_and_reports_its_time(tiny_dir: Path) -> None:
    configs = rehearsal.stand_in_configs(find_diffusers_folder(tiny_dir))
    assert configs is not None
    seconds = rehearsal.rehearse(configs, torch.device("cpu"), torch.float32, torch.float32, (256, 128), "off")
    assert 0 < seconds < 60


def test_there_is_no_room_to_rehearse_on_the_cpu(tiny_dir: Path) -> None:
    assert not rehearsal.room_to_rehearse(find_diffusers_folder(tiny_dir), torch.device("cpu"))


def test_a_load_that_rehearses_reads_the_same_weights_on_other_threads(
    tiny_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gate says no on a CPU (nothing to gain there); opened, the CPU runs the GPU's load path: the
    rehearsal on the calling thread, the text encoder and VAE read on a pool thread beside the DiT's."""
    calls: list[str] = []
    real_rehearse = rehearsal.rehearse

    def noted(*args: object, **kwargs: object) -> float:
        calls.append(threading.current_thread().name)
        return real_rehearse(*args, **kwargs)

    monkeypatch.setattr(build, "room_to_rehearse", lambda files, device: True)
    monkeypatch.setattr(build, "rehearse", noted)
    plain = load_pipeline(tiny_dir, device="cpu")
    rehearsed = load_pipeline(tiny_dir, device="cpu", rehearse_size=(256, 256))
    assert calls == [threading.current_thread().name] and rehearsed.load_timings["rehearse"] > 0
    assert "rehearse" not in plain.load_timings and rehearsed.load_notes == []
    for one, two in ((plain.transformer, rehearsed.transformer), (plain.vae, rehearsed.vae)):
        for (name, a), b in zip(one.state_dict().items(), two.state_dict().values(), strict=True):
            assert torch.equal(a, b), name
    args = {"prompt": "a lighthouse", "width": 256, "height": 256, "steps": 2, "seed": 5}
    assert torch.equal(plain.generate(**args).latents, rehearsed.generate(**args).latents)


def test_a_failed_rehearsal_leaves_a_note_and_the_load_goes_on(tiny_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def out_of_memory(*args: object, **kwargs: object) -> float:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(build, "room_to_rehearse", lambda files, device: True)
    monkeypatch.setattr(build, "rehearse", out_of_memory)
    pipe = load_pipeline(tiny_dir, device="cpu", rehearse_size=(256, 256))
    assert "rehearse" not in pipe.load_timings
    assert pipe.load_notes and "OutOfMemoryError" in pipe.load_notes[0] and "2.00 GiB" in pipe.load_notes[0]
    assert pipe.generate("a lighthouse", width=256, height=256, steps=1, seed=1).images
