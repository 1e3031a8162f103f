"""The plugins' start-up preparation (``zimage_prepare``) on a daemon thread of its own, started once.

Its own thread: a server that stops meanwhile does not wait for it, and a plugin whose preparation hangs (a
network call that never answers) holds up no generation, which runs on the device thread. ``serve`` waits for
it, with a bound, before importing the MCP stack (``cli/serve.py`` says why).
"""

from __future__ import annotations

import threading
from collections.abc import Callable


class BackgroundPreparation:
    """``run`` on a thread named ``zimage-prepare`` the first time ``start`` is called; later calls do nothing."""

    def __init__(self, run: Callable[[], None]) -> None:
        self._run = run
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="zimage-prepare", daemon=True)
                self._thread.start()

    def wait(self, timeout: float) -> bool:
        """Wait at most ``timeout`` seconds; whether the preparation has ended (True where none was started)."""
        with self._lock:
            thread = self._thread
        if thread is None:
            return True
        thread.join(timeout)
        return not thread.is_alive()
