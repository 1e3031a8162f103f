"""The GPU queue: FIFO order, queue positions, cancellation, time-outs, monotonic progress."""

from __future__ import annotations

import threading
import time

import anyio
import pytest

from tests.server_fixtures import anyio_backend  # noqa: F401
from zimage_mcp.contract import GenerationCancelled
from zimage_mcp.server.generation import describe_failure
from zimage_mcp.server.jobs import FifoLock, JobManager, QueueFullError


def _steps_work(steps: int, delay: float = 0.0):  # type: ignore[no-untyped-def]
    def work(progress, should_stop):  # type: ignore[no-untyped-def]
        progress("loading", 0, 1, "loading")
        progress("encoding", 0, 1, "encoding")
        for i in range(steps):
            if should_stop():
                raise GenerationCancelled("stopped")
            time.sleep(delay)
            progress("denoising", i + 1, steps, f"step {i + 1}")
        progress("decoding", 0, 1, "decoding")
        return "ok"

    return work


def _until(condition, bound: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    """Wait for a state change; the bound only keeps a broken build from hanging the suite."""
    deadline = time.monotonic() + bound
    while not condition():
        assert time.monotonic() < deadline, "state never reached"
        time.sleep(0.005)


def _wait_for_stop(started: threading.Event | None = None):  # type: ignore[no-untyped-def]
    """Work that runs until it is told to stop (a cancel or the time-out): it can never finish first."""

    def work(progress, should_stop):  # type: ignore[no-untyped-def]
        progress("denoising", 0, 1, "step 0")
        if started is not None:
            started.set()
        never, deadline = threading.Event(), time.monotonic() + 20  # a hang guard, not a threshold
        while not should_stop():
            if time.monotonic() > deadline:
                return "never told to stop"
            never.wait(0.005)
        raise GenerationCancelled("stopped")

    return work


def test_fifo_lock_grants_in_arrival_order() -> None:
    lock = FifoLock()
    assert lock.acquire(lambda _: None, lambda: False)
    order: list[int] = []
    positions: list[int] = []

    def waiter(n: int) -> None:
        lock.acquire(positions.append if n == 2 else (lambda _: None), lambda: False)
        order.append(n)
        lock.release()

    threads = []
    for n in range(3):
        t = threading.Thread(target=waiter, args=(n,))
        t.start()
        threads.append(t)
        _until(lambda n=n: lock.waiting == n + 1)  # waiter n is in line before waiter n + 1 starts
    lock.release()
    for t in threads:
        t.join(5)
    assert order == [0, 1, 2]
    assert positions[0] == 3 and positions == sorted(positions, reverse=True)


def test_progress_is_monotonic_and_ends_at_total() -> None:
    jobs = JobManager(4, 60)
    job = jobs.create("m", 5)
    seen: list[tuple[float, float, str]] = []
    assert jobs.execute(job, _steps_work(5), lambda v, t, m: seen.append((v, t, m))) == "ok"
    values = [v for v, _, _ in seen]
    assert values == sorted(values) and len(set(values)) == len(values)
    assert seen[-1][0] == seen[-1][1] == job.total == 9
    assert job.state == "done" and not jobs.lock.held and jobs.queue_depth == 0


def test_timeout_stops_the_job_and_frees_the_lock() -> None:
    jobs = JobManager(4, 0.2)
    job = jobs.create("m", 100)
    with pytest.raises(GenerationCancelled):
        jobs.execute(job, _wait_for_stop(), lambda *_: None)  # only the time-out can end it
    assert job.timed_out and job.state == "cancelled" and not jobs.lock.held
    assert "timed out" in describe_failure(job.error, job.timed_out, 0.2)  # type: ignore[arg-type]


def test_queue_limit() -> None:
    jobs = JobManager(1, 60)
    jobs.create("m", 1)
    with pytest.raises(QueueFullError, match="queue is full"):
        jobs.create("m", 1)


@pytest.mark.anyio
@pytest.mark.parametrize("reported", [True, False], ids=["progress", "no_progress"])
async def test_cancelling_the_caller_stops_the_worker(reported: bool) -> None:
    jobs = JobManager(4, 60)
    job = jobs.create("m", 200)

    async def report(v: float, t: float | None, m: str | None) -> None:
        pass

    started = threading.Event()
    async with anyio.create_task_group() as tg:

        async def caller() -> None:
            await jobs.run_inline(job, _wait_for_stop(started), report if reported else None)

        tg.start_soon(caller)
        await anyio.to_thread.run_sync(started.wait, 30)
        assert job.state == "running"
        tg.cancel_scope.cancel()  # the caller goes away while the worker runs
    assert job.stop.is_set()
    await anyio.to_thread.run_sync(job.finished.wait, 5)
    assert job.state == "cancelled" and not jobs.lock.held


def test_background_job_and_cancel() -> None:
    jobs = JobManager(4, 60)
    job = jobs.create("m", 200)
    started = threading.Event()
    jobs.start_background(job, _wait_for_stop(started))
    assert started.wait(30) and job.state == "running"
    jobs.cancel(job.id)
    assert job.finished.wait(5) and job.state == "cancelled" and not jobs.lock.held
