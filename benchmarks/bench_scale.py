"""Throughput through one MCP endpoint with 1 and N Ray Serve replicas (issue 18).

    python benchmarks/bench_scale.py --tiny                      # CPU: tiny model, local Ray, 1 and 2 replicas
    python benchmarks/bench_scale.py --weights DIR --replicas 1 8 --clients 16 --requests 4   # an 8-GPU host

For each replica count it writes a registry file with a ``[ray]`` table (``min = max = N``), starts
``zimage-mcp serve --transport http --ray`` on 127.0.0.1, waits for it, warms every replica, then runs
``--clients`` MCP clients doing ``--requests`` ``generate_image`` calls each and reports images per second
and the per-replica counts from ``/metrics``. The front admits ``JobManager``'s concurrency: until jobs.py
takes ``max_concurrent`` it serialises generations, and N replicas then cannot beat one.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio
import httpx2
from mcp import Client

REPO = Path(__file__).resolve().parents[1]


def registry_text(weights: Path, replicas: int, tiny: bool) -> str:
    size = 256 if tiny else 1024
    steps = 2 if tiny else 8
    return f"""
[variants.z-image-turbo.weights]
path = "{weights.as_posix()}"

[variants.z-image-turbo.defaults]
steps = {steps}
width = {size}
height = {size}

[ray]
min_replicas = {replicas}
max_replicas = {replicas}
max_ongoing_requests = 1
num_cpus = {0.5 if tiny else 1}
"""


def start(folder: Path, replicas: int, port: int, tiny: bool) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZIMAGE_MCP_")}
    env.update(
        ZIMAGE_MCP_REGISTRY=str(folder / f"registry-{replicas}.toml"),
        ZIMAGE_MCP_OUTPUT_DIR=str(folder / f"out-{replicas}"),
        ZIMAGE_MCP_DEVICE="cpu" if tiny else "auto",
        PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "plugins")]),
    )
    if tiny:
        env["ZIMAGE_MCP_DTYPE"] = "float32"
    cmd = [sys.executable, "-m", "zimage_mcp", "serve", "--transport", "http", "--port", str(port), "--ray"]
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, cwd=REPO)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(proc.stderr.read().decode()[-3000:] if proc.stderr else "server exited")
        try:
            httpx2.get(f"http://127.0.0.1:{port}/metrics", timeout=1)
            return proc
        except httpx2.HTTPError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError("server did not start within 300 s")


async def run_clients(url: str, clients: int, requests: int) -> float:
    async def one(n: int) -> None:
        async with Client(url, read_timeout_seconds=600) as client:
            for k in range(requests):
                result = await client.call_tool("generate_image", {"prompt": f"a lighthouse {n} {k}", "seed": k})
                assert not result.is_error, result

    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for n in range(clients):
            tg.start_soon(one, n)
    return time.perf_counter() - started


def per_replica(port: int) -> dict[str, int]:
    text = httpx2.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    found = re.findall(r'zimage_replica_generation_seconds_count\{replica="([^"]*)"\} (\d+)', text)
    return {replica: int(n) for replica, n in found}


def main() -> None:
    parser = argparse.ArgumentParser(description="MCP throughput with 1 and N Ray Serve replicas")
    parser.add_argument("--tiny", action="store_true", help="tiny random model on the CPU")
    parser.add_argument("--weights", type=Path, help="a Z-Image folder (not with --tiny)")
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--requests", type=int, default=3)
    parser.add_argument("--port", type=int, default=8799)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        weights = args.weights
        if args.tiny:
            from zimage_mcp.engine.presets.tiny import make_tiny

            weights = make_tiny(folder / "model")
        if weights is None:
            parser.error("--weights DIR or --tiny")
        for replicas in args.replicas:
            (folder / f"registry-{replicas}.toml").write_text(registry_text(weights, replicas, args.tiny))
            proc = start(folder, replicas, args.port, args.tiny)
            try:
                url = f"http://127.0.0.1:{args.port}/mcp"
                anyio.run(run_clients, url, replicas, 1)  # warm-up: every replica loads once
                seconds = anyio.run(run_clients, url, args.clients, args.requests)
                images = args.clients * args.requests
                row = {"replicas": replicas, "images": images, "seconds": round(seconds, 2)}
                row |= {"images_per_s": round(images / seconds, 3), "per_replica": per_replica(args.port)}
                print(json.dumps(row), flush=True)
                rows.append(row)
            finally:
                proc.terminate()
                proc.wait(timeout=60)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
