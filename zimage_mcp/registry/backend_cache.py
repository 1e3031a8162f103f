"""Backend lifetime: the cache of built backends.

The cache builds a backend on first use, keeps it, evicts least-recently-used backends to stay under a
VRAM budget, releases idle ones, and remembers load failures per variant. Everything here is torch-free.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from zimage_mcp.contract import Backend, BackendLoadError, NotInstalledError

log = logging.getLogger(__name__)


class BackendCache:
    """Built backends by variant id, in least-recently-used order. Thread-safe (one ``RLock``).

    The lock is held while a backend builds, so two threads never load at once and the budget holds.
    """

    def __init__(self, vram_budget_bytes: int | None, idle_unload_seconds: float) -> None:
        self.vram_budget_bytes = vram_budget_bytes
        self.idle_unload_seconds = idle_unload_seconds
        self.lock = threading.RLock()
        self._loaded: OrderedDict[str, Backend] = OrderedDict()
        self._last_used: dict[str, float] = {}
        self._measured: dict[str, int] = {}  # vram_bytes() seen for a variant, reused as the next estimate
        self._failed: dict[str, str] = {}

    def get(self, variant_id: str, build: Callable[[], Backend], estimate: Callable[[], int]) -> Backend:
        """The cached backend, else evict to make room for ``estimate()`` bytes and ``build()`` it."""
        with self.lock:
            backend = self._loaded.get(variant_id)
            if backend is not None:
                self._touch(variant_id)
                return backend
            if variant_id in self._failed:
                raise BackendLoadError(
                    f"{variant_id} failed to load earlier: {self._failed[variant_id]} (reset_failed to retry)"
                )
            if self.vram_budget_bytes is not None:
                self._make_room(self._measured.get(variant_id) or estimate(), keep=None)
            try:
                backend = build()
            except NotInstalledError:
                raise
            except Exception as exc:
                self._failed[variant_id] = f"{type(exc).__name__}: {exc}"
                log.error("backend %s failed to load: %s", variant_id, exc, exc_info=True)
                raise BackendLoadError(f"{variant_id} failed to load: {self._failed[variant_id]}") from exc
            self._loaded[variant_id] = backend
            self._touch(variant_id)
            if self.vram_budget_bytes is not None:
                self._make_room(0, keep=variant_id)
            return backend

    def is_loaded(self, variant_id: str) -> bool:
        return self.loaded(variant_id) is not None

    def failed(self) -> dict[str, str]:
        with self.lock:
            return dict(self._failed)

    def reset_failed(self, variant_id: str | None = None) -> None:
        """Forget the failure of ``variant_id`` (``None``: all) so the next use retries the build."""
        with self.lock:
            if variant_id is None:
                self._failed.clear()
            else:
                self._failed.pop(variant_id, None)

    def release_idle(self, now: float | None = None) -> list[str]:
        """Unload backends unused for ``idle_unload_seconds`` (0 disables); returns their ids."""
        if self.idle_unload_seconds <= 0:
            return []
        now = time.monotonic() if now is None else now
        with self.lock:
            idle = [v for v in self._loaded if now - self._last_used[v] >= self.idle_unload_seconds]
            for variant_id in idle:
                self.unload(variant_id)
            return idle

    def unload(self, variant_id: str) -> bool:
        """Unload one backend; False when it was not loaded."""
        with self.lock:
            backend = self._loaded.pop(variant_id, None)
            if backend is None:
                return False
            self._measured[variant_id] = _vram(backend) or self._measured.get(variant_id, 0)
            try:
                backend.unload()
            except Exception as exc:  # the backend is dropped either way
                log.error("unloading %s failed: %s", variant_id, exc, exc_info=True)
            log.info("unloaded %s", variant_id)
            return True

    def loaded(self, variant_id: str) -> Backend | None:
        """The built backend, or None; never builds and does not count as a use."""
        with self.lock:
            return self._loaded.get(variant_id)

    def unload_all(self) -> None:
        with self.lock:
            for variant_id in list(self._loaded):
                self.unload(variant_id)

    def _touch(self, variant_id: str) -> None:
        self._loaded.move_to_end(variant_id)
        self._last_used[variant_id] = time.monotonic()

    def _make_room(self, extra: int, keep: str | None) -> None:
        assert self.vram_budget_bytes is not None
        while sum(_vram(b) for b in self._loaded.values()) + extra > self.vram_budget_bytes:
            victim = next((v for v in self._loaded if v != keep), None)
            if victim is None:
                budget = self.vram_budget_bytes
                log.warning("%s alone exceeds the VRAM budget of %d bytes", keep or "the next backend", budget)
                return
            log.info("unloading %s to stay under the VRAM budget", victim)
            self.unload(victim)


def _vram(backend: Backend) -> int:
    try:
        return int(backend.vram_bytes())
    except Exception:
        return 0
