"""Host-to-GPU copies of weights read from mmapped files, through pinned bounce buffers.

``tensor.to("cuda")`` from an mmap view is a pageable copy: the driver stages it through its own pinned
buffer, synchronously, and parallel readers queue on it (20 GB loaded at ~3 GB/s on an H200 host where
the PCIe link and the page cache give several times that). Here each reader thread owns two pinned
buffers and a CUDA stream: it copies the next piece of the file into one buffer (a CPU memcpy, parallel
across readers) while the DMA engine drains the other into the device tensor.
"""

from __future__ import annotations

import torch
from torch import Tensor

PIECE_BYTES = 32 << 20  # one bounce buffer; two per reader thread
MIN_STAGED_BYTES = 1 << 20  # smaller tensors go as plain copies (a few hundred norms and biases)
ENABLED = True  # benchmarks/bench_load.py turns it off to compare with pageable copies


class PinnedUploader:
    """One reader thread's route to ``device``: ``upload(t)`` returns ``t`` on the device, same dtype."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.stream = torch.cuda.Stream(device)
        self._buffers = [torch.empty(PIECE_BYTES, dtype=torch.uint8, pin_memory=True) for _ in range(2)]
        self._done: list[torch.cuda.Event | None] = [None, None]
        self._turn = 0

    def upload(self, t: Tensor) -> Tensor:
        nbytes = t.numel() * t.element_size()
        if nbytes < MIN_STAGED_BYTES or not t.is_contiguous():
            return t.to(self.device)
        out = torch.empty(t.shape, dtype=t.dtype, device=self.device)
        src, dst = t.reshape(-1).view(torch.uint8), out.reshape(-1).view(torch.uint8)  # (nbytes,) views
        for start in range(0, nbytes, PIECE_BYTES):
            end = min(nbytes, start + PIECE_BYTES)
            slot = self._turn % 2
            self._turn += 1
            done = self._done[slot]
            if done is not None:
                done.synchronize()  # the DMA out of this buffer has finished: it may be refilled
            staged = self._buffers[slot][: end - start]
            staged.copy_(src[start:end])
            with torch.cuda.stream(self.stream):
                dst[start:end].copy_(staged, non_blocking=True)
                event = torch.cuda.Event()
                event.record(self.stream)
            self._done[slot] = event
        # Whatever uses ``out`` next is queued on the current stream: order it after the last piece's DMA.
        torch.cuda.current_stream(self.device).wait_event(event)
        return out

    def close(self) -> None:
        """Drop the bounce buffers (after the stream's last copy out of them)."""
        self.stream.synchronize()
        self._buffers, self._done = [], [None, None]


def uploader_for(device: torch.device) -> PinnedUploader | None:
    """A new uploader for one reader thread, or None where plain copies are the way: the CPU, staging turned
    off, or no pinned memory to be had (WSL2 and some containers cap it); loading is then slower, not broken."""
    if not ENABLED or device.type != "cuda":
        return None
    try:
        return PinnedUploader(device)
    except RuntimeError:
        return None


def release_pinned() -> None:
    """Give the bounce buffers' pinned host memory back (torch caches it; where this torch allows)."""
    empty = getattr(torch._C, "_host_emptyCache", None)
    if empty is not None:
        empty()
