"""The GPU benchmark scripts, run on the tiny presets on the CPU so they cannot rot between GPU runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.server_fixtures import registry_file, tiny_model_dir  # noqa: F401  (fixtures)

REPO = Path(__file__).resolve().parents[1]


def _run(script: str, *args: str, paths: tuple[Path, ...] = (), tiny: bool = True, **env_extra: str) -> list[dict]:
    """``benchmarks/<script>`` as a subprocess (``--tiny`` unless told: the probes take sizes and runs instead),
    its JSON lines."""
    path = [*map(str, paths), str(REPO), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path), **env_extra}
    out = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / script), *(["--tiny"] if tiny else []), *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=REPO,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


@pytest.mark.slow
def test_parity_full_tiny_agrees() -> None:
    rows = _run("parity_full.py")
    assert {r["check"].split("_")[0] for r in rows} >= {"dit", "vae", "text", "controlnet", "omni"}
    assert all(r["rel_err"] <= 1e-5 for r in rows), rows


@pytest.mark.slow
def test_bench_engine_tiny_produces_a_row() -> None:
    rows = _run("bench_engine.py", "--runs", "1", "--rows", "1024", "--optimize", "fuse")
    row = next(r for r in rows if r.get("row") == "1024")
    # One run each on a busy CPU: the parts are timed separately and their sum is no bound on the whole, but
    # every figure is a finite time and the speed-up is the ratio of the two end-to-end times.
    keys = ("ours_e2e_ms", "ref_e2e_ms", "ours_forward_ms", "ref_forward_ms", "ours_text_ms", "ours_vae_ms")
    assert all(0 < row[k] < 600_000 for k in keys), row
    assert row["speedup_e2e"] == pytest.approx(row["ref_e2e_ms"] / row["ours_e2e_ms"], rel=1e-6)


@pytest.mark.slow
def test_bench_lora_tiny_restores_and_counts() -> None:
    (row,) = _run("bench_lora.py", "--rank", "4", "--runs", "2")
    assert row["swap_s_median"] >= 0 and row["new_graphs_after_swaps"] == 0


@pytest.mark.slow
def test_profile_engine_tiny_measures_fp8_against_bf16() -> None:
    rows = {
        k: v
        for r in _run("profile_engine.py", "--runs", "1", "--sections", "text", "dit", "fp8", "step_cache", "warm_up")
        for k, v in r.items()
    }
    assert "error" not in rows["fp8"], rows["fp8"]
    assert rows["text"]["eager_ms"] > 0 and rows["dit"]["forward_ms"] > 0
    # fp8 GEMM weights change the result a little, never wildly (tiny random model, 4 steps at 256^2)
    assert 0 < rows["fp8"]["latent_rel_err"] < 0.1 and rows["fp8"]["image_psnr_db"] > 30
    cache = rows["step_cache"]
    assert "error" not in cache, cache
    assert cache["base_0.1"]["steps"] in (6, 12)  # CFG batched into one pass, or two passes per step
    assert cache["turbo_0.1"]["steps"] == 8 and 0 <= cache["turbo_0.1"]["skipped"] < 8
    assert rows["warm_up"]["units"][0][0] == "text encoder" and rows["warm_up"]["first_request_ms"] > 0


@pytest.mark.slow
def test_profile_engine_tiny_compares_static_and_dynamic_shapes() -> None:
    (row,) = _run("profile_engine.py", "--runs", "1", "--compile-tiny", "--sections", "shapes")
    shapes = row["shapes"]
    assert not any(k.endswith("_error") for k in shapes), shapes
    # static: one graph set per size; dynamic: one for all sizes (a new size is not a compile)
    assert shapes["static_graphs"] > shapes["dynamic_no_rope_kernel_graphs"] > 0
    assert all(shapes[f"static_{s}"]["ms"] > 0 for s in ("256x256", "384x384", "256x384"))


@pytest.mark.slow
def test_bench_server_tiny_measures_the_real_server(tmp_path: Path) -> None:
    """The sections' rows, with benchmarks/request_trace on: each call's wall time split at the server's hops."""
    out = tmp_path / "server.json"
    marks = tmp_path / "marks.txt"
    rows = _run(
        "bench_server.py",
        "--sections",
        "latency",
        "engine",
        "throughput",
        "--runs",
        "1",
        "--warmup",
        "1",
        "--pause",
        "0.05",
        "--images",
        "4",
        "--weights",
        str(tmp_path / "weights"),
        "--workdir",
        str(tmp_path / "run"),
        "--json",
        str(out),
        paths=(REPO / "benchmarks" / "request_trace",),
        ZIMAGE_BENCH_REQUEST_TRACE=str(marks),
    )
    data = json.loads(out.read_text())
    assert {"setup", "server_start", "latency", "throughput", "engine", "ratios", "durations_s"} <= set(data)
    assert (tmp_path / "weights" / "model_index.json").is_file()  # diffusers' save_pretrained layout
    latency = data["latency"]
    assert {(r["output_format"], r["preview"]) for r in latency} == {
        (f, p) for f in ("png", "webp", "jpeg") for p in ("thumbnail", "none")
    }
    # The server's own total lies inside the client's wall time of the same call.
    assert all(r["runs"] == 1 and r["client_ms"] + 1 >= r["server_timings_ms"]["total"] > 0 for r in latency)
    assert all(r["preview_b64_bytes"] > 0 for r in latency if r["preview"] == "thumbnail")
    sys.path.insert(0, str(REPO / "benchmarks"))
    from request_trace.spans import ORDER

    for r in latency:  # every hop was marked, in order, and together they make up the client's wall time
        hops = r["server_hops_ms"]
        assert list(hops) == list(ORDER[1:]), hops
        assert min(hops.values()) >= 0, hops
        assert abs(sum(hops.values()) - r["client_ms"]) < 2.0, (sum(hops.values()), r["client_ms"])
        assert hops["gpu_end"] <= r["server_timings_ms"]["total"] + 1
    t = data["throughput"]
    assert t["images"] == 4 and t["concurrency"] == 4 and t["images_per_s"] > 0
    (engine,) = data["engine"]["rows"]
    assert engine["engine_ms"] > 0 and engine["runs"] == 1
    assert engine["back_to_back_ms"] > 0 and engine["pause_s"] == 0.05  # each side idles as long before a run
    by_latency = [r for r in data["ratios"] if "client_over_engine" in r]
    assert len(by_latency) == len(latency) and all(r["client_over_engine"] > 0 for r in by_latency)
    (rate,) = [r for r in data["ratios"] if "rate_over_engine" in r]  # 4 in flight against back to back
    assert rate["rate_over_engine"] > 0 and rate["throughput"] == "4 in flight"
    assert sum(1 for r in rows if r.get("section") == "latency") == len(latency)  # one JSON line per measurement


