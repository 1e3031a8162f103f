"""Omni prompts: the text segments around the vision markers, each encoded as its own Qwen3 sequence.

For N reference images diffusers' ``ZImageOmniPipeline`` encodes N + 2 segments (no chat template; the
markers are the template):

    "<|im_start|>user\\n<|vision_start|>"
    "<|vision_end|><|vision_start|>"                                   x (N - 1)
    "<|vision_end|>{prompt}<|im_end|>\\n<|im_start|>assistant\\n<|vision_start|>"
    "<|vision_end|><|im_end|>"

A prompt may place the references itself with one ``<|vision_start|><|vision_end|>`` pair per image;
written all at the front, the pairs give exactly the default segments above.
"""

from __future__ import annotations

import torch
from torch import Tensor

from zimage_mcp.engine.errors import InvalidArgument
from zimage_mcp.engine.text.qwen3 import TextEncoder

VISION_START, VISION_END = "<|vision_start|>", "<|vision_end|>"
USER, ASSISTANT = "<|im_start|>user\n", "<|im_end|>\n<|im_start|>assistant\n"


def split_at_vision_starts(text: str) -> list[str]:
    """Cut after every ``<|vision_start|>`` (the marker stays at the end of its segment)."""
    parts = text.split(VISION_START)
    return [p + VISION_START for p in parts[:-1]] + [parts[-1]]


def omni_segments(prompt: str, n_images: int, name: str = "prompt") -> list[str]:
    """The segments for ``prompt`` with ``n_images`` references; ValueError (naming ``name``) on bad markers."""
    pair = VISION_START + VISION_END
    starts, ends = prompt.count(VISION_START), prompt.count(VISION_END)
    if starts == 0 and ends == 0:
        if n_images == 0:
            return [USER + prompt + ASSISTANT]
        text = USER + pair * n_images + prompt + ASSISTANT + pair + "<|im_end|>"
        return split_at_vision_starts(text)
    if not (starts == ends == prompt.count(pair)):
        raise InvalidArgument(name, f"vision markers must come as adjacent {pair} pairs, one per reference image")
    if starts != n_images:
        raise InvalidArgument(
            name,
            f"has {starts} {pair} marker pair(s) but {n_images} reference image(s) were given; "
            "the numbers must match (or leave the markers out)",
        )
    return split_at_vision_starts(USER + prompt + ASSISTANT + pair + "<|im_end|>")


@torch.no_grad()
def encode_segments(text_encoder: TextEncoder, segments: list[str], max_length: int = 512) -> list[Tensor]:
    """Real-token features (L_j, hidden) of each segment, each its own sequence (``hidden_states[-2]``).

    ``text_encoder.model`` already ends at that layer (see ``qwen3.py``).
    Right padding with causal attention leaves real-token states unchanged, so segments are batched.
    """
    unique = list(dict.fromkeys(segments))
    batch = text_encoder.tokenizer(unique, max_length=max_length)  # (B, L), right-padded
    lengths = batch.attention_mask.sum(dim=1).tolist()  # on the CPU: no device sync to unpad
    # The padding mask, as diffusers passes it (None without padding, as transformers then drops it).
    padded = not bool(batch.attention_mask.all())
    mask = batch.attention_mask.to(text_encoder.device) if padded else None
    hidden = text_encoder.model(input_ids=batch.input_ids.to(text_encoder.device), mask=mask)  # (B, L, hidden)
    feats = {s: h[:n] for s, h, n in zip(unique, hidden, lengths, strict=True)}
    return [feats[s] for s in segments]
