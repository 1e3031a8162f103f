"""The engine replica: a Ray Serve deployment whose every replica owns a registry, its GPU and its backends.

One replica is one Ray actor process (one GPU on CUDA machines). It builds ``Registry.from_settings`` once,
so plugins and the catalogue are read where torch lives. Serve multiplexing keys each request by its
routing key (variant and LoRA set, see ``routing_key``), so requests reach replicas that already hold what
they need; the replica keeps the ``max_models_per_replica`` most recent keys. ``generate`` is a streaming
method: it yields ``("started", replica_id)``, then ``("progress", phase, done, total, message)`` events,
then ``("result", GenerationResult)`` or ``("error", class name, message)``. Cancelling the Ray request
sets the stop flag the engine checks between denoising steps.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import threading
from collections.abc import AsyncIterator
from typing import Any

from ray import serve

from zimage_mcp.contract import GenerationRequest
from zimage_mcp.registry import Registry, Settings
from zimage_mcp.scale.config import ScaleOptions

log = logging.getLogger(__name__)
Event = tuple[Any, ...]


def routing_key(variant_id: str, request: GenerationRequest) -> str:
    """The multiplexed model id: the backend's variant plus the sorted LoRA names (scales do not matter)."""
    names = sorted({lora.name for lora in request.loras})
    return variant_id + ("+" + ",".join(names) if names else "")


def variant_of(key: str) -> str:
    return key.partition("+")[0]


class _Held:
    """What multiplexing keeps per routing key: the variant's backend is cached by the replica's registry."""

    def __init__(self, key: str) -> None:
        self.key = key


class EngineReplica:
    """The deployment class; built by ``engine_app``. Its methods run on the replica's event loop."""

    def __init__(self, settings: Settings, options: ScaleOptions) -> None:
        # A replica has no idle-time compiler (its generations are admitted by the front), so a request that
        # needs a compilation pays for it there, as the engine does by default.
        self.registry = Registry.from_settings(dataclasses.replace(settings, compile_in_background=False))
        self.replica_id = _replica_id()

        async def _load_for_multiplex(key: str) -> _Held:
            # build or touch the backend, on the device thread where its generations will run
            await asyncio.to_thread(self.registry.run_on_device, self.registry.backend, variant_of(key))
            return _Held(key)

        self._hold = serve.multiplexed(max_num_models_per_replica=options.max_models_per_replica)(_load_for_multiplex)
        log.info("engine replica %s ready (pid %d)", self.replica_id, os.getpid())

    def pid(self) -> tuple[str, int, str]:
        """(replica id, process id, Ray node id): for tests and operators who want to know which is which."""
        import ray

        return self.replica_id, os.getpid(), ray.get_runtime_context().get_node_id()

    def held(self) -> list[str]:
        """The routing keys this replica holds now."""
        wrapper = getattr(self._hold, "__serve_multiplex_wrapper", None)
        return [] if wrapper is None else list(wrapper.models)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Event]:
        """Run one generation on a worker thread and stream its events (see the module docstring)."""
        key = serve.get_multiplexed_model_id()
        yield ("started", self.replica_id)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Event] = asyncio.Queue()
        stop = threading.Event()

        def progress(phase: str, done: int, total: int, message: str) -> None:
            loop.call_soon_threadsafe(events.put_nowait, ("progress", phase, done, total, message))

        def run() -> Event:
            try:
                result = self.registry.run_on_device(
                    lambda: self.registry.backend(variant_of(key)).generate(request, progress, stop.is_set)
                )
                result.pixels()  # plain bytes cross to the front, not the backend's own image objects
                return ("result", result)
            except Exception as exc:  # sent back as data: contract errors rebuild exactly in the front
                return ("error", type(exc).__name__, str(exc))

        try:
            await self._hold(key)
            task = loop.run_in_executor(None, run)
            while True:
                getter = asyncio.ensure_future(events.get())
                done, _ = await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
                if getter in done:
                    yield getter.result()
                    continue
                getter.cancel()
                while not events.empty():
                    yield events.get_nowait()
                yield task.result()
                return
        except (asyncio.CancelledError, GeneratorExit):
            stop.set()  # the engine stops within one step; the executor thread then ends on its own
            raise
        except Exception as exc:  # loading failed (not installed, build error)
            yield ("error", type(exc).__name__, str(exc))
        finally:
            stop.set()

    def check_health(self) -> None:
        """Serve calls this every ``health_check_period_s``; a failed backend build is not a dead replica."""


def _replica_id() -> str:
    with contextlib.suppress(Exception):
        return str(serve.get_replica_context().replica_id.unique_id)
    return f"pid-{os.getpid()}"


def engine_app(settings: Settings, options: ScaleOptions, cluster_gpus: float) -> Any:
    """The Serve application: the ``EngineReplica`` deployment bound to the settings and options."""
    deployment = serve.deployment(EngineReplica).options(**options.deployment_options(cluster_gpus))
    return deployment.bind(settings, options)


__all__ = ["EngineReplica", "engine_app", "routing_key"]
