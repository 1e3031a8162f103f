"""A baseline JPEG encoded in horizontal bands on several threads, joined by restart markers.

One JPEG is one thread's work in libjpeg: a full-size JPEG output is the store's longest encode. (The 512 px
preview stays whole: beside the PNG's strip workers, 4 bands oversubscribed a 16-vCPU host, RESULTS §21.)

A baseline scan may be cut into restart intervals: at each ``RSTn`` marker the entropy coder starts again on
a byte boundary with its DC predictions at zero, which is exactly how a separately encoded JPEG starts and
ends. So each band of whole MCU rows (16 px with 4:2:0 chroma) is encoded on its own, by Pillow with the GIL
released, and the bands' scans are joined under one header that gives the full height and the interval
(``DRI``). The coefficients are those of the whole image encoded at once (same quantisation and standard
Huffman tables, and 4:2:0 downsampling never looks across an MCU row), so a decoder gives the same pixels.
"""

from __future__ import annotations

import os
import struct
from concurrent.futures import ThreadPoolExecutor

from PIL import Image

from zimage_mcp.store.pillow_encode import encode_without_gil
from zimage_mcp.store.png import nice_thread

MCU_SIDE = 16  # 4:2:0: one MCU covers 16x16 pixels
MAX_BANDS = 4  # the pool's workers: more bands than this wait for one
# The store's JPEG outputs (nothing else encodes beside them but the preview): a 1024^2 one at quality 95 took
# 5.9 ms in 2 bands against 8.8 whole on this project's 2-core machine (noise; a photo 3.3 against 4.1).
OUTPUT_BANDS = max(2, min(MAX_BANDS, (os.cpu_count() or 1) // 4))
MIN_BAND_ROWS = 64  # each band costs an encoder start and a hand-off
SOI, SOF0, DHT, SOS, EOI, DRI, RST0 = 0xD8, 0xC0, 0xC4, 0xDA, 0xD9, 0xDD, 0xD0
_POOL = ThreadPoolExecutor(max_workers=MAX_BANDS, thread_name_prefix="zimage-jpeg", initializer=nice_thread)


def encode_jpeg(img: Image.Image, quality: int, bands: int) -> bytes:
    """``img`` (RGB) as a baseline 4:2:0 JPEG at ``quality``, in up to ``bands`` bands when it is tall enough."""
    params = {"quality": quality, "subsampling": "4:2:0"}  # the MCU size below depends on it
    mcu_rows = -(-img.height // MCU_SIDE)
    rows_per_band = MCU_SIDE * -(-mcu_rows // max(1, min(bands, img.height // MIN_BAND_ROWS)))
    if rows_per_band >= img.height:
        return encode_without_gil(img, "JPEG", **params)
    tops = range(0, img.height, rows_per_band)
    parts = [img.crop((0, top, img.width, min(img.height, top + rows_per_band))) for top in tops]
    encoded = [f.result() for f in [_POOL.submit(encode_without_gil, part, "JPEG", **params) for part in parts]]
    joined = join_bands(encoded, img.height, -(-img.width // MCU_SIDE) * (rows_per_band // MCU_SIDE))
    return joined if joined is not None else encode_without_gil(img, "JPEG", **params)


def join_bands(bands: list[bytes], height: int, interval: int) -> bytes | None:
    """One JPEG of ``height`` rows from separately encoded bands of ``interval`` MCUs each (the last may have
    fewer), or None if they cannot be joined: not baseline, or tables that differ from band to band (an
    encoder that tunes them per image)."""
    split = [part for part in map(_split, bands) if part is not None]
    headers = {part[:3] for part in split}
    if len(split) != len(bands) or len(headers) != 1:
        return None
    before_height, after_height, sos = headers.pop()
    out = [before_height, struct.pack(">H", height), after_height, struct.pack(">BBHH", 0xFF, DRI, 4, interval), sos]
    for i, (*_, scan) in enumerate(split):
        if i:
            out.append(bytes((0xFF, RST0 + (i - 1) % 8)))
        out.append(scan)
    out.append(bytes((0xFF, EOI)))
    return b"".join(out)


def _split(jpeg: bytes) -> tuple[bytes, bytes, bytes, bytes] | None:
    """The header cut around the SOF0 height (everything before it, everything after it up to the SOS
    segment), the SOS segment, and the entropy-coded scan; None for a JPEG that is not one baseline scan
    without restart markers."""
    if jpeg[:2] != bytes((0xFF, SOI)) or jpeg[-2:] != bytes((0xFF, EOI)):
        return None
    at, sof_at = 2, -1
    while at + 4 <= len(jpeg) and jpeg[at] == 0xFF:
        marker, length = jpeg[at + 1], struct.unpack_from(">H", jpeg, at + 2)[0]
        if marker == SOS:
            end = at + 2 + length
            return (jpeg[: sof_at + 5], jpeg[sof_at + 7 : at], jpeg[at:end], jpeg[end:-2]) if sof_at > 0 else None
        if marker == DRI or (0xC1 <= marker <= 0xCF and marker != DHT):
            return None  # restarts already, or not baseline
        if marker == SOF0:
            sof_at = at  # FF C0, the segment's length (2), the sample precision (1), then the height (2)
        at += 2 + length
    return None
