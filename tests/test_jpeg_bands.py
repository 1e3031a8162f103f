"""The JPEG encoded in bands on several threads: one valid baseline JPEG whose pixels are those of the whole
image encoded at once."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from zimage_mcp.store import jpeg_bands
from zimage_mcp.store.jpeg_bands import encode_jpeg, join_bands


def _image(width: int, height: int, kind: str) -> Image.Image:
    rng = np.random.default_rng(width * 7919 + height)
    if kind == "noise":
        return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    y, x = np.mgrid[0:height, 0:width]
    smooth = np.stack([x * 255 // max(1, width - 1), y * 255 // max(1, height - 1), (x + y) % 256], axis=-1)
    return Image.fromarray(smooth.astype(np.uint8))


def _whole(img: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality, subsampling="4:2:0")
    return buf.getvalue()


def _markers(jpeg: bytes) -> list[int]:
    """Every marker byte after an 0xFF that is not stuffing (0x00) or fill (0xFF)."""
    return [jpeg[i + 1] for i in range(len(jpeg) - 1) if jpeg[i] == 0xFF and jpeg[i + 1] not in (0x00, 0xFF)]


@pytest.mark.parametrize("kind", ["noise", "smooth"])
@pytest.mark.parametrize(("width", "height"), [(512, 512), (1024, 1024), (500, 333), (768, 200), (17, 1000)])
def test_bands_decode_to_the_whole_images_pixels(width: int, height: int, kind: str) -> None:
    img = _image(width, height, kind)
    banded = encode_jpeg(img, 85, 4)
    with Image.open(io.BytesIO(banded)) as decoded:
        assert decoded.format == "JPEG" and decoded.size == (width, height)
        pixels = np.asarray(decoded.convert("RGB"))
    expected = np.asarray(Image.open(io.BytesIO(_whole(img, 85))).convert("RGB"))
    assert np.array_equal(pixels, expected)  # the same coefficients, so the same pixels
    # a second decoder (OpenCV's) reads the restart markers too
    other = cv2.imdecode(np.frombuffer(banded, np.uint8), cv2.IMREAD_COLOR)
    assert other is not None and other.shape == (height, width, 3)


def test_a_tall_image_is_cut_into_bands_joined_by_restart_markers() -> None:
    banded = encode_jpeg(_image(512, 512, "noise"), 85, 4)
    markers = _markers(banded)
    assert markers.count(jpeg_bands.DRI) == 1 and markers.count(jpeg_bands.SOS) == 1
    restarts = [m for m in markers if jpeg_bands.RST0 <= m <= jpeg_bands.RST0 + 7]
    assert restarts == [jpeg_bands.RST0 + i for i in range(3)]  # 512 rows: 4 bands of 128
    dri = banded.index(bytes((0xFF, jpeg_bands.DRI)))
    assert int.from_bytes(banded[dri + 4 : dri + 6], "big") == (512 // 16) * (128 // 16)  # MCUs per band


def test_a_short_image_or_one_band_is_encoded_whole() -> None:
    img = _image(256, 64, "noise")
    assert encode_jpeg(img, 85, 4) == _whole(img, 85)
    tall = _image(256, 512, "noise")
    assert encode_jpeg(tall, 85, 1) == _whole(tall, 85)


def test_bands_with_different_tables_are_not_joined() -> None:
    top, bottom = _image(64, 32, "noise"), _image(64, 32, "smooth")
    assert join_bands([_whole(top, 85), _whole(bottom, 60)], 64, 8) is None  # other quantisation tables
    progressive = io.BytesIO()
    top.save(progressive, "JPEG", quality=85, progressive=True)
    assert join_bands([progressive.getvalue(), progressive.getvalue()], 64, 8) is None
    assert join_bands([b"not a jpeg", _whole(top, 85)], 64, 8) is None
    joined = join_bands([_whole(top, 85), _whole(bottom, 85)], 64, 8)
    assert joined is not None
    with Image.open(io.BytesIO(joined)) as img:
        assert img.size == (64, 64)
        img.load()
