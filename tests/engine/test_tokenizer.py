"""Our tokenizer and chat prompt against transformers' AutoTokenizer and apply_chat_template (the reference)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from zimage_mcp.engine.errors import WeightsError
from zimage_mcp.engine.presets.tiny_text import write_tiny_tokenizer
from zimage_mcp.engine.text.omni_prompt import omni_segments
from zimage_mcp.engine.text.tokenizer import Qwen3Tokenizer, chat_prompt, load_tokenizer

PROMPTS = [
    "a cat on a table",
    "",
    " ",
    "A photo of a cat sitting on a wooden table, soft morning light, high detail.",
    "一只猫坐在窗台上，阳光明媚",
    "日本の桜と富士山 한국의 전통 한옥 마을 مرحبا بالعالم Ωμέγα",
    "emoji 🐱🚀👩‍👩‍👧‍👦 flags 🇯🇵 skin 👍🏽",
    "combining: cafe\u0301 nai\u0308ve Å vs A\u030a",  # NFC normalisation changes these
    "ligatures ﬁ and fullwidth ＡＢＣ１２３ and math 𝔘𝔫𝔦",
    "tabs\tand\nnewlines\r\nand   runs   of spaces  ",
    "trailing newline\n\n",
    "contractions: don't I'LL we'd they'RE it's",
    "digits 0123456789 3.14159 1,000,000 2024-01-01",
    "punctuation!!! ??? ... --- *** ''' \"\"\" <<>> {[()]} @#$%^&",
    "special <|im_start|> inside <|im_end|> text",
    "<|vision_start|><|vision_end|>a cat<|vision_start|><|vision_end|>",
    "partial <|im_start and <|vision_end| and |> and <|unknown|>",
    "<think>reasoning</think> and <|endoftext|> and <|image_pad|>",
    "<tool_response>looks like a tool</tool_response>",
    "\x00\x7f control \u200b zero width \ufeff bom",
    "a very long prompt about a lighthouse on a cliff at dusk, waves below " * 20,
    "长" * 700,
]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tokenizer")
    write_tiny_tokenizer(root)
    return root


@pytest.fixture(scope="module")
def ours(folder: Path) -> Qwen3Tokenizer:
    return load_tokenizer(folder)


@pytest.fixture(scope="module")
def reference(folder: Path) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(folder, local_files_only=True)


def _assert_same(ours: Qwen3Tokenizer, ref: PreTrainedTokenizerBase, texts: list[str], max_length: int) -> None:
    """What TextEncoder._run and encode_segments asked of transformers, call for call."""
    want = ref(
        texts, padding="longest", max_length=max_length, truncation=True, padding_side="right", return_tensors="pt"
    )
    got = ours(texts, max_length=max_length)
    assert got.input_ids.dtype == torch.int64 and got.attention_mask.dtype == torch.bool
    assert torch.equal(got.input_ids, want.input_ids), texts
    assert torch.equal(got.attention_mask, want.attention_mask.bool()), texts


@pytest.mark.parametrize("max_length", [512, 64, 16, 1])
def test_chat_prompts_match_transformers_one_by_one_and_batched(
    ours: Qwen3Tokenizer, reference: PreTrainedTokenizerBase, max_length: int
) -> None:
    texts = [chat_prompt(p) for p in PROMPTS]
    for text in texts:
        _assert_same(ours, reference, [text], max_length)
    _assert_same(ours, reference, texts, max_length)  # padding to the longest
    _assert_same(ours, reference, texts[::-1][:5], max_length)  # another batch: truncation is per call


def test_raw_text_and_omni_segments_match_transformers(
    ours: Qwen3Tokenizer, reference: PreTrainedTokenizerBase
) -> None:
    _assert_same(ours, reference, PROMPTS, 512)
    segments = omni_segments("a cat and a dog", 2) + omni_segments("<|vision_start|><|vision_end|>一只猫 🐱", 1)
    _assert_same(ours, reference, segments, 512)
    batch = ours(segments, max_length=512)
    vision_start = ours.token_to_id("<|vision_start|>")
    assert vision_start == reference.convert_tokens_to_ids("<|vision_start|>")
    # Each segment but the last ends on its marker, one token: special tokens in text map to their ids.
    for seg, ids, mask in zip(segments, batch.input_ids, batch.attention_mask, strict=True):
        if seg.endswith("<|vision_start|>"):
            assert ids[mask][-1].item() == vision_start


def test_truncation_and_padding_shapes(ours: Qwen3Tokenizer) -> None:
    batch = ours([chat_prompt("long " * 100), chat_prompt("a")], max_length=32)
    assert batch.input_ids.shape == (2, 32)
    n = int(batch.attention_mask[1].sum())
    assert batch.attention_mask[0].all() and not batch.attention_mask[1, n:].any()
    assert (batch.input_ids[1, n:] == ours.pad_token_id).all()
    assert ours.pad_token == "<|endoftext|>" and ours.model_max_length == 131072
    empty = ours([], max_length=8)
    assert empty.input_ids.shape == (0, 0) and empty.attention_mask.shape == (0, 0)


def test_chat_prompt_is_what_qwen3s_template_renders(reference: PreTrainedTokenizerBase) -> None:
    """The tiny tokenizer carries Qwen3's published chat template."""
    for prompt in PROMPTS:
        want = reference.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True, enable_thinking=True
        )
        assert chat_prompt(prompt) == want, prompt
    assert chat_prompt("a cat") == "<|im_start|>user\na cat<|im_end|>\n<|im_start|>assistant\n"


def test_missing_or_broken_files_are_named(folder: Path, tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="tokenizer_config.json"):
        load_tokenizer(tmp_path / "nope")
    tok = tmp_path / "tok"
    shutil.copytree(folder, tok)
    (tok / "tokenizer.json").unlink()
    with pytest.raises(WeightsError, match=r"tokenizer\.json in"):
        load_tokenizer(tok)
    (tok / "tokenizer.json").write_text("{broken")
    with pytest.raises(WeightsError, match="failed to load"):
        load_tokenizer(tok)
    shutil.copy(folder / "tokenizer.json", tok / "tokenizer.json")
    config = json.loads((tok / "tokenizer_config.json").read_text())
    (tok / "tokenizer_config.json").write_text(json.dumps(config | {"pad_token": "<|nope|>"}))
    with pytest.raises(WeightsError, match=r"tokenizer_config\.json: pad_token '<\|nope\|>'"):
        load_tokenizer(tok)
    # What transformers would tokenize differently from tokenizer.json alone is refused, not ignored.
    for field in ("add_bos_token", "add_eos_token", "split_special_tokens"):
        (tok / "tokenizer_config.json").write_text(json.dumps(config | {field: True}))
        with pytest.raises(WeightsError, match=rf"tokenizer_config\.json: {field} true is not supported"):
            load_tokenizer(tok)
    decoder = dict(config["added_tokens_decoder"])
    first = min(decoder, key=int)
    decoder[str(int(first) + 100)] = decoder.pop(first)  # <|endoftext|> numbered differently
    (tok / "tokenizer_config.json").write_text(json.dumps(config | {"added_tokens_decoder": decoder}))
    with pytest.raises(
        WeightsError, match=r"added token '<\|endoftext\|>' has id \d+ there but not in tokenizer\.json"
    ):
        load_tokenizer(tok)
