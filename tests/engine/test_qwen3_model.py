"""Our Qwen3 decoder against transformers' Qwen3Model (the reference), on the tiny checkpoint; config refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file
from transformers import Qwen3Model

from zimage_mcp.engine.errors import WeightsError
from zimage_mcp.engine.presets.tiny_text import TINY_VOCAB_SIZE, write_tiny_text_encoder, write_tiny_tokenizer
from zimage_mcp.engine.text.qwen3 import load_text_encoder
from zimage_mcp.engine.text.qwen3_model import Qwen3TextConfig, Qwen3TextModel, read_config
from zimage_mcp.engine.weights.lora_apply import LoraManager


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny_qwen3")
    write_tiny_tokenizer(root / "tokenizer")
    write_tiny_text_encoder(root / "text_encoder", seed=1, shards=2)
    return root


@pytest.fixture(scope="module")
def reference(tiny: Path) -> Qwen3Model:
    return Qwen3Model.from_pretrained(tiny / "text_encoder").eval()


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    """ids (3, 45) and a right-padding mask: full, 30 real tokens, 7 real tokens."""
    ids = torch.randint(0, TINY_VOCAB_SIZE, (3, 45), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(3, 45, dtype=torch.bool)
    mask[1, 30:] = False
    mask[2, 7:] = False
    return ids, mask


def _hf(model: Qwen3Model, ids: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(hidden_states[-2], last_hidden_state) of transformers, as diffusers calls it."""
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=None if mask is None else mask.long(), output_hidden_states=True)
    return out.hidden_states[-2], out.last_hidden_state


@pytest.mark.parametrize("masked", [False, True])
def test_encoder_features_match_transformers_hidden_states(tiny: Path, reference: Qwen3Model, masked: bool) -> None:
    te = load_text_encoder(tiny / "text_encoder", tiny / "tokenizer", "cpu", torch.float32)
    ids, mask = _batch()
    want, _ = _hf(reference, ids, mask if masked else None)
    with torch.no_grad():
        got = te.model(input_ids=ids, mask=mask if masked else None)
    assert got.shape == want.shape == (3, 45, 32)
    err = (got - want).abs().max().item()
    assert err <= 1e-6, err  # measured 0.0: the same ops in the same order
    # Real tokens do not depend on right padding, masked or not (what TextEncoder._forward relies on).
    with torch.no_grad():
        plain = te.model(input_ids=ids)
    assert (plain - want)[mask].abs().max().item() <= 1e-6


def test_full_stack_has_transformers_names_and_numerics(tiny: Path, reference: Qwen3Model) -> None:
    """Every layer and the final norm, loaded from transformers' own state dict by name (strict)."""
    model = Qwen3TextModel(read_config(tiny / "text_encoder" / "config.json")).eval()
    model.load_state_dict(reference.state_dict(), strict=True)
    assert set(model.state_dict()) == set(reference.state_dict())
    ids, mask = _batch()
    for m in (None, mask):
        _, want = _hf(reference, ids, m)
        with torch.no_grad():
            got = model(input_ids=ids, mask=m)
        assert (got - want).abs().max().item() <= 1e-6


def test_bf16_is_bit_identical_to_transformers(tiny: Path) -> None:
    """The roundings too: RMSNorm in fp32 then cast, cos/sin cast to bf16, the same SDPA calls."""
    reference = Qwen3Model.from_pretrained(tiny / "text_encoder", dtype=torch.bfloat16).eval()
    te = load_text_encoder(tiny / "text_encoder", tiny / "tokenizer", "cpu", torch.bfloat16)
    ids, mask = _batch()
    for m in (None, mask):
        want, _ = _hf(reference, ids, m)
        with torch.no_grad():
            got = te.model(input_ids=ids, mask=m)
        assert got.dtype == torch.bfloat16 and torch.equal(got, want)


def test_forward_traces_as_one_graph(tiny: Path) -> None:
    """No graph break under dynamo (no host sync, no branch on tensor values): CUDA-graph capturable."""
    te = load_text_encoder(tiny / "text_encoder", tiny / "tokenizer", "cpu", torch.float32)
    ids, mask = _batch()
    torch._dynamo.reset()
    try:
        traced = torch.compile(te.model, backend="eager", fullgraph=True)
        with torch.no_grad():
            for m in (None, mask):
                assert torch.equal(traced(input_ids=ids, mask=m), te.model(input_ids=ids, mask=m))
    finally:
        torch._dynamo.reset()


