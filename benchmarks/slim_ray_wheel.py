"""Slim the ray wheel so a GPU run can carry it (64 MiB limit): no Java jars, no RLlib/Data/Train/Tune.

unzip -> delete -> rewrite RECORD -> zip, then install the result with ``pip install --target`` into a
temporary folder and check that ``import ray.serve`` works from there. Prints the sizes.

    python benchmarks/slim_ray_wheel.py [--wheel ray-2.60.0-...whl] [--out dist/]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

DROP = ("ray/jars/", "ray/rllib/", "ray/data/", "ray/train/", "ray/tune/", "ray/llm/", "ray/air/examples/")


def fetch(version: str, folder: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", f"ray=={version}", "--no-deps", "--only-binary=:all:", "-d"]
    subprocess.run([*cmd, str(folder)], check=True)
    return next(folder.glob("ray-*.whl"))


def slim(wheel: Path, out_dir: Path) -> Path:
    """A copy of ``wheel`` without the ``DROP`` folders, its RECORD rewritten to what is left."""
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / wheel.name
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as dst:
        record_name = next(n for n in src.namelist() if n.endswith(".dist-info/RECORD"))
        rows = []
        for info in src.infolist():
            if info.filename == record_name or info.filename.startswith(DROP):
                continue
            data = src.read(info)
            dst.writestr(info, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            rows.append(f"{info.filename},sha256={digest},{len(data)}")
        rows.append(f"{record_name},,")
        dst.writestr(record_name, "\n".join(rows) + "\n")
    return target


def check(wheel: Path) -> None:
    """Install the slim wheel (with its dependencies from the current environment) and import ray.serve."""
    with tempfile.TemporaryDirectory() as tmp:
        pip = [sys.executable, "-m", "pip", "install", "--no-deps", "--target", tmp, str(wheel)]
        subprocess.run([*pip, "-q"], check=True)
        code = (
            "import sys; sys.path.insert(0, sys.argv[1]); import ray, ray.serve; "
            "assert ray.__file__.startswith(sys.argv[1]), ray.__file__; print('import ray.serve ok:', ray.__version__)"
        )
        subprocess.run([sys.executable, "-c", code, tmp], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheel", type=Path, help="the ray wheel to slim (default: pip download it)")
    parser.add_argument("--version", default="2.60.0")
    parser.add_argument("--out", type=Path, default=Path("dist"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        wheel = args.wheel or fetch(args.version, Path(tmp))
        slimmed = slim(wheel, args.out)
        mib = 1024 * 1024
        before, after = wheel.stat().st_size / mib, slimmed.stat().st_size / mib
        print(f"{wheel.name}: {before:.1f} MiB -> {after:.1f} MiB ({slimmed})")
    check(slimmed)


if __name__ == "__main__":
    main()
