"""Direct engine use, no MCP: load a Z-Image folder and write a PNG.

python examples/generate_turbo.py --model-dir ~/models/Z-Image-Turbo --prompt "a red fox in snow"
python examples/generate_turbo.py --tiny --prompt "a lighthouse"   # a random tiny model, CPU, seconds
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from zimage_mcp.engine import load_pipeline


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-dir", type=Path, help="a diffusers-format Z-Image folder")
    ap.add_argument("--tiny", action="store_true", help="synthesize a tiny random model instead")
    ap.add_argument("--prompt", required=True)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("zimage.png"))
    args = ap.parse_args()
    if args.tiny:
        from zimage_mcp.engine.presets.tiny import make_tiny

        args.model_dir = make_tiny(Path(tempfile.mkdtemp()) / "tiny")
        args.size = min(args.size, 256)
    if args.model_dir is None:
        ap.error("give --model-dir or --tiny")
    pipe = load_pipeline(args.model_dir)
    out = pipe.generate(
        args.prompt,
        width=args.size,
        height=args.size,
        steps=args.steps,
        seed=args.seed,
        on_step=lambda i, n: print(f"step {i}/{n}", flush=True),
    )
    out.images[0].save(args.out)
    print(f"saved {args.out} (seed {out.seeds[0]}, {out.timings['total']:.2f} s)")


if __name__ == "__main__":
    main()
