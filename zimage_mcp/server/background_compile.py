"""Compile in the GPU's idle time what requests ran eagerly (``[runtime] compile_in_background``).

Requests never wait for the compiler: a backend that ran a new shape eagerly keeps it pending
(``contract.BackgroundCompiling``). This task runs one pending unit at a time, only once the FIFO lock has
been free, with nobody waiting, for ``idle_seconds``: a client that sends its next request as soon as the
last one returned gets the GPU first. A request that arrives during a unit waits for that unit only (a few
seconds with a warm compile cache). A failed unit is logged and dropped; the request it came from worked.
"""

from __future__ import annotations

import logging
import threading
import time

import anyio

from zimage_mcp.contract import Backend, BackgroundCompiling
from zimage_mcp.registry import Registry
from zimage_mcp.server.jobs import FifoLock

log = logging.getLogger(__name__)

IDLE_SECONDS = 0.5
POLL_SECONDS = 0.1


def compiling_backend(registry: Registry, variant_id: str) -> BackgroundCompiling | None:
    """The variant's built backend if it has compilation pending (what ``list_models`` shows as compiling)."""
    backend: Backend | None = registry.loaded_backend(variant_id)
    return backend if isinstance(backend, BackgroundCompiling) and backend.compile_pending() else None


def pending_backends(registry: Registry, given_up: set[int]) -> list[tuple[str, BackgroundCompiling]]:
    """Built backends with compilation pending, by variant id (a backend shared by aliases once), but for
    those given up on (they stay pending: their units raised)."""
    found: dict[int, tuple[str, BackgroundCompiling]] = {}
    for entry in registry.variants():
        backend = compiling_backend(registry, entry.spec.id)
        if backend is not None and id(backend) not in given_up:
            found.setdefault(id(backend), (entry.spec.id, backend))
    return list(found.values())


def compile_one_unit(registry: Registry, given_up: set[int], stopping: threading.Event) -> str | None:
    """Run one pending unit (the caller holds the GPU); what it compiled, for the log, or None. A backend
    whose unit raised is added to ``given_up`` and not asked again (its requests keep running eagerly).
    Once ``stopping`` is set, a unit that fails (the shutdown unloads its model under it) is not reported."""
    for variant_id, backend in pending_backends(registry, given_up):
        started = time.perf_counter()
        try:
            label = backend.compile_next()
        except Exception as e:  # noqa: BLE001 - a failed unit must not stop the server or later units
            given_up.add(id(backend))
            (log.debug if stopping.is_set() else log.warning)(
                "background compilation of %s failed (%s: %s); its new shapes stay eager until a restart",
                variant_id,
                type(e).__name__,
                e,
            )
            return None
        if label is not None:
            log.info("compiled %s in the background: %s (%.1f s)", variant_id, label, time.perf_counter() - started)
            return label
    return None


async def compile_when_idle(
    registry: Registry, lock: FifoLock, stopping: threading.Event, idle_seconds: float = IDLE_SECONDS
) -> None:
    """Forever: when the GPU has been idle for ``idle_seconds`` and a backend has a unit pending, run it.

    A unit runs on the registry's device thread (where requests run: the plans it builds are theirs), waited
    for by a daemon thread that releases the lock itself: a compilation cannot be interrupted, and a server
    asked to stop must not wait for one (tens of seconds with an empty compile cache)."""
    given_up: set[int] = set()
    while True:
        await anyio.sleep(POLL_SECONDS)
        if lock.idle_for() < idle_seconds or not pending_backends(registry, given_up) or not lock.try_acquire():
            continue
        done = threading.Event()

        def unit(done: threading.Event = done) -> None:
            try:
                registry.run_on_device(compile_one_unit, registry, given_up, stopping)
            finally:
                lock.release()
                done.set()

        threading.Thread(target=unit, name="zimage-compile", daemon=True).start()
        while not done.is_set():
            await anyio.sleep(POLL_SECONDS)
