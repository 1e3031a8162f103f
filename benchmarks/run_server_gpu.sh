#!/usr/bin/env bash
# Issue 17 on one H200, from the repo root, with .whl/ carried (../shared/tools/offline-wheels.sh --ref --mcp,
# plus platformdirs). Two calls, back to back so the second finds the weights folder (~50 s to build):
#   run(kind="nvidia-h200", carry=[".whl"], command="bash benchmarks/run_server_gpu.sh load")
#   run(kind="nvidia-h200", carry=[".whl"], command="bash benchmarks/run_server_gpu.sh latency")
# load:    bench_load (pinned against pageable copies, the raw floor, a bit-for-bit check), then the first image
#          cold and warm after a restart with the server's own INFO log, and the device-wide peak per mode.
# latency: host CPUs and the PNG writer per strip count, the loader's bit-for-bit check, then the server over
#          stdio per size, the 4-client throughput with the GPU's idle gaps, the engine alone.
# first:   import times, then the first image cold and warm (and the idle-time compilation after it), peaks.
# final:   import times, the loader's A/B, then latency, throughput, engine and first image in one job.
# user:    latency, throughput, engine and the device-wide peaks per mode, split by phase (load and the
#          eager first image, the idle-time compilation, a compiled image), with the servers' high-water logs.
# eager:   the first image, cold and warm, then what an uncompiled (first) request runs, kernel by kernel.
# diag:    a fresh process's first eager request against its second; the default mode's allocator peaks, an eager request and each idle-time compile unit, with what is
#          alive at each peak; then full-size parity against diffusers (the text encoder also against fp32).
# restart: a fresh process's first eager request against its second, then the first image cold and warm.
# check:   that probe, then latency, throughput and the engine alone (no memory modes).
# memtrace: the default mode's allocator peaks per unit, in the probe and then inside the real server
#          (benchmarks/memory_trace: one window per load, request and idle-time compile unit).
# peak:    the default mode's device-wide peak per phase, alone.
# ab512:   the server's 512^2 latency as it is, with the DiT's compile unit first, and compiling in the
#          request, against the engine alone.
# imports: torch's bytecode cache, and torch, the MCP stack and the CUDA context timed alone and side by side.
# loader:  the loader's A/B (preadv or mmap copies; 8 or 16 readers), then the first image over five restarts.
# ab:      the server against an earlier commit's (ab_base/), traced at 512^2 in turns, then the store probe.
# trace:   one request's time split at each hop (benchmarks/request_trace), the engine before and after, GPU clocks.
# equal:   the engine alone before and after the server, the server traced at 1024^2 and 512^2 and with 4 clients,
#          each timed request after the same 1 s idle on both sides (the corrected method of RESULTS §18), GPU clocks;
#          first the initial noise's copy (probe_initial_noise.py), then, with time left, the store probe.
# store:   the store's encode and save with the preview beside it, cold and hot, per strip setting (one process).
# verify:  the deferred host copy's pixels on the GPU, the first image cold, warm and over three more restarts, latency, 4 clients and the engine, then
#          (when the call has time left) the default mode's traced peaks (one call, about 7 minutes; at most 8 files come back from the lent machine).
set -euo pipefail
part="${1:-latency}"
OUT="${OUT:-/tmp/out}"
mkdir -p "$OUT"
if [ -d .whl ]; then  # the lent GPU machine: the MCP stack and diffusers from carried wheels
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD:$PWD/plugins
fi  # elsewhere: an environment with `pip install -e ".[test]"` (diffusers is the weights writer)
nvidia-smi --query-gpu=index,name,memory.used --format=csv,noheader
host_cpus() {  # what the encoders can use: cores, affinity, any cgroup quota, the frequency governor
  python3 -c "import os, json; print(json.dumps({'cpu_count': os.cpu_count(), 'affinity': len(os.sched_getaffinity(0))}))"
  cat /sys/fs/cgroup/cpu.max 2>/dev/null || true
  cat /sys/devices/system/cpu/cpu*/cpufreq/scaling_governor 2>/dev/null | sort | uniq -c || true
  grep -m1 "model name" /proc/cpuinfo || true
  grep -m1 -o -w "avx2\|avx512f\|avx512bw" /proc/cpuinfo | sort -u | tr "\n" " " || true; echo  # the encoders' SIMD paths
}
start_clock_sampler() {  # the GPU's clocks, power and throttle reasons every 250 ms, into the logs folder
  mkdir -p "$OUT/logs"
  nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,power.draw,temperature.gpu,clocks_throttle_reasons.active \
    --format=csv,noheader -lms 250 > "$OUT/logs/gpu_clocks.csv" &
  clock_sampler=$!
}
engine() {  # the engine alone; $1: a name (before|after|...); $2...: more options
  echo "engine $1 starts $(date +%s.%N)" >> "$OUT/logs/phases.txt"
  local when="$1"; shift
  timeout 200 python3 benchmarks/bench_server.py --sections engine "$@" --json "$OUT/logs/engine_$when.json" \
    > "$OUT/logs/engine_$when.log" 2>&1 || tail -5 "$OUT/logs/engine_$when.log"  # a failure leaves the next parts to run
  grep '"section": "engine"\|engine_ms' "$OUT/logs/engine_$when.log" | cut -c1-600 | tail -3 || true
}
traced() {  # the server with one request's hops marked (benchmarks/request_trace); $1: a name; the rest: more options
  echo "server $1 starts $(date +%s.%N)" >> "$OUT/logs/phases.txt"
  local name="$1"; shift
  PYTHONPATH="$PWD/benchmarks/request_trace:${PYTHONPATH:-}" ZIMAGE_BENCH_REQUEST_TRACE="$OUT/logs/marks_$name.txt" \
    timeout 260 python3 benchmarks/bench_server.py --formats png --previews thumbnail "$@" \
    --server-log "$OUT/logs/$name" --json "$OUT/bench_server_trace_$name.json" > "$OUT/logs/bench_$name.log" 2>&1 \
    || tail -5 "$OUT/logs/bench_$name.log"
  grep '"latency"\|"throughput"\|row\|×' "$OUT/logs/bench_$name.log" | cut -c1-900 || true
}
case "$part" in
  load)
    timeout 200 python3 benchmarks/bench_load.py \
      --modes staging-check engine-fuse engine-fuse-pageable safetensors-threads 2>&1 | tee "$OUT/bench_load.jsonl"
    sections=(--sections first_image memory) ;;
  latency)  # the host's encoders, the loader's bit-for-bit check, then what a user sees per request
    host_cpus | tee "$OUT/host_cpus.txt"
    for image in noise photo; do
      timeout 60 python3 benchmarks/bench_encode.py --runs 3 --image "$image" \
        --only "png level 1" "store png, 1 strip" "store png, 2 strips" "store png, 4 strips" "store png, 8 strips" \
        "store png, 16 strips" 2>&1 | tee -a "$OUT/bench_encode.jsonl"
    done
    timeout 120 python3 benchmarks/bench_load.py --modes staging-check engine-fuse 2>&1 | tee "$OUT/bench_load.jsonl"
    sections=(--sections latency throughput engine --formats png) ;;
  first)  # what a restart costs, import by import, then the first image cold and warm, and the peaks
    python3 -X importtime -c "import zimage_builtins.engine_backend" 2>"$OUT/importtime.txt"
    sort -t"|" -k2 -n -r "$OUT/importtime.txt" | head -25 || true
    python3 - <<'PY' | tee "$OUT/startup_parts.json"
