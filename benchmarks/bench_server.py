"""What the user sees: the real server over stdio with the official MCP SDK client (issue 17).

    python3 benchmarks/bench_server.py --weights /tmp/zimage-bench/weights-full --json out.json \\
        --sections latency engine throughput            # GPU, one 10-minute window
    python3 benchmarks/bench_server.py --weights /tmp/zimage-bench/weights-full --json out2.json \\
        --sections first_image memory                   # GPU, a second window
    python3 benchmarks/bench_server.py --tiny           # CPU smoke run (tests/test_benchmarks_smoke.py)

Weights: full-size random components (``components.build``) written once with diffusers' own
``save_pretrained`` to ``--weights`` (reused when it holds a ``model_index.json``); ``--tiny`` writes the tiny
presets the same way and runs on the CPU. A user registry file points ``z-image-turbo`` and ``z-image-base`` at
that folder and carries a ``[runtime]`` table; ``python -m zimage_mcp serve`` is started over stdio by
``mcp.Client(StdioServerParameters(...))``.

Sections: ``latency`` (client wall time per size x output_format x preview, median of --runs after warm-up,
each after --pause seconds of idle GPU, plus the server's own ``timings``), ``throughput`` (--concurrency
in-flight calls on one session, --images in all), ``engine`` (``load_pipeline`` + ``pipe.generate`` on the same
folder, settings, prompts, seeds, each timed run after the same pause, then the same runs back to back for the
throughput's rate; in a child process so this one never holds GPU memory), ``first_image`` (process start to
the first result, an empty compile cache and then the same cache in a new process; plus the time to the
``initialize`` reply), ``memory``
(device-wide peak ``memory.used`` sampled every 50 ms during load + one Base/CFG generation at 1024^2, one fresh
server per mode; skipped on the CPU). One JSON line per measurement, a short table last, everything in --json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# With benchmarks/request_trace on the server's PYTHONPATH, where each call's time goes (its sitecustomize)
REQUEST_TRACE = os.environ.get("ZIMAGE_BENCH_REQUEST_TRACE")
SECTIONS = ("latency", "throughput", "engine", "first_image", "memory")
PROMPT = "A cinematic photo of a {} standing in fresh snow at golden hour, soft rim light, highly detailed"
NEGATIVE = "blurry, low quality, watermark"
SUBJECTS = (
    "fox",
    "cat",
    "dog",
    "owl",
    "wolf",
    "bear",
    "deer",
    "horse",
    "rabbit",
    "lion",
    "tiger",
    "goat",
    "duck",
    "swan",
    "crow",
    "seal",
    "hare",
    "lynx",
    "mole",
    "frog",
)
MEMORY_MODES = {
    "default": {},
    "offload_te": {"offload_text_encoder": True},
    "offload_te+fp8": {"offload_text_encoder": True, "fp8": True},
    # an 8 GB card: the allocator capped at 7.2 GiB, as the CUDA context and kernels take ~0.8 GiB beside it
    "offload_te+fp8 capped 7.2 GiB": {"offload_text_encoder": True, "fp8": True, "test_gpu_memory_gb": 7.2},
}


def emit(row: dict) -> dict:
    print(json.dumps(row), flush=True)
    return row


def median_ms(values: list[float]) -> float:
    return round(statistics.median(values) * 1000, 2)


# -- weights ---------------------------------------------------------------------------------------------


def ensure_weights(folder: Path, tiny: bool, timeout: float) -> dict:
    """Write random full-size (or tiny) weights with diffusers' save_pretrained once; reuse them after."""
    if (folder / "model_index.json").is_file():
        return {"weights": str(folder), "built": False}
    t = time.perf_counter()
    child("build", ["--weights", str(folder), *(["--tiny"] if tiny else [])], timeout)
    return {"weights": str(folder), "built": True, "build_s": round(time.perf_counter() - t, 1)}


def build_weights(folder: Path, tiny: bool) -> dict:
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from components import build

    dev = "cpu" if tiny else "cuda"
    c = build(tiny, dev, torch.float32 if tiny else torch.bfloat16)
    part = folder.with_name(folder.name + ".partial")
    c.ref.save_pretrained(str(part))  # diffusers' own layout: model_index.json, transformer/, vae/, text_encoder/, ...
    part.rename(folder)
    return {"weights": str(folder)}


# -- child processes (weights, engine) -------------------------------------------------------------------


