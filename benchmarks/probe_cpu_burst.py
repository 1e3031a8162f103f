"""How fast a short burst of CPU work runs on this host: cold (after the core slept) against hot (right after
the same core was kept busy), for the server's after-the-GPU work (a 512^2 strip's deflate, one JPEG preview).

If cold bursts run several times slower, the cores' clocks ramp up only after the work has started (a
frequency governor), and every millisecond of CPU work on a request's path costs more than its hot figure.

    python3 benchmarks/probe_cpu_burst.py        # one JSON line
"""

from __future__ import annotations

import io
import json
import statistics
import time

import numpy as np
from PIL import Image

from zimage_mcp.store import png


def deflate_strip(data: bytes) -> None:
    c = png.DEFLATE.compressobj(png.PNG_LEVEL, png.DEFLATE.DEFLATED, -15)  # as store/png.py does a strip
    c.compress(data)
    c.flush()


def jpeg(img: Image.Image) -> None:
    img.save(io.BytesIO(), "JPEG", quality=85)


def timed(fn: object, arg: object, state: str, runs: int = 15) -> float:
    out = []
    for _ in range(runs):
        if state == "cold":
            time.sleep(0.2)
        else:
            end = time.perf_counter() + 0.2
            while time.perf_counter() < end:  # keep this core busy for as long as the cold case sleeps
                pass
        t = time.perf_counter()
        fn(arg)  # type: ignore[operator]
        out.append((time.perf_counter() - t) * 1000)
    return round(statistics.median(out), 3)


def main() -> None:
    rng = np.random.default_rng(0)
    strip = rng.integers(0, 256, (128, 1 + 512 * 3), dtype=np.uint8).tobytes()  # a quarter of 512^2's rows
    img = Image.fromarray(rng.integers(0, 256, (512, 512, 3), dtype=np.uint8))
    row = {"probe": "cpu_burst"}
    for name, fn, arg in (("deflate_strip_ms", deflate_strip, strip), ("jpeg_512_ms", jpeg, img)):
        row[name] = {state: timed(fn, arg, state) for state in ("cold", "hot")}
    print(json.dumps(row))


if __name__ == "__main__":
    main()