def test_text_encoder_lora_merges_into_our_module_names(tiny: Path, tmp_path: Path) -> None:
    te = load_text_encoder(tiny / "text_encoder", tiny / "tokenizer", "cpu", torch.float32)
    g = torch.Generator().manual_seed(0)
    shapes = {
        "layers.0.self_attn.q_proj": (32, 32),
        "layers.0.self_attn.k_proj": (16, 32),
        "layers.1.self_attn.v_proj": (16, 32),
        "layers.1.self_attn.o_proj": (32, 32),
        "layers.0.mlp.gate_proj": (64, 32),
        "layers.1.mlp.up_proj": (64, 32),
        "layers.1.mlp.down_proj": (32, 64),
    }
    mods = {n: (torch.randn(4, i, generator=g), torch.randn(o, 4, generator=g)) for n, (o, i) in shapes.items()}
    state = {}
    for n, (a, b) in mods.items():
        state |= {f"text_encoder.{n}.lora_A.weight": a, f"text_encoder.{n}.lora_B.weight": b}
    save_file(state, tmp_path / "te.safetensors")
    before = {n: te.model.get_submodule(n).weight.detach().clone() for n in mods}
    manager = LoraManager(torch.nn.Linear(1, 1), te.model)
    manager.set_adapters([(tmp_path / "te.safetensors", 0.5)])
    for n, (a, b) in mods.items():
        torch.testing.assert_close(te.model.get_submodule(n).weight.detach(), before[n] + 0.5 * b @ a)
    manager.clear()
    assert all(torch.equal(te.model.get_submodule(n).weight, before[n]) for n in mods)


# --- config ---------------------------------------------------------------------------------------

QWEN3_4B_V4 = {  # Qwen3-4B's config.json as transformers 4.x wrote it
    "architectures": ["Qwen3ForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "head_dim": 128,
    "hidden_act": "silu",
    "hidden_size": 2560,
    "intermediate_size": 9728,
    "max_position_embeddings": 40960,
    "max_window_layers": 36,
    "model_type": "qwen3",
    "num_attention_heads": 32,
    "num_hidden_layers": 36,
    "num_key_value_heads": 8,
    "rms_norm_eps": 1e-06,
    "rope_scaling": None,
    "rope_theta": 1000000,
    "sliding_window": None,
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
    "use_sliding_window": False,
    "vocab_size": 151936,
}
QWEN3_4B = Qwen3TextConfig(
    vocab_size=151936,
    hidden_size=2560,
    num_hidden_layers=36,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=128,
    intermediate_size=9728,
    rms_norm_eps=1e-6,
    rope_theta=1e6,
    max_position_embeddings=40960,
)


def _write(tmp_path: Path, raw: dict[str, Any]) -> Path:
    path = tmp_path / "text_encoder" / "config.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(raw))
    return path


def test_both_config_layouts_read_the_same(tmp_path: Path) -> None:
    assert read_config(_write(tmp_path, QWEN3_4B_V4)) == QWEN3_4B
    v5 = {k: v for k, v in QWEN3_4B_V4.items() if k not in ("rope_theta", "rope_scaling")}
    v5 |= {"rope_parameters": {"rope_theta": 1000000.0, "rope_type": "default"}, "layer_types": ["full_attention"] * 36}
    assert read_config(_write(tmp_path, v5)) == QWEN3_4B
    # transformers' own serialisation of the tiny config reads back as what the tiny checkpoint needs.
    from zimage_mcp.engine.presets.tiny_text import tiny_text_encoder_config

    tiny = Qwen3TextConfig.from_dict(tiny_text_encoder_config(TINY_VOCAB_SIZE).to_dict(), "tiny")
    assert (tiny.num_key_value_heads, tiny.head_dim, tiny.rope_theta, tiny.num_hidden_layers) == (1, 16, 1e6, 3)


@pytest.mark.parametrize(
    "change,field",
    [
        ({"hidden_act": "gelu"}, "hidden_act"),
        ({"attention_bias": True}, "attention_bias"),
        ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope_scaling.rope_type"),
        ({"rope_scaling": {"type": "linear", "factor": 2.0}}, "rope_scaling.rope_type"),
        ({"rope_parameters": {"rope_type": "dynamic", "rope_theta": 1e6}}, "rope_parameters.rope_type"),
        ({"use_sliding_window": True, "sliding_window": 4096, "max_window_layers": 10}, "use_sliding_window"),
        ({"layer_types": ["full_attention"] * 35 + ["sliding_attention"]}, "layer_types"),
        ({"num_attention_heads": "32"}, "num_attention_heads"),
        ({"rope_theta": "1e6"}, "rope_theta"),
        ({"vocab_size": None}, "vocab_size"),
    ],
)
def test_unsupported_configs_are_refused_naming_file_and_field(
    tmp_path: Path, change: dict[str, Any], field: str
) -> None:
    path = _write(tmp_path, QWEN3_4B_V4 | change)
    with pytest.raises(WeightsError) as info:
        read_config(path)
    assert str(path) in str(info.value) and field in str(info.value), info.value


def test_load_refuses_an_unsupported_config_before_reading_weights(tiny: Path, tmp_path: Path) -> None:
    folder = tmp_path / "text_encoder"
    shutil.copytree(tiny / "text_encoder", folder)
    raw = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(raw | {"hidden_act": "gelu_pytorch_tanh"}))
    with pytest.raises(WeightsError, match=r"config\.json: hidden_act 'gelu_pytorch_tanh' is not supported"):
        load_text_encoder(folder, tiny / "tokenizer", "cpu", torch.float32)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(WeightsError, match="unreadable"):
        load_text_encoder(folder, tiny / "tokenizer", "cpu", torch.float32)
    (folder / "config.json").unlink()
    with pytest.raises(WeightsError, match="missing text-encoder config"):
        load_text_encoder(folder, tiny / "tokenizer", "cpu", torch.float32)
