"""On the GPU: the deferred host copy (``defer_host_copy``) gives the same pixels as waiting at once.

The tests check it on the CPU, where the copy is immediate; only a CUDA device has a copy in flight (pinned
memory, an event waited for on another thread). Prints one JSON line; exits 1 on any difference.

    python benchmarks/check_host_copy.py [--device cuda | --tiny]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np
import torch

from zimage_mcp.engine import load_pipeline
from zimage_mcp.engine.presets.tiny import make_tiny


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tiny", action="store_true", help="on the CPU (the tests' smoke run)")
    args = ap.parse_args(argv)
    if args.tiny:
        args.device = "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        pipe = load_pipeline(make_tiny(Path(tmp) / "tiny"), device=args.device, dtype=torch.bfloat16)
        request = {"width": 512, "height": 384, "steps": 3, "seed": 11, "count": 2}
        waited = [np.asarray(im) for im in pipe.generate("a lighthouse", **request).images]
        pipe.defer_host_copy = True
        checks = []
        for _ in range(3):
            out = pipe.generate("a lighthouse", **request)
            returned_without_pixels = out.images == [] and "decode" not in out.timings
            got: list[list[np.ndarray]] = []
            reader = threading.Thread(target=lambda o=out, g=got: g.append(o.arrays()))
            reader.start()
            reader.join(120)
            same = [bool(np.array_equal(a, b)) for a, b in zip(got[0], waited, strict=True)]
            checks.append({"returned_without_pixels": returned_without_pixels, "same_pixels": same})
    ok = all(c["returned_without_pixels"] and all(c["same_pixels"]) for c in checks)
    print(json.dumps({"check": "host_copy", "device": args.device, "ok": ok, "runs": checks}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