import json, sys, time
t0 = time.perf_counter(); import torch; t1 = time.perf_counter()
torch.empty(1, device="cuda"); t2 = time.perf_counter()
import zimage_builtins.engine_backend; t3 = time.perf_counter()
from zimage_mcp.engine.device import prepare_runtime
prepare_runtime(torch.device("cuda"), False); t4 = time.perf_counter()
print(json.dumps({"import_torch_s": round(t1 - t0, 2), "cuda_context_s": round(t2 - t1, 2),
                  "import_bridge_s": round(t3 - t2, 2), "prepare_runtime_eager_s": round(t4 - t3, 2),
                  "dynamo_imported": "torch._dynamo" in sys.modules, "transformers_imported": "transformers" in sys.modules}))
PY
    sections=(--sections first_image memory) ;;
  final)  # what a restart costs, import by import, then everything the user sees, in one job
    python3 -X importtime -c "import zimage_builtins.engine_backend" 2>"$OUT/importtime.txt"
    sort -t"|" -k2 -n -r "$OUT/importtime.txt" | head -25 || true
    timeout 150 python3 benchmarks/bench_load.py --modes engine-fuse engine-fuse-pageable 2>&1 | tee "$OUT/bench_load.jsonl"
    sections=(--sections latency throughput engine first_image --formats png) ;;
  user)
    sections=(--sections latency throughput engine memory --formats png --previews thumbnail
              --memory-modes default "offload_te+fp8" "offload_te+fp8 capped 7.2 GiB"); bench_timeout=560 ;;
  vae)  # which tensors set an uncompiled decode's peak, per query chunking; then the default mode's peaks
    timeout 90 python3 benchmarks/probe_vae_memory.py --out "$OUT" 2>&1 | tail -1
    for size in 512 1024; do
      timeout 60 python3 benchmarks/bench_encode.py --runs 7 --image noise --size "$size" --only "server png, 1 strip" \
        "server png, 2 strips" "server png, 4 strips" "server png, 8 strips" "server png, 16 strips" 2>&1 | tee -a "$OUT/bench_encode.jsonl"
    done
    sections=(--sections memory --memory-modes default) ;;
  eager)
    timeout 420 python3 benchmarks/bench_server.py --sections first_image --server-log "$OUT" \
      --json "$OUT/bench_server_first.json" 2>&1 | tee "$OUT/bench_server_first.log" | grep -v '^  warnings.warn' | tail -15
    timeout 150 python3 benchmarks/profile_engine.py --server-setup --eager --sections dit vae --runs 3 \
      --out "$OUT/eager" 2>&1 | grep -v 'warn' | cut -c1-3000 | tail -5
    exit 0 ;;
  diag)  # the decoder's memory per layout, autotuning and compilation; full-size parity; an eager request's kernels
    timeout 120 python3 benchmarks/probe_first_request.py --out "$OUT" 2>&1 | grep "^{" | cut -c1-3000
    timeout 240 python3 benchmarks/probe_vae_memory.py --server-path --top 14 --out "$OUT" 2>&1 | grep "^{" | cut -c1-2500
    timeout 200 python3 benchmarks/parity_full.py 2>&1 | grep '^{' | tee "$OUT/parity_full.jsonl"
    exit 0 ;;
  restart)  # a fresh process's first eager request against its second, then the first image after a restart
    timeout 120 python3 benchmarks/probe_first_request.py --out "$OUT" 2>&1 | grep "^{" | cut -c1-3000
    sections=(--sections first_image) ;;
  check)  # a fresh process's first eager request against its second, then what a user waits for, once more
    timeout 60 python3 benchmarks/probe_first_request.py --out "$OUT" 2>&1 | grep "^{" | cut -c1-1500
    sections=(--sections latency throughput engine --formats png --previews thumbnail); bench_timeout=230 ;;
  memtrace)  # where the default mode's peak comes from, outside the server (the probe) and inside it
    timeout 240 python3 benchmarks/probe_vae_memory.py --server-path --top 14 --out "$OUT" 2>&1 | grep "^{" | cut -c1-2500
    export PYTHONPATH="$PWD/benchmarks/memory_trace:${PYTHONPATH:-}" ZIMAGE_BENCH_MEMORY_TRACE="$OUT/memory_trace.jsonl"
    sections=(--sections memory --memory-modes default) ;;
  verify)  # the first image cold, warm and three more restarts; what a user waits for (latency, 4 clients, the engine alone); then
           # the default mode's peaks per unit, traced. The servers' logs come back in one archive (the lent
           # machine returns at most 8 files).
    mkdir -p "$OUT/logs"
    timeout 90 python3 benchmarks/check_host_copy.py 2>&1 | tail -1 | tee "$OUT/logs/check_host_copy.jsonl"
    timeout 450 python3 benchmarks/bench_server.py --sections first_image latency throughput engine --restarts 3 \
      --formats png --previews thumbnail --server-log "$OUT/logs" --json "$OUT/bench_server_verify_user.json" 2>&1 \
      | tee "$OUT/logs/bench_server_verify_user.log" | grep -v '^  warnings.warn' | tail -22
    cache=$(python3 -c "import json, sys; print(json.load(open(sys.argv[1]))['first_image']['compile_cache'])" \
      "$OUT/bench_server_verify_user.json" 2>/dev/null || true)
    [ "$SECONDS" -lt 400 ] && PYTHONPATH="$PWD/benchmarks/memory_trace:${PYTHONPATH:-}" \
      ZIMAGE_BENCH_MEMORY_TRACE="$OUT/memory_trace.jsonl" timeout 140 python3 benchmarks/bench_server.py \
      --sections memory --memory-modes default ${cache:+--compile-cache "$cache"} --server-log "$OUT/logs" --json "$OUT/bench_server_verify_memory.json" 2>&1 \
      | grep -v '^  warnings.warn' | tail -6
    tar czf "$OUT/server_logs.tgz" -C "$OUT" logs && rm -rf "$OUT/logs"
    exit 0 ;;
  peaks)  # the uncompiled decode's convs in row bands against whole (peak, time, pixels); the default mode's peak
          # traced with an empty compile cache, then again with the cache it filled; then what a user waits for
          # (latency, 4 clients, the engine alone)
    timeout 120 python3 benchmarks/probe_vae_memory.py --compare-bands --out "$OUT" 2>&1 | tail -1 | cut -c1-1500
    mkdir -p "$OUT/logs"
    for run in cold warm; do  # the memory section alone keeps its compile cache in the run's folder: cold, then warm
      PYTHONPATH="$PWD/benchmarks/memory_trace:${PYTHONPATH:-}" ZIMAGE_BENCH_MEMORY_TRACE="$OUT/memory_trace_$run.jsonl" \
        timeout 150 python3 benchmarks/bench_server.py --sections memory --memory-modes default \
        --server-log "$OUT/logs/$run" --json "$OUT/bench_server_peaks_$run.json" 2>&1 \
        | grep -v '^  warnings.warn' | tail -4
    done
    timeout 240 python3 benchmarks/bench_server.py --sections latency throughput engine --formats png --previews thumbnail \
      --server-log "$OUT/logs" --json "$OUT/bench_server_peaks_user.json" 2>&1 | grep -v '^  warnings.warn' | tail -12
    tar czf "$OUT/server_logs.tgz" -C "$OUT" logs && rm -rf "$OUT/logs"
    exit 0 ;;
  loader)  # the loader's A/B (preadv at each tensor's span against copies out of mmap views; 8 and 16 readers),
           # then the first image after a restart: cold, warm and three more warm restarts, with the servers' logs
    mkdir -p "$OUT/logs"
    timeout 220 python3 benchmarks/bench_load.py --modes staging-check engine-fuse engine-fuse-mmap engine-fuse-16 \
      engine-fuse engine-fuse-mmap engine-fuse-16 2>&1 | tee "$OUT/bench_load.jsonl"
    timeout 300 python3 benchmarks/bench_server.py --sections first_image --restarts 3 --server-log "$OUT/logs" \
      --json "$OUT/bench_server_loader_first.json" 2>&1 | tee "$OUT/logs/bench_server_loader_first.log" \
      | grep -v '^  warnings.warn' | tail -8
    tar czf "$OUT/server_logs.tgz" -C "$OUT" logs && rm -rf "$OUT/logs"
    exit 0 ;;
  imports)  # where the start-up's 3-4 s before the engine is ready go: torch's bytecode cache, torch and the MCP
            # stack imported alone and side by side (as `serve` does: one thread each), the CUDA context
    python3 - <<'PY' 2>&1 | tee "$OUT/imports.jsonl"
