"""Load and compile chosen variants at server start (``[runtime] preload``), in the background.

Without it the first request pays for reading the weights and for every compilation (tens of seconds on
a cold compile cache). Each unit of work here (the load, then each warm-up shape) takes the GPU lock on
its own, so a request that arrives meanwhile waits for one unit, not for the whole warm-up. A failure is
logged and the server goes on serving: the variant then loads, or reports its error, on first use.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

import anyio

from zimage_mcp.contract import WarmableBackend
from zimage_mcp.registry import Registry
from zimage_mcp.server.jobs import FifoLock

log = logging.getLogger(__name__)
T = TypeVar("T")


def parse_sizes(sizes: Sequence[str]) -> list[tuple[int, int]]:
    """``["1280x720"]`` -> ``[(1280, 720)]`` (the format is checked by Settings)."""
    return [(int(w), int(h)) for w, h in (s.lower().split("x") for s in sizes)]


async def preload_variants(
    registry: Registry, lock: FifoLock, names: Sequence[str], sizes: Sequence[str], stopping: threading.Event
) -> dict[str, str]:
    """Load and warm each variant in turn; returns variant -> "ready" or the error text (also logged)."""
    outcome: dict[str, str] = {}
    for name in names:
        if stopping.is_set():
            break
        start = time.monotonic()
        try:
            backend = await _on_device(registry, lock, stopping, lambda name=name: registry.backend(name))
            units = 0
            if isinstance(backend, WarmableBackend):
                steps = backend.warm_up(parse_sizes(sizes))
                while not stopping.is_set():
                    label = await _on_device(registry, lock, stopping, lambda steps=steps: next(steps, None))
                    if label is None:
                        break
                    units += 1
                    log.debug("preload %s: warmed %s", name, label)
            outcome[name] = "ready"
            log.info("preloaded %s in %.1f s (%d warm-up units)", name, time.monotonic() - start, units)
        except _Stopped:
            break
        except Exception as e:  # noqa: BLE001 - a failed preload must never take the server down
            outcome[name] = f"{type(e).__name__}: {e}"
            log.warning("preloading %s failed: %s", name, outcome[name])
    return outcome


class _Stopped(Exception):
    """The server is shutting down while a unit waited for the GPU lock."""


async def _on_device(registry: Registry, lock: FifoLock, stopping: threading.Event, fn: Callable[[], T]) -> T:
    """``fn()`` on the registry's device thread (where requests run), holding the GPU lock."""

    def run() -> T:
        if not lock.acquire(lambda _position: None, stopping.is_set):
            raise _Stopped
        try:
            return registry.run_on_device(fn)
        finally:
            lock.release()

    return await anyio.to_thread.run_sync(run)
