"""Decoded pixels on their way to the host: the copy is queued behind the decode, and only the thread that
needs the pixels waits for it.

Waiting for the pixels on the thread that launches GPU work (a ``.cpu()`` after the decode) left the GPU idle
between two queued requests: the launching thread first slept until the decode finished, then turned the
pixels into images, handed them back and released the GPU, and only then could the next request start
launching (tokenising its prompt, its text encoder, its first denoising step). With the copy queued instead,
the next request's work is queued behind this decode while it still runs.
"""

from __future__ import annotations

import threading

import numpy as np
import torch
from torch import Tensor

from zimage_mcp.engine.pipelines.phase_clock import PhaseClock
from zimage_mcp.engine.vae.model import to_rgb8


class PendingPixels:
    """(B, H, W, 3) uint8 pixels being copied from the device into pinned host memory.

    Made right after the decode is queued: it queues the uint8 conversion and the copy, then marks the
    ``decode`` phase on ``clock``. ``arrays()`` and ``timings()`` wait for the copy, from any thread, once.
    On the CPU the pixels are there at once.
    """

    def __init__(self, decoded: Tensor, clock: PhaseClock) -> None:
        rgb8 = to_rgb8(decoded)  # (B, 3, H, W) -> (B, H, W, 3) uint8, on the device
        self.count, self.height, self.width = rgb8.shape[0], rgb8.shape[1], rgb8.shape[2]
        self._ready: torch.cuda.Event | None = None
        if rgb8.is_cuda:
            # Pinned, so the copy is a DMA the GPU's queue runs without the CPU. rgb8 may be freed as soon as
            # this returns: the allocator reuses its block only for work queued after the copy.
            self._host = torch.empty(rgb8.shape, dtype=torch.uint8, pin_memory=True)
            self._host.copy_(rgb8, non_blocking=True)
            self._ready = torch.cuda.Event()
            self._ready.record()
        else:
            self._host = rgb8
        clock.mark("decode")
        self._clock = clock
        self._lock = threading.Lock()
        self._arrays: list[np.ndarray] | None = None
        self._timings: dict[str, float] | None = None

    def arrays(self) -> list[np.ndarray]:
        """One (H, W, 3) uint8 array per image, once the copy is done (views of the host buffer)."""
        with self._lock:
            if self._arrays is None:
                if self._ready is not None:
                    # Without the GIL, spinning on this core (the event has no BlockingSync flag): it wakes at once.
                    self._ready.synchronize()
                self._arrays = list(self._host.numpy())
                self._timings = self._clock.timings()
            return self._arrays

    def timings(self) -> dict[str, float]:
        """The clock's phase timings, ``total`` up to when the pixels were first waited for."""
        self.arrays()
        assert self._timings is not None
        return self._timings
