"""Time and size of every way the store can encode one generated image (issue 17: choose the encoder).

    python benchmarks/bench_encode.py                 # 1024^2, medians of 5
    python benchmarks/bench_encode.py --size 512 --runs 3
    python benchmarks/bench_encode.py --tiny          # CPU smoke run (CI keeps it from rotting)
The image is photo-like, not flat colour: smooth gradients and soft blobs at several scales plus sensor-like
noise, so zlib sees what it sees on a real render. Timing is the encode alone (``Image.save`` into memory)
from the uint8 RGB pixels the engine hands back, as the store runs it; one thread, single process.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import time

import numpy as np
from PIL import Image

from zimage_mcp.contract import Pixels
from zimage_mcp.store import png
from zimage_mcp.store.png import STRIPS

SETTINGS: list[tuple[str, str, dict]] = [
    *[(f"png level {n}", "PNG", {"compress_level": n, "optimize": False}) for n in range(10)],
    ("png default (level 6)", "PNG", {}),
    *[(f"webp q{q} m{m}", "WEBP", {"quality": q, "method": m}) for q, m in ((95, 4), (90, 4), (80, 4), (90, 0))],
    ("webp lossless m0", "WEBP", {"lossless": True, "method": 0}),
    *[(f"jpeg q{q}", "JPEG", {"quality": q}) for q in (95, 90, 80)],
    # the store's writer per worker count: how the strips scale on this host
    *[(f"store png, {n} strip{'s' * (n > 1)}", "OURS", {"strips": n}) for n in sorted({1, 2, 4, 8, 16, STRIPS})],
    # the same, with the rows Sub-filtered beforehand as the engine backend hands them over (the server's path)
    *[
        (f"server png, {n} strip{'s' * (n > 1)}", "OURS", {"strips": n, "rows": True})
        for n in sorted({1, 2, 4, 8, 16, STRIPS})
    ],
]


def photo_like(side: int, seed: int = 0) -> Image.Image:
    """A smooth scene (gradients, soft blobs at three scales) with mild per-pixel noise, as RGB8."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:side, 0:side].astype(np.float32) / side
    img = np.stack([0.6 * x + 0.2, 0.5 * y + 0.3 * x, 0.8 - 0.5 * y], axis=-1)
    for scale, count in ((0.25, 6), (0.08, 30), (0.02, 200)):
        for _ in range(count):
            cx, cy = rng.random(2)
            colour = rng.random(3) - 0.5
            img += 0.4 * colour * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * scale**2))[..., None]
    img += rng.normal(0, 3.0 / 255, img.shape).astype(np.float32)  # sensor-like grain
    return Image.fromarray((img.clip(0, 1) * 255).round().astype(np.uint8), "RGB")


def measure(img: Image.Image, fmt: str, kwargs: dict, runs: int) -> tuple[float, int]:
    """Median ms and bytes; ``OURS`` is the store's writer (``store/png.py``) from the raw RGB8 bytes."""
    if kwargs.get("rows"):
        from zimage_builtins.engine_backend import rgb_pixels  # the backend's filter (imports torch)

        pixels = rgb_pixels(np.asarray(img))
    else:
        pixels = Pixels(img.width, img.height, img.tobytes())
    times, size = [], 0
    for _ in range(runs + 1):  # the first call warms up
        buf = io.BytesIO()
        t = time.perf_counter()
        if fmt == "OURS":
            png.STRIPS = kwargs["strips"]
            buf.write(png.encode_png(pixels, {"parameters": "{}"}))
        else:
            img.save(buf, fmt, **kwargs)
        times.append((time.perf_counter() - t) * 1000)
        size = buf.tell()
    png.STRIPS = STRIPS
    return statistics.median(times[1:]), size


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--only", nargs="*", default=None, help="setting names to run (default: all)")
    ap.add_argument("--tiny", action="store_true", help="smoke run: 128^2, one timed run")
    ap.add_argument("--image", choices=("photo", "noise"), default="photo", help="noise: what random weights render")
    args = ap.parse_args(argv)
    if args.tiny:
        args.size, args.runs = 128, 1
    if args.image == "noise":
        rng = np.random.default_rng(0)
        img = Image.fromarray(rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8), "RGB")
    else:
        img = photo_like(args.size)
    raw = args.size * args.size * 3
    rows = []
    for name, fmt, kwargs in SETTINGS:
        if args.only and name not in args.only:
            continue
        ms, size = measure(img, fmt, kwargs, args.runs)
        rows.append(
            {"image": args.image, "setting": name, "ms": round(ms, 1), "bytes": size, "ratio": round(size / raw, 3)}
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


if __name__ == "__main__":
    main()
