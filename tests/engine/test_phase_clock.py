"""Phase timings: each phase's share of a real generation, without a synchronisation per phase on CUDA."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from zimage_mcp.engine import load_pipeline
from zimage_mcp.engine.pipelines.phase_clock import PhaseClock


def test_phases_partition_the_call_from_its_start() -> None:
    """On the CPU the phases are consecutive slices of the wall clock: the first one counts from the call's
    start (before the clock existed), and together they never exceed ``total``."""
    t0 = time.perf_counter()
    time.sleep(0.02)  # the call's own preparation, before the clock
    clock = PhaseClock(torch.device("cpu"), t0)
    time.sleep(0.03)
    clock.mark("encode")
    time.sleep(0.05)
    clock.mark("denoise")
    timings = clock.timings()
    assert list(timings) == ["encode", "denoise", "prepare", "total"]
    assert timings["encode"] >= 0.05 and 0.05 <= timings["denoise"] < timings["total"]
    assert 0.02 <= timings["prepare"] < timings["encode"]  # the preparation alone, also inside the first phase
    assert timings["encode"] + timings["denoise"] <= timings["total"]


def test_a_generation_reports_each_phase(tiny_dir: Path) -> None:
    pipe = load_pipeline(tiny_dir, device="cpu", dtype=torch.float32)
    out = pipe.generate("a lighthouse at dusk", width=256, height=256, steps=3, seed=1)
    t = out.timings
    assert {"encode", "denoise", "decode", "total"} <= set(t)
    assert all(t[k] > 0 for k in ("encode", "denoise", "decode"))
    assert t["encode"] + t["denoise"] + t["decode"] <= t["total"] + 1e-6
