"""Compile ahead of the first request: the text encoder, the DiT per (size, caption bucket), the VAE per size.

The DiT is compiled with static shapes, one graph per (image size, caption length padded to 32 tokens),
and the VAE decoder one per image size; each new shape costs seconds of compilation (more with an empty
compile cache). ``warm_up`` runs exactly those shapes once with dummy inputs, one unit of work per
``next()``, so a caller can hand the GPU to a real request between units. Nothing is kept: no weights
change, no image is produced, and the prompt cache only gains one short dummy prompt.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from zimage_mcp.engine.errors import InvalidArgument
from zimage_mcp.engine.pipelines.arguments import check_size
from zimage_mcp.engine.pipelines.text_to_image import ZImagePipeline

# Caption buckets of typical prompts from assistants: 30-120 tokens after the chat template.
COMMON_CAPTION_LENGTHS = (64, 96, 128)


@torch.inference_mode()
def warm_up(
    pipe: ZImagePipeline, sizes: Sequence[tuple[int, int]], caption_lengths: Sequence[int] = COMMON_CAPTION_LENGTHS
) -> Iterator[str]:
    """Yield a label after each unit: the text encoder, then per (width, height) one DiT forward per caption
    length and one decode. Parts that are not compiled have nothing to warm and are skipped (an eager
    forward at 1024^2 on a CPU would cost minutes for nothing). Raises InvalidArgument for a size the engine
    does not accept, before any work."""
    for width, height in sizes:
        check_size(width, height)
    if any(n < 1 for n in caption_lengths):
        raise InvalidArgument("caption_lengths", f"must be positive token counts, got {list(caption_lengths)}")
    pipe.encode_prompts(["warm-up"])  # compiles the encoder's layers and captures its first graph
    yield "text encoder"
    dit = pipe.transformer
    decoder_compiled = getattr(pipe.vae.decoder, "_compiled_call_impl", None) is not None
    if not (dit.compiled or decoder_compiled):
        return
    t = torch.full((1,), 0.5, device=pipe.device)
    for width, height in sizes:
        hw = (2 * (height // 16), 2 * (width // 16))
        x = torch.zeros(1, dit.cfg.in_channels, *hw, device=pipe.device, dtype=pipe.dtype)  # (1, 16, H/8, W/8)
        for n in caption_lengths if dit.compiled else ():
            feats = [torch.zeros(n, dit.cfg.cap_feat_dim, device=pipe.device, dtype=pipe.dtype)]
            dit.forward_prepared(x, t, dit.prepare(feats, hw))
            yield f"{width}x{height}, {n}-token captions"
        if decoder_compiled:
            pipe.decode(x)
            yield f"{width}x{height} decode"
