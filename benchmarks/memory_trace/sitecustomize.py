"""The CUDA allocator's history inside the real server, one window per step the bridge reports.

Put this folder on the server's ``PYTHONPATH`` and set ``ZIMAGE_BENCH_MEMORY_TRACE`` to a JSONL file:

    PYTHONPATH=benchmarks/memory_trace ZIMAGE_BENCH_MEMORY_TRACE=/tmp/trace.jsonl \
        python3 benchmarks/bench_server.py --sections memory --memory-modes default

Python imports a ``sitecustomize`` module at start-up, so every process of the run loads this one; without the
variable it does nothing. In a process that imports the bridge (``zimage_builtins.engine_backend``) it wraps
``MemoryHighWater.note``, which the bridge calls after a load, after each request and after each idle-time
compile unit. The first call after CUDA is in use starts ``torch.cuda.memory._record_memory_history``; each
later call replays the window since the previous call and appends one line: what the bridge just did, the
allocated bytes at the window's start, the peak of what the window allocated on top of them, and the largest
tensors alive at that peak with the line that allocated them (``probe_vae_memory.peak_from_history``).
Nothing of the product reads it: benchmarks only (issue 17's default-mode peak, RESULTS §14).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

TRACE = os.environ.get("ZIMAGE_BENCH_MEMORY_TRACE")
BRIDGE = "zimage_builtins.engine_backend"


def _write(row: dict[str, Any]) -> None:
    assert TRACE is not None
    with open(TRACE, "a") as f:
        f.write(json.dumps(row) + "\n")


def _wrap(module: Any) -> None:
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: probe_vae_memory
    from probe_vae_memory import GIB, peak_from_history

    note = module.MemoryHighWater.note
    window = {"start": None}

    def traced(self: Any, after: str) -> None:
        note(self, after)
        if not torch.cuda.is_available() or not torch.cuda.is_initialized():
            _write({"after": after, "cuda": False})
            return
        torch.cuda.synchronize()
        row: dict[str, Any] = {"after": after, "allocated_now_gib": round(torch.cuda.memory_allocated() / GIB, 3)}
        if window["start"] is not None:
            snapshot = torch.cuda.memory._snapshot()
            torch.cuda.memory._record_memory_history(enabled=None)
            peak = peak_from_history(snapshot, top=12)
            row["allocated_at_start_gib"] = window["start"]
            row["window_peak_over_start_gib"] = round(peak["peak_mib"] / 1024, 3)
            row["live_at_peak"] = peak["live_at_peak"]
        row["max_allocated_gib"] = round(torch.cuda.max_memory_allocated() / GIB, 3)
        _write(row)
        window["start"] = row["allocated_now_gib"]
        torch.cuda.memory._record_memory_history(max_entries=1_000_000)

    # The first row before the wrapper is in place: a caller waiting for the wrapper may note at once, and its
    # row must not come first (seen once in CI on a loaded 2-core machine).
    _write({"installed": True, "pid": os.getpid()})
    module.MemoryHighWater.note = traced


def _wait_for_bridge(deadline_s: float = 900.0) -> None:
    """Poll for the bridge's import (a server imports it on a daemon thread at start; other processes never)."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        module = sys.modules.get(BRIDGE)
        if module is not None and hasattr(module, "MemoryHighWater"):
            _wrap(module)
            return
        time.sleep(0.02)


if TRACE:
    threading.Thread(target=_wait_for_bridge, name="memory-trace", daemon=True).start()
