"""Progress that keeps moving while one long unit of work runs (loading weights, a first compile).

Hosts such as Claude Desktop give up on a tool call after about 60 s without news. The engine reports per
phase and per step, but loading a model and the first compile of a size can each take 10-30 s with nothing
to report. ``Heartbeat`` wraps a progress callback: whenever nothing was reported for ``period`` seconds it
re-sends the current phase, moved a little further inside the same unit (half of what is left each time,
so it never reaches the next unit), with the seconds spent in the message.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from types import TracebackType

Progress = Callable[[str, float, float, str], None]
PERIOD = 2.0  # seconds without news before a beat


class Heartbeat:
    """A progress callback that beats on its own thread while used as a context manager."""

    def __init__(self, progress: Progress, period: float = PERIOD) -> None:
        self._progress = progress
        self._period = period
        self._lock = threading.Lock()
        self._send = threading.Lock()  # one sender at a time: values must reach the job strictly increasing
        self._stop = threading.Event()
        self._last: tuple[str, float, float, str] | None = None
        self._since = time.monotonic()
        self._beats = 0
        self._thread = threading.Thread(target=self._run, name="zimage-heartbeat", daemon=True)

    def __call__(self, phase: str, done: float, total: float, message: str) -> None:
        with self._send:
            with self._lock:
                self._last, self._since, self._beats = (phase, done, total, message), time.monotonic(), 0
            self._progress(phase, done, total, message)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self._period):
            with self._send:
                with self._lock:
                    if self._last is None or time.monotonic() - self._since < self._period:
                        continue
                    phase, done, total, message = self._last
                    self._beats += 1
                    moved = done + (1 - 0.5**self._beats) if total else done  # stays inside [done, done + 1)
                    elapsed = time.monotonic() - self._since
                try:
                    self._progress(phase, min(moved, total), total, f"{message} ({elapsed:.0f} s)")
                except Exception:  # progress is best effort; the work goes on
                    pass
