"""Qwen3's tokenizer read straight from ``tokenizer/tokenizer.json`` with the ``tokenizers`` library.

``transformers``' ``AutoTokenizer`` costs seconds of imports on the first request's path; for what the text
encoder asks of it (a batch of strings, truncated at ``max_length``, right-padded to the longest with the pad
token) the Rust tokenizer it wraps gives the same ids and masks, which the tests check against it. Special
tokens written in the text (``<|vision_start|>``) map to their ids, as ``split_special_tokens: false`` asks.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer
from torch import Tensor

from zimage_mcp.engine.errors import WeightsError

_NO_LIMIT = int(1e30)  # transformers' model_max_length when tokenizer_config.json gives none


def chat_prompt(prompt: str) -> str:
    """``prompt`` as one user turn plus the generation prompt: what Qwen3's chat template renders for
    ``apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
    enable_thinking=True)`` (diffusers' ``ZImagePipeline.encode_prompt``); a test compares the two."""
    return f"<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"


@dataclass(frozen=True)
class TokenBatch:
    input_ids: Tensor  # (B, L) int64, right-padded with the pad id; L = the longest sequence
    attention_mask: Tensor  # (B, L) bool, True = real token


class Qwen3Tokenizer:
    """Batch tokenization with truncation and right padding; see the module docstring."""

    def __init__(self, backend: Tokenizer, pad_token: str, model_max_length: int) -> None:
        pad_id = backend.token_to_id(pad_token)
        if pad_id is None:
            raise ValueError(f"pad token {pad_token!r} is not in the vocabulary")
        backend.no_padding()  # padding is ours (below); a tokenizer.json may carry its own settings
        self.backend = backend
        self.pad_token = pad_token
        self.pad_token_id: int = pad_id
        self.model_max_length = model_max_length
        self._lock = threading.Lock()  # truncation is state of the backend: set and use it together

    def __len__(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def __call__(self, texts: Sequence[str], max_length: int) -> TokenBatch:
        """Each text truncated to ``max_length`` tokens (from the right), padded to the batch's longest."""
        with self._lock:
            # transformers' truncation=True, max_length=n, the same call into the Rust tokenizer.
            self.backend.enable_truncation(max_length, stride=0, strategy="longest_first", direction="right")
            encodings = self.backend.encode_batch(list(texts), add_special_tokens=True)
        ids = [e.ids for e in encodings]
        width = max((len(i) for i in ids), default=0)
        input_ids = torch.tensor([i + [self.pad_token_id] * (width - len(i)) for i in ids], dtype=torch.int64)
        mask = torch.tensor([[True] * len(i) + [False] * (width - len(i)) for i in ids], dtype=torch.bool)
        return TokenBatch(input_ids.view(len(ids), width), mask.view(len(ids), width))


def _token_text(value: Any) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or an AddedToken dict."""
    return value.get("content") if isinstance(value, dict) else value


def load_tokenizer(folder: Path) -> Qwen3Tokenizer:
    """``tokenizer/`` (``tokenizer.json`` + ``tokenizer_config.json``), offline; WeightsError naming the file."""
    folder = Path(folder)
    config_file, vocab_file = folder / "tokenizer_config.json", folder / "tokenizer.json"
    if not config_file.is_file():
        raise WeightsError(f"missing tokenizer: looked for tokenizer_config.json in {folder}")
    if not vocab_file.is_file():
        raise WeightsError(f"missing tokenizer: looked for tokenizer.json in {folder}")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
        backend = Tokenizer.from_file(str(vocab_file))
    except Exception as e:  # tokenizers raises a plain Exception on a malformed file
        raise WeightsError(f"tokenizer in {folder} failed to load: {e}") from e
    if not isinstance(config, dict):
        raise WeightsError(f"{config_file}: not a JSON object")
    # Where transformers' tokenizer would differ from tokenizer.json alone, refuse rather than differ:
    # it adds BOS/EOS on request, splits special tokens on request (taking their flags from
    # tokenizer_config.json, which may disagree with tokenizer.json), and numbers added tokens by the config.
    for field in ("add_bos_token", "add_eos_token", "split_special_tokens"):
        if config.get(field):
            raise WeightsError(f"{config_file}: {field} true is not supported (Qwen3's tokenizer sets it false)")
    for key, token in (config.get("added_tokens_decoder") or {}).items():
        content = _token_text(token)
        if backend.id_to_token(int(key)) != content:
            raise WeightsError(
                f"{config_file}: added token {content!r} has id {key} there but not in {vocab_file.name}"
            )
    pad = _token_text(config.get("pad_token")) or "<|endoftext|>"  # Qwen2Tokenizer's default
    if backend.token_to_id(pad) is None:
        raise WeightsError(f"{config_file}: pad_token {pad!r} is not in {vocab_file.name}")
    return Qwen3Tokenizer(backend, pad, int(config.get("model_max_length", _NO_LIMIT)))
