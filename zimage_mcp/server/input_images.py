"""Resolve and open the input images of ``edit_image`` safely.

An image argument may be a store id (``3fa9c2d41b07``), a ``zimage://images/{id}`` URI, an absolute
path, or a ``file://`` URI. Base64 is never accepted. Paths must lie inside the output store or one
of ``settings.input_dirs`` after symlinks are resolved, so ``..`` tricks and links that point out
are refused.

Opening: ``Image.MAX_IMAGE_PIXELS`` is set to 64 MP and decompression bombs are refused; the file is
``verify()``-ed, then reopened and decoded. CMYK, grayscale, palette and alpha images are converted
to RGB (alpha is composited on white). Animated images (GIF, WebP, APNG) use their **first frame**.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from PIL import Image, UnidentifiedImageError

from zimage_mcp.contract import InvalidRequestError
from zimage_mcp.contract.rules import MASK_ASPECT_TOLERANCE, same_aspect
from zimage_mcp.server.wording import quote
from zimage_mcp.store import ID_PATTERN, ImageStore

MAX_PIXELS = 64 * 1024 * 1024
Image.MAX_IMAGE_PIXELS = MAX_PIXELS
IMAGE_URI_PREFIX = "zimage://images/"


@dataclass(frozen=True)
class InputImage:
    """A decoded input image and where it came from (``parent_id`` when it is a store image)."""

    image: Image.Image
    path: Path
    parent_id: str | None


def _allowed_roots(store: ImageStore, input_dirs: tuple[Path, ...]) -> list[Path]:
    return [store.root, *(d.expanduser().resolve() for d in input_dirs)]


def resolve_path(ref: str, field: str, store: ImageStore, input_dirs: tuple[Path, ...]) -> Path:
    """Turn an image reference into a real file path inside an allowed folder, or raise."""
    ref = ref.strip()
    allowed = ", ".join(str(r) for r in _allowed_roots(store, input_dirs))
    image_id = ref[len(IMAGE_URI_PREFIX) :] if ref.startswith(IMAGE_URI_PREFIX) else ref
    if ID_PATTERN.match(image_id):
        found = store.get(image_id)
        if found is None:
            raise InvalidRequestError(field, f"no image with id {quote(image_id)} in the output store")
        return found.path
    if ref.startswith(IMAGE_URI_PREFIX):
        raise InvalidRequestError(field, f"{quote(ref)} is not a valid image URI (expected zimage://images/<12 hex>)")
    if ref.startswith("file://"):
        parsed = urlparse(ref)
        if parsed.netloc not in ("", "localhost"):
            raise InvalidRequestError(field, "file:// URIs must point at this machine")
        ref = unquote(parsed.path)
    elif ref.startswith(("data:", "http://", "https://")) or not ref:
        raise InvalidRequestError(
            field, "give an image id, a zimage://images/<id> URI, an absolute path or a file:// URI (no base64 or URLs)"
        )
    raw = Path(ref)
    if not raw.is_absolute():
        raise InvalidRequestError(field, f"path {quote(ref)} must be absolute (allowed folders: {allowed})")
    try:
        path = raw.resolve(strict=True)
    except (OSError, RuntimeError):
        raise InvalidRequestError(field, f"file {quote(ref)} does not exist") from None
    if not any(path.is_relative_to(root) for root in _allowed_roots(store, input_dirs)):
        raise InvalidRequestError(field, f"{quote(ref)} is outside the allowed folders ({allowed})")
    if not path.is_file():
        raise InvalidRequestError(field, f"{quote(ref)} is not a file")
    return path


def open_image(path: Path, field: str) -> Image.Image:
    """Decode an image file to RGB with bomb protection; the first frame of animations is used."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as probe:
                probe.verify()
            with Image.open(path) as img:
                img.seek(0)
                img.load()
                return to_rgb(img)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        limit = MAX_PIXELS // 2**20
        raise InvalidRequestError(field, f"{quote(str(path))} is too large (more than {limit} MP)") from None
    except (UnidentifiedImageError, SyntaxError, OSError, ValueError):
        raise InvalidRequestError(field, f"{quote(str(path))} is not a readable image file") from None


def to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return img.convert("RGB") if img.mode != "RGB" else img.copy()


def load_input(ref: str, field: str, store: ImageStore, input_dirs: tuple[Path, ...]) -> InputImage:
    path = resolve_path(ref, field, store, input_dirs)
    return InputImage(open_image(path, field), path, store.id_for_path(path))


def load_mask(ref: str, store: ImageStore, input_dirs: tuple[Path, ...], size: tuple[int, int]) -> Image.Image:
    """A mask as mode "L" (white = repaint) at ``size``; same size, or same aspect ratio (``same_aspect``)."""
    mask = load_input(ref, "mask", store, input_dirs).image.convert("L")
    if mask.size == size:
        return mask
    if not same_aspect(size, mask.size):
        (mw, mh), (w, h) = mask.size, size
        tolerance = f"{MASK_ASPECT_TOLERANCE:.0%}"
        raise InvalidRequestError(
            "mask",
            f"mask is {mw}x{mh} but the image is {w}x{h}; it must have the same size or aspect ratio "
            f"(within {tolerance})",
        )
    return mask.resize(size, Image.Resampling.NEAREST)