@pytest.mark.slow
def test_bench_scale_tiny_mix_routes_every_key(tmp_path: Path) -> None:
    out = tmp_path / "scale.json"
    args = ["--mix", "--replicas", "2", "--clients", "4", "--requests", "1", "--probe", "2", "--port", "8817"]
    _run(
        "bench_scale.py",
        *args,
        "--weights",
        str(tmp_path / "w"),
        "--workdir",
        str(tmp_path / "run"),
        "--json",
        str(out),
    )
    (run,) = json.loads(out.read_text())["runs"]
    assert run["replicas"] == 2 and run["images"] == 4 and run["images_per_s"] > 0
    assert 0 < run["p50_ms"] <= run["p95_ms"]
    assert sum(run["per_replica"].values()) == 4  # /metrics counted every call on some replica
    keys = {"z-image-turbo", "z-image-turbo+lora-a", "z-image-base", "z-image-base+lora-b"}
    assert set(run["per_key"]) == set(run["routing"]) == keys
    assert all(sum(counts.values()) == 2 for counts in run["routing"].values())


def test_memory_trace_hook_wraps_the_bridges_high_water_notes(tmp_path: Path) -> None:
    """benchmarks/memory_trace is a sitecustomize: on PYTHONPATH with its variable set, a process that imports
    the bridge gets its high-water notes traced (on the CPU each note says so; on CUDA it replays the window)."""
    trace = tmp_path / "trace.jsonl"
    paths = [REPO / "benchmarks" / "memory_trace", REPO, REPO / "plugins", os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, paths)), "ZIMAGE_BENCH_MEMORY_TRACE": str(trace)}
    code = (
        "import time, zimage_builtins.engine_backend as bridge\n"
        "deadline = time.monotonic() + 180\n"
        "while bridge.MemoryHighWater.note.__name__ != 'traced' and time.monotonic() < deadline:\n"
        "    time.sleep(0.02)\n"
        "bridge.HIGH_WATER.note('a test step')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [json.loads(line) for line in trace.read_text().splitlines()]
    assert rows[0]["installed"] is True
    assert rows[1] == {"after": "a test step", "cuda": False}
    # without the variable the hook stays out of the way
    del env["ZIMAGE_BENCH_MEMORY_TRACE"]
    check = "import zimage_builtins.engine_backend as b; print(b.MemoryHighWater.note.__name__)"
    plain = subprocess.run(
        [sys.executable, "-c", check], capture_output=True, text=True, timeout=300, env=env, cwd=REPO
    )
    assert plain.stdout.strip() == "note", plain.stderr[-2000:]


def test_check_host_copy_tiny_agrees() -> None:
    """The GPU check of the deferred host copy runs (on the CPU here) and finds the same pixels."""
    rows = _run("check_host_copy.py")
    assert rows and rows[0]["ok"] and len(rows[0]["runs"]) == 3, rows


def test_probe_store_save_times_each_variant() -> None:
    """The store's CPU part per variant, cold and hot, the engine backend's pixels included (RESULTS §20)."""
    variants = ["as_is", "written_whole", "preview_bytesio", "zlib_rle", "bands_2"]
    args = ["--sizes", "128", "--runs", "1", "--idle", "0", "--variants", *variants]
    rows = _run("probe_store_save.py", *args, paths=(REPO / "plugins",), tiny=False)
    saves = [r for r in rows if r.get("probe") == "store_save"]
    assert [r["variant"] for r in saves] == variants and all(r["heap"] == "default" for r in saves)
    for row in saves:
        for state in ("cold", "hot"):
            timing = row[state]
            assert {"total", "pixels", "image_encode", "save", "preview_done"} <= set(timing)
            assert timing["total"] >= timing["pixels"] + timing["image_encode"] > 0, row
    (scaling,) = [r for r in rows if r.get("probe") == "deflate_threads_wall_ms"]
    assert all(scaling[str(n)] > 0 for n in (1, 2, 4, 8, 16)), scaling


def test_probe_sdk_client_splits_a_reply(registry_file: Path) -> None:
    """The reply's hops from the server's built result to the SDK client's return, each marked once."""
    args = ["--registry", str(registry_file), "--size", "256", "--runs", "2"]
    (row,) = _run("probe_sdk_client.py", *args, tiny=False)
    assert row["probe"] == "sdk_client_reply_ms" and row["runs"] == 2
    hops = [k for k in row if "->" in k]
    assert len(hops) == 4 and all(row[k] >= 0 for k in hops), row


def test_probe_initial_noise_times_both_copies() -> None:
    """The initial noise's copy, pageable against pinned, each run timed (on the CPU both copy the same way)."""
    args = ["--device", "cpu", "--runs", "2", "--pause", "0", "--layers", "2", "--size", "256"]
    rows = _run("probe_initial_noise.py", *args, tiny=False)
    assert [r["variant"] for r in rows] == ["pageable", "pinned"], rows
    for row in rows:
        assert len(row["noise_ms_all"]) == len(row["total_ms_all"]) == 2
        assert all(t >= n > 0 for n, t in zip(row["noise_ms_all"], row["total_ms_all"], strict=True)), row
