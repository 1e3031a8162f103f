"""Load speed and device-wide peak memory (issue 17): our ``load_pipeline`` per mode against raw safetensors.

Each measurement runs in a fresh child process (so peaks and allocator state do not carry over), after one
untimed read of every file to warm the page cache. A JSON line per mode on stdout: seconds, GB/s (bytes of
the files read / seconds), ``torch.cuda.max_memory_reserved`` and the process's peak in ``nvidia-smi``
(sampled every 20 ms). Modes:

- ``engine``: bf16, everything on the GPU (the default server path, optimize=off so only loading is timed);
- ``engine-fuse``: as the server's ``optimize=auto`` loads (q/k/v, w1/w3 read into fused buffers);
- ``engine-offload``: text encoder in host memory; ``engine-offload-fp8``: plus fp8 DiT GEMM weights;
- ``engine-fuse-pageable``: ``engine-fuse`` with plain pageable copies instead of pinned bounce buffers
  (``engine/weights/staging.py``), the A/B of that change;
- ``engine-fuse-mmap``: ``engine-fuse`` with the bounce buffers filled by copies out of safetensors' mmap
  views instead of ``preadv`` at each tensor's span (``engine/weights/spans.py``), the A/B of that change;
- ``engine-fuse-16``: ``engine-fuse`` with 16 reader threads instead of 8;
- ``staging-check``: the DiT's files read both ways on the GPU (preadv into pinned buffers, and pageable
  copies of mmap views), every tensor compared bit for bit;
- ``safetensors-serial`` / ``safetensors-threads``: ``safetensors.torch.load_file(device=...)`` file by file,
  sequentially and with 8 threads (the floor to beat).

GPU: ``python3 benchmarks/bench_load.py --weights /tmp/zimage-bench/weights-full`` (the folder is written by
``bench_server.py --sections engine`` when missing). CPU smoke: ``--tiny``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODES = (
    "engine",
    "engine-fuse",
    "engine-fuse-pageable",
    "engine-fuse-mmap",
    "engine-fuse-16",
    "engine-offload",
    "engine-offload-fp8",
    "safetensors-serial",
    "safetensors-threads",
    "staging-check",
)


def weight_files(folder: Path, offload: bool = False) -> list[Path]:
    parts = ("transformer", "vae") if offload else ("transformer", "vae", "text_encoder")
    return sorted(p for part in parts for p in (folder / part).glob("*.safetensors"))


class SmiPeak:
    """This process's peak GPU memory as nvidia-smi sees it (context, cuBLAS workspaces and all), MiB."""

    def __init__(self) -> None:
        import os

        self.pid, self.peak, self._stop = str(os.getpid()), 0, threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        query = ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"]
        while not self._stop.is_set():
            try:
                out = subprocess.run(query, capture_output=True, text=True, timeout=5).stdout
            except (OSError, subprocess.TimeoutExpired):
                return
            for line in out.splitlines():
                pid, _, used = line.partition(",")
                if pid.strip() == self.pid and used.strip().isdigit():
                    self.peak = max(self.peak, int(used))
            self._stop.wait(0.02)

    def __enter__(self) -> SmiPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def one(mode: str, folder: Path, device: str) -> dict:
    """Run one mode in this process and return its row."""
    import torch

    cuda = device.startswith("cuda")
    dtype = torch.bfloat16 if cuda else torch.float32
    offload = "offload" in mode
    files = weight_files(folder, offload)
    nbytes = sum(f.stat().st_size for f in files)
    from safetensors.torch import load_file

    from zimage_mcp.engine import load_pipeline  # imported before the clock starts
    from zimage_mcp.engine.device import prepare_runtime, resolve_device, use_expandable_segments
    from zimage_mcp.engine.weights import files as weight_reading
    from zimage_mcp.engine.weights import spans, staging

    if mode == "staging-check":
        return staging_check(folder, device, dtype)
    staging.ENABLED = not mode.endswith("-pageable")
    spans.PREAD = not mode.endswith(("-pageable", "-mmap"))
    if mode.endswith("-16"):
        weight_reading.GPU_READERS = 16
    # As `serve` does at start (zimage_prepare): the CUDA context and transformers' classes are ready before a
    # load, so the clock times reading the weights, not importing (several seconds on the GPU host).
    prepare_runtime(resolve_device(device), compile=False)
    with SmiPeak() as smi:
        start = time.perf_counter()
        if mode.startswith("engine"):
            if cuda:
                use_expandable_segments()  # as the server does
            pipe = load_pipeline(
                folder,
                device=device,
                dtype=dtype,
                optimize_mode="fuse" if mode.startswith("engine-fuse") else "off",
                fp8=mode.endswith("fp8"),
                offload_text_encoder=offload,
            )
            held = pipe
        elif mode == "safetensors-serial":
            held = [load_file(str(f), device=device) for f in files]
        else:
            with ThreadPoolExecutor(8) as pool:
                held = list(pool.map(lambda f: load_file(str(f), device=device), files))
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    del held
    row = {"mode": mode, "device": device, "seconds": round(seconds, 3), "gbytes": round(nbytes / 1e9, 3)}
    row["gb_per_s"] = round(nbytes / 1e9 / seconds, 4)
    if cuda:
        row["max_memory_reserved_gib"] = round(torch.cuda.max_memory_reserved() / 2**30, 2)
        row["max_memory_allocated_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        row["nvidia_smi_peak_gib"] = round(smi.peak / 1024, 2)
    return row


def staging_check(folder: Path, device: str, dtype: object) -> dict:
    """Pinned bounce buffers against pageable copies: the same bits for every tensor of the DiT."""
    import torch

    from zimage_mcp.engine.weights import spans, staging
    from zimage_mcp.engine.weights.files import read_files

    files = sorted((folder / "transformer").glob("*.safetensors"))
    staging.ENABLED, spans.PREAD = True, True
    pinned = read_files(files, dtype, device)
    torch.cuda.synchronize()
    staging.ENABLED, spans.PREAD = False, False
    plain = read_files(files, dtype, device)
    differ = [k for k in plain if not torch.equal(plain[k], pinned[k])]
    return {"mode": "staging-check", "keys": len(plain), "equal": not differ and plain.keys() == pinned.keys()}


def warm_page_cache(folder: Path) -> None:
    for f in weight_files(folder):
        with f.open("rb") as fh:
            while fh.read(64 << 20):
                pass


def ensure_weights(folder: Path, tiny: bool) -> None:
    if (folder / "model_index.json").is_file():
        return
    sys.path.insert(0, str(HERE))
    from bench_server import build_weights

    build_weights(folder, tiny)


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", type=Path, default=Path("/tmp/zimage-bench/weights-full"))
    p.add_argument("--tiny", action="store_true", help="tiny random weights on the CPU (smoke test)")
    p.add_argument("--device", default=None, help="default: cuda, or cpu with --tiny")
    p.add_argument("--modes", nargs="+", choices=MODES, default=None)
    p.add_argument("--one", choices=MODES, help=argparse.SUPPRESS)  # internal: run one mode in this process
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict]:
    a = parse(argv)
    device = a.device or ("cpu" if a.tiny else "cuda")
    if a.one:
        print(json.dumps(one(a.one, a.weights, device)), flush=True)
        return []
    if a.tiny and a.weights == Path("/tmp/zimage-bench/weights-full"):
        a.weights = Path("/tmp/zimage-bench/weights-tiny")
    ensure_weights(a.weights, a.tiny)
    warm_page_cache(a.weights)
    # fp8 tensor cores; pinned staging and its variants are for GPUs only
    gpu_only = ("fp8", "-pageable", "-mmap", "-16", "staging-check")
    modes = a.modes or [m for m in MODES if device.startswith("cuda") or not m.endswith(gpu_only)]
    rows = []
    for mode in modes:
        cmd = [sys.executable, __file__, "--one", mode, "--weights", str(a.weights), "--device", device]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            row = {"mode": mode, "error": done.stderr.strip().splitlines()[-1:]}
        else:
            row = json.loads(done.stdout.strip().splitlines()[-1])
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


if __name__ == "__main__":
    main()