import importlib.util, json, os, subprocess, sys
spec = importlib.util.find_spec("torch")
root = os.path.dirname(spec.origin)
tag = sys.implementation.cache_tag
py = found = 0
missing = []
for folder, _, files in os.walk(root):
    if "__pycache__" in folder:
        continue
    for f in files:
        if f.endswith(".py"):
            py += 1
            cached = os.path.join(folder, "__pycache__", f"{f[:-3]}.{tag}.pyc")
            if os.path.exists(cached):
                found += 1
            elif len(missing) < 3:
                missing.append(cached)
print(json.dumps({"torch_dir": root, "py_files": py, "pyc_found": found, "writable": os.access(root, os.W_OK),
                  "missing": missing, "python": sys.version.split()[0], "dont_write_bytecode": sys.dont_write_bytecode,
                  "env": {k: v for k, v in os.environ.items() if k.startswith(("PYTHON", "CUDA", "TORCH"))}}))
timed = "import time, threading; t0 = time.perf_counter(); "
cases = {
    "torch": timed + "import torch; print(time.perf_counter() - t0)",
    "mcp_server": timed + "import zimage_mcp.server.app; print(time.perf_counter() - t0)",
    "engine_bridge": timed + "import zimage_builtins.engine_loading; print(time.perf_counter() - t0)",
    "torch_and_cuda": timed + "import torch; torch.empty(1, device='cuda'); print(time.perf_counter() - t0)",
    "side_by_side": timed + "th = threading.Thread(target=lambda: __import__('zimage_builtins.engine_loading')); th.start(); "
                    "import zimage_mcp.server.app; t1 = time.perf_counter() - t0; th.join(); print(t1, time.perf_counter() - t0)",
    "bridge_then_server": timed + "import zimage_builtins.engine_loading; t1 = time.perf_counter() - t0; "
                          "import zimage_mcp.server.app; print(t1, time.perf_counter() - t0)",
}
base = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}  # the prefix must be writable
for env_name, env in (("plain", dict(os.environ)), ("pycache_prefix", {**base, "PYTHONPYCACHEPREFIX": "/tmp/pyc-prefix"})):
    for name, code in cases.items():
        runs = []
        for _ in range(3):
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
            runs.append(out.stdout.strip() or out.stderr.strip()[-300:])
        print(json.dumps({"env": env_name, "case": name, "seconds": runs}), flush=True)
