"""Phase timings (encode, denoise, decode) that never stop the GPU's queue.

Timing each phase with a ``torch.cuda.synchronize`` made the CPU wait at every boundary, then launch the next
phase while the GPU idled; in a threaded server the waiting thread must also win the GIL back before it can
launch again, which with other requests' encoders running cost milliseconds per boundary. On CUDA each
boundary is now an event on the stream, read after the one synchronisation a generation needs anyway (the
pixels' copy to the host). Elsewhere the CPU's clock is the GPU's.
"""

from __future__ import annotations

import time

import torch


class PhaseClock:
    """``mark(name)`` at the end of each phase; ``timings()`` once the last phase's results are on the host.

    ``t0`` is when the call began on the CPU (``time.perf_counter()``): the first phase also counts the CPU
    time from ``t0`` to this clock's creation (the initial noise, from a CPU generator), which ``prepare``
    gives on its own, and ``total`` is the CPU's wall time from ``t0``.
    """

    def __init__(self, device: torch.device, t0: float) -> None:
        self.t0 = t0
        self.created = time.perf_counter()
        self.events = device.type == "cuda"
        self._marks: list[tuple[str, float | torch.cuda.Event]] = []
        self._start: float | torch.cuda.Event = self._now()

    def _now(self) -> float | torch.cuda.Event:
        if not self.events:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def mark(self, phase: str) -> None:
        self._marks.append((phase, self._now()))

    def timings(self) -> dict[str, float]:
        """Seconds per phase, ``prepare`` and ``total``; on CUDA, waits for the last mark (normally done already)."""
        prepare = self.created - self.t0
        out: dict[str, float] = {}
        prev = self._start
        for i, (phase, at) in enumerate(self._marks):
            if isinstance(at, torch.cuda.Event):
                at.synchronize()
                assert isinstance(prev, torch.cuda.Event)
                seconds = prev.elapsed_time(at) / 1000
            else:
                assert isinstance(prev, float)
                seconds = at - prev
            out[phase] = seconds + (prepare if i == 0 else 0.0)
            prev = at
        out["prepare"] = prepare
        out["total"] = time.perf_counter() - self.t0
        return out
