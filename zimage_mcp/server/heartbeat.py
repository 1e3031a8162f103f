"""Progress that keeps moving while one long unit of work runs (loading weights, a first compile).

Hosts such as Claude Desktop give up on a tool call after about 60 s without news. The engine reports per
phase and per step, but loading a model and the first compile of a size can each take 10-30 s with nothing
to report. ``Heartbeat`` wraps a progress callback: whenever nothing was reported for ``period`` seconds it
re-sends the current phase, moved a little further inside the same unit (half of what is left each time,
so it never reaches the next unit), with the seconds spent in the message.

One beater thread serves every heartbeat in the process. A thread per job cost the GPU thread 10-15 ms per
image with 4 requests in flight (starting and joining a thread waits for the GIL behind the other jobs'
encoding), time in which the GPU idled.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from types import TracebackType

Progress = Callable[[str, float, float, str], None]
PERIOD = 2.0  # seconds without news before a beat


class Heartbeat:
    """A progress callback that beats (on the shared beater thread) while used as a context manager."""

    def __init__(self, progress: Progress, period: float = PERIOD) -> None:
        self.period = period
        self._progress = progress
        self._lock = threading.Lock()
        self._send = threading.Lock()  # one sender at a time: values must reach the job strictly increasing
        self._open = False
        self._last: tuple[str, float, float, str] | None = None
        self._since = time.monotonic()
        self._beats = 0

    def __call__(self, phase: str, done: float, total: float, message: str) -> None:
        with self._send:
            with self._lock:
                self._last, self._since, self._beats = (phase, done, total, message), time.monotonic(), 0
            self._progress(phase, done, total, message)

    def __enter__(self) -> Heartbeat:
        self._open = True
        _BEATER.add(self)
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        with self._send:  # a beat in progress finishes first; none is sent after this block
            self._open = False
        _BEATER.discard(self)

    def beat_if_due(self) -> None:
        """Re-send the current phase, nudged forward, if nothing was reported for ``period`` seconds."""
        with self._send:
            with self._lock:
                if not self._open or self._last is None or time.monotonic() - self._since < self.period:
                    return
                phase, done, total, message = self._last
                self._beats += 1
                moved = done + (1 - 0.5**self._beats) if total else done  # stays inside [done, done + 1)
                elapsed = time.monotonic() - self._since
            try:
                self._progress(phase, min(moved, total), total, f"{message} ({elapsed:.0f} s)")
            except Exception:  # progress is best effort; the work goes on
                pass


class _Beater:
    """The one daemon thread that beats every open heartbeat; started on first use, idle when none is open."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._open: set[Heartbeat] = set()
        self._thread: threading.Thread | None = None

    def add(self, heartbeat: Heartbeat) -> None:
        with self._cond:
            self._open.add(heartbeat)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="zimage-heartbeat", daemon=True)
                self._thread.start()
            self._cond.notify()

    def discard(self, heartbeat: Heartbeat) -> None:
        with self._cond:
            self._open.discard(heartbeat)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._open:
                    self._cond.wait()
                wait = min(h.period for h in self._open) / 2
                self._cond.wait(wait)
                due = list(self._open)
            for heartbeat in due:
                heartbeat.beat_if_due()


_BEATER = _Beater()
