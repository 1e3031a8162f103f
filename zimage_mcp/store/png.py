"""A PNG writer for RGB8 pixels: every strip filtered, deflated and checksummed on its own thread.

A PNG's image data is one zlib stream, but it may be split over any number of IDAT chunks, and a deflate
stream may be cut into pieces that end byte-aligned (a sync flush). So each strip of rows becomes its own
IDAT chunk, built start to finish by one worker: the Sub filter (Pillow's C loops), raw deflate (Intel's
ISA-L at level 1, ``DEFLATE``), the chunk's CRC, and the strip's Adler-32. The zlib header
and the combined Adler-32 trailer are two tiny chunks of their own. Nothing else passes over the whole image.
``png_pieces`` hands the file out in order as the strips finish, so the store writes each one while the strips
after it are still being deflated.

Measured by ``benchmarks/bench_encode.py`` on a photo-like 1024^2 image (2 shared cores): Pillow's default
(level 6, adaptive filter) 233-268 ms / 1.62 MB, Pillow level 1 101 ms / 1.88 MB, this writer with zlib 19 ms
on 2 strips / 1.88 MB. On the 16-core GPU host, 4 strips with the filter and checksums done once over the whole
image took 54 ms at 1024^2 and 16 such strips 33 ms; the encode is on every call's path.
"""

from __future__ import annotations

import os
import struct
import threading
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

from isal import isal_zlib
from PIL import Image, ImageChops

from zimage_mcp.contract import Pixels

# ISA-L's deflate (SIMD; levels 0-3), not zlib's: on the Sub-filtered rows of a 720x477 photo, level 1 took
# 2.9 ms against 9.8 for zlib at level 1 with run-length matches only (the best zlib setting for these rows),
# for 1.4 % more bytes; on a strip of noise (the random-weight benchmarks' images) 0.12 against 0.42 ms.
# Same format: any PNG reader reads it. It releases the GIL while it deflates, as zlib does.
DEFLATE = isal_zlib
PNG_LEVEL = 1
ENCODER_NICENESS = 5  # encoder threads yield the CPU to the thread that feeds the GPU (see nice_thread)
# Parallel workers, one strip (and one IDAT chunk) each: half the host's vCPUs (its cores, where they are
# hyperthreads). On the 16-vCPU H100 host 12 busy encode threads ran 2-3x slower each than 8 or 9 (RESULTS §21),
# and 8 strips were the best measured at both sizes (512^2: 8 of 64 rows; 1024^2: 8 of 128 rows).
STRIPS = max(2, min(16, (os.cpu_count() or 1) // 2))
# The fewest rows a strip gets: each strip costs a hand-off. On the 16-core H100 host (noise, RESULTS §19) the
# server's 512^2 encode took 5.1 ms on 8 strips against 7.3 on 4.
STRIP_ROWS = 64
SIGNATURE = b"\x89PNG\r\n\x1a\n"
ZLIB_HEADER = b"\x78\x01"  # deflate, 32 KiB window, the "fastest" level flag
_ADLER_BASE = 65521


def nice_thread() -> None:
    """Make the calling thread nicer (Linux niceness is per thread): with several jobs in flight, 16 strip
    workers encoding one image would otherwise compete for cores with the thread launching the next job's
    GPU work. Where the OS has no per-thread priority, nothing changes."""
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + ENCODER_NICENESS))
    except (AttributeError, OSError):
        pass


_POOL = ThreadPoolExecutor(max_workers=STRIPS, thread_name_prefix="zimage-png", initializer=nice_thread)


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))


def adler32_combine(first: int, second: int, second_length: int) -> int:
    """The Adler-32 of A + B from those of A and B and B's length (zlib's adler32_combine)."""
    rem = second_length % _ADLER_BASE
    sum1 = first & 0xFFFF
    sum2 = (rem * sum1) % _ADLER_BASE
    sum1 = (sum1 + (second & 0xFFFF) + _ADLER_BASE - 1) % _ADLER_BASE
    sum2 = (sum2 + ((first >> 16) & 0xFFFF) + ((second >> 16) & 0xFFFF) + _ADLER_BASE - rem) % _ADLER_BASE
    return sum1 | (sum2 << 16)


