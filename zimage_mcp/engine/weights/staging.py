"""Host-to-GPU copies of weights read from files, through pinned bounce buffers.

``tensor.to("cuda")`` from an mmap view is a pageable copy: the driver stages it through its own pinned
buffer, synchronously, and parallel readers queue on it (20 GB loaded at ~3 GB/s on an H200 host where
the PCIe link and the page cache give several times that). Here each reader thread owns two pinned
buffers and a CUDA stream: it reads the next piece of the file into one buffer (``preadv`` from the page
cache, or a copy out of an mmap view where there is no preadv; parallel across readers) while the DMA
engine drains the other into the device tensor.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from zimage_mcp.engine.weights.spans import Span, byte_view, read_exactly, read_span

PIECE_BYTES = 32 << 20  # one bounce buffer; two per reader thread
MIN_STAGED_BYTES = 1 << 20  # smaller tensors go as plain copies (a few hundred norms and biases)
ENABLED = True  # benchmarks/bench_load.py turns it off to compare with pageable copies


class PinnedUploader:
    """One reader thread's route to ``device``: ``upload(t)`` returns ``t`` on the device, same dtype."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.stream = torch.cuda.Stream(device)
        self._buffers = [torch.empty(PIECE_BYTES, dtype=torch.uint8, pin_memory=True) for _ in range(2)]
        self._views = [byte_view(b) for b in self._buffers]  # what preadv writes into
        self._done: list[torch.cuda.Event | None] = [None, None]
        self._turn = 0

    def upload(self, t: Tensor) -> Tensor:
        """``t`` (a host tensor, e.g. an mmap view) on the device."""
        nbytes = t.numel() * t.element_size()
        if nbytes < MIN_STAGED_BYTES or not t.is_contiguous():
            return t.to(self.device)
        src = t.reshape(-1).view(torch.uint8)  # (nbytes,)
        return self._stage(
            t.shape, t.dtype, nbytes, lambda _, staged, start: staged.copy_(src[start : start + len(staged)])
        )

    def read(self, fd: int, span: Span) -> Tensor:
        """The tensor at ``span`` of the open file ``fd``, read piece by piece into the buffers, on the device."""
        if span.nbytes < MIN_STAGED_BYTES:
            return read_span(fd, span).to(self.device)
        return self._stage(
            span.shape,
            span.dtype,
            span.nbytes,
            lambda slot, staged, start: read_exactly(fd, self._views[slot][: len(staged)], span.offset + start),
        )

    def _stage(
        self,
        shape: torch.Size | tuple[int, ...],
        dtype: torch.dtype,
        nbytes: int,
        fill: Callable[[int, Tensor, int], object],
    ) -> Tensor:
        """A device tensor filled through the two buffers: ``fill(slot, buffer[:n], start)`` puts bytes
        [start, start + n) of the source in the buffer, then the DMA engine copies them out while the next
        piece fills the other buffer."""
        out = torch.empty(shape, dtype=dtype, device=self.device)
        dst = out.reshape(-1).view(torch.uint8)  # (nbytes,)
        event = None
        for start in range(0, nbytes, PIECE_BYTES):
            end = min(nbytes, start + PIECE_BYTES)
            slot = self._turn % 2
            done = self._done[slot]
            if done is not None:
                done.synchronize()  # the DMA out of this buffer has finished: it may be refilled
            staged = self._buffers[slot][: end - start]
            fill(slot, staged, start)
            self._turn += 1
            with torch.cuda.stream(self.stream):
                dst[start:end].copy_(staged, non_blocking=True)
                event = torch.cuda.Event()
                event.record(self.stream)
            self._done[slot] = event
        if event is not None:
            # Whatever uses ``out`` next is queued on the current stream: order it after the last piece's DMA.
            torch.cuda.current_stream(self.device).wait_event(event)
        return out

    def close(self) -> None:
        """Drop the bounce buffers (after the stream's last copy out of them)."""
        self.stream.synchronize()
        self._buffers, self._views, self._done = [], [], [None, None]


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
