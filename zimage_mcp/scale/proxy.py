"""The front's side: ``RayBackend`` (a ``Backend`` that runs each generation on a replica) and ``RayRegistry``.

The front keeps its MCP server, jobs, store and metrics; only ``Registry.backend`` changes: it hands out
one ``RayBackend`` per variant instead of building the engine in this process. ``generate`` sends the
request through the deployment handle (``multiplexed_model_id`` = the routing key, ``stream=True``),
forwards the replica's progress events, cancels the Ray request when ``should_stop`` turns true, and
re-sends once (``[ray] retries``) when the replica dies mid-request.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import ray.exceptions
from ray.serve.exceptions import DeploymentUnavailableError, ReplicaUnavailableError, RequestCancelledError

from zimage_mcp.contract import (
    Backend,
    GenerationCancelled,
    GenerationRequest,
    GenerationResult,
    ProgressCallback,
    StopCheck,
    ZImageMCPError,
)
from zimage_mcp.contract import errors as contract_errors
from zimage_mcp.registry import Registry
from zimage_mcp.scale.replica import routing_key
from zimage_mcp.scale.stats import ReplicaStats

T = TypeVar("T")

log = logging.getLogger(__name__)
POLL_SECONDS = 0.05
LOST = (
    ray.exceptions.RayActorError,
    ray.exceptions.ActorUnavailableError,
    ray.exceptions.WorkerCrashedError,
    ray.exceptions.NodeDiedError,
    ReplicaUnavailableError,
    DeploymentUnavailableError,
)
CANCELLED = (RequestCancelledError, ray.exceptions.TaskCancelledError)


class ReplicaLostError(ZImageMCPError):
    """The replica running a generation died (its process or node), and the retries are used up."""


class ReplicaError(ZImageMCPError):
    """A replica raised an error that is none of the contract's; the message names its class."""


class RayBackend:
    """A ``Backend`` whose ``generate`` runs on an engine replica; ``unload``/``vram_bytes`` are the replicas'."""

    def __init__(self, handle: Any, variant_id: str, stats: ReplicaStats, retries: int = 1) -> None:
        self.handle = handle
        self.variant_id = variant_id
        self.stats = stats
        self.retries = retries

    def generate(
        self, request: GenerationRequest, progress: ProgressCallback, should_stop: StopCheck
    ) -> GenerationResult:
        key = routing_key(self.variant_id, request)
        for attempt in range(self.retries + 1):
            try:
                return self._once(key, request, progress, should_stop)
            except ReplicaLostError as exc:
                if attempt == self.retries or should_stop():
                    raise
                log.warning("%s; sending the request again (%d/%d)", exc, attempt + 1, self.retries)
                progress("loading", 0, 1, "the replica was lost; retrying on another one")
        raise AssertionError("unreachable")

    def _once(
        self, key: str, request: GenerationRequest, progress: ProgressCallback, should_stop: StopCheck
    ) -> GenerationResult:
        stream = self.handle.options(multiplexed_model_id=key, stream=True).generate.remote(request)
        events: queue.Queue[tuple[Any, ...]] = queue.Queue()
        threading.Thread(target=_pump, args=(stream, events), name="zimage-ray-stream", daemon=True).start()
        replica = ""
        self.stats.sent()
        started = time.perf_counter()
        try:
            while True:
                if should_stop():
                    stream.cancel()  # the replica's generator is cancelled: its stop flag is set
                    raise GenerationCancelled("cancelled")
                try:
                    event = events.get(timeout=POLL_SECONDS)
                except queue.Empty:
                    continue
                kind = event[0]
                if kind == "started":
                    replica = event[1]
                    self.stats.assigned(replica)
                elif kind == "progress":
                    progress(*event[1:])
                elif kind == "result":
                    self.stats.finished(replica, time.perf_counter() - started)
                    return event[1]
                elif kind == "error":
                    raise _rebuilt(event[1], event[2])
                elif kind == "raised":
                    raise _translated(event[1], replica)
                else:  # "end" without a result
                    raise ReplicaLostError(f"replica {replica or '?'} closed the stream without a result")
        except ReplicaLostError:
            self.stats.lost(replica)
            raise
        finally:
            self.stats.done(replica)

    def unload(self) -> None:
        """Nothing to free here: each replica's registry releases its own backends (VRAM budget, idle time)."""

    def vram_bytes(self) -> int:
        return 0


def _pump(stream: Any, events: queue.Queue[tuple[Any, ...]]) -> None:
    """Read the response stream on its own thread, so the caller can poll ``should_stop`` meanwhile."""
    try:
        for event in stream:
            events.put(event)
        events.put(("end",))
    except BaseException as exc:  # noqa: BLE001 - handed to the caller, which decides
        events.put(("raised", exc))


def _translated(exc: BaseException, replica: str) -> BaseException:
    if isinstance(exc, CANCELLED):
        return GenerationCancelled("cancelled")
    if isinstance(exc, LOST):
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        return ReplicaLostError(f"engine replica {replica or '(not yet assigned)'} died: {type(exc).__name__}: {first}")
    return exc


def _rebuilt(name: str, message: str) -> BaseException:
    """The replica's error as the same contract class (so ``describe_failure`` words it the same)."""
    cls = getattr(contract_errors, name, None)
    if isinstance(cls, type) and issubclass(cls, ZImageMCPError):
        exc = cls.__new__(cls)
        Exception.__init__(exc, message)
        if name == "InvalidRequestError":
            exc.field = message.partition(":")[0]  # type: ignore[attr-defined]
        return exc
    return ReplicaError(f"{name}: {message}")


class RayRegistry(Registry):
    """The front's registry under ``--ray``: resolution and listing as usual, backends are ``RayBackend``s."""

    def prepare_plugins(self) -> None:
        """Nothing to prepare here: the front runs no engine, each replica prepares as it loads."""

    def run_on_device(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Inline on the caller's thread: the front has no device, and its ``max_concurrent`` generations
        run on the replicas at once (each replica's registry runs them on its own device thread)."""
        return fn(*args, **kwargs)

    def attach(self, handle: Any, stats: ReplicaStats, retries: int, max_concurrent: int) -> None:
        self._handle = handle
        self.stats = stats
        self._retries = retries
        self.max_concurrent = max_concurrent  # what JobManager(max_concurrent=) should admit
        self._proxies: dict[str, RayBackend] = {}
        self._proxy_lock = threading.Lock()

    def backend(self, variant_id: str) -> Backend:
        entry = self.resolve(variant_id)
        target = self.lora_variant_target(entry.spec.id)
        vid = target[0] if target else entry.spec.id
        with self._proxy_lock:
            if vid not in self._proxies:
                self._proxies[vid] = RayBackend(self._handle, vid, self.stats, self._retries)
            return self._proxies[vid]

    def is_loaded(self, variant_id: str) -> bool:
        """Whether this front has sent the variant to the replicas before (they load on first use)."""
        target = self.lora_variant_target(variant_id)
        return (target[0] if target else self.resolve(variant_id).spec.id) in self._proxies
