"""The worker-thread side of one generation: load lazily, generate, then encode once and save atomically.

``jobs.py`` runs the ``SplitWork`` built here on a worker thread (the GPU part under the FIFO lock, the CPU
part after it); it knows nothing of what they do.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from zimage_mcp.contract import (
    BackendLoadError,
    GenerationCancelled,
    InvalidRequestError,
    NotInstalledError,
    OutOfMemoryError,
    UnsupportedEditError,
)
from zimage_mcp.server.heartbeat import Heartbeat
from zimage_mcp.server.jobs import SplitWork
from zimage_mcp.server.preview import Preview, PreviewMode, make_preview, worker_limit
from zimage_mcp.server.tool_models import ImageInfo, ImageResult
from zimage_mcp.store.png import nice_thread

if TYPE_CHECKING:
    from zimage_mcp.contract import GenerationResult, Pixels
    from zimage_mcp.registry import Registry
    from zimage_mcp.server.metrics import Metrics
    from zimage_mcp.server.preparation import Prepared
    from zimage_mcp.store import ImageStore, StoredImage


@dataclass(frozen=True)
class Outcome:
    """A finished generation: the structured result, the saved images with their pixels, previews, a summary."""

    result: ImageResult
    images: list[tuple[StoredImage, Pixels]]
    summary: str
    previews: list[Preview | None] = field(default_factory=list)  # built from the pixels beside the encoding


@dataclass(frozen=True)
class Generated:
    """What the GPU part hands the CPU part: the backend's result and when the job started."""

    result: GenerationResult
    started: float
    load_s: float


def make_work(
    registry: Registry,
    store: ImageStore,
    metrics: Metrics,
    prepared: Prepared,
    fmt: str,
    preview: PreviewMode = "none",
    preview_budget: int = 0,
) -> SplitWork:
    """One job in two parts. Under the GPU lock: load (lazily) and generate, until the backend returns (the
    engine's backend returns once the decode and the pixels' copy to the host are queued, so the next job's
    work queues behind them). After it: the pixels (waiting for them), then encode each image once and save
    it atomically, while the previews are built from the same pixels on the preview pool; the next job's GPU
    part runs meanwhile."""

    def gpu(progress: Callable[[str, int, int, str], None], should_stop: Callable[[], bool]) -> Generated:
        started = time.perf_counter()
        backend_id = prepared.backend_id
        loaded = registry.is_loaded(backend_id)
        # Loading and a first compile can each run 10-30 s with nothing to report: beat meanwhile.
        with Heartbeat(progress) as beat:
            beat("loading", 0, 1, "weights ready" if loaded else f"loading weights for {backend_id}")
            backend = registry.backend(backend_id)
            load_s = time.perf_counter() - started
            beat("loading", 1, 1, "weights ready")
            result = backend.generate(prepared.request, beat, should_stop)
        return Generated(result, started, load_s)

    def cpu(
        generated: Generated, progress: Callable[[str, int, int, str], None], should_stop: Callable[[], bool]
    ) -> Outcome:
        result, started = generated.result, generated.started
        gpu_s = time.perf_counter() - started
        if should_stop():
            raise GenerationCancelled("cancelled before saving")
        images = result.pixels()  # a backend's own conversion, now that the next job has the GPU
        created = datetime.now(UTC).isoformat()
        notes = [*prepared.notes, *result.notes]
        limit = worker_limit(preview_budget, len(images))
        previews = [_PREVIEWS.submit(make_preview, px, preview, limit) for px in images]
        saved: list[tuple[StoredImage, Pixels]] = []
        for i, (pixels, seed) in enumerate(zip(images, result.seeds, strict=False)):
            progress("saving", i, len(images), f"saving image {i + 1}/{len(images)}")
            meta = {
                **prepared.params,
                "seed": seed,
                "width": result.width,
                "height": result.height,
                "timings": result.timings,
                "created": created,
                "notes": notes,
            }
            saved.append((store.save(pixels, fmt, meta), pixels))
        ready = [f.result() for f in previews]
        elapsed = time.perf_counter() - started
        metrics.observe_latency(prepared.variant_id, elapsed)
        timings = {
            "load": round(generated.load_s, 3),
            **result.timings,
            "gpu": round(gpu_s, 3),  # the GPU lock was released here (the pixels may still be on their way)
            "image_encode": round(sum(s.timings.get("image_encode", 0.0) for s, _ in saved), 4),
            "save": round(sum(s.timings.get("save", 0.0) for s, _ in saved), 4),
            "total": round(elapsed, 3),
        }
        infos = [
            ImageInfo(
                id=s.id,
                uri=s.uri,
                path=str(s.path),
                mime_type=s.mime_type,
                width=result.width,
                height=result.height,
                seed=seed,
                size_bytes=s.size_bytes,
            )
            for (s, _), seed in zip(saved, result.seeds, strict=False)
        ]
        params = {**prepared.params, "width": result.width, "height": result.height}
        image_result = ImageResult(
            status="done",
            job_id="",
            images=infos,
            seeds=list(result.seeds),
            timings=timings,
            elapsed_seconds=round(elapsed, 3),
            notes=notes,
            output_format=fmt,
            **params,
        )
        paths = ", ".join(f"{s.path} (id {s.id}, seed {info.seed})" for (s, _), info in zip(saved, infos, strict=True))
        summary = (
            f"Saved {len(saved)} image(s) in {elapsed:.1f} s with {prepared.variant_id}, "
            f"{result.width}x{result.height}, {prepared.request.steps} steps: {paths}"
        ) + "".join(f". Note: {note}" for note in prepared.notes)
        return Outcome(image_result, saved, summary, ready)

    return SplitWork(gpu, cpu)


# beside the PNG encoding, and as nice as its workers
_PREVIEWS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="zimage-preview", initializer=nice_thread)


def describe_failure(exc: BaseException, timed_out: bool, timeout: float) -> str:
    """A short message the calling model can act on."""
    if timed_out:
        return f"generation timed out after {timeout:g} s (server limit); use fewer steps, a smaller size or wait=false"
    if isinstance(exc, OutOfMemoryError):
        detail = str(exc).removeprefix("out of GPU memory").lstrip(" :")
        return (
            f"out of GPU memory{': ' + detail if detail else ''}. "
            "Lower width/height, count or steps, or drop LoRAs, then retry"
        )
    if isinstance(exc, UnsupportedEditError):
        return f"this edit path is not available in the engine yet: {exc}"
    if isinstance(exc, (NotInstalledError, BackendLoadError, InvalidRequestError, GenerationCancelled)):
        return str(exc)
    first_line = (str(exc).strip().splitlines() or [""])[0][:300]
    return f"generation failed ({type(exc).__name__})" + (f": {first_line}" if first_line else "")
