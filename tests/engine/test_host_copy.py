"""A deferred host copy (``defer_host_copy``): the same pixels and timings as waiting at once, read later
from another thread."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import torch

from zimage_mcp.engine import load_pipeline
from zimage_mcp.engine.pipelines.host_copy import PendingPixels
from zimage_mcp.engine.pipelines.phase_clock import PhaseClock
from zimage_mcp.engine.vae.model import tensor_to_images


def test_a_deferred_output_is_read_later_from_another_thread(tiny_dir: Path) -> None:
    pipe = load_pipeline(tiny_dir, device="cpu", dtype=torch.float32)
    args = {"width": 256, "height": 272, "steps": 2, "seed": 7, "count": 2}
    waited = pipe.generate("a lighthouse at dusk", **args)
    pipe.defer_host_copy = True
    deferred = pipe.generate("a lighthouse at dusk", **args)

    # Returned before anyone waited: no images, no phase timings yet, but the size and seeds are known.
    assert deferred.images == [] and "decode" not in deferred.timings
    assert deferred.size == (256, 272) and deferred.seeds == waited.seeds

    got: list[list[np.ndarray]] = []
    reader = threading.Thread(target=lambda: got.append(deferred.arrays()))
    reader.start()
    reader.join(60)
    arrays = got[0]
    assert [a.shape for a in arrays] == [(272, 256, 3)] * 2 and arrays[0].dtype == np.uint8
    for ours, theirs in zip(arrays, waited.images, strict=True):
        assert np.array_equal(ours, np.asarray(theirs))
    assert {"encode", "denoise", "decode", "total"} <= set(deferred.timings)

    # wait() makes the PIL images from the same pixels.
    images = deferred.wait().images
    assert len(images) == 2
    for image, theirs in zip(images, waited.images, strict=True):
        assert np.array_equal(np.asarray(image), np.asarray(theirs))


def test_pending_pixels_round_as_the_images_do() -> None:
    """The pending copy and ``tensor_to_images`` share one rounding rule (half to even, clamped)."""
    x = torch.linspace(-1.2, 1.2, 2 * 3 * 5 * 7).reshape(2, 3, 5, 7)
    clock = PhaseClock(torch.device("cpu"), 0.0)
    pending = PendingPixels(x, clock)
    assert (pending.count, pending.height, pending.width) == (2, 5, 7)
    for a, image in zip(pending.arrays(), tensor_to_images(x), strict=True):
        assert np.array_equal(a, np.asarray(image))
    assert set(pending.timings()) == {"decode", "prepare", "total"}
