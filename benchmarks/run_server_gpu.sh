#!/usr/bin/env bash
# Issue 17 on one H200, from the repo root, with .whl/ carried (../shared/tools/offline-wheels.sh --ref --mcp,
# plus platformdirs):
#   run(kind="nvidia-h200", carry=[".whl"], command="bash benchmarks/run_server_gpu.sh")
# One job: the server over stdio (latency, 4-client throughput with the GPU's idle gaps, the first image cold
# and warm with the server's own INFO log) and the engine alone, all on the same weights folder.
# Extra arguments go to bench_server.py (e.g. --sections first_image memory).
set -euo pipefail
OUT="${OUT:-/tmp/out}"
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD:$PWD/plugins
nvidia-smi --query-gpu=index,name,memory.used --format=csv,noheader
args=("$@")
[ ${#args[@]} -gt 0 ] || args=(--sections latency throughput engine first_image --formats png)
timeout 580 python3 benchmarks/bench_server.py "${args[@]}" --server-log "$OUT" --json "$OUT/bench_server.json" \
  2>&1 | tee "$OUT/bench_server.log" | grep -v '^  warnings.warn' | tail -60
