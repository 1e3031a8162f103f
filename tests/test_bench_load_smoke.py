"""benchmarks/bench_load.py on the tiny weights on the CPU, so the GPU run cannot rot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_bench_load_tiny_runs_every_cpu_mode(tmp_path: Path) -> None:
    path = os.pathsep.join([str(REPO), str(REPO / "plugins"), os.environ.get("PYTHONPATH", "")])
    cmd = [sys.executable, str(REPO / "benchmarks" / "bench_load.py"), "--tiny", "--weights", str(tmp_path / "w")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": path})
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert [r["mode"] for r in rows] == [
        "engine",
        "engine-fuse",
        "engine-offload",
        "safetensors-serial",
        "safetensors-threads",
    ]
    assert all("error" not in r for r in rows), rows
    # Consistent, not merely positive: the rate is the bytes over the time, and every mode that reads the whole
    # model reads as many bytes as raw safetensors does (offload leaves the text encoder's bytes out).
    # (the tiny model's few MB are rounded to 3 decimals of a GB and of a second, hence the loose tolerance)
    assert all(abs(r["gb_per_s"] - r["gbytes"] / r["seconds"]) <= 0.3 * r["gb_per_s"] for r in rows), rows
    whole = {r["mode"]: r["gbytes"] for r in rows if r["mode"] != "engine-offload"}
    assert len(set(whole.values())) == 1, whole
    assert 0 < next(r["gbytes"] for r in rows if r["mode"] == "engine-offload") <= whole["engine"]
