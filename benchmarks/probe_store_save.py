"""What the server's after-the-GPU CPU work costs in one process, cold and hot, per PNG strip setting.

The server's 512^2 request spent 7.3 ms encoding a PNG on 4 strips that ``bench_encode.py`` encoded in 4 ms back
to back (RESULTS §19; 5.1 ms on 8 strips since). Between two chat requests the host's cores sleep; the server's
strip workers wake only once the pixels land. This runs what the server's job thread runs after the pixels (the
store's encode and atomic save, the JPEG preview beside it on its pool) on noise, the random-weight benchmarks'
images, or a photo-like image (``--image photo``), after the host sat idle (``cold``) and back to back
(``hot``), the variants taking turns request by request (so a drift in the host's speed hits each alike), for:

- ``as_is``: the store as it ships;
- ``rows_N``: strips of at least N rows (``png.STRIP_ROWS``; 128 shipped until RESULTS §19, 64 since);
- ``not_nice``: strip workers at the caller's priority (a fresh pool for each of its requests, since the
  variants take turns: its threads also start new);
- ``preview_bytesio``: the JPEG preview encoded into a ``BytesIO``, as until RESULTS §20 (Pillow holds the GIL
  for that whole encode, so the strip workers wait to finish; ``store/pillow_encode.py``);
- ``written_whole``: the PNG encoded whole, then written and flushed, as until RESULTS §20 (the store now writes
  each strip as it is deflated and starts its writeback at once, ``atomic_write``);
- ``bands_N``: the preview's JPEG in N bands joined by restart markers (``store/jpeg_bands.py``, which the store
  uses for JPEG outputs; the preview ships whole, RESULTS §21);
- ``zlib_rle``: the strips deflated by zlib at level 1 with run-length matches only, as until RESULTS §21
  (``png.DEFLATE`` is ISA-L's deflate since);
- ``prewarmed``: the strip workers kept spinning for a few ms just before the pixels land (a pure-Python spin:
  it holds the GIL, and on the GPU host it made every request 40 ms slower; kept to show that).

Each request also converts the engine's (H, W, 3) array to the contract's pixels and PNG rows first, as the
engine backend does on the job thread. ``--heap kept`` tunes malloc as ``serve`` does (``cli/heap.py``).

Each variant also prints one cold encode's strips as [start, end] ms, and the probe starts with how N threads
deflating a strip each scale on this host.

    python3 benchmarks/probe_store_save.py            # JSON lines, one per size and variant
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import TypeVar

import numpy as np
from bench_encode import photo_like
from PIL import Image
from probe_cpu_burst import deflate_strip
from zimage_builtins.engine_backend import rgb_pixels

from zimage_mcp.cli.heap import keep_freed_memory
from zimage_mcp.contract import Pixels
from zimage_mcp.server import generation
from zimage_mcp.server import preview as preview_module
from zimage_mcp.server.preview import make_preview, worker_limit
from zimage_mcp.store import ImageStore, image_store, png
from zimage_mcp.store.jpeg_bands import encode_jpeg

T = TypeVar("T")
BUDGET = 1_000_000  # the server's default result budget, roughly: the thumbnail is never shrunk for it


def spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


# zlib with the settings the PNG writer used until RESULTS §21, behind the part of zlib's API that png.py calls
ZLIB_RLE = SimpleNamespace(
    compressobj=lambda level, method, wbits: zlib.compressobj(level, method, wbits, 8, zlib.Z_RLE),
    adler32=zlib.adler32,
    DEFLATED=zlib.DEFLATED,
    Z_FINISH=zlib.Z_FINISH,
    Z_SYNC_FLUSH=zlib.Z_SYNC_FLUSH,
)


@contextmanager
def variant(name: str) -> Iterator[Callable[[], None]]:
    """Patch the store's PNG writer for ``name``; yield what runs just before the pixels land."""
    rows, pool, encode_preview, encode_image, deflate = (
        png.STRIP_ROWS,
        png._POOL,
        preview_module._encode,
        image_store.encode_image,
        png.DEFLATE,
    )
    before: Callable[[], None] = lambda: None  # noqa: E731
    if name.startswith("rows_"):
        png.STRIP_ROWS = int(name.split("_")[1])
    elif name == "not_nice":
        png._POOL = ThreadPoolExecutor(max_workers=png.STRIPS, thread_name_prefix="probe-png")
    elif name == "preview_bytesio":

        def to_bytesio(img: Image.Image, quality: int) -> tuple[bytes, str]:
            buf = io.BytesIO()
            img.save(buf, "JPEG", quality=quality)
            return buf.getvalue(), "image/jpeg"

        preview_module._encode = to_bytesio
    elif name.startswith("bands_"):
        bands = int(name.split("_")[1])
        preview_module._encode = lambda img, quality: (encode_jpeg(img, quality, bands), "image/jpeg")
    elif name == "zlib_rle":
        png.DEFLATE = ZLIB_RLE
    elif name == "written_whole":

        def whole(pixels: Pixels, fmt: str, metadata: dict) -> bytes | Iterator[bytes]:
            data = encode_image(pixels, fmt, metadata)
            return data if isinstance(data, bytes) else b"".join(data)

        image_store.encode_image = whole
    elif name == "prewarmed":

        def before() -> None:  # every worker spins 3 ms, while this thread waits as the server's waits
            for _ in range(png.STRIPS):
                png._POOL.submit(spin, 0.003)
            spin(0.002)

    try:
        yield before
    finally:
        png.STRIP_ROWS, preview_module._encode, image_store.encode_image = rows, encode_preview, encode_image
        png.DEFLATE = deflate
        if png._POOL is not pool:
            png._POOL.shutdown()
            png._POOL = pool


