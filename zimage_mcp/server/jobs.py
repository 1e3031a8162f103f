"""Jobs on one GPU: a FIFO lock held inside the worker thread, progress, cancellation, time-outs.

Every generation is a :class:`Job`. Its work runs on a worker thread; the thread first queues on
:class:`FifoLock` (telling its queue position through progress messages) and holds the lock until the
GPU part actually returns, so a cancelled call frees the GPU only once the engine has stopped. The GPU part
itself runs where ``on_device`` sends it (the registry's device thread, ``Registry.run_on_device``). A
:class:`SplitWork` then runs its CPU part (encoding, saving) on the same thread with the lock released,
so the next job's GPU part overlaps it; a plain ``work`` function holds the lock throughout.
``should_stop`` turns true when the caller cancels, when ``cancel_job`` is called, or when
``job_timeout_seconds`` has passed.

Progress is reported on one monotonic scale per job: ``total = steps + 4`` units (loading,
encoding, every denoising step, decoding, saving).
"""

from __future__ import annotations

import itertools
import secrets
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio
import anyio.to_thread

from zimage_mcp.contract import GenerationCancelled

JobState = Literal["queued", "running", "done", "failed", "cancelled"]
Reporter = Callable[[float, float, str], None]
AsyncReporter = Callable[[float, float | None, str | None], Awaitable[None]]
Progress = Callable[[str, int, int, str], None]
GpuWork = Callable[[Progress, Callable[[], bool]], Any]
OnDevice = Callable[..., Any]  # on_device(fn, *args) -> fn(*args), run where the device's work runs


@dataclass(frozen=True)
class SplitWork:
    """A job in two parts: ``gpu(progress, should_stop)`` under the FIFO lock, then
    ``cpu(gpu_result, progress, should_stop)`` once the lock is released."""

    gpu: GpuWork
    cpu: Callable[[Any, Progress, Callable[[], bool]], Any]


Work = GpuWork | SplitWork
PHASE_BASE = {"queued": 0.0, "loading": 0.0, "encoding": 1.0, "denoising": 2.0}


class QueueFullError(Exception):
    """More jobs are waiting than ``max_queue`` allows."""


class FifoLock:
    """A lock granted strictly in arrival order to at most ``holders`` at once; waiters can give up.

    One holder is one local GPU. With Ray Serve replicas (``zimage_mcp.scale``) the front admits as many
    generations as the replicas can run, still in arrival order.
    """

    def __init__(self, holders: int = 1) -> None:
        if holders < 1:
            raise ValueError("holders must be at least 1")
        self._cond = threading.Condition()
        self._queue: deque[object] = deque()
        self._holders = holders
        self._held = 0
        self._idle_since = time.monotonic()

    def reserve(self) -> object:
        """Take a place in line now (at submission), to be redeemed by ``acquire(..., ticket=)`` or ``cancel``."""
        ticket = object()
        with self._cond:
            self._queue.append(ticket)
        return ticket

    def cancel(self, ticket: object) -> None:
        """Give up a reserved place that will never be redeemed."""
        with self._cond:
            if ticket in self._queue:
                self._queue.remove(ticket)
                self._cond.notify_all()

    def acquire(
        self, on_position: Callable[[int], None], should_stop: Callable[[], bool], ticket: object | None = None
    ) -> bool:
        last = -1
        if ticket is None:
            ticket = self.reserve()
        while True:
            with self._cond:
                if self._held < self._holders and self._queue[0] is ticket:
                    self._queue.popleft()
                    self._held += 1
                    return True
                if should_stop():
                    self._queue.remove(ticket)
                    self._cond.notify_all()
                    return False
                position = self._queue.index(ticket) + min(self._held, 1)
            if position != last:
                on_position(position)
                last = position
            with self._cond:
                self._cond.wait(0.05)

    def try_acquire(self) -> bool:
        """Take the lock only if it is free and nobody waits (for housekeeping such as idle unload)."""
        with self._cond:
            if self._held or self._queue:
                return False
            self._held = 1
            return True

    def release(self) -> None:
        with self._cond:
            self._held = max(0, self._held - 1)
            if not self._held:
                self._idle_since = time.monotonic()
            self._cond.notify_all()

    def idle_for(self) -> float:
        """Seconds since the last holder released it while nobody holds it or waits; 0.0 otherwise."""
        with self._cond:
            return 0.0 if self._held or self._queue else time.monotonic() - self._idle_since

    @property
    def waiting(self) -> int:
        with self._cond:
            return len(self._queue)

    @property
    def held(self) -> bool:
        return self._held > 0


