"""The hops between one call's marks (see ``sitecustomize.py`` here), as milliseconds per hop."""

from __future__ import annotations

import statistics

# The order a generate_image call passes the marks in; a hop is named by the mark that ends it.
ORDER = (
    "client_send",
    "request_parsed",  # the client's write, the pipe, the transport's reader thread and its JSON parse
    "job_submitted",  # the SDK's dispatch, argument validation, the request's preparation, the job's creation
    "job_thread",  # the hop to a worker thread
    "gpu_start",  # the FIFO lock and the hop to the device thread
    "gpu_end",  # the GPU part (the engine's phases, until the decode and the copy are queued)
    "cpu_start",  # the hop back to the job's thread
    "pixels_ready",  # waiting for the copy to the host, the row filter
    "save_start",  # submitting the previews
    "saved",  # encoding, writing (fsync), the sidecar and the index
    "job_finished",  # waiting for the previews, the result's fields
    "loop_resumed",  # the hop back to the event loop
    "result_start",
    "result_built",  # the result's JSON facts and content blocks
    "write_start",  # the SDK's serialisation of the result, the transport's JSON dump
    "client_recv",  # the hop to the writer thread, the write to the pipe, the client's read, parse and validation
)


def call_marks(trace: bytes, offset: int) -> dict[str, float]:
    """The first time of each mark in ``trace`` (the file's bytes, read once the calls are over, so that marks
    written late are in) of the call whose ``client_send`` is the first at or after byte ``offset`` (the file's
    size just before the client marked it: the server may have marked in between), up to the next call's."""
    marks: dict[str, float] = {}
    for line in trace[offset:].decode().splitlines():
        name, _, stamp = line.partition(" ")
        if name == ORDER[0] and marks:
            break
        if name == ORDER[0] or marks:
            marks.setdefault(name, float(stamp))
    return marks


def hops_ms(marks: dict[str, float]) -> dict[str, float]:
    """Each hop's milliseconds, for the marks present (a hop between two present marks in ``ORDER``)."""
    present = [name for name in ORDER if name in marks]
    return {b: round((marks[b] - marks[a]) * 1000, 3) for a, b in zip(present, present[1:], strict=False)}


def median_hops(calls: list[dict[str, float]]) -> dict[str, float]:
    names = [name for name in ORDER if any(name in c for c in calls)]
    return {n: round(statistics.median(c[n] for c in calls if n in c), 3) for n in names if n != ORDER[0]}
