"""Downscaled previews that keep a whole tool result under the host's size cap.

Also composes the content blocks of an image result. A preview is a baseline JPEG: at the same quality and
size as WebP it encodes about ten times faster (512 px: 0.6 ms against 5.6 ms photo-like, 1.2 against 16 ms
for noise), every host displays it, and the preview's time is on every call's path. Base64
inflates bytes by 4/3, so the byte budget handed in is for *encoded* data and this module divides it
accordingly. ``thumbnail`` starts at 512 px on the long side; ``full`` starts at full resolution. Either way
quality and then size are lowered until the preview fits, so ``full`` never breaks the budget either.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from mcp.types import Annotations, ContentBlock, ImageContent, ResourceLink, TextContent
from PIL import Image

from zimage_mcp.contract import Pixels
from zimage_mcp.store import StoredImage
from zimage_mcp.store.pillow_encode import encode_without_gil

PreviewMode = Literal["none", "thumbnail", "full"]
THUMBNAIL_SIDE = 512
QUALITIES = (85, 70, 55, 40)
MIN_SIDE = 64
RESULT_SLACK = 4096  # JSON-RPC envelope, _meta, field names
ESTIMATED_OVERHEAD = RESULT_SLACK + 12288  # twice the facts JSON and the summary, before they exist


@dataclass(frozen=True)
class Preview:
    data_b64: str
    mime_type: str
    width: int
    height: int


def _encode(img: Image.Image, quality: int) -> tuple[bytes, str]:
    # no optimize: -11 % bytes for +130 % time; without the GIL: the PNG's workers run beside it; whole, on one
    # thread: in bands (store/jpeg_bands.py) beside the PNG's strips it oversubscribed a 16-vCPU host (RESULTS §21)
    return encode_without_gil(img, "JPEG", quality=quality), "image/jpeg"


def make_preview(pixels: Pixels, mode: PreviewMode, max_b64_chars: int) -> Preview | None:
    """A preview whose base64 text is at most ``max_b64_chars`` long, or None if mode is "none".

    Built from the RGB8 pixels the engine handed back: no file is decoded.
    """
    if mode == "none" or max_b64_chars <= 0:
        return None
    max_bytes = max_b64_chars * 3 // 4
    img = Image.frombuffer("RGB", (pixels.width, pixels.height), pixels.data, "raw", "RGB", 0, 1)
    side = max(img.size) if mode == "full" else min(THUMBNAIL_SIDE, max(img.size))
    while True:
        scale = side / max(img.size)
        size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
        # A box reduce by the whole factor first, then Lanczos on the small image for the rest: reducing_gap=2.0
        # reduced nothing at the usual 2x (1024 -> 512), and a full-size Lanczos took 24 ms against 2.3.
        scaled = img.resize(size, Image.Resampling.LANCZOS, reducing_gap=1.0) if scale < 1 else img
        for quality in QUALITIES:
            data, mime = _encode(scaled, quality)
            if len(data) <= max_bytes:
                return Preview(base64.b64encode(data).decode("ascii"), mime, scaled.width, scaled.height)
        if side <= MIN_SIDE:
            return None  # the budget is too small for any useful preview; the link and path still work
        side = max(MIN_SIDE, int(side * 0.7))


def worker_limit(budget: int, count: int) -> int:
    """The per-image limit the worker builds previews for, before the result's final size is known: the
    budget less a generous estimate of the rest. ``build_content`` rebuilds any preview that ends up over."""
    return (budget - ESTIMATED_OVERHEAD - 512 * count) // max(1, count) - 64


def build_content(
    summary: str,
    structured: dict[str, Any],
    images: list[tuple[StoredImage, Pixels]],
    mode: PreviewMode,
    budget: int,
    previews: Sequence[Preview | None] = (),
) -> list[ContentBlock]:
    """Text line, JSON facts, one preview and one resource link per image, all within ``budget`` bytes.

    The structured content travels beside these blocks, so its JSON size is charged to the budget too.
    ``previews`` are the ones the worker built already; one that does not fit is built again, smaller.
    """
    facts = json.dumps(structured, separators=(",", ":"))
    blocks: list[ContentBlock] = [
        TextContent(type="text", text=summary),
        TextContent(type="text", text=facts),
    ]
    links = [
        ResourceLink(
            type="resource_link",
            uri=stored.uri,
            name=stored.path.name,
            title=f"zimage image {stored.id}",
            mime_type=stored.mime_type,
            size=stored.size_bytes,
            annotations=Annotations(audience=["user", "assistant"]),
        )
        for stored, _ in images
    ]
    overhead = 2 * len(facts) + len(summary) + sum(len(link.model_dump_json()) for link in links) + RESULT_SLACK
    per_image = (budget - overhead) // max(1, len(images))
    for i, ((_, pixels), link) in enumerate(zip(images, links, strict=True)):
        preview = previews[i] if i < len(previews) else None
        if preview is None or len(preview.data_b64) > per_image - 64:
            preview = make_preview(pixels, mode, per_image - 64)
        if preview is not None:
            blocks.append(ImageContent(type="image", data=preview.data_b64, mime_type=preview.mime_type))
        blocks.append(link)
    return blocks
