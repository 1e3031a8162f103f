"""Text encoder: chat template, parity with diffusers' encode_prompt, loading errors, cache, tokenizer."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer, Qwen2Tokenizer, Qwen2TokenizerFast, Qwen3Model

from zimage_mcp.engine.errors import WeightsError
from zimage_mcp.engine.presets.tiny_text import (
    TINY_VOCAB_SIZE,
    tiny_text_encoder_config,
    write_tiny_text_encoder,
    write_tiny_tokenizer,
)
from zimage_mcp.engine.text.qwen3 import TextEncoder, chat_prompt, load_text_encoder, load_text_encoder_file
from zimage_mcp.engine.text.qwen3_model import Qwen3TextConfig

PROMPTS = ["a cat on a table", "", "一只猫坐在窗台上，阳光明媚", "a very long prompt " * 30]
MAX_LEN = 64


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny_text")
    write_tiny_tokenizer(root / "tokenizer")
    write_tiny_text_encoder(root / "text_encoder", seed=0, shards=2)
    return root


@pytest.fixture(scope="module")
def encoder(tiny: Path) -> TextEncoder:
    return load_text_encoder(tiny / "text_encoder", tiny / "tokenizer", "cpu", torch.float32)


def _copy(tiny: Path, tmp_path: Path) -> Path:
    shutil.copytree(tiny, tmp_path / "ckpt")
    return tmp_path / "ckpt"


# (a) template and layout


def test_chat_template_renders_like_qwen3(tiny: Path, encoder: TextEncoder) -> None:
    assert chat_prompt("a cat") == "<|im_start|>user\na cat<|im_end|>\n<|im_start|>assistant\n"
    hf = AutoTokenizer.from_pretrained(tiny / "tokenizer", local_files_only=True)
    on = hf.apply_chat_template(
        [{"role": "user", "content": "a cat"}], tokenize=False, add_generation_prompt=True, enable_thinking=True
    )
    assert on == chat_prompt("a cat")  # test_tokenizer.py compares many more prompts
    off = hf.apply_chat_template(
        [{"role": "user", "content": "x"}], tokenize=False, add_generation_prompt=True, enable_thinking=False
    )
    assert off.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    tok = encoder.tokenizer
    assert tok.model_max_length == 131072
    assert tok.pad_token == "<|endoftext|>" and tok.pad_token_id == hf.convert_tokens_to_ids("<|endoftext|>")
    assert 1000 <= len(tok) == len(hf) <= TINY_VOCAB_SIZE


def test_sharded_layout_loads_in_transformers(tiny: Path) -> None:
    folder = tiny / "text_encoder"
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert files == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    tensors = {k: v for f in files for k, v in load_file(folder / f).items()}
    assert set(tensors) == set(index["weight_map"]) and all(k.startswith("model.") for k in tensors)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in tensors.values())
    assert json.loads((folder / "config.json").read_text())["architectures"] == ["Qwen3Model"]
    _, info = Qwen3Model.from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]


# (b) parity with diffusers


def test_encode_matches_diffusers_encode_prompt(tiny: Path, encoder: TextEncoder) -> None:
    from diffusers import FlowMatchEulerDiscreteScheduler, ZImagePipeline

    pipe = ZImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=None,
        transformer=None,
        text_encoder=Qwen3Model.from_pretrained(tiny / "text_encoder"),
        tokenizer=AutoTokenizer.from_pretrained(tiny / "tokenizer"),
    )
    ref, _ = pipe.encode_prompt(
        list(PROMPTS), device="cpu", do_classifier_free_guidance=False, max_sequence_length=MAX_LEN
    )
    encoder.clear_cache()
    ours = encoder.encode(PROMPTS, max_length=MAX_LEN)
    assert len(encoder.model.layers) == 2 and isinstance(encoder.model.norm, torch.nn.Identity)
    assert [o.shape for o in ours] == [r.shape for r in ref]
    assert ours[3].shape == (MAX_LEN, 32)  # truncated, template tokens included
    assert ours[1].shape[0] > 0  # the empty prompt still has its template tokens
    err = max((o - r).abs().max().item() for o, r in zip(ours, ref, strict=False))
    assert err <= 1e-5, err
    # Right padding to the batch's longest prompt leaves real-token states unchanged.
    encoder.clear_cache()
    alone = [encoder.encode([p], max_length=MAX_LEN)[0] for p in PROMPTS]
    assert max((a - o).abs().max().item() for a, o in zip(alone, ours, strict=False)) <= 1e-5


def test_comfyui_single_file_matches_folder(tiny: Path, encoder: TextEncoder, tmp_path: Path) -> None:
    folder = tiny / "text_encoder"
    merged = {k: v for f in sorted(folder.glob("model-*.safetensors")) for k, v in load_file(f).items()}
    save_file(merged, tmp_path / "qwen_3_4b.safetensors")
    inferred = load_text_encoder_file(
        tmp_path / "qwen_3_4b.safetensors", tiny / "tokenizer", None, "cpu", torch.float32
    )
    given = load_text_encoder_file(
        tmp_path / "qwen_3_4b.safetensors",
        tiny / "tokenizer",
        Qwen3TextConfig.from_dict(tiny_text_encoder_config(TINY_VOCAB_SIZE).to_dict(), "tiny_text_encoder_config"),
        "cpu",
        torch.float32,
    )
    encoder.clear_cache()
    want = encoder.encode(PROMPTS[:2])
    for te in (inferred, given):
        assert all(torch.equal(a, b) for a, b in zip(te.encode(PROMPTS[:2]), want, strict=False))


# (c) loading errors


def test_missing_folder_and_tokenizer(tiny: Path, tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="text-encoder folder not found"):
        load_text_encoder(tmp_path / "nope", tiny / "tokenizer", "cpu", torch.float32)
    with pytest.raises(WeightsError, match="tokenizer_config.json"):
        load_text_encoder(tiny / "text_encoder", tmp_path / "nope", "cpu", torch.float32)
    with pytest.raises(WeightsError, match="text-encoder file not found"):
        load_text_encoder_file(tmp_path / "qwen_3_4b.safetensors", tiny / "tokenizer")
    empty = tmp_path / "empty"
    empty.mkdir()
    shutil.copy(tiny / "text_encoder" / "config.json", empty)
    with pytest.raises(WeightsError, match="model.safetensors"):
        load_text_encoder(empty, tiny / "tokenizer", "cpu", torch.float32)


def test_truncated_shard_names_the_file(tiny: Path, tmp_path: Path) -> None:
    ckpt = _copy(tiny, tmp_path)
    shard = ckpt / "text_encoder" / "model-00002-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with pytest.raises(WeightsError, match="model-00002-of-00002.safetensors"):
        load_text_encoder(ckpt / "text_encoder", ckpt / "tokenizer", "cpu", torch.float32)
    shard.unlink()
    with pytest.raises(WeightsError, match="missing.*model-00002-of-00002"):
        load_text_encoder(ckpt / "text_encoder", ckpt / "tokenizer", "cpu", torch.float32)


def test_unexpected_and_missing_keys(tiny: Path, tmp_path: Path) -> None:
    ckpt = _copy(tiny, tmp_path)
    shard = ckpt / "text_encoder" / "model-00001-of-00002.safetensors"
    tensors = load_file(shard)
    save_file({**tensors, "model.extra.weight": torch.zeros(2)}, shard)
    with pytest.raises(WeightsError, match=r"model-00001-of-00002.safetensors.*extra\.weight"):
        load_text_encoder(ckpt / "text_encoder", ckpt / "tokenizer", "cpu", torch.float32)
    save_file({k: v for k, v in tensors.items() if k != "model.embed_tokens.weight"}, shard)
    with pytest.raises(WeightsError, match=r"embed_tokens\.weight"):
        load_text_encoder(ckpt / "text_encoder", ckpt / "tokenizer", "cpu", torch.float32)


def test_dropped_layer_and_norm_are_optional(tiny: Path, tmp_path: Path) -> None:
    ckpt = _copy(tiny, tmp_path)
    folder = ckpt / "text_encoder"
    for shard in folder.glob("model-*.safetensors"):
        save_file(
            {
                k: v
                for k, v in load_file(shard).items()
                if not k.startswith("model.layers.2.") and k != "model.norm.weight"
            },
            shard,
        )
    assert len(load_text_encoder(folder, ckpt / "tokenizer", "cpu", torch.float32).model.layers) == 2


# (d) cache


def test_cache_skips_the_model(encoder: TextEncoder) -> None:
    calls: list[int] = []
    hook = encoder.model.layers[0].register_forward_pre_hook(lambda m, a: calls.append(a[0].shape[0]))
    try:
        encoder.clear_cache()
        first = encoder.encode(["a dog", "a cat"])
        second = encoder.encode(["a cat", "a dog"])
        assert calls == [2]
        assert second[0] is first[1] and second[1] is first[0]
        encoder.encode(["a cat", "a bird", "a bird"])
        assert calls == [2, 1]  # only the new prompt runs, once
        encoder.encode(["a cat"], max_length=8)
        assert calls == [2, 1, 1]  # max_length is part of the key
        encoder.clear_cache()
        encoder.encode(["a cat"])
        assert calls == [2, 1, 1, 1]
    finally:
        hook.remove()


def test_cache_is_lru_bounded(tiny: Path) -> None:
    te = load_text_encoder(tiny / "text_encoder", tiny / "tokenizer", "cpu", torch.float32, cache_size=2)
    a = te.encode(["a"])[0]
    te.encode(["b"])
    assert te.encode(["a"])[0] is a  # "a" becomes most recent
    te.encode(["c"])  # evicts "b"
    assert [k[0] for k in te._cache] == ["a", "c"]


# (e) tokenizer


@pytest.mark.parametrize("cls", [AutoTokenizer, Qwen2Tokenizer, Qwen2TokenizerFast])
def test_tokenizer_loads_and_round_trips_unicode(tiny: Path, cls: type) -> None:
    tok = cls.from_pretrained(tiny / "tokenizer", local_files_only=True)
    assert isinstance(tok, Qwen2Tokenizer)
    raw = "Hello, wörld! 猫と犬 🐱🚀 Ωμέγα مرحبا \t\n ∑x² café naïve 𝔘 \x7f~"
    text = unicodedata.normalize("NFC", raw)
    ids = tok(text).input_ids
    assert tok.decode(ids) == text and max(ids) < TINY_VOCAB_SIZE
    specials = "<|im_start|><|im_end|><|vision_start|><|vision_end|><|image_pad|><think></think>"
    assert len(tok(specials).input_ids) == 7


def test_tokenizer_is_deterministic(tiny: Path, tmp_path: Path) -> None:
    write_tiny_tokenizer(tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt"):
        assert (tmp_path / name).read_bytes() == (tiny / "tokenizer" / name).read_bytes()


def test_bucketed_unmasked_right_padding_gives_the_same_features(tiny: Path) -> None:
    """The graphed encoder right-pads to length buckets with no mask: real tokens must not change."""
    from zimage_mcp.engine.text.qwen3 import chat_prompt, length_bucket, load_text_encoder

    te = load_text_encoder(tiny / "text_encoder", tiny / "tokenizer", "cpu", torch.float32, cache_size=0)
    prompts = ["a cat", "一只猫坐在垫子上", "a much longer prompt about a lighthouse on a cliff at dusk, waves below"]
    plain = te.encode(prompts)
    for p, ref in zip(prompts, plain, strict=True):
        ids = te.tokenizer([chat_prompt(p)], max_length=512).input_ids  # (1, n)
        n = ids.shape[1]
        bucket = length_bucket(n)
        assert bucket >= n and bucket in (32, 64, 128)
        padded = torch.nn.functional.pad(ids, (0, bucket - n), value=te.tokenizer.pad_token_id)
        with torch.no_grad():
            out = te._forward(te.model.embed(padded))[0, :n]
        assert torch.allclose(out, ref, atol=1e-5)


def test_mask_free_forward_matches_transformers_default_forward(tiny: Path) -> None:
    """The mask-free call used for CUDA graphs computes what transformers' own causal path computes, and
    what our explicit-mask path computes when nothing is padded."""
    from zimage_mcp.engine.text.qwen3 import load_text_encoder

    te = load_text_encoder(tiny / "text_encoder", tiny / "tokenizer", "cpu", torch.float32, cache_size=0)
    hf = Qwen3Model.from_pretrained(tiny / "text_encoder").eval()
    ids = torch.randint(0, 1000, (2, 37))
    with torch.no_grad():
        ref = hf(input_ids=ids, use_cache=False, output_hidden_states=True).hidden_states[-2]
        assert torch.equal(te._forward(te.model.embed(ids)), ref)
        masked = te.model(input_ids=ids, mask=torch.ones(2, 37, dtype=torch.bool))
    torch.testing.assert_close(masked, ref, rtol=0, atol=1e-6)


@pytest.mark.slow
def test_a_text_to_image_load_and_generation_never_import_transformers(tiny_dir: Path) -> None:
    """transformers costs ~4 s of imports (torch._dynamo, sympy) on the first image's path: not any more."""
    code = f"""
import sys, torch
from pathlib import Path
from zimage_mcp.engine import load_pipeline
pipe = load_pipeline(Path({str(tiny_dir)!r}), device="cpu", dtype=torch.float32)
out = pipe.generate("a cat", "", 256, 256, 2, 0.0, seed=0)
print(len(out.images), sorted(m for m in sys.modules if m.split(".")[0] == "transformers")[:5])
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.split("\n")[-2] == "1 []", out.stdout[-2000:]


def test_length_buckets_and_cuda_graphs_need_cuda(tiny: Path) -> None:
    from zimage_mcp.engine.text.qwen3 import length_bucket, load_text_encoder

    assert [length_bucket(n) for n in (1, 32, 33, 64, 65, 200, 512)] == [32, 32, 64, 64, 128, 256, 512]
    te = load_text_encoder(tiny / "text_encoder", tiny / "tokenizer", "cpu", torch.float32)
    with pytest.raises(ValueError, match="CUDA"):
        te.use_cuda_graphs()
    assert te.graph_shapes == []


@pytest.mark.slow
def test_compiled_layers_match_eager_for_every_length(tiny: Path) -> None:
    """Compiled layers change nothing in fp32 (CPU Inductor here), and new lengths stop compiling: at
    most one recompile (automatic dynamic shapes), then one graph serves every length."""
    from zimage_mcp.engine.text.qwen3 import load_text_encoder

    te = load_text_encoder(tiny / "text_encoder", tiny / "tokenizer", "cpu", torch.float32, cache_size=0)
    batches = [["a cat", "a lighthouse " * n] for n in (1, 6, 15, 40)]  # four lengths, batch of 2
    eager = [te.encode(b) for b in batches]
    torch._dynamo.reset()
    te.compile_layers()
    assert te.compiled
    try:
        got, graphs = [], []
        for b in batches:
            got.append(te.encode(b))
            graphs.append(torch._dynamo.utils.counters["stats"]["unique_graphs"])
        assert 0 < graphs[0] and graphs[1] <= graphs[0] + 1 and graphs[3] == graphs[2] == graphs[1], graphs
        for want, have in zip(eager, got, strict=True):
            for w, h in zip(want, have, strict=True):
                torch.testing.assert_close(h, w, rtol=1e-5, atol=1e-5)
    finally:
        for layer in te.model.layers:
            layer._compiled_call_impl = None
        torch._dynamo.reset()
