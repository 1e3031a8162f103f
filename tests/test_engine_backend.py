"""The engine bridge through the real registry: shared components, LoRA variants, unloading, bad LoRAs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tests.server_fixtures import make_settings, tiny_model_dir  # noqa: F401
from zimage_mcp.contract import GenerationRequest, InvalidRequestError, LoraRef, Pixels
from zimage_mcp.registry import Registry


@pytest.fixture
def registry(tmp_path: Path, tiny_model_dir: Path) -> Registry:  # noqa: F811
    reg = tmp_path / "registry.toml"
    reg.write_text(f"""
[variants.z-image-turbo.weights]
path = "{tiny_model_dir.as_posix()}"
[variants.z-image-base.weights]
path = "{tiny_model_dir.as_posix()}"
""")
    loras = tmp_path / "loras"
    loras.mkdir()
    gen = torch.Generator().manual_seed(0)
    sd = {}
    for t in ("to_q", "to_k", "to_v"):
        sd[f"transformer.layers.0.attention.{t}.lora_A.weight"] = torch.randn(4, 64, generator=gen)
        sd[f"transformer.layers.0.attention.{t}.lora_B.weight"] = torch.randn(64, 4, generator=gen)
    save_file(sd, str(loras / "style.safetensors"))
    save_file(
        {
            "transformer.layers.0.attention.to_q.lora_A.weight": torch.zeros(4, 99),
            "transformer.layers.0.attention.to_q.lora_B.weight": torch.zeros(64, 4),
        },
        str(loras / "alien.safetensors"),
    )
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    settings = make_settings(tmp_path, reg, inputs, lora_dir=loras)
    return Registry.from_settings(settings)


def _request(**kw: object) -> GenerationRequest:
    base = dict(prompt="a lighthouse", negative_prompt="", width=256, height=256, steps=2, guidance=0.0, seed=3)
    return GenerationRequest(**(base | kw))  # type: ignore[arg-type]


def _noop(*args: object) -> None:
    return None


def test_turbo_and_base_share_one_text_encoder_and_vae(registry: Registry) -> None:
    from zimage_builtins.engine_loading import SHARED

    held = SHARED.count()  # the cache is process-wide: other tests' servers may still hold their own files
    turbo, base = registry.backend("z-image-turbo"), registry.backend("z-image-base")
    assert turbo is not base
    assert turbo.pipe.text_encoder is base.pipe.text_encoder
    assert turbo.pipe.vae is base.pipe.vae
    assert turbo.pipe.transformer is not base.pipe.transformer
    assert base.pipe.shift == turbo.pipe.shift  # both read the folder's scheduler config
    turbo.unload()
    assert SHARED.count() == held + 2  # one text encoder and one VAE, still held by Base
    assert base.generate(_request(), _noop, lambda: False).images
    base.unload()
    assert SHARED.count() == held


def test_a_lora_variant_reuses_its_base_and_the_weights_come_back(registry: Registry) -> None:
    target = registry.lora_variant_target("lora:style")
    assert target is not None and target[0] == "z-image-turbo"
    backend = registry.backend("z-image-turbo")
    before = {k: v.clone() for k, v in backend.pipe.transformer.state_dict().items()}
    ref = LoraRef(name="style", file=target[1].file, scale=0.9)
    styled = backend.generate(_request(loras=(ref,)), _noop, lambda: False)
    plain = backend.generate(_request(), _noop, lambda: False)
    assert styled.pixels()[0].data != plain.pixels()[0].data
    after = backend.pipe.transformer.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # bit-exact once the LoRA is gone


def test_loras_on_fp8_weights_are_a_request_error_and_plain_generation_goes_on(registry: Registry) -> None:
    backend = registry.backend("z-image-turbo")
    target = registry.lora_variant_target("lora:style")
    assert target is not None
    backend.pipe.transformer.to_fp8()  # what [runtime] fp8 = true does on a GPU (fp8 matmuls also run on the CPU)
    try:
        with pytest.raises(InvalidRequestError, match=r"loras.*\[runtime\] fp8 = true.*set fp8 = false"):
            backend.generate(
                _request(loras=(LoraRef(name="style", file=target[1].file, scale=0.9),)), _noop, lambda: False
            )
        assert backend.generate(_request(), _noop, lambda: False).images
    finally:
        registry.unload_all()  # the next test gets a fresh bf16 backend


def test_a_lora_for_another_shape_is_a_request_error_and_leaves_the_model_alone(registry: Registry) -> None:
    backend = registry.backend("z-image-turbo")
    alien = registry.resolve_lora("alien")
    before = {k: v.clone() for k, v in backend.pipe.transformer.state_dict().items()}
    with pytest.raises(
        InvalidRequestError,
        match=r"loras.*LoRA 'alien' does not fit z-image-turbo \(Z-Image-Turbo\); "
        r"it fits: .*; it was applied to z-image-turbo",
    ):
        backend.generate(_request(loras=(LoraRef(name="alien", file=alien.file, scale=1.0),)), _noop, lambda: False)
    after = backend.pipe.transformer.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert backend.generate(_request(), _noop, lambda: False).images  # and the next call works


def test_low_vram_mode_keeps_the_text_encoder_on_the_host_and_tiles_the_vae(
    tmp_path: Path,
    tiny_model_dir: Path,  # noqa: F811
) -> None:
    from zimage_builtins.engine_backend import build_backend

    from zimage_mcp.contract import BackendContext

    registry = Registry.from_settings(make_settings(tmp_path, _turbo_registry(tmp_path, tiny_model_dir), tmp_path))
    spec = registry.resolve("turbo").spec
    backend = build_backend(
        spec, BackendContext(device="cpu", dtype="float32", offload_text_encoder=True, step_cache=0.08)
    )
    try:
        assert backend.pipe.offload_text_encoder and backend.pipe.vae_tiling and backend.pipe.step_cache == 0.08
        assert backend.pipe.text_encoder.device.type == "cpu"
        assert backend.generate(_request(), _noop, lambda: False).images
    finally:
        backend.unload()


def test_fp8_without_fp8_tensor_cores_is_a_load_error_naming_the_setting(
    tmp_path: Path,
    tiny_model_dir: Path,
    monkeypatch: pytest.MonkeyPatch,  # noqa: F811
) -> None:
    from zimage_builtins.engine_backend import build_backend

    from zimage_mcp.contract import BackendContext, BackendLoadError

    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    registry = Registry.from_settings(make_settings(tmp_path, _turbo_registry(tmp_path, tiny_model_dir), tmp_path))
    spec = registry.resolve("turbo").spec
    cache = str(tmp_path / "compile-cache")
    with pytest.raises(BackendLoadError, match="turbo.*fp8 weights need a CUDA GPU with fp8 tensor cores"):
        build_backend(spec, BackendContext(device="cpu", dtype="float32", fp8=True, compile_cache_dir=cache))
    # set before any compilation could start: the base folder plus one subfolder per torch version and GPU
    assert Path(os.environ["TORCHINDUCTOR_CACHE_DIR"]).parent == Path(cache)
    # a backend that loads after the failed one is unaffected
    backend = build_backend(spec, BackendContext(device="cpu", dtype="float32"))
    try:
        assert backend.pipe.transformer.precision == "native"
    finally:
        backend.unload()


def test_registry_passes_a_persistent_compile_cache_to_backends(tmp_path: Path, tiny_model_dir: Path) -> None:  # noqa: F811
    registry = Registry.from_settings(make_settings(tmp_path, _turbo_registry(tmp_path, tiny_model_dir), tmp_path))
    ctx = registry.settings.backend_context()
    assert ctx.fp8 is False and ctx.compile_cache_dir and ctx.compile_cache_dir.endswith("torch-compile")


def _turbo_registry(tmp_path: Path, model_dir: Path) -> Path:
    reg = tmp_path / "turbo.toml"
    reg.write_text(f'[variants.z-image-turbo.weights]\npath = "{model_dir.as_posix()}"\n')
    return reg


def test_the_folders_shift_wins_unless_the_users_registry_sets_one(tmp_path: Path, tiny_model_dir: Path) -> None:  # noqa: F811
    folder_shift = json.loads((tiny_model_dir / "scheduler" / "scheduler_config.json").read_text())["shift"]
    plain = tmp_path / "plain.toml"
    plain.write_text(f'[variants.z-image-base.weights]\npath = "{tiny_model_dir.as_posix()}"\n')
    registry = Registry.from_settings(make_settings(tmp_path, plain, tmp_path))
    assert registry.resolve("base").spec.defaults.shift is None  # what build_request puts in the request
    backend = registry.backend("base")
    try:
        assert backend.pipe.shift == folder_shift  # not the 6.0 the shipped registry.toml used to force
    finally:
        backend.unload()
    chosen = tmp_path / "chosen.toml"
    chosen.write_text(plain.read_text() + "[variants.z-image-base.defaults]\nshift = 5\n")
    registry = Registry.from_settings(make_settings(tmp_path, chosen, tmp_path))
    assert registry.resolve("base").spec.defaults.shift == 5.0
    backend = registry.backend("base")
    try:
        assert backend.pipe.shift == 5.0 != folder_shift
    finally:
        backend.unload()


def test_memory_high_water_logs_each_new_peak_and_what_set_it(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The one place a user with a small card sees which step set the GPU memory peak: a line when the
    allocator's reserved peak rises, naming the step; nothing when it does not. (The CUDA queries are
    stood in for: this machine has no GPU.)"""
    import logging

    from zimage_builtins.engine_backend import MemoryHighWater

    gib = 2**30
    peaks = iter([19 * gib, 19 * gib, 21 * gib])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda *a: next(peaks))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *a: 18 * gib)
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda *a: 19 * gib)
    high_water = MemoryHighWater()
    with caplog.at_level(logging.INFO, logger="zimage_builtins.engine_backend"):
        for step in ("loading z-image-turbo", "a 1024x1024 request", "compiling z-image-turbo: vae"):
            high_water.note(step)
    lines = [r.getMessage() for r in caplog.records if "high-water" in r.getMessage()]
    assert len(lines) == 2
    assert "19.00 GiB reserved" in lines[0] and lines[0].endswith("after loading z-image-turbo")
    assert "21.00 GiB reserved (18.00 GiB allocated at most" in lines[1] and lines[1].endswith("vae")


def test_the_backend_hands_over_pixels_to_make_after_the_gpu_lock(registry: Registry) -> None:
    """The bridge's conversion (Pillow's tobytes, the numpy row filter) is left to the server, which runs it
    once the next request has the GPU: the result holds callables until ``pixels()``, which makes each once."""
    backend = registry.backend("z-image-turbo")
    result = backend.generate(_request(), _noop, lambda: False)
    assert result.images and not any(isinstance(im, Pixels) for im in result.images)
    made = result.pixels()
    assert [type(px) for px in made] == [Pixels] and result.images == made
    px = made[0]
    assert (px.width, px.height) == (result.width, result.height) and px.png_rows is not None
    assert result.pixels()[0] is px  # made once