# The server runs a job's CPU part on a worker thread, and glibc gives each thread its own heap (arena): on this
# project's CPU machine the main thread paid page faults converting a 512^2 image that a worker thread did not.
_JOB_THREAD = ThreadPoolExecutor(max_workers=1, thread_name_prefix="probe-job")


def on_job_thread(fn: Callable[..., T], *args: object) -> T:
    """``fn(*args)`` on one long-lived worker thread, as the server's job thread runs it."""
    return _JOB_THREAD.submit(fn, *args).result()


def one_request(store: ImageStore, rgb: np.ndarray) -> dict[str, float]:
    """The job thread's CPU part for one image: the engine backend's pixels and PNG rows, then the preview on
    its pool and the encode and save here."""
    t0 = time.perf_counter()
    pixels = rgb_pixels(rgb)
    preview = generation._PREVIEWS.submit(timed_preview, pixels)
    started = time.perf_counter()
    stored = store.save(pixels, "png", {"prompt": "probe", "seed": 1})
    preview_done = preview.result()
    total = time.perf_counter() - t0
    return {"total": total, "pixels": started - t0, **stored.timings, "preview_done": preview_done - t0}


def timed_preview(pixels: Pixels) -> float:
    """The thumbnail the server builds beside the encode; when it was ready."""
    make_preview(pixels, "thumbnail", worker_limit(BUDGET, 1))
    return time.perf_counter()


def handoff_ms(idle: float, runs: int) -> dict[str, float]:
    """How long a sleeping pool thread takes to pick up a task: each hop of a request between threads pays it."""
    pool = ThreadPoolExecutor(max_workers=1)
    pool.submit(lambda: None).result()
    out = {}
    for state in ("cold", "hot"):
        lags = []
        for _ in range(runs):
            time.sleep(idle) if state == "cold" else spin(0.05)
            t0 = time.perf_counter()
            lags.append(pool.submit(time.perf_counter).result() - t0)
        out[state] = round(statistics.median(lags) * 1000, 3)
    pool.shutdown()
    return out


def deflate_scaling(runs: int) -> dict[str, float]:
    """Wall ms for N threads each deflating its own 128-row strip of 512^2 noise at once, as the store's
    workers do: whether this host's cores run them side by side at all."""
    rng = np.random.default_rng(1)
    strips = [rng.integers(0, 256, 128 * (1 + 512 * 3), dtype=np.uint8).tobytes() for _ in range(16)]

    out = {}
    for n in (1, 2, 4, 8, 16):
        walls = []
        for _ in range(runs):
            threads = [threading.Thread(target=deflate_strip, args=(strips[i],)) for i in range(n)]
            t0 = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            walls.append(time.perf_counter() - t0)
        out[str(n)] = round(statistics.median(walls) * 1000, 2)
    return out


def strip_schedule(store: ImageStore, pixels: Pixels, idle: float) -> list[list[float]]:
    """One cold encode's strips: [start, end] in ms from the encode's start, in the order they ran."""
    inner, spans = png._strip, []

    def timed(*args: object) -> object:
        start = time.perf_counter()
        try:
            return inner(*args)  # type: ignore[arg-type]
        finally:
            spans.append([start, time.perf_counter()])

    png._strip = timed  # type: ignore[assignment]
    try:
        time.sleep(idle)
        t0 = time.perf_counter()
        store.save(pixels, "png", {"prompt": "probe", "seed": 1})
    finally:
        png._strip = inner
    return sorted([round((a - t0) * 1000, 2), round((b - t0) * 1000, 2)] for a, b in spans)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", type=int, default=[512, 1024])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--idle", type=float, default=0.6, help="seconds the host sits idle before a cold request")
    ap.add_argument("--image", choices=("noise", "photo"), default="noise", help="photo: what real weights render")
    ap.add_argument("--variants", nargs="+", default=["as_is", "rows_128", "rows_32", "not_nice"])
    ap.add_argument("--heap", choices=("default", "kept"), default="default", help="kept: as `serve` tunes malloc")
    args = ap.parse_args()
    if args.heap == "kept" and not keep_freed_memory():
        raise SystemExit("--heap kept: glibc's malloc could not be tuned here")
    if args.image == "noise":
        print(json.dumps({"probe": "thread_handoff_ms", **handoff_ms(args.idle, args.runs)}), flush=True)
        print(json.dumps({"probe": "deflate_threads_wall_ms", **deflate_scaling(args.runs)}), flush=True)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as folder:
        store = ImageStore(Path(folder))
        for side in args.sizes:
            rgb = (
                np.asarray(photo_like(side))
                if args.image == "photo"
                else rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
            )
            pixels = rgb_pixels(rgb)  # as the engine's backend hands them over
            for name in args.variants:
                with variant(name):
                    on_job_thread(one_request, store, rgb)  # the pools' threads exist
            runs: dict[str, dict[str, list[dict[str, float]]]] = {n: {"cold": [], "hot": []} for n in args.variants}
            for state in ("cold", "hot"):
                for _ in range(args.runs):
                    for name in args.variants:  # round robin: a host whose speed drifts slows every variant alike
                        with variant(name) as before:
                            if state == "cold":
                                time.sleep(args.idle)
                            before()
                            runs[name][state].append(on_job_thread(one_request, store, rgb))
            for name in args.variants:
                row: dict[str, object] = {
                    "probe": "store_save",
                    "image": args.image,
                    "size": side,
                    "variant": name,
                    "heap": args.heap,
                }
                for state, done in runs[name].items():
                    row[state] = {key: round(statistics.median(r[key] for r in done) * 1000, 2) for key in done[0]}
                with variant(name):
                    row["threads"] = threading.active_count()
                    row["cold_strips_ms"] = on_job_thread(strip_schedule, store, pixels, args.idle)
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