def _filtered_rows(pixels: Pixels, top: int, bottom: int) -> bytes:
    """Rows [top, bottom) as scanlines: a Sub filter byte (1), then every byte minus the one 3 bytes to its left.

    The bytes are handled as an 8-bit image of width 3W, so Pillow's C loops do the filtering; the Sub
    filter looks only along its own row, so strips are independent.
    """
    w, h, stride = pixels.width * 3, bottom - top, pixels.width * 3
    raw = Image.frombuffer("L", (w, h), memoryview(pixels.data)[top * stride : bottom * stride], "raw", "L", 0, 1)
    diff = ImageChops.subtract_modulo(raw, ImageChops.offset(raw, 3, 0))
    rows = Image.new("L", (w + 1, h), 1)  # column 0: the filter type of every row
    rows.paste(diff, (1, 0))
    rows.paste(raw.crop((0, 0, 3, h)), (1, 0))  # the first pixel of a row has no left neighbour
    return rows.tobytes()


def _strip(pixels: Pixels, top: int, bottom: int, last: bool, level: int) -> tuple[bytes, int, int]:
    """One strip as a complete IDAT chunk, with the Adler-32 and length of its filtered bytes."""
    if pixels.png_rows is not None:  # filtered by the backend, without the GIL
        line = 1 + pixels.width * 3
        data: bytes | memoryview = memoryview(pixels.png_rows)[top * line : bottom * line]
    else:
        data = _filtered_rows(pixels, top, bottom)
    c = DEFLATE.compressobj(level, DEFLATE.DEFLATED, -15)  # raw deflate: the zlib wrapper is apart
    # Every strip but the last ends byte-aligned (sync flush), so the pieces concatenate into one stream.
    body = c.compress(data) + c.flush(DEFLATE.Z_FINISH if last else DEFLATE.Z_SYNC_FLUSH)
    return chunk(b"IDAT", body), DEFLATE.adler32(data), len(data)


def png_pieces(pixels: Pixels, text: dict[str, str], level: int = PNG_LEVEL) -> Iterator[bytes]:
    """The PNG file of ``encode_png`` in order, piece by piece: the header (IHDR, ``text``, the zlib header),
    then each strip's IDAT chunk as soon as it and those above it are done, then the Adler-32 and IEND. The
    strips are handed to the workers now, before the first piece is asked for, so a caller can write each
    piece while the strips after it are still being deflated."""
    n = max(1, min(STRIPS, pixels.height // STRIP_ROWS))
    bounds = [pixels.height * i // n for i in range(n + 1)]
    jobs = [(pixels, a, b, i == n - 1, level) for i, (a, b) in enumerate(zip(bounds, bounds[1:], strict=False))]
    pending = [_POOL.submit(_strip, *job) for job in jobs] if n > 1 else []
    header = struct.pack(">IIBBBBB", pixels.width, pixels.height, 8, 2, 0, 0, 0)  # 8-bit RGB, not interlaced
    head = [SIGNATURE, chunk(b"IHDR", header)]
    head += [chunk(b"tEXt", key.encode("latin-1") + b"\0" + value.encode("latin-1")) for key, value in text.items()]
    head.append(chunk(b"IDAT", ZLIB_HEADER))

    def pieces() -> Iterator[bytes]:
        yield b"".join(head)
        adler = 1  # the Adler-32 of nothing
        for idat, strip_adler, length in (f.result() for f in pending) if pending else [_strip(*jobs[0])]:
            adler = adler32_combine(adler, strip_adler, length)
            yield idat
        yield chunk(b"IDAT", struct.pack(">I", adler)) + chunk(b"IEND", b"")

    return pieces()


def encode_png(pixels: Pixels, text: dict[str, str], level: int = PNG_LEVEL) -> bytes:
    """A complete PNG file: IHDR, one tEXt chunk per ``text`` item (Latin-1), the IDAT chunks, IEND."""
    return b"".join(png_pieces(pixels, text, level))