PY
    python3 -X importtime -c "import torch" 2>"$OUT/importtime_torch.txt"
    sort -t"|" -k1.13 -n -r "$OUT/importtime_torch.txt" | head -15 || true
    exit 0 ;;
  ab512)  # why the server's compiled 512^2 denoise ran slower than the engine's (RESULTS §16): the server as it
          # is, the engine alone, the server with the DiT's unit first again, the server compiling in the request
    mkdir -p "$OUT/ab"
    common=(--sections latency --sizes 1024x1024 512x512 --formats png --previews thumbnail --runs 3)
    timeout 170 python3 benchmarks/bench_server.py "${common[@]}" --workdir /tmp/zimage-bench/run-a \
      --json "$OUT/ab/a_current.json" 2>&1 | grep '"section": "latency"' | cut -c1-400
    timeout 110 python3 benchmarks/bench_server.py --sections engine --sizes 1024x1024 512x512 --runs 3 \
      --workdir /tmp/zimage-bench/run-e --json "$OUT/ab/engine.json" 2>&1 | grep '"section": "engine"' | cut -c1-400
    timeout 150 python3 benchmarks/bench_server.py "${common[@]}" --workdir /tmp/zimage-bench/run-c \
      --runtime compile_in_background=false --json "$OUT/ab/c_inline_compile.json" 2>&1 \
      | grep '"section": "latency"' | cut -c1-400 || true
    PYTHONPATH="$PWD/benchmarks/replay_order:${PYTHONPATH:-}" ZIMAGE_BENCH_REPLAY_ORDER=dit,text,vae \
      timeout 150 python3 benchmarks/bench_server.py "${common[@]}" --workdir /tmp/zimage-bench/run-b \
      --json "$OUT/ab/b_dit_first.json" 2>&1 | grep '"section": "latency"' | cut -c1-400 || true
    tar czf "$OUT/ab512.tgz" -C "$OUT" ab && rm -rf "$OUT/ab"
    exit 0 ;;
  trace)  # where one request's time goes outside the engine (benchmarks/request_trace), with the engine alone run
           # before and after the server and the GPU's clocks sampled throughout; the server with fixed allocator
           # segments and the engine with expandable ones; with a second argument `memory`, the peak with fixed segments
    start_clock_sampler
    host_cpus | tee "$OUT/logs/host_cpus.txt"
    python3 benchmarks/probe_cpu_burst.py | tee -a "$OUT/logs/host_cpus.txt"
    read -r -a sizes <<< "${TRACE_SIZES:-1024x1024 512x512}"  # TRACE_SIZES=1024x1024: a shorter call
    engine before --sizes "${sizes[@]}"
    traced current --sections latency throughput --sizes "${sizes[@]}"
    # the server turns the allocator's expandable segments on when the user set no allocator option; the engine
    # alone never does: each side the other way
    PYTORCH_CUDA_ALLOC_CONF=expandable_segments:False traced fixed_segments --sections latency --sizes "${sizes[@]}"
    engine after --sizes 1024x1024
    PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True engine after_expandable --sizes 1024x1024
    if [ "${2:-}" = memory ]; then  # then the default mode's device-wide peak with fixed segments (about 150 s)
      PYTORCH_CUDA_ALLOC_CONF=expandable_segments:False timeout 170 python3 benchmarks/bench_server.py \
        --sections memory --memory-modes default --server-log "$OUT/logs/fixed_segments_memory" \
        --json "$OUT/bench_server_trace_fixed_segments_memory.json" 2>&1 | grep -v '^  warnings.warn' | tail -4
    fi
    kill "$clock_sampler" || true
    tar czf "$OUT/server_logs.tgz" -C "$OUT" logs && rm -rf "$OUT/logs"
    exit 0 ;;
  equal)  # what a user waits for, both sides at the same duty cycle (bench_server --pause, 1 s on a GPU: RESULTS
          # §18): the engine alone before and after the server, the server traced hop by hop at 1024^2 and 512^2
          # and with 4 clients, the GPU's clocks throughout (about 7 minutes). TRACE_SIZES=512x512 measures one
          # size; TRACE_PROGRESS=1 has every call ask for progress notifications, as hosts that show progress do
    start_clock_sampler
    host_cpus | tee "$OUT/logs/host_cpus.txt"
    # the initial noise's copy to the GPU, pageable (as shipped) against pinned (RESULTS §23; about 30 s)
    timeout 60 python3 benchmarks/probe_initial_noise.py --runs 12 > "$OUT/probe_initial_noise.jsonl" 2>&1 \
      && cut -c1-200 "$OUT/probe_initial_noise.jsonl"
    read -r -a sizes <<< "${TRACE_SIZES:-1024x1024 512x512}"
    engine before --sizes "${sizes[@]}" --runs 7
    traced current --sections latency throughput --sizes "${sizes[@]}" --runs 7 ${TRACE_PROGRESS:+--progress}
    # what a user sees at 512^2 without the trace's own marks (about 16 file appends a request)
    [ "$SECONDS" -lt 330 ] && { echo "server untraced starts $(date +%s.%N)" >> "$OUT/logs/phases.txt"
      timeout 90 python3 benchmarks/bench_server.py --formats png --previews thumbnail --sections latency \
        --sizes 512x512 --runs 7 ${TRACE_PROGRESS:+--progress} --server-log "$OUT/logs/untraced" \
        --json "$OUT/bench_server_untraced.json" > "$OUT/logs/bench_untraced.log" 2>&1 || tail -5 "$OUT/logs/bench_untraced.log"; }
    engine after --sizes "${sizes[@]}" --runs 7
    kill "$clock_sampler" || true
    # the store's CPU part in one process, malloc tuned as serve does: as it ships, zlib's deflate as before
    # RESULTS §21, the preview in 2 JPEG bands, and strips of 128 rows
    [ "$SECONDS" -lt 450 ] && timeout 80 python3 benchmarks/probe_store_save.py --runs 9 --idle 0.5 --heap kept \
      --variants as_is zlib_rle bands_2 rows_128 > "$OUT/probe_store_save.jsonl" 2>&1 \
      && cut -c1-400 "$OUT/probe_store_save.jsonl"
    tar czf "$OUT/server_logs.tgz" -C "$OUT" logs && rm -rf "$OUT/logs"
    exit 0 ;;
  ab)  # the server as it is against the one in ab_base/ (an earlier commit's tree, put there for this call only),
      # traced at 512^2, in turns (new, base, new, base) after the engine alone; then the store probe's
      # variants, taking turns request by request: 8 PNG strips (as shipped), 6, 4, and 8 with the preview in
      # 2 JPEG bands (about 6 minutes)
    # ab_base/ (untracked, not ignored, so the call carries it; delete it afterwards): from the repo root,
    #   mkdir ab_base && git archive REV zimage_mcp plugins registry.toml pyproject.toml benchmarks/bench_server.py \
    #     benchmarks/request_trace benchmarks/components.py | tar x -C ab_base
    [ -f ab_base/benchmarks/bench_server.py ] || { echo "ab: no ab_base/ tree"; exit 2; }
    start_clock_sampler
    host_cpus | tee "$OUT/logs/host_cpus.txt"
    [ "${AB_ENGINE:-1}" = 1 ] && engine before --sizes 512x512 --runs 7  # AB_ENGINE=0: the servers only
    turn=0
    for side in ${AB_TURNS:-new base new base}; do  # e.g. AB_TURNS="new base new" for a shorter call
      turn=$((turn + 1))
      {
        tree=.
        [ "$side" = base ] && tree=ab_base
        echo "server $side $turn starts $(date +%s.%N)" >> "$OUT/logs/phases.txt"
        # traced, each tree by its own request_trace: the hops say which part moved
        PYTHONPATH="$PWD/$tree/benchmarks/request_trace:${PYTHONPATH:-}" \
        ZIMAGE_BENCH_REQUEST_TRACE="$OUT/logs/marks_${side}_$turn.txt" \
        timeout 100 python3 "$tree/benchmarks/bench_server.py" --formats png --previews thumbnail --sections latency --sizes 512x512 \
          --runs 7 --json "$OUT/ab_${side}_$turn.json" > "$OUT/logs/ab_${side}_$turn.log" 2>&1 \
          || tail -5 "$OUT/logs/ab_${side}_$turn.log"
        grep '"section": "latency"' "$OUT/logs/ab_${side}_$turn.log" | cut -c1-260 || true
      }
    done
    kill "$clock_sampler" || true
    if [ "${AB_PROBE:-1}" = 1 ] && [ "$SECONDS" -lt 420 ]; then
      timeout 70 python3 benchmarks/probe_store_save.py --sizes 512 --runs 7 --idle 0.5 --heap kept \
        --variants as_is rows_85 rows_128 bands_2 > "$OUT/probe_store_save.jsonl" 2>&1 || true
      cut -c1-330 "$OUT/probe_store_save.jsonl"
    fi
    tar czf "$OUT/server_logs.tgz" -C "$OUT" logs && rm -rf "$OUT/logs"
    exit 0 ;;
  store)  # the server's after-the-GPU CPU work in one process, after an idle host and back to back, per PNG strip
          # setting, and a sleeping thread's wake-up (benchmarks/probe_store_save.py; about a minute)
    host_cpus
    python3 benchmarks/probe_cpu_burst.py
    timeout 120 python3 benchmarks/probe_store_save.py --runs 9 2>&1 | tee "$OUT/probe_store_save.jsonl"
    timeout 60 python3 benchmarks/probe_store_save.py --runs 9 --image photo --variants as_is rows_128 2>&1 \
      | tee -a "$OUT/probe_store_save.jsonl"
    exit 0 ;;
  peak)  # the default mode's device-wide peak per phase, alone (about 2 minutes with the weights to build)
    sections=(--sections memory --memory-modes default); bench_timeout=150 ;;
  *) echo "usage: $0 load|latency|first|final|user|eager|diag|restart|check|memtrace|verify|peak|peaks|loader|imports|ab512|trace|equal|store" >&2; exit 2 ;;
esac
timeout "${bench_timeout:-420}" python3 benchmarks/bench_server.py "${sections[@]}" --server-log "$OUT" --json "$OUT/bench_server_$part.json" \
  2>&1 | tee "$OUT/bench_server_$part.log" | grep -v '^  warnings.warn' | tail -40