@dataclass
class Job:
    """One request's lifecycle; read by ``get_job``."""

    id: str
    model: str
    total: float
    timeout: float
    state: JobState = "queued"
    progress: float = 0.0
    message: str = "queued"
    result: Any = None
    context: Any = None  # what the caller needs to present the result (set by the server)
    error: BaseException | None = None
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished_at: float | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    finished: threading.Event = field(default_factory=threading.Event)
    timed_out: bool = False
    ticket: int = 0  # arrival order at the GPU queue (FIFO: lower tickets start first)
    enqueued: float = field(default_factory=time.monotonic)
    failure_recorded: bool = False
    slot: object = None  # the place in the FIFO lock's line, reserved at submission
    executing: bool = False
    abandoned: bool = False

    def queue_info(self) -> dict[str, Any]:
        """Queue order and timing for results: ticket, wall-clock submit/start times, seconds waited."""
        wait = None if self.started is None else max(0.0, self.started - self.enqueued)
        started_at = None if self.started is None else self.created + (self.started - self.enqueued)
        return {
            "queue_ticket": self.ticket,
            "submitted_at": self.created,
            "started_at": started_at,
            "queue_wait_seconds": wait,
        }

    def should_stop(self) -> bool:
        if self.started is not None and time.monotonic() - self.started > self.timeout:
            self.timed_out = True
            self.stop.set()
        return self.stop.is_set()


def _unreported(value: float, total: float, message: str) -> None:
    """The reporter of a job nobody listens to: its caller asked for no progress, or it runs in the background
    (``get_job`` reads the progress the job records itself)."""


PROGRESS_PERIOD = 0.02  # seconds between progress sends: finer than one denoising step on any GPU


