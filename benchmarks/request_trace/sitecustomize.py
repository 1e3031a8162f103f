"""Where one request's wall time goes inside the real server, outside the engine's own phases.

Put this folder on the server's ``PYTHONPATH`` and set ``ZIMAGE_BENCH_REQUEST_TRACE`` to a file:

    PYTHONPATH=benchmarks/request_trace ZIMAGE_BENCH_REQUEST_TRACE=/tmp/marks.txt \
        python3 benchmarks/bench_server.py --sections latency

Python imports a ``sitecustomize`` module at start-up, so every process of the run loads this one; without the
variable it does nothing. In the server it wraps the functions a ``generate_image`` call passes through, in
order, and appends one line per mark, ``<name> <time.time()>``, with an ``O_APPEND`` write (whole lines from
several processes and threads do not interleave). The client (``bench_server.py``) marks ``client_send`` and
``client_recv`` in the same file, so ``spans.py`` can split the client's wall time into the hops between marks.
Wall-clock marks compare across processes on one machine. Nothing of the product reads it: benchmarks only.
Calls must run one at a time (the latency section) for the marks to pair up.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any

TRACE = os.environ.get("ZIMAGE_BENCH_REQUEST_TRACE")
PARTS = ("zimage_mcp.server.stdio_transport", "zimage_mcp.server.jobs", "zimage_mcp.server.tools")


def mark(name: str) -> None:
    assert TRACE is not None
    fd = os.open(TRACE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{name} {time.time():.6f}\n".encode())
    finally:
        os.close(fd)


def _wrap_calls(owner: Any, attr: str, before: str, after: str) -> None:
    inner = getattr(owner, attr)

    def traced(*args: Any, **kwargs: Any) -> Any:
        mark(before)
        try:
            return inner(*args, **kwargs)
        finally:
            mark(after)

    setattr(owner, attr, traced)


def _install() -> None:
    from zimage_mcp.contract import GenerationResult
    from zimage_mcp.server import generation, jobs, stdio_transport, tools
    from zimage_mcp.store import ImageStore

    classify = stdio_transport.classify

    def traced_classify(line: bytes) -> Any:
        message = classify(line)
        if b'"generate_image"' in line:
            mark("request_parsed")
        return message

    stdio_transport.classify = traced_classify  # the reader looks it up at each line

    write_line = stdio_transport.write_line

    async def traced_write_line(wire: Any, line: bytes) -> None:
        # Progress notifications carry no structured content, a tool's result does. No mark after the write: on
        # a busy host the client had read the line and sent its next call by then.
        if b'"structuredContent"' in line:
            mark("write_start")
        await write_line(wire, line)

    stdio_transport.write_line = traced_write_line  # looked up at each line

    run_inline = jobs.JobManager.run_inline

    async def traced_run_inline(self: Any, *args: Any, **kwargs: Any) -> Any:
        mark("job_submitted")
        try:
            return await run_inline(self, *args, **kwargs)
        finally:
            mark("loop_resumed")

    jobs.JobManager.run_inline = traced_run_inline
    _wrap_calls(jobs.JobManager, "execute", "job_thread", "job_finished")
    _wrap_calls(GenerationResult, "pixels", "cpu_start", "pixels_ready")
    _wrap_calls(ImageStore, "save", "save_start", "saved")
    _wrap_calls(tools.ImageTools, "_job_result", "result_start", "result_built")

    make_work = generation.make_work

    def traced_make_work(*args: Any, **kwargs: Any) -> Any:
        work = make_work(*args, **kwargs)
        gpu = work.gpu

        def traced_gpu(*a: Any) -> Any:
            mark("gpu_start")
            try:
                return gpu(*a)
            finally:
                mark("gpu_end")

        return type(work)(traced_gpu, work.cpu)

    tools.make_work = traced_make_work  # imported by name there
    mark("installed")


def _wait_for_server(deadline_s: float = 300.0) -> None:
    """Poll until the server's modules are fully imported (``serve`` imports them lazily), then wrap them."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        loaded = [sys.modules.get(name) for name in PARTS]
        if all(loaded) and hasattr(loaded[-1], "register_tools") and hasattr(loaded[0], "run_stdio"):
            _install()
            return
        time.sleep(0.005)


if TRACE and "serve" in sys.argv:  # the server (`python -m zimage_mcp serve`), not the client or the engine's child
    threading.Thread(target=_wait_for_server, name="request-trace", daemon=True).start()
