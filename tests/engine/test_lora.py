"""LoRA normalisation, merge/restore and inspection on the tiny preset (synthetic keys, fp32/bf16 CPU)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from tests.engine.lora_dialects import TINY, lokr_state_dict, save, to_ai_toolkit, to_comfyui, to_dot, to_kohya
from zimage_mcp.engine.dit.transformer import ZImageTransformer
from zimage_mcp.engine.errors import WeightsError
from zimage_mcp.engine.weights import lora_apply
from zimage_mcp.engine.weights.lora_apply import SCALE_MAX, SCALE_MIN, LoraManager
from zimage_mcp.engine.weights.lora_dialects import LokrDelta, LoraDelta, load_lora, normalize_lora
from zimage_mcp.engine.weights.lora_inspect import inspect_lora

D, R, ALPHA = TINY.dim, 4, 8.0
FFN = TINY.ffn_hidden


def _mods(seed: int = 0, rank: int = R) -> dict[str, tuple[Tensor, Tensor]]:
    """A LoRA on every target kind of both main layers and both refiners, as {name: (A, B)}."""
    g = torch.Generator().manual_seed(seed)
    shapes = {
        "attention.to_q": (D, D),
        "attention.to_k": (D, D),
        "attention.to_v": (D, D),
        "attention.to_out.0": (D, D),
        "feed_forward.w1": (FFN, D),
        "feed_forward.w2": (D, FFN),
        "feed_forward.w3": (FFN, D),
        "adaLN_modulation.0": (4 * D, TINY.adaln_dim),
    }
    mods = {}
    for block in ("layers.0", "layers.1", "noise_refiner.0", "context_refiner.0"):
        for sub, (out, inp) in shapes.items():
            if block.startswith("context") and sub.startswith("adaLN"):
                continue
            mods[f"{block}.{sub}"] = (torch.randn(rank, inp, generator=g) * 0.1, torch.randn(out, rank, generator=g))
    return mods


def _peft(mods: dict[str, tuple[Tensor, Tensor]]) -> dict[str, Tensor]:
    sd = {}
    for n, (a, b) in mods.items():
        sd |= {f"transformer.{n}.lora_A.weight": a, f"transformer.{n}.lora_B.weight": b}
    return sd


def _model(dtype: torch.dtype = torch.float32) -> ZImageTransformer:
    torch.manual_seed(0)
    model = ZImageTransformer(TINY).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    return model.to(dtype)


def _snapshot(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_equal(model: nn.Module, snap: dict[str, Tensor]) -> None:
    for k, v in model.state_dict().items():
        assert torch.equal(v, snap[k]), k


def _expect(lora_deltas: dict, name: str, a: Tensor, b: Tensor, scale: float) -> None:
    delta = lora_deltas[name]
    torch.testing.assert_close(delta.weight(), scale * (b @ a), rtol=1e-5, atol=1e-5)


# --- normalisation: one synthetic-key test per dialect -------------------------------------------


def test_diffusers_peft_keys_with_header_alpha() -> None:
    mods = _mods()
    meta = {
        "lora_adapter_metadata": '{"transformer.r": 4, "transformer.lora_alpha": 8, '
        '"transformer.alpha_pattern": {"layers.1.attention.to_q": 2}}'
    }
    lora = normalize_lora(_peft(mods), meta)
    assert lora.dialect == "diffusers" and len(lora.deltas["transformer"]) == len(mods)
    assert all(isinstance(d, LoraDelta) for d in lora.deltas["transformer"].values())
    _expect(lora.deltas["transformer"], "layers.0.feed_forward.w2", *mods["layers.0.feed_forward.w2"], ALPHA / R)
    _expect(lora.deltas["transformer"], "layers.1.attention.to_q", *mods["layers.1.attention.to_q"], 2 / R)
    no_alpha = normalize_lora(_peft(mods))  # no alpha anywhere => scale 1
    assert {d.scale for d in no_alpha.deltas["transformer"].values()} == {1.0}


def test_peft_raw_dump_default_names() -> None:
    a, b = torch.randn(R, D), torch.randn(D, R)
    sd = {
        "base_model.model.layers.0.attention.to_k.lora_A.default.weight": a,
        "base_model.model.layers.0.attention.to_k.lora_B.default.weight": b,
    }
    _expect(normalize_lora(sd).deltas["transformer"], "layers.0.attention.to_k", a, b, 1.0)


def test_ai_toolkit_keys() -> None:
    mods = _mods()
    lora = normalize_lora(to_ai_toolkit(mods, ALPHA))
    assert lora.dialect == "ai-toolkit"
    _expect(
        lora.deltas["transformer"],
        "noise_refiner.0.adaLN_modulation.0",
        *mods["noise_refiner.0.adaLN_modulation.0"],
        ALPHA / R,
    )


def test_kohya_fused_qkv_splits_into_row_blocks() -> None:
    a, b, alpha = torch.randn(R, D), torch.randn(3 * D, R), torch.tensor(6.0)
    sd = {
        "lora_unet_layers_1_attention_qkv.lora_down.weight": a,
        "lora_unet_layers_1_attention_qkv.lora_up.weight": b,
        "lora_unet_layers_1_attention_qkv.alpha": alpha,
        "lora_unet_noise_refiner_0_attention_out.lora_down.weight": a,
        "lora_unet_noise_refiner_0_attention_out.lora_up.weight": b[:D],
        "lora_unet_context_refiner_0_feed_forward_w2.lora_down.weight": torch.randn(R, FFN),
        "lora_unet_context_refiner_0_feed_forward_w2.lora_up.weight": torch.randn(D, R),
    }
    lora = normalize_lora(sd)
    deltas = lora.deltas["transformer"]
    assert lora.dialect == "kohya"
    assert set(deltas) == {
        "layers.1.attention.to_q",
        "layers.1.attention.to_k",
        "layers.1.attention.to_v",
        "noise_refiner.0.attention.to_out.0",
        "context_refiner.0.feed_forward.w2",
    }
    for i, p in enumerate("qkv"):
        _expect(deltas, f"layers.1.attention.to_{p}", a, b[i * D : (i + 1) * D], 6.0 / R)
    _expect(deltas, "noise_refiner.0.attention.to_out.0", a, b[:D], 1.0)


def test_comfyui_native_keys() -> None:
    mods = _mods()
    lora = normalize_lora(to_comfyui(mods, ALPHA))
    assert lora.dialect == "comfyui"
    assert set(lora.deltas["transformer"]) == set(mods)
    _expect(lora.deltas["transformer"], "layers.1.attention.to_v", *mods["layers.1.attention.to_v"], ALPHA / R)
    a, b = torch.randn(R, D), torch.randn(2 * 2 * 16, R)
    sd = {
        "diffusion_model.final_layer.linear.lora_down.weight": a,
        "diffusion_model.final_layer.linear.lora_up.weight": b,
        "diffusion_model.x_embedder.lora_down.weight": b.T.contiguous(),
        "diffusion_model.x_embedder.lora_up.weight": a.T.contiguous(),
    }
    assert set(normalize_lora(sd).deltas["transformer"]) == {"all_final_layer.2-1.linear", "all_x_embedder.2-1"}


def test_dot_format_drops_redundant_duplicates() -> None:
    mods = _mods()
    lora = normalize_lora(to_dot(mods, ALPHA))
    assert lora.dialect == "dot" and set(lora.deltas["transformer"]) == set(mods)
    assert len(lora.dropped) == 4 * 2 * 2  # 4 blocks x (qkv, out) x (down, up)
    assert all(".qkv." in k or ".out." in k for k in lora.dropped)
    _expect(lora.deltas["transformer"], "layers.0.attention.to_q", *mods["layers.0.attention.to_q"], ALPHA / R)


def test_lokr_keys_fold_alpha_only_for_decomposed_factors() -> None:
    model = _model()
    full = normalize_lora(lokr_state_dict(model, alpha=5.0))
    decomposed = normalize_lora(lokr_state_dict(model, rank=2, alpha=5.0))
    assert full.dialect == "ai-toolkit-lokr" and len(full.deltas["transformer"]) == 4 * 4
    d_full = full.deltas["transformer"]["layers.0.attention.to_q"]
    d_dec = decomposed.deltas["transformer"]["layers.0.attention.to_q"]
    assert isinstance(d_full, LokrDelta) and d_full.scale == 1.0 and d_full.shape == (D, D)
    assert d_dec.scale == 5.0 / 2 and d_dec.rank == 2
    torch.testing.assert_close(d_full.weight(), torch.kron(d_full.w1, d_full.w2))


def test_text_encoder_keys() -> None:
    a, b = torch.randn(R, 32), torch.randn(32, R)
    for prefix in ("text_encoder.", "base_model.model.text_encoder.", "text_encoder.model."):
        k = f"{prefix}layers.0.self_attn.q_proj"
        sd = {f"{k}.lora_A.weight": a, f"{k}.lora_B.weight": b}
        assert set(normalize_lora(sd).deltas["text_encoder"]) == {"layers.0.self_attn.q_proj"}
    sd = {"lora_te_layers_2_mlp_gate_proj.lora_down.weight": a, "lora_te_layers_2_mlp_gate_proj.lora_up.weight": b}
    assert set(normalize_lora(sd).deltas["text_encoder"]) == {"layers.2.mlp.gate_proj"}


def test_unmatched_keys_are_listed() -> None:
    sd = _peft(_mods()) | {f"transformer.layers.0.mystery_{i}.lora_A.weight": torch.zeros(1) for i in range(25)}
    sd["transformer.layers.0.attention.to_q.hada_w1_a"] = torch.zeros(1)
    with pytest.raises(WeightsError, match=r"26 keys cannot be placed.*hada_w1_a.*and 6 more"):
        normalize_lora(sd, source="x.safetensors")
    report = normalize_lora(sd, strict=False)
    assert len(report.unmatched) == 26 and len(report.deltas["transformer"]) == len(_mods())
    lonely = {"transformer.layers.0.attention.to_q.lora_A.weight": torch.zeros(R, D)}  # no lora_B
    with pytest.raises(WeightsError, match="to_q.lora_A"):
        normalize_lora(lonely)


# --- application ----------------------------------------------------------------------------------


def test_merge_is_w_plus_scale_b_a(tmp_path: Path) -> None:
    mods = _mods()
    model = _model()
    w0 = model.layers[0].feed_forward.w1.weight.detach().clone()
    param = model.layers[0].feed_forward.w1.weight
    LoraManager(model).set_adapters([(save(to_kohya(mods, ALPHA), tmp_path / "k.safetensors"), 0.5)])
    a, b = mods["layers.0.feed_forward.w1"]
    assert model.layers[0].feed_forward.w1.weight is param  # same tensor: in place
    torch.testing.assert_close(param.detach(), w0 + 0.5 * (ALPHA / R) * (b @ a), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_restore_is_bit_exact(tmp_path: Path, dtype: torch.dtype) -> None:
    model = _model(dtype)
    snap = _snapshot(model)
    first = save(to_ai_toolkit(_mods(0), ALPHA), tmp_path / "a.safetensors")
    second = save(to_dot(_mods(1, rank=2), 3.0), tmp_path / "b.safetensors")
    lokr = save(lokr_state_dict(model, rank=2), tmp_path / "c.safetensors")
    manager = LoraManager(model)
    manager.set_adapters([(first, 1.0), (second, -0.7)])
    assert not torch.equal(model.layers[0].attention.to_q.weight, snap["layers.0.attention.to_q.weight"])
    manager.set_adapters([(lokr, 2.0)])
    manager.set_adapters([(second, 0.3), (first, 4.0)])
    manager.set_adapters([])
    _assert_equal(model, snap)
    manager.set_adapters([(first, 1.0)])
    manager.clear()
    _assert_equal(model, snap)
    assert manager.active == ()


def test_same_set_is_a_noop_and_files_are_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Path] = []
    real = lora_apply.load_lora
    monkeypatch.setattr(lora_apply, "load_lora", lambda p: calls.append(p) or real(p))
    model = _model()
    path = save(to_ai_toolkit(_mods(), ALPHA), tmp_path / "a.safetensors")
    manager = LoraManager(model)
    manager.set_adapters([(path, 1.0)])
    merged = _snapshot(model)
    manager.set_adapters([(str(path), 1.0)])
    _assert_equal(model, merged)
    manager.set_adapters([(path, 0.5)])
    manager.set_adapters([(path, 1.0)])
    _assert_equal(model, merged)
    assert calls == [path.resolve()] and manager.active == ((path.resolve(), 1.0),)
    save(to_ai_toolkit(_mods(3), ALPHA), path)  # rewritten file: new mtime/size => reloaded
    manager.set_adapters([(path, 1.0)])
    assert len(calls) == 2


def test_shape_mismatch_leaves_base_untouched(tmp_path: Path) -> None:
    model = _model()
    snap = _snapshot(model)
    good = _mods()
    bad = dict(good) | {"layers.1.attention.to_q": (torch.randn(R, 32), torch.randn(32, R))}
    path = save(to_ai_toolkit(bad, ALPHA), tmp_path / "other_size.safetensors")
    manager = LoraManager(model)
    with pytest.raises(WeightsError, match=r"layers\.1\.attention\.to_q\.lora_A\.weight.*\(32, 32\).*\(64, 64\)"):
        manager.set_adapters([(save(to_ai_toolkit(good, ALPHA), tmp_path / "ok.safetensors"), 1.0), (path, 1.0)])
    _assert_equal(model, snap)
    deeper = {"layers.7.attention.to_q": good["layers.0.attention.to_q"]}  # a 30-layer LoRA on a 2-layer model
    with pytest.raises(WeightsError, match=r"transformer\.layers\.7\.attention\.to_q"):
        manager.set_adapters([(save(to_ai_toolkit(deeper, ALPHA), tmp_path / "deep.safetensors"), 1.0)])
    _assert_equal(model, snap)


@pytest.mark.parametrize("scale", [SCALE_MAX + 0.5, SCALE_MIN - 1.0, float("nan")])
def test_bad_scale(tmp_path: Path, scale: float) -> None:
    path = save(to_ai_toolkit(_mods(), ALPHA), tmp_path / "a.safetensors")
    with pytest.raises(ValueError, match=r"scale.*-4\.0\.\.4\.0"):
        LoraManager(_model()).set_adapters([(path, scale)])


@pytest.mark.parametrize("suffix", [".ckpt", ".pt", ".bin", ".pth"])
def test_pickle_refused(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"lora{suffix}"
    torch.save(_peft(_mods()), path)
    with pytest.raises(WeightsError, match="pickle is never loaded because it can execute code"):
        LoraManager(_model()).set_adapters([(path, 1.0)])


def test_truncated_file(tmp_path: Path) -> None:
    path = save(to_ai_toolkit(_mods(), ALPHA), tmp_path / "cut.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="cut.safetensors"):
        load_lora(path)
    with pytest.raises(WeightsError, match="not found"):
        LoraManager(_model()).set_adapters([(tmp_path / "missing.safetensors", 1.0)])


def test_text_encoder_lora_needs_and_uses_a_text_encoder(tmp_path: Path) -> None:
    from transformers import Qwen3Config, Qwen3Model

    cfg = Qwen3Config(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=16,
    )
    te = Qwen3Model(cfg).eval()
    a, b = torch.randn(R, 32), torch.randn(32, R)
    path = save(
        {
            "text_encoder.layers.0.self_attn.q_proj.lora_A.weight": a,
            "text_encoder.layers.0.self_attn.q_proj.lora_B.weight": b,
        },
        tmp_path / "te.safetensors",
    )
    with pytest.raises(WeightsError, match="no text_encoder was given"):
        LoraManager(_model()).set_adapters([(path, 1.0)])
    w0 = te.layers[0].self_attn.q_proj.weight.detach().clone()
    manager = LoraManager(_model(), te)
    manager.set_adapters([(path, 2.0)])
    torch.testing.assert_close(te.layers[0].self_attn.q_proj.weight.detach(), w0 + 2.0 * b @ a)
    manager.clear()
    assert torch.equal(te.layers[0].self_attn.q_proj.weight, w0)


# --- inspection -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dialect,writer,ranks,alphas",
    [
        ("ai-toolkit", lambda m: to_ai_toolkit(m, ALPHA), [R], [ALPHA]),
        ("kohya", lambda m: to_kohya(m, ALPHA), [R, 3 * R], [ALPHA, 3 * ALPHA]),  # fused qkv: 3x rank, 3x alpha
        ("comfyui", lambda m: to_comfyui(m, ALPHA), [R, 3 * R], [ALPHA, 3 * ALPHA]),
        ("dot", lambda m: to_dot(m, ALPHA), [R], []),  # alpha folded into the up weights
        ("diffusers", _peft, [R], []),  # no header metadata here
    ],
)
def test_inspect_each_dialect(
    tmp_path: Path, dialect: str, writer: Callable, ranks: list[int], alphas: list[float]
) -> None:
    info = inspect_lora(save(writer(_mods()), tmp_path / "x.safetensors"))
    assert info["dialect"] == dialect and info["kind"] == ["lora"] and info["ranks"] == ranks
    assert info["base"] == "tiny test model" and info["dim"] == D and info["unplaced_keys"] == []
    assert info["modules"]["transformer"] == len(_mods())
    assert info["targets"]["transformer"]["layers.*.attention.to_q"] == {"count": 2, "blocks": "0-1"}
    assert info["alphas"] == alphas


def test_inspect_lokr_unknown_dim_and_unplaced(tmp_path: Path) -> None:
    info = inspect_lora(save(lokr_state_dict(_model(), rank=2, alpha=5.0), tmp_path / "lokr.safetensors"))
    assert info["dialect"] == "ai-toolkit-lokr" and info["kind"] == ["lokr"] and info["ranks"] == [2]
    assert info["alphas"] == [5.0]
    sd = {
        "diffusion_model.layers.0.attention.to_q.lora_A.weight": torch.randn(R, 3840),
        "diffusion_model.layers.0.attention.to_q.lora_B.weight": torch.randn(3840, R),
        "diffusion_model.layers.0.weird.lora_A.weight": torch.randn(R, 8),
    }
    info = inspect_lora(save(sd, tmp_path / "big.safetensors"))
    assert info["base"] == "Z-Image Turbo/Base (6B)"
    assert info["unplaced_keys"] == ["diffusion_model.layers.0.weird.lora_A.weight"]
    sd = {
        "transformer.layers.0.attention.to_k.lora_A.weight": torch.randn(R, 96),
        "transformer.layers.0.attention.to_k.lora_B.weight": torch.randn(96, R),
    }
    assert inspect_lora(save(sd, tmp_path / "odd.safetensors"))["base"] == "unknown dim 96"
