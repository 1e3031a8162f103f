"""Throughput, latency and VRAM through one MCP endpoint with 1 and N Ray Serve replicas (issues 18, 19).

    python benchmarks/bench_scale.py --tiny --clients 2 --requests 1            # CPU smoke run, local Ray
    python benchmarks/bench_scale.py --tiny --mix --replicas 2 --clients 4      # CPU smoke run of the mix
    python benchmarks/bench_scale.py --replicas 1 2 --clients 16 --json scale.json   # a 2-GPU host
    python benchmarks/bench_scale.py --mix --replicas 2 --clients 16 --json mix.json # same host, second call
    bash benchmarks/run_scale_gpu.sh                                            # both, as the device runs them

Weights: full-size random components written with diffusers' ``save_pretrained`` by bench_server's builder
(``--weights DIR``, built when it holds no ``model_index.json``, reused after); ``--tiny`` writes the tiny
presets the same way and runs on the CPU. For each replica count a registry file points ``z-image-turbo`` and
``z-image-base`` at that folder, carries a ``[runtime]`` table (one compile cache for every run) and a
``[ray]`` table with ``min = max = N``; ``zimage-mcp serve --transport http --ray`` is started on 127.0.0.1.
The front admits ``replicas x max_ongoing_requests`` generations at once (``JobManager(max_concurrent=)``),
so N replicas can beat one.

Default run: every replica is warmed, then ``--clients`` MCP clients (one session each) make ``--requests``
Turbo ``generate_image`` calls each at ``--size``. Per replica count: images/s, p50/p95 client latency, the
per-replica counts from ``/metrics`` and the GPU memory while it ran (peak per process from ``nvidia-smi
--query-compute-apps``, the Ray replica processes named by their command line, and peak device-wide per GPU);
then the ratio N/1 (issue 19's goal: >= 1.9 for 2 replicas).

``--mix``: two LoRAs for the model's shapes (diffusers/PEFT keys ``transformer.layers.I.attention.to_q.lora_A
.weight``) in a LoRA folder the registry's ``[loras] dir`` names, and four routing keys: Turbo, Turbo+lora-a,
Base, Base+lora-b. Phase ``mixed``: the clients send the keys interleaved (throughput, latency per key,
per-replica counts). Phase ``per_key``: each key alone, ``--probe`` calls at ``replicas`` in flight, the
``/metrics`` counts before and after: which replica each routing key went to.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import httpx2
from mcp import Client

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_server import ensure_weights  # noqa: E402  (full-size random weights, diffusers layout)

MIX_KEYS = (
    ("z-image-turbo", None),
    ("z-image-turbo", "lora-a"),
    ("z-image-base", None),
    ("z-image-base", "lora-b"),
)


def emit(row: dict) -> dict:
    print(json.dumps(row), flush=True)
    return row


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    s = sorted(values)
    pos = (len(s) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def latency_ms(values: list[float]) -> dict[str, float]:
    return {"p50_ms": round(percentile(values, 50) * 1000, 1), "p95_ms": round(percentile(values, 95) * 1000, 1)}


# -- LoRAs -----------------------------------------------------------------------------------------------


def write_loras(weights: Path, folder: Path, rank: int = 16) -> list[str]:
    """Two random LoRAs on every main layer's attention projections, shaped from ``transformer/config.json``."""
    import torch
    from safetensors.torch import save_file

    cfg = json.loads((weights / "transformer" / "config.json").read_text())
    dim, layers = int(cfg["dim"]), int(cfg["n_layers"])
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for seed, name in enumerate(("lora-a", "lora-b"), start=1):
        gen = torch.Generator().manual_seed(seed)
        sd = {}
        for i in range(layers):
            for t in ("to_q", "to_k", "to_v", "to_out.0"):
                key = f"transformer.layers.{i}.attention.{t}"
                sd[f"{key}.lora_A.weight"] = (torch.randn(rank, dim, generator=gen) * dim**-0.5).to(torch.bfloat16)
                sd[f"{key}.lora_B.weight"] = (torch.randn(dim, rank, generator=gen) * 0.01).to(torch.bfloat16)
        save_file(sd, str(folder / f"{name}.safetensors"))
        names.append(name)
    return names