def child(task: str, args: list[str], timeout: float, env: dict[str, str] | None = None) -> dict:
    """Run this script as ``--_child TASK`` (bounded, killed on time-out); its last stdout line is JSON."""
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--_child", task, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env or base_env(),
    )
    if proc.returncode != 0:
        raise RuntimeError(f"child {task} failed ({proc.returncode}): {proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def base_env(**extra: str) -> dict[str, str]:
    """This environment without ZIMAGE_MCP_* and TORCHINDUCTOR_CACHE_DIR (the [runtime] table decides)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZIMAGE_MCP_") and k != "TORCHINDUCTOR_CACHE_DIR"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "plugins"), os.environ.get("PYTHONPATH", "")])
    env.update(extra)
    return env


def engine_run(a: argparse.Namespace) -> dict:
    """The engine alone, the server's way: ``load_pipeline`` with its default optimize, same prompts and seeds."""
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(a.compile_cache)  # as the server's [runtime] compile_cache does
    import io

    import torch

    from zimage_mcp.engine import load_pipeline

    dev = torch.device(a.device)
    dtype = torch.float32 if dev.type == "cpu" else getattr(torch, a.dtype)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    t = time.perf_counter()
    pipe = load_pipeline(a.weights, device=dev, dtype=dtype, optimize_mode=a.optimize)
    sync()
    out: dict[str, Any] = {"load_s": round(time.perf_counter() - t, 3), "rows": []}
    prompts = json.loads(a.prompts)
    with torch.inference_mode():
        for size in a.sizes:
            w, h = (int(v) for v in size.split("x"))

            def gen(i: int, w: int = w, h: int = h) -> Any:
                return pipe.generate(prompts[i % len(prompts)], width=w, height=h, steps=a.steps, guidance=0.0, seed=i)

            t = time.perf_counter()
            for i in range(a.warmup):
                gen(i)
            sync()
            warm_s = time.perf_counter() - t
            walls, pngs, timings = [], [], []
            for i in range(a.runs):
                time.sleep(a.pause)  # the GPU idles as long before each timed server request (see --pause)
                t = time.perf_counter()
                res = gen(a.warmup + i)
                sync()
                walls.append(time.perf_counter() - t)
                t = time.perf_counter()
                res.images[0].save(io.BytesIO(), format="PNG")
                pngs.append(time.perf_counter() - t)
                timings.append(res.timings)
            # Back to back, as the 4-client throughput keeps the GPU: the rate that one is compared with.
            t = time.perf_counter()
            for i in range(a.runs):
                gen(a.warmup + i)
            sync()
            back_to_back = (time.perf_counter() - t) / a.runs
            out["rows"].append(
                {
                    "size": size,
                    "runs": a.runs,
                    "warmup_s": round(warm_s, 3),
                    "engine_ms": median_ms(walls),
                    "engine_ms_all": [round(x * 1000, 2) for x in walls],
                    "png_encode_ms": median_ms(pngs),
                    "engine_timings_ms": {k: median_ms([tm[k] for tm in timings if k in tm]) for k in timings[0]},
                    "pause_s": a.pause,
                    "back_to_back_ms": round(back_to_back * 1000, 2),
                }
            )
    return out


# -- the server ------------------------------------------------------------------------------------------


def write_registry(path: Path, weights: Path, runtime: dict[str, Any]) -> Path:
    def toml(v: Any) -> str:
        return ("true" if v else "false") if isinstance(v, bool) else json.dumps(str(v) if isinstance(v, Path) else v)

    lines = []
    for variant in ("z-image-turbo", "z-image-base"):
        lines += [f"[variants.{variant}.weights]", f"path = {toml(weights.as_posix())}", ""]
    lines += ["[runtime]", *(f"{k} = {toml(v)}" for k, v in runtime.items()), ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    return path


def reap_servers() -> None:
    """Safety net after each session: SIGKILL any ``zimage_mcp serve`` child of this process still alive."""
    for children in Path(f"/proc/{os.getpid()}/task").glob("*/children"):
        try:
            pids = [int(p) for p in children.read_text().split()]
        except OSError:
            continue
        for pid in pids:
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"zimage_mcp" in cmd and b"serve" in cmd:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


class Server:
    """One real server process over stdio, opened with the SDK client; ``open_s`` is the initialize reply."""

    def __init__(self, a: argparse.Namespace, registry: Path, log_name: str = "") -> None:
        from mcp import Client, StdioServerParameters

        env = base_env(
            ZIMAGE_MCP_REGISTRY=str(registry),
            ZIMAGE_MCP_OUTPUT_DIR=str(a.workdir / "out"),
            ZIMAGE_MCP_DEVICE=a.device,
            ZIMAGE_MCP_LOG_LEVEL="WARNING",
        )
        if a.server_log and log_name:  # the server's own account (load phases, compile cache) at INFO
            a.server_log.mkdir(parents=True, exist_ok=True)
            env.update(ZIMAGE_MCP_LOG_LEVEL="INFO", ZIMAGE_MCP_LOG_FILE=str(a.server_log / f"{log_name}.log"))
        params = StdioServerParameters(
            command=sys.executable, args=["-m", "zimage_mcp", "serve"], env=env, cwd=str(REPO)
        )
        self.client = Client(params, read_timeout_seconds=a.request_timeout)
        self.a = a

    async def __aenter__(self) -> Server:
        self.t0 = time.perf_counter()
        await self.client.__aenter__()
        self.open_s = time.perf_counter() - self.t0
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            await self.client.__aexit__(*exc)
        finally:
            reap_servers()

    async def until_compiled(self, variant: str = "z-image-turbo") -> float:
        """Wait while the server compiles, in idle time, what requests ran eagerly; the seconds waited."""
        import anyio

        t = time.perf_counter()
        while True:
            models = (await self.client.call_tool("list_models", {})).structured_content or {}
            row = next((v for v in models.get("variants", []) if v["id"] == variant), {})
            if not row.get("compiling"):
                return time.perf_counter() - t
            await anyio.sleep(0.25)

    async def generate(
        self, prompt: str, size: str, seed: int, output_format: str = "png", preview: str = "none", **extra: Any
    ) -> dict:
        w, h = (int(v) for v in size.split("x"))
        args = {
            "prompt": prompt,
            "width": w,
            "height": h,
            "seed": seed,
            "output_format": output_format,
            "preview": preview,
            **extra,
        }
        args.setdefault("steps", self.a.steps)
        notes = []

        async def progress(done: float, total: float | None, message: str | None) -> None:
            notes.append(done)

        offset = trace_mark("client_send")
        t = time.perf_counter()
        res = await self.client.call_tool(
            "generate_image", args, progress_callback=progress if self.a.progress else None
        )
        wall = time.perf_counter() - t
        trace_mark("client_recv")
        if res.is_error:
            raise RuntimeError(f"generate_image failed: {res.content}")
        sc = res.structured_content or {}
        inline = sum(len(getattr(b, "data", "") or "") for b in res.content if getattr(b, "type", "") == "image")
        return {
            "wall_s": wall,
            "since_start_s": time.perf_counter() - self.t0,
            "timings": sc.get("timings", {}),
            "queue_wait_s": sc.get("queue_wait_seconds"),
            "submitted_at": sc.get("submitted_at"),
            "started_at": sc.get("started_at"),
            "size_bytes": sc["images"][0]["size_bytes"],
            "preview_b64_bytes": inline,
            "progress_notifications": len(notes),
            **({"trace_offset": offset} if REQUEST_TRACE else {}),
        }


def trace_mark(name: str) -> int:
    """Mark ``name`` in the request trace (when one is on); the file's size before the mark (where it starts)."""
    if not REQUEST_TRACE:
        return 0
    from request_trace.sitecustomize import mark

    offset = Path(REQUEST_TRACE).stat().st_size if Path(REQUEST_TRACE).exists() else 0
    mark(name)
    return offset


def runtime_table(a: argparse.Namespace, compile_cache: Path, **extra: Any) -> dict[str, Any]:
    return {
        "optimize": a.optimize,
        "dtype": "float32" if a.tiny else a.dtype,
        "compile_cache": compile_cache,
        "idle_unload_seconds": 0,
        "job_timeout_seconds": a.request_timeout,
        **extra,
    }


def runtime_value(item: str) -> tuple[str, Any]:
    """``KEY=VALUE`` from the command line as a [runtime] entry: true/false, an int, a float, else text."""
    key, _, raw = item.partition("=")
    if raw in ("true", "false"):
        return key, raw == "true"
    for kind in (int, float):
        try:
            return key, kind(raw)
        except ValueError:
            pass
    return key, raw


def timings_ms(results: list[dict]) -> dict[str, float]:
    keys = dict.fromkeys(k for r in results for k in r["timings"])
    return {k: median_ms([r["timings"][k] for r in results if k in r["timings"]]) for k in keys}


class Prompts:
    def __init__(self, prompts: list[str]) -> None:
        self.prompts, self.i = prompts, 0

    def next(self) -> tuple[str, int]:
        self.i += 1
        return self.prompts[(self.i - 1) % len(self.prompts)], self.i - 1


async def latency(srv: Server, a: argparse.Namespace, prompts: list[str]) -> list[dict]:
    import anyio

    rows = []
    for size in a.sizes:
        # the same prompt/seed sequence as the engine section: warm-up i = 0..warmup-1, then runs
        for i in range(a.warmup):
            await srv.generate(prompts[i % len(prompts)], size, i)
        await srv.until_compiled()  # the warm-up ran new shapes eagerly; the server compiles them when idle
        await srv.generate(prompts[0], size, 0)
        k = a.warmup
        for fmt in a.formats:
            for preview in a.previews:
                rs = []
                for _ in range(a.runs):
                    await anyio.sleep(a.pause)  # as the engine section idles before each timed run
                    rs.append(await srv.generate(prompts[k % len(prompts)], size, k, fmt, preview))
                    k += 1
                rows.append(
                    emit(
                        {
                            "section": "latency",
                            "size": size,
                            "output_format": fmt,
                            "preview": preview,
                            "runs": len(rs),
                            "client_ms": median_ms([r["wall_s"] for r in rs]),
                            "client_ms_all": [round(r["wall_s"] * 1000, 2) for r in rs],
                            "server_timings_ms": timings_ms(rs),
                            "server_gpu_ms_all": [round(r["timings"].get("gpu", 0) * 1000, 1) for r in rs],
                            "server_denoise_ms_all": [round(r["timings"].get("denoise", 0) * 1000, 1) for r in rs],
                            "size_bytes": int(statistics.median(r["size_bytes"] for r in rs)),
                            "preview_b64_bytes": int(statistics.median(r["preview_b64_bytes"] for r in rs)),
                            "progress_notifications": int(statistics.median(r["progress_notifications"] for r in rs)),
                            **traced_hops(rs),
                        }
                    )
                )
    return rows


def traced_hops(results: list[dict]) -> dict[str, Any]:
    """The median of each hop between the request trace's marks, when the trace is on (calls one at a time)."""
    if not REQUEST_TRACE:
        return {}
    from request_trace.spans import call_marks, hops_ms, median_hops

    trace = Path(REQUEST_TRACE).read_bytes()  # once the row's calls are over: marks written late are in
    calls = [hops_ms(call_marks(trace, r["trace_offset"])) for r in results]
    return {"server_hops_ms": median_hops(calls), "server_hops_ms_all": calls}


def gpu_timeline(results: list[dict]) -> dict:
    """Where the GPU idled between jobs: each job holds it from ``started_at`` for ``timings.gpu`` seconds.

    A gap while another job had already been submitted is time the server lost; a gap with nobody waiting is
    the clients' own round trip."""
    jobs = sorted(
        (r["started_at"], r["started_at"] + r["timings"]["gpu"], r["submitted_at"])
        for r in results
        if r.get("started_at") is not None and "gpu" in r["timings"]
    )
    gaps, lost = [], []
    for (_, end, _), (start, _, submitted) in zip(jobs, jobs[1:], strict=False):
        gaps.append(round((start - end) * 1000, 2))
        if submitted < end:  # the next job was already waiting when the GPU came free
            lost.append(round((start - end) * 1000, 2))
    span = jobs[-1][1] - jobs[0][0] if jobs else 0.0
    busy = sum(e - s for s, e, _ in jobs)
    return {
        "gpu_ms_all": [round((e - s) * 1000, 1) for s, e, _ in jobs],
        "gpu_busy_fraction": round(busy / span, 4) if span else None,
        "span_images_per_s": round(len(jobs) / span, 3) if span else None,
        "gap_ms_all": gaps,
        "gap_ms_with_a_job_waiting": lost,
    }


async def throughput(srv: Server, a: argparse.Namespace, prompts: list[str]) -> dict:
    import anyio

    size = a.sizes[0]
    sem = anyio.Semaphore(a.concurrency)
    results: list[dict] = []

    async def one(i: int, keep: bool) -> None:
        async with sem:
            r = await srv.generate(prompts[i % len(prompts)], size, 1000 + i, "png", "thumbnail")
            if keep:
                results.append(r)

    # Warm up in flight too: every prompt once, concurrently, so nothing left to compile lands in the timed part.
    async with anyio.create_task_group() as tg:
        for i in range(max(a.warmup, len(prompts))):
            tg.start_soon(one, i, False)
    await srv.until_compiled()
    async with anyio.create_task_group() as tg:  # once more, compiled
        for i in range(a.concurrency):
            tg.start_soon(one, i, False)
    t = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for i in range(a.images):
            tg.start_soon(one, i, True)
    wall = time.perf_counter() - t
    return emit(
        {
            "section": "throughput",
            "size": size,
            "concurrency": a.concurrency,
            "images": len(results),
            "output_format": "png",
            "preview": "thumbnail",
            "wall_s": round(wall, 3),
            "images_per_s": round(len(results) / wall, 3),
            "per_image_ms": round(wall / len(results) * 1000, 2),
            "client_ms_median": median_ms([r["wall_s"] for r in results]),
            "queue_wait_ms_median": median_ms([r["queue_wait_s"] or 0.0 for r in results]),
            "server_timings_ms": timings_ms(results),
            **gpu_timeline(results),
        }
    )


async def first_image(a: argparse.Namespace, prompts: list[str]) -> dict:
    import anyio

    cache = a.workdir / f"compile-cold-{time.strftime('%Y%m%d-%H%M%S')}"  # empty: a cold start
    reg = write_registry(a.workdir / "registry-first.toml", a.weights, runtime_table(a, cache))
    out: dict[str, Any] = {"section": "first_image", "size": a.sizes[0], "compile_cache": str(cache)}
    for label in ("cold", "warm"):  # warm: the same cache, a new server process
        with anyio.fail_after(a.section_timeout):
            async with Server(a, reg, f"first_image_{label}") as srv:
                r = await srv.generate(prompts[0], a.sizes[0], 0)
                if not a.first_only:  # then what the server compiles in idle time, and the next image, compiled
                    compiled_s = await srv.until_compiled()
                    r2 = await srv.generate(prompts[0], a.sizes[0], 1)
        out[label] = {
            "initialize_s": round(srv.open_s, 3),
            "first_image_s": round(r["since_start_s"], 3),
            "call_s": round(r["wall_s"], 3),
            "server_timings_ms": timings_ms([r]),
        }
        if not a.first_only:
            out[label].update(
                background_compile_s=round(compiled_s, 3),
                second_call_s=round(r2["wall_s"], 3),
                second_server_timings_ms=timings_ms([r2]),
            )
    # More restarts with the cache kept, for the spread of the figure the goal is about; each server is closed
    # once its first image is back (its idle-time compilation is cut short).
    runs = []
    for i in range(a.restarts):
        with anyio.fail_after(a.section_timeout):
            async with Server(a, reg, f"first_image_restart_{i}") as srv:
                r = await srv.generate(prompts[0], a.sizes[0], 0)
        runs.append(
            {
                "initialize_s": round(srv.open_s, 3),
                "first_image_s": round(r["since_start_s"], 3),
                "server_timings_ms": timings_ms([r]),
            }
        )
    if runs:
        firsts = sorted([out["warm"]["first_image_s"], *(r["first_image_s"] for r in runs)])
        out["restarts"] = {
            "runs": runs,
            "warm_first_image_s_all": firsts,
            "warm_first_image_s_median": statistics.median(firsts),
        }
    return emit(out)


class Sampler:
    """Device-wide ``memory.used`` (MiB) every ``period`` s: NVML when pynvml is importable, else nvidia-smi -lms."""

    def __init__(self, gpu: int, period: float = 0.05) -> None:
        self.gpu, self.period = gpu, period
        self.samples: list[float] = []
        self.times: list[float] = []  # perf_counter of each sample, to split the peak by phase
        self._stop = threading.Event()
        self._proc: subprocess.Popen[str] | None = None
        self.source = "nvml"
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(gpu)
            self._read: Callable[[], float] | None = lambda: pynvml.nvmlDeviceGetMemoryInfo(handle).used / 2**20
        except Exception:  # noqa: BLE001 - no NVML bindings: fall back to the CLI
            self._read, self.source = None, "nvidia-smi"

    def once(self) -> float:
        if self._read is not None:
            return self._read()
        out = subprocess.run(
            ["nvidia-smi", "-i", str(self.gpu), "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        return float(out.stdout.split()[0])

    def __enter__(self) -> Sampler:
        if self._read is None:
            self._proc = subprocess.Popen(
                [
                    "nvidia-smi",
                    "-i",
                    str(self.gpu),
                    "--query-gpu=memory.used",
                    "--format=csv,noheader,nounits",
                    f"--loop-ms={int(self.period * 1000)}",
                ],
                stdout=subprocess.PIPE,
                text=True,
            )
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        if self._proc is not None and self._proc.stdout is not None:
            for line in self._proc.stdout:
                if line.strip():
                    self.times.append(time.perf_counter())
                    self.samples.append(float(line.split()[0]))
            return
        while not self._stop.is_set():
            self.times.append(time.perf_counter())
            self.samples.append(self._read())  # type: ignore[misc]
            time.sleep(self.period)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait(timeout=10)
        self._thread.join(timeout=10)

    def phase_peaks(self, marks: list[tuple[str, float]]) -> dict[str, float]:
        """The peak (MiB) in each phase; ``marks`` are (phase, its end) in order, the first from the start."""
        peaks: dict[str, float] = {}
        start = float("-inf")
        for name, end in marks:
            inside = [m for t, m in zip(self.times, self.samples, strict=True) if start <= t <= end]
            peaks[name] = max(inside, default=float("nan"))
            start = end
        return peaks


async def memory(a: argparse.Namespace, prompts: list[str], cache: Path) -> list[dict]:
    import anyio

    if a.tiny:
        return [emit({"section": "memory", "skipped": "CPU run (--tiny): no device memory to sample"})]
    rows = []
    for mode, extra in MEMORY_MODES.items():
        if a.memory_modes and mode not in a.memory_modes:
            continue
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", mode)  # a file name: "offload_te+fp8 capped 7.2 GiB" has + and spaces
        reg = write_registry(
            a.workdir / f"registry-mem-{slug}.toml",
            a.weights,
            runtime_table(a, cache, **extra),
        )
        sampler = Sampler(a.gpu_index)
        baseline = sampler.once()
        row: dict[str, Any] = {
            "section": "memory",
            "mode": mode,
            "runtime": extra,
            "model": "z-image-base",
            "size": "1024x1024",
            "steps": a.memory_steps,
            "guidance": 4.0,
            "sampler": sampler.source,
            "baseline_mib": baseline,
        }
        try:
            with sampler, anyio.fail_after(a.section_timeout):
                async with Server(a, reg, f"memory_{slug}") as srv:  # its log: the allocator's high-water marks
                    kwargs = dict(model="z-image-base", steps=a.memory_steps, guidance=4.0, negative_prompt=NEGATIVE)
                    r = await srv.generate(prompts[0], "1024x1024", 0, **kwargs)
                    marks = [("load_and_first_image", time.perf_counter())]
                    # the peak covers the compiled path too: the idle-time compilation, then an image through it
                    await srv.until_compiled("z-image-base")
                    marks.append(("idle_time_compilation", time.perf_counter()))
                    await srv.generate(prompts[0], "1024x1024", 1, **kwargs)
                    marks.append(("compiled_image", time.perf_counter()))
            row.update(
                peak_mib=max(sampler.samples),
                peak_over_baseline_gib=round((max(sampler.samples) - baseline) / 1024, 2),
                phase_peak_gib={k: round(v / 1024, 2) for k, v in sampler.phase_peaks(marks).items()},
                samples=len(sampler.samples),
                first_image_s=round(r["since_start_s"], 3),
                server_timings_ms=timings_ms([r]),
            )
        except Exception as e:  # noqa: BLE001 - one mode failing (fp8 unsupported, OOM) keeps the other rows
            row["error"] = f"{type(e).__name__}: {e}"[:500]
        rows.append(emit(row))
    return rows


# -- main ------------------------------------------------------------------------------------------------


def pick_prompts(weights: Path) -> list[str]:
    """Distinct prompts (a new prompt per request, as users send) whose subjects tokenise to the same length,
    so every request stays in one caption-length bucket (no recompiles mid-run)."""
    try:
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(weights / "tokenizer" / "tokenizer.json"))
        lengths = {s: len(tok.encode(" " + s, add_special_tokens=False).ids) for s in SUBJECTS}
        shortest = min(lengths.values())
        subjects = [s for s in SUBJECTS if lengths[s] == shortest]
    except Exception:  # noqa: BLE001 - no tokenizer.json: one prompt, new seeds
        subjects = [SUBJECTS[0]]
    return [PROMPT.format(s) for s in subjects]


def table(out: dict) -> str:
    lines = ["", "| row | client ms | server total ms | engine ms | server/engine |", "|---|---|---|---|---|"]
    engine = {r["size"]: r for r in out.get("engine", {}).get("rows", [])}
    for r in out.get("latency", []):
        e = engine.get(r["size"])
        em = e["engine_ms"] if e else None
        lines.append(
            f"| {r['size']} {r['output_format']} preview={r['preview']} | {r['client_ms']:.1f} | "
            f"{r['server_timings_ms'].get('total', float('nan')):.1f} | {em if em is not None else '-'} | "
            f"{r['client_ms'] / em:.2f}× |"
            if em
            else f"| {r['size']} {r['output_format']} preview={r['preview']} | {r['client_ms']:.1f} | "
            f"{r['server_timings_ms'].get('total', float('nan')):.1f} | - | - |"
        )
    if "latency" not in out:
        lines += [f"| engine {s} | - | - | {e['engine_ms']:.1f} | - |" for s, e in engine.items()]
    if t := out.get("throughput"):
        e = engine.get(t["size"])
        rate = "- | -"
        if e:
            rate = f"{e['back_to_back_ms']:.1f} back to back | {e['back_to_back_ms'] / t['per_image_ms']:.3f}× rate"
        lines.append(
            f"| throughput {t['size']} x{t['images']} @ {t['concurrency']} in flight | "
            f"{t['per_image_ms']:.1f}/image | {t['images_per_s']:.2f} images/s | {rate} |"
        )
    if f := out.get("first_image"):
        for k in ("cold", "warm"):
            then = (
                f"; then compiled in idle time in {f[k]['background_compile_s'] * 1000:.0f}, next image "
                f"{f[k]['second_call_s'] * 1000:.0f}"
                if "second_call_s" in f[k]
                else ""
            )
            lines.append(
                f"| first image {k} | {f[k]['first_image_s'] * 1000:.0f} (initialize "
                f"{f[k]['initialize_s'] * 1000:.0f}{then}) | - | - | - |"
            )
        if r := f.get("restarts"):
            lines.append(
                f"| first image, warm starts | median {r['warm_first_image_s_median'] * 1000:.0f} | - | - | - |"
            )
    for m in out.get("memory", []):
        if "peak_mib" in m:
            lines.append(
                f"| memory {m['mode']} | peak {m['peak_mib'] / 1024:.2f} GiB "
                f"(+{m['peak_over_baseline_gib']:.2f}) | - | - | - |"
            )
        else:
            lines.append(f"| memory {m.get('mode', '')} | {m.get('skipped') or m.get('error')} | - | - | - |")
    durations = out.get("durations_s", {})
    lines.append("")
    lines.append("section seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in durations.items()))
    return "\n".join(lines)


async def run_sections(a: argparse.Namespace) -> dict:
    import anyio

    out: dict[str, Any] = {}
    durations: dict[str, float] = {}
    out["durations_s"] = durations
    t = time.perf_counter()
    out["setup"] = emit(
        {
            "setup": {
                **ensure_weights(a.weights, a.tiny, a.build_timeout),
                "device": a.device,
                "optimize": a.optimize,
                "dtype": "float32" if a.tiny else a.dtype,
                "steps": a.steps,
                "runs": a.runs,
                "warmup": a.warmup,
                "sizes": a.sizes,
                "sections": a.sections,
                "progress": a.progress,
            }
        }
    )
    durations["weights"] = round(time.perf_counter() - t, 1)
    prompts = pick_prompts(a.weights)
    out["setup"]["setup"]["prompts"] = len(prompts)

    if {"latency", "throughput"} & set(a.sections):
        extra = dict(runtime_value(item) for item in a.runtime)
        reg = write_registry(a.workdir / "registry.toml", a.weights, runtime_table(a, a.compile_cache, **extra))
        t = time.perf_counter()
        with anyio.fail_after(a.section_timeout):
            async with Server(a, reg, "latency_and_throughput") as srv:
                out["server_start"] = emit({"section": "server_start", "initialize_s": round(srv.open_s, 3)})
                if "latency" in a.sections:
                    out["latency"] = await latency(srv, a, prompts)
                    durations["latency"] = round(time.perf_counter() - t, 1)
                if "throughput" in a.sections:
                    t2 = time.perf_counter()
                    out["throughput"] = await throughput(srv, a, prompts)
                    durations["throughput"] = round(time.perf_counter() - t2, 1)
    if "engine" in a.sections:
        t = time.perf_counter()
        eng = child(
            "engine",
            [
                "--weights",
                str(a.weights),
                "--device",
                a.device,
                "--dtype",
                a.dtype,
                "--optimize",
                a.optimize,
                "--steps",
                str(a.steps),
                "--runs",
                str(a.runs),
                "--warmup",
                str(a.warmup),
                "--pause",
                str(a.pause),
                "--compile-cache",
                str(a.compile_cache),
                "--prompts",
                json.dumps(prompts),
                "--sizes",
                *a.sizes,
            ],
            a.section_timeout,
        )
        for r in eng["rows"]:
            emit({"section": "engine", "load_s": eng["load_s"], **r})
        out["engine"] = eng
        durations["engine"] = round(time.perf_counter() - t, 1)
        if "latency" in out:
            out["ratios"] = []
            for e in eng["rows"]:
                for r in out["latency"]:
                    if r["size"] == e["size"]:
                        out["ratios"].append(
                            emit(
                                {
                                    "section": "ratio",
                                    "size": r["size"],
                                    "output_format": r["output_format"],
                                    "preview": r["preview"],
                                    "client_over_engine": round(r["client_ms"] / e["engine_ms"], 3),
                                    "server_total_over_engine": round(
                                        r["server_timings_ms"].get("total", 0) / e["engine_ms"], 3
                                    ),
                                }
                            )
                        )
        thr = out.get("throughput")
        for e in eng["rows"]:
            if thr and e["size"] == thr["size"]:
                out.setdefault("ratios", []).append(
                    emit(
                        {
                            "section": "ratio",
                            "size": e["size"],
                            "throughput": f"{thr['concurrency']} in flight",
                            # images per second over the engine's, back to back (both keep the GPU busy)
                            "rate_over_engine": round(e["back_to_back_ms"] / thr["per_image_ms"], 3),
                        }
                    )
                )
    if "first_image" in a.sections:
        t = time.perf_counter()
        out["first_image"] = await first_image(a, prompts)
        durations["first_image"] = round(time.perf_counter() - t, 1)
    if "memory" in a.sections:
        t = time.perf_counter()
        # after first_image, its (now warm) cache: a fresh GPU machine then compiles the 1024^2 graphs once
        cache = Path(out["first_image"]["compile_cache"]) if "first_image" in out else a.compile_cache
        out["memory"] = await memory(a, prompts, cache)
        durations["memory"] = round(time.perf_counter() - t, 1)
    return out


def parse(argv: list[str] | None) -> argparse.Namespace:
    tmp = Path(tempfile.gettempdir()) / "zimage-bench"
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny presets on the CPU (smoke run)")
    ap.add_argument(
        "--weights",
        type=Path,
        default=None,
        help="weights folder, built once and reused (default: $TMPDIR/zimage-bench/weights-{full,tiny})",
    )
    ap.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="registry files, outputs, compile caches (default: $TMPDIR/zimage-bench/run-{full,tiny})",
    )
    ap.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    ap.add_argument(
        "--sizes",
        nargs="+",
        default=None,
        help="WxH; the first one is also the throughput and first-image size (default 1024x1024 512x512; tiny 256x256)",
    )
    ap.add_argument("--formats", nargs="+", choices=["png", "webp", "jpeg"], default=["png", "webp", "jpeg"])
    ap.add_argument("--previews", nargs="+", choices=["thumbnail", "none", "full"], default=["thumbnail", "none"])
    ap.add_argument("--runs", type=int, default=None, help="timed requests per row (default 5; tiny 3)")
    ap.add_argument("--warmup", type=int, default=2, help="requests per size before timing (latency, engine)")
    ap.add_argument(
        "--pause",
        type=float,
        default=None,
        help="seconds the GPU idles before each timed request, server and engine alike (default 1; tiny 0): under "
        "its power cap an H100's clock depends on how busy it has just been (RESULTS §18), and a chat's requests "
        "come seconds apart",
    )
    ap.add_argument("--steps", type=int, default=8, help="Turbo steps (the variant default)")
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument(
        "--progress",
        action="store_true",
        help="ask for progress notifications on every call, as hosts that show progress do (Claude, Cursor, VS Code)",
    )
    ap.add_argument("--server-log", type=Path, default=None, help="folder for the first-image servers' INFO logs")
    ap.add_argument("--images", type=int, default=16, help="throughput: images in all")
    ap.add_argument("--restarts", type=int, default=0, help="first_image: more restarts with the cache kept")
    ap.add_argument(
        "--first-only",
        action="store_true",
        help="first_image: close each server after its first image (no idle-time compilation, no second image)",
    )
    ap.add_argument(
        "--runtime",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="latency/throughput: more [runtime] keys for the server (true/false, numbers, else text)",
    )
    ap.add_argument(
        "--memory-steps",
        type=int,
        default=10,
        help="Base steps of the memory rows' generation (CFG 4; peak memory does not grow with steps)",
    )
    ap.add_argument(
        "--optimize",
        choices=["auto", "compile", "fuse", "off"],
        default="auto",
        help="the [runtime] optimize of the server and the engine's optimize_mode (server default)",
    )
    ap.add_argument("--dtype", choices=["bfloat16", "float16"], default="bfloat16")
    ap.add_argument("--memory-modes", nargs="+", choices=list(MEMORY_MODES), default=None, help="default: all")
    ap.add_argument("--gpu-index", type=int, default=0, help="device the memory sampler reads")
    ap.add_argument("--request-timeout", type=float, default=None, help="seconds per call (default 600; tiny 120)")
    ap.add_argument(
        "--section-timeout",
        type=float,
        default=None,
        help="seconds per server process or child (default 900; tiny 300)",
    )
    ap.add_argument("--build-timeout", type=float, default=1200)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--_child", choices=["build", "engine"], default=None, help=argparse.SUPPRESS)
    ap.add_argument("--device", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--compile-cache", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--prompts", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    kind = "tiny" if a.tiny else "full"
    a.weights = (a.weights or tmp / f"weights-{kind}").resolve()
    a.workdir = (a.workdir or tmp / f"run-{kind}").resolve()
    a.device = a.device or ("cpu" if a.tiny else "cuda")
    a.sizes = a.sizes or (["256x256"] if a.tiny else ["1024x1024", "512x512"])
    a.runs = a.runs or (3 if a.tiny else 5)
    a.pause = a.pause if a.pause is not None else (0.0 if a.tiny else 1.0)
    a.request_timeout = a.request_timeout or (120.0 if a.tiny else 600.0)
    a.section_timeout = a.section_timeout or (300.0 if a.tiny else 900.0)
    a.compile_cache = a.compile_cache or a.workdir / "compile-cache"
    return a


def main(argv: list[str] | None = None) -> dict:
    a = parse(argv)
    if a._child == "build":
        return emit(build_weights(a.weights, a.tiny))
    if a._child == "engine":
        return emit(engine_run(a))
    import anyio

    a.workdir.mkdir(parents=True, exist_ok=True)
    a.weights.parent.mkdir(parents=True, exist_ok=True)
    try:
        out = anyio.run(run_sections, a)
    finally:
        reap_servers()
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(out, indent=2))
    print(table(out), flush=True)
    return out


if __name__ == "__main__":
    main()
