"""The GPU worker never waits for the event loop to send progress (issue 17: throughput under load)."""

from __future__ import annotations

import anyio
import pytest

from zimage_mcp.server.jobs import JobManager

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_a_stuck_progress_reader_never_holds_the_worker() -> None:
    jobs = JobManager(max_queue=4, timeout_seconds=60)
    job = jobs.create("z-image-turbo", steps=3)
    gate = anyio.Event()
    sent: list[float] = []

    async def report(value: float, total: float | None, message: str | None) -> None:
        sent.append(value)
        await gate.wait()  # the loop is busy elsewhere (another request's reply) for as long as the gate is shut

    def work(progress, should_stop) -> str:  # noqa: ANN001 (the Work callable's two arguments)
        for step in range(1, 4):
            progress("denoising", step, 3, f"step {step}/3")
        return "pixels"

    result: dict[str, str] = {}

    async def run() -> None:
        result["value"] = await jobs.run_inline(job, work, report)

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        with anyio.fail_after(20):
            while not job.finished.is_set():  # the worker ends while the first notification is still stuck
                await anyio.sleep(0.01)
        assert job.state == "done" and len(sent) <= 1 and not jobs.lock.held
        gate.set()
    assert result["value"] == "pixels"
    assert sent == sorted(sent) and len(sent) >= 4 and sent[-1] == job.total  # every step, in order, then done


async def test_a_job_nobody_asked_progress_of_still_records_it() -> None:
    """``report`` None (a stdio call without a progress token): no task sends progress, and ``get_job`` still
    sees each step and the end."""
    jobs = JobManager(max_queue=4, timeout_seconds=60)
    job = jobs.create("z-image-turbo", steps=3)
    seen: list[float] = []

    def work(progress, should_stop) -> str:  # noqa: ANN001 (the Work callable's two arguments)
        for step in range(1, 4):
            progress("denoising", step, 3, f"step {step}/3")
            seen.append(job.progress)
        return "pixels"

    with anyio.fail_after(20):
        assert await jobs.run_inline(job, work, None) == "pixels"
    assert seen == sorted(seen) and seen[0] < seen[-1] < job.total
    assert job.state == "done" and job.progress == job.total and job.message == "done" and not jobs.lock.held