# -- the server ------------------------------------------------------------------------------------------


def registry_text(a: argparse.Namespace, replicas: int) -> str:
    lines = []
    for variant in ("z-image-turbo", "z-image-base"):
        lines += [f"[variants.{variant}.weights]", f"path = {json.dumps(a.weights.as_posix())}", ""]
    lines += ["[loras]", f"dir = {json.dumps((a.workdir / 'loras').as_posix())}", ""]
    lines += [
        "[runtime]",
        f'dtype = "{"float32" if a.tiny else "bfloat16"}"',
        f"compile_cache = {json.dumps((a.workdir / 'compile-cache').as_posix())}",
        "idle_unload_seconds = 0",
        f"job_timeout_seconds = {a.request_timeout}",
        "",
        "[ray]",
        f"min_replicas = {replicas}",
        f"max_replicas = {replicas}",
        "max_ongoing_requests = 1",
        f"max_models_per_replica = {len(MIX_KEYS) if a.mix else 2}",
        f"num_cpus = {0.5 if a.tiny else 1}",
        "",
    ]
    return "\n".join(lines)


def start(a: argparse.Namespace, replicas: int) -> subprocess.Popen[bytes]:
    registry = a.workdir / f"registry-{replicas}.toml"
    registry.write_text(registry_text(a, replicas))
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZIMAGE_MCP_") and k != "TORCHINDUCTOR_CACHE_DIR"}
    env.update(
        ZIMAGE_MCP_REGISTRY=str(registry),
        ZIMAGE_MCP_OUTPUT_DIR=str(a.workdir / f"out-{replicas}"),
        ZIMAGE_MCP_DEVICE="cpu" if a.tiny else "auto",
        ZIMAGE_MCP_LOG_LEVEL="WARNING",
        PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "plugins"), os.environ.get("PYTHONPATH", "")]),
    )
    cmd = [sys.executable, "-m", "zimage_mcp", "serve", "--transport", "http", "--port", str(a.port), "--ray"]
    log = (a.workdir / f"server-{replicas}.log").open("wb")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    deadline = time.monotonic() + a.start_timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited ({proc.returncode}); see {log.name}")
        try:
            httpx2.get(f"http://127.0.0.1:{a.port}/metrics", timeout=1)
            return proc
        except httpx2.HTTPError:
            time.sleep(0.5)
    stop(proc)
    raise RuntimeError(f"server did not start within {a.start_timeout} s; see {log.name}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=90)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=30)


def per_replica(port: int) -> dict[str, int]:
    text = httpx2.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    found = re.findall(r'zimage_replica_generation_seconds_count\{replica="([^"]*)"\} (\d+)', text)
    return {replica: int(n) for replica, n in found}


def delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {r: n - before.get(r, 0) for r, n in after.items() if n - before.get(r, 0)}


# -- clients ---------------------------------------------------------------------------------------------


def call_args(a: argparse.Namespace, key: tuple[str, str | None], n: int, k: int) -> dict[str, Any]:
    model, lora = key
    args: dict[str, Any] = {
        "prompt": f"a lighthouse on a cliff at dusk, view {n}-{k}",
        "model": model,
        "seed": 1000 * n + k,
        "width": a.size,
        "height": a.size,
        "preview": "none",
    }
    steps = a.base_steps if model == "z-image-base" else a.steps
    if steps:
        args["steps"] = steps
    if lora:
        args["loras"] = [{"name": lora, "scale": 0.8}]
    return args


async def run_clients(
    a: argparse.Namespace, clients: int, requests: int, keys: list[tuple[str, str | None]]
) -> tuple[float, list[dict]]:
    """``clients`` sessions, ``requests`` calls each; client ``n``'s call ``k`` uses key ``(n + k) % len(keys)``."""
    url = f"http://127.0.0.1:{a.port}/mcp"
    results: list[dict] = []

    async def one(n: int) -> None:
        async with Client(url, read_timeout_seconds=a.request_timeout) as client:
            for k in range(requests):
                key = keys[(n + k) % len(keys)]
                t = time.perf_counter()
                res = await client.call_tool("generate_image", call_args(a, key, n, k))
                wall = time.perf_counter() - t
                if res.is_error:
                    raise RuntimeError(f"generate_image {key} failed: {res.content}")
                timings = (res.structured_content or {}).get("timings", {})
                results.append({"key": "+".join(x for x in key if x), "wall_s": wall, "timings": timings})

    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for n in range(clients):
            tg.start_soon(one, n)
    return time.perf_counter() - started, results


# -- GPU memory ------------------------------------------------------------------------------------------


def _smi(query: str, what: str) -> list[list[str]]:
    out = subprocess.run(
        ["nvidia-smi", f"--query-{query}={what}", "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        timeout=10,
    )
    return [[c.strip() for c in line.split(",")] for line in out.stdout.splitlines() if line.strip()]


def _process_name(pid: int) -> str:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"
    return "replica" if "ServeReplica" in cmd else cmd[:80]


class VramSampler:
    """Peak GPU memory per process (MiB, by pid) and per GPU while the block runs; empty without nvidia-smi."""

    def __init__(self, period: float = 0.5) -> None:
        self.period = period
        self.enabled = shutil.which("nvidia-smi") is not None
        self.per_pid: dict[int, dict[str, Any]] = {}
        self.per_gpu: dict[str, float] = {}
        self._stop = threading.Event()

    def sample(self) -> None:
        gpus = _smi("gpu", "index,uuid,memory.used")
        index = {uuid: idx for idx, uuid, _ in gpus}
        for idx, _, used in gpus:
            self.per_gpu[idx] = max(self.per_gpu.get(idx, 0.0), float(used))
        for pid, uuid, used in _smi("compute-apps", "pid,gpu_uuid,used_memory"):
            if not pid.isdigit():
                continue
            try:
                mib = float(used)
            except ValueError:  # "[N/A]" in some containers: the per-GPU numbers stand
                continue
            row = self.per_pid.setdefault(int(pid), {"gpu": index.get(uuid, uuid), "peak_mib": 0.0})
            row["peak_mib"] = max(row["peak_mib"], mib)

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            try:
                self.sample()
            except (OSError, subprocess.SubprocessError, ValueError):
                pass

    def __enter__(self) -> VramSampler:
        if self.enabled:
            self.sample()
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self._stop.set()
            self._thread.join(timeout=15)

    def report(self) -> dict[str, Any]:
        if not self.enabled:
            return {"skipped": "no nvidia-smi"}
        processes = [
            {"pid": pid, "gpu": row["gpu"], "what": _process_name(pid), "peak_mib": row["peak_mib"]}
            for pid, row in sorted(self.per_pid.items())
        ]
        replicas = [p for p in processes if p["what"] == "replica"]
        return {
            "per_replica_peak_mib": [p["peak_mib"] for p in replicas],
            "per_process": processes,
            "per_gpu_peak_mib": self.per_gpu,
        }


# -- one server, one replica count -----------------------------------------------------------------------


async def measure(a: argparse.Namespace, replicas: int) -> dict[str, Any]:
    keys = list(MIX_KEYS) if a.mix else [MIX_KEYS[0]]
    row: dict[str, Any] = {"section": "mix" if a.mix else "scale", "replicas": replicas}
    t = time.perf_counter()
    proc = await anyio.to_thread.run_sync(start, a, replicas)
    row["server_start_s"] = round(time.perf_counter() - t, 1)
    try:
        with VramSampler() as vram:
            # warm-up: every replica loads (and compiles) what it will be asked for
            t = time.perf_counter()
            await run_clients(a, replicas * len(keys), 1, keys)
            row["warmup_s"] = round(time.perf_counter() - t, 1)
            before = per_replica(a.port)
            seconds, results = await run_clients(a, a.clients, a.requests, keys)
            images = len(results)
            row |= {"clients": a.clients, "images": images, "seconds": round(seconds, 2)}
            row["images_per_s"] = round(images / seconds, 3)
            row |= latency_ms([r["wall_s"] for r in results])
            row["per_replica"] = delta(per_replica(a.port), before)
            if a.mix:
                row["per_key"] = {}
                for key in dict.fromkeys(r["key"] for r in results):
                    mine = [r for r in results if r["key"] == key]
                    loads = sum(1 for r in mine if r["timings"].get("load", 0) > 500)
                    row["per_key"][key] = {"images": len(mine), **latency_ms([r["wall_s"] for r in mine])}
                    row["per_key"][key]["loads_over_500ms"] = loads
                row["routing"] = {}
                for key in keys:  # each key alone: which replicas it reaches
                    before = per_replica(a.port)
                    await run_clients(a, replicas, max(1, a.probe // replicas), [key])
                    row["routing"]["+".join(x for x in key if x)] = delta(per_replica(a.port), before)
        row["vram"] = vram.report()
    finally:
        await anyio.to_thread.run_sync(stop, proc)
    return emit(row)


async def run(a: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"setup": emit({"setup": {**ensure_weights(a.weights, a.tiny, a.build_timeout)}})}
    out["setup"]["setup"] |= {
        "size": a.size,
        "steps": a.steps,
        "base_steps": a.base_steps,
        "clients": a.clients,
        "requests": a.requests,
        "mix": a.mix,
    }
    if a.mix:
        out["setup"]["setup"]["loras"] = write_loras(a.weights, a.workdir / "loras", rank=4 if a.tiny else 16)
    else:
        (a.workdir / "loras").mkdir(parents=True, exist_ok=True)
    out["runs"] = [await measure(a, n) for n in a.replicas]
    one = next((r for r in out["runs"] if r["replicas"] == 1), None)
    if one:
        out["ratios"] = [
            emit(
                {
                    "section": "ratio",
                    "replicas": r["replicas"],
                    "throughput_over_1": round(r["images_per_s"] / one["images_per_s"], 3),
                    "goal": round(0.95 * r["replicas"], 2),
                }
            )
            for r in out["runs"]
            if r["replicas"] != 1
        ]
    return out


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    tmp = Path(tempfile.gettempdir()) / "zimage-bench"
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny presets on the CPU (smoke run)")
    ap.add_argument("--weights", type=Path, help="weights folder, built if missing (default $TMPDIR/zimage-bench/…)")
    ap.add_argument("--workdir", type=Path, help="registries, LoRAs, outputs, compile cache, server logs")
    ap.add_argument("--replicas", type=int, nargs="+", default=None, help="default 1 2; --mix: 2")
    ap.add_argument("--clients", type=int, default=16, help="concurrent MCP sessions")
    ap.add_argument("--requests", type=int, default=2, help="calls per client")
    ap.add_argument("--mix", action="store_true", help="Turbo/Base x LoRAs, routing per key")
    ap.add_argument("--probe", type=int, default=4, help="--mix: calls per key in the routing phase")
    ap.add_argument("--size", type=int, default=None, help="width = height (default 1024; tiny 256)")
    ap.add_argument("--steps", type=int, default=None, help="Turbo steps (default: the variant's 8; tiny 2)")
    ap.add_argument("--base-steps", type=int, default=None, help="Base steps (default: the variant's; tiny 2)")
    ap.add_argument("--port", type=int, default=8799)
    ap.add_argument("--request-timeout", type=float, default=600.0)
    ap.add_argument("--start-timeout", type=float, default=300.0)
    ap.add_argument("--build-timeout", type=float, default=1200.0)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    kind = "tiny" if a.tiny else "full"
    a.weights = (a.weights or tmp / f"weights-{kind}").resolve()
    a.workdir = (a.workdir or tmp / f"scale-{kind}").resolve()
    a.replicas = a.replicas or ([2] if a.mix else [1, 2])
    a.size = a.size or (256 if a.tiny else 1024)
    if a.tiny:
        a.steps = a.steps or 2
        a.base_steps = a.base_steps or 2
    return a


def main(argv: list[str] | None = None) -> dict[str, Any]:
    a = parse(argv)
    a.workdir.mkdir(parents=True, exist_ok=True)
    a.weights.parent.mkdir(parents=True, exist_ok=True)
    out = anyio.run(run, a)
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