class ProgressMailbox:
    """One job's progress, written by its worker thread without waiting and sent in order by the event loop."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: deque[tuple[float, float, str]] = deque()

    def put(self, value: float, total: float, message: str) -> None:
        with self._lock:
            self._pending.append((value, total, message))

    async def send_pending(self, report: AsyncReporter) -> None:
        """Send everything put since the last call, oldest first (every step and phase is kept)."""
        with self._lock:
            batch = list(self._pending)
            self._pending.clear()
        for value, total, message in batch:
            try:
                await report(value, total, message)
            except Exception:  # the caller may be gone (cancelled); progress is best effort
                return


class JobManager:
    """Owns the GPU lock and the table of jobs (kept for ``get_job`` until ``keep`` newer ones exist)."""

    def __init__(
        self,
        max_queue: int,
        timeout_seconds: float,
        keep: int = 200,
        max_concurrent: int = 1,
        on_device: OnDevice | None = None,
    ) -> None:
        self.lock = FifoLock(max_concurrent)
        # Where GPU parts run (``Registry.run_on_device``: one long-lived thread); None: the job's own thread.
        self._on_device: OnDevice = on_device or (lambda fn, *args: fn(*args))
        self.max_queue = max_queue
        self.timeout_seconds = timeout_seconds
        self._keep = keep
        self._jobs: dict[str, Job] = {}
        self._active = 0
        self._guard = threading.Lock()
        self._tickets = itertools.count(1)

    @property
    def queue_depth(self) -> int:
        """Jobs submitted and not finished (running or waiting)."""
        return self._active

    def get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    def create(self, model: str, steps: int) -> Job:
        with self._guard:
            if self._active >= self.max_queue:
                raise QueueFullError(f"the GPU queue is full ({self._active} jobs waiting or running)")
            self._active += 1
            job = Job(secrets.token_hex(6), model, float(steps + 4), self.timeout_seconds, ticket=next(self._tickets))
            job.slot = self.lock.reserve()  # FIFO in submission order, not in thread start order
            self._jobs[job.id] = job
            for old in list(self._jobs)[: max(0, len(self._jobs) - self._keep)]:
                if self._jobs[old].finished.is_set():
                    del self._jobs[old]
        return job

    def execute(self, job: Job, work: Work, report: Reporter) -> Any:
        """Run ``work`` for ``job`` on the current (worker) thread; always finishes the job."""
        steps = job.total - 4

        reported = False

        def emit(value: float, message: str, final: bool = False) -> None:
            # Strictly increasing values (the spec's MUST), capped below the total until the end.
            nonlocal reported
            if reported:
                value = max(value, job.progress + 1e-3)
            value = min(value, job.total if final else job.total - 0.01)
            if reported and value <= job.progress:
                return
            job.progress, job.message, reported = value, message, True
            report(value, job.total, message)

        def on_phase(phase: str, done: int, total: int, message: str) -> None:
            if phase == "denoising":
                value = 2.0 + steps * (done / total if total else 0.0)
            elif phase == "decoding":
                value = 2.0 + steps + 1.0 * (done / total if total else 1.0)
            elif phase == "saving":
                value = 3.0 + steps + (done / total if total else 1.0)
            else:
                value = PHASE_BASE.get(phase, 0.0) + (done / total if total else 0.0)
            emit(value, message or phase)

        def on_position(position: int) -> None:
            emit(0.0, f"waiting for the GPU: position {position} in queue")

        with self._guard:
            if job.abandoned:
                raise GenerationCancelled("cancelled before it started")
            job.executing = True
        try:
            if not self.lock.acquire(on_position, job.stop.is_set, ticket=job.slot):
                raise GenerationCancelled("cancelled while waiting in the queue")
            try:
                job.state, job.started = "running", time.monotonic()
                gpu = work.gpu if isinstance(work, SplitWork) else work
                result = self._on_device(gpu, on_phase, job.should_stop)
            finally:
                self.lock.release()  # the GPU part returned: the next job may use (or queue work on) the GPU
            if isinstance(work, SplitWork):
                if job.stop.is_set():
                    raise GenerationCancelled("cancelled before saving")
                result = work.cpu(result, on_phase, job.should_stop)
            job.result = result
            if job.stop.is_set():
                raise GenerationCancelled("cancelled")
            job.state = "done"
            emit(job.total, "done", final=True)
            return job.result
        except BaseException as exc:
            job.error = exc
            job.state = "cancelled" if isinstance(exc, GenerationCancelled) or job.stop.is_set() else "failed"
            raise
        finally:
            job.finished_at = time.time()
            with self._guard:
                self._active -= 1
            job.finished.set()

    async def run_inline(self, job: Job, work: Work, report: AsyncReporter | None) -> Any:
        """Run a job on a worker thread and wait; cancelling the caller stops the engine.

        The worker never waits for the event loop: it leaves its progress in a mailbox, and a task on the
        loop sends what arrived every ``PROGRESS_PERIOD`` seconds, in order, then once more at the end.
        A blocking hand-off per step stalled the GPU thread behind other requests' replies (with 4 in
        flight on an H200: 1076 ms per image for 811 ms of GPU work).
        ``report`` None: the caller asked for no progress, so no task sends it (the job still records it
        for ``get_job``); the task's wake-ups and its teardown cost about 0.3 ms a call (RESULTS §23).
        """
        try:
            if report is None:
                return await anyio.to_thread.run_sync(self.execute, job, work, _unreported, abandon_on_cancel=True)
            return await self._run_reporting(job, work, report)
        except anyio.get_cancelled_exc_class():
            job.stop.set()
            self.abandon(job)
            raise

    async def _run_reporting(self, job: Job, work: Work, report: AsyncReporter) -> Any:
        mailbox = ProgressMailbox()

        async def pump() -> None:
            while True:
                await mailbox.send_pending(report)
                await anyio.sleep(PROGRESS_PERIOD)

        async with anyio.create_task_group() as tg:
            tg.start_soon(pump)
            try:
                return await anyio.to_thread.run_sync(self.execute, job, work, mailbox.put, abandon_on_cancel=True)
            finally:
                tg.cancel_scope.cancel()
                with anyio.CancelScope(shield=True):
                    await mailbox.send_pending(report)  # the final value, before the result goes out

    def abandon(self, job: Job) -> None:
        """Finish a job whose worker never started (cancelled before the thread ran): free its place."""
        with self._guard:
            if job.executing or job.abandoned:
                return
            job.abandoned = True
            self._active -= 1
        self.lock.cancel(job.slot)
        job.state, job.finished_at = "cancelled", time.time()
        job.error = GenerationCancelled("cancelled before it started")
        job.finished.set()

    def start_background(self, job: Job, work: Work) -> None:
        """Run a job on its own thread for ``wait=false`` calls; results are read through ``get``."""

        def run() -> None:
            try:
                self.execute(job, work, _unreported)
            except BaseException:
                pass  # recorded on the job

        threading.Thread(target=run, name=f"zimage-job-{job.id}", daemon=True).start()

    def cancel(self, job_id: str) -> Job | None:
        job = self._jobs.get(job_id)
        if job is not None and not job.finished.is_set():
            job.stop.set()
        return job
