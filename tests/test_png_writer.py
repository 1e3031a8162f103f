"""The parallel PNG writer: every strip its own IDAT chunk, and the file still one valid zlib stream."""

from __future__ import annotations

import io
import os
import struct
import threading
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from zimage_mcp.contract import Pixels
from zimage_mcp.store import png


@given(st.binary(max_size=3000), st.binary(max_size=70000))
@settings(max_examples=60, deadline=None)
def test_adler32_combine_matches_zlib(first: bytes, second: bytes) -> None:
    assert png.adler32_combine(zlib.adler32(first), zlib.adler32(second), len(second)) == zlib.adler32(first + second)


def _chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    assert data[:8] == png.SIGNATURE
    out, pos = [], 8
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + n]
        (crc,) = struct.unpack(">I", data[pos + 8 + n : pos + 12 + n])
        assert crc == zlib.crc32(body, zlib.crc32(kind)), kind  # every chunk's CRC, as strict readers check
        out.append((kind, body))
        pos += 12 + n
    return out


@pytest.mark.parametrize("strips", [1, 3, 7, 16])
@pytest.mark.parametrize("size", [(1, 1), (17, 5), (257, 300), (512, 512)])
def test_pixels_and_text_round_trip_through_any_number_of_strips(
    monkeypatch: pytest.MonkeyPatch, strips: int, size: tuple[int, int]
) -> None:
    monkeypatch.setattr(png, "STRIPS", strips)
    monkeypatch.setattr(png, "STRIP_ROWS", 4)
    w, h = size
    pixels = np.random.default_rng(w * h).integers(0, 256, (h, w, 3), dtype=np.uint8)
    data = png.encode_png(Pixels(w, h, pixels.tobytes()), {"parameters": '{"seed": 7}', "Software": "zimage-mcp"})
    chunks = _chunks(data)
    kinds = [kind for kind, _ in chunks]
    assert kinds[:3] == [b"IHDR", b"tEXt", b"tEXt"] and kinds[-1] == b"IEND"
    assert kinds.count(b"IDAT") == min(strips, max(1, h // 4)) + 2  # the strips, the zlib header, the trailer
    stream = b"".join(body for kind, body in chunks if kind == b"IDAT")
    assert len(zlib.decompress(stream)) == h * (3 * w + 1)  # one stream; decompress checks the Adler-32
    image = Image.open(io.BytesIO(data))
    image.load()
    assert image.mode == "RGB" and np.array_equal(np.asarray(image), pixels)
    assert image.info["parameters"] == '{"seed": 7}'


@pytest.mark.skipif(not hasattr(os, "setpriority"), reason="no per-thread priority on this OS")
def test_encoder_workers_run_nicer_than_the_thread_that_feeds_the_gpu() -> None:
    def niceness() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    mine = niceness()
    assert png._POOL.submit(niceness).result() == min(19, mine + png.ENCODER_NICENESS)
    assert niceness() == mine  # the caller's own priority is untouched


@pytest.mark.parametrize("strips", [1, 3, 16])
def test_rows_the_engine_backend_filters_give_the_same_file(monkeypatch: pytest.MonkeyPatch, strips: int) -> None:
    from zimage_builtins.engine_backend import rgb_pixels

    monkeypatch.setattr(png, "STRIPS", strips)
    monkeypatch.setattr(png, "STRIP_ROWS", 4)
    image = Image.fromarray(np.random.default_rng(strips).integers(0, 256, (37, 53, 3), dtype=np.uint8), "RGB")
    pixels = rgb_pixels(np.asarray(image))
    assert pixels.data == image.tobytes()
    assert pixels.png_rows == png._filtered_rows(pixels, 0, pixels.height)
    text = {"parameters": "{}"}
    assert png.encode_png(pixels, text) == png.encode_png(Pixels(53, 37, pixels.data), text)


def test_filtered_rows_of_the_wrong_size_are_refused() -> None:
    with pytest.raises(ValueError, match="not 2 Sub-filtered rows of 3 px"):
        Pixels(3, 2, bytes(18), png_rows=bytes(18))
