"""The worker-thread side of one generation: load lazily, generate, save atomically; and error texts.

``jobs.py`` runs the ``Work`` function built here on a worker thread; it knows nothing of what it does.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
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
from zimage_mcp.server.tool_models import ImageInfo, ImageResult

if TYPE_CHECKING:
    from zimage_mcp.registry import Registry
    from zimage_mcp.server.jobs import Work
    from zimage_mcp.server.metrics import Metrics
    from zimage_mcp.server.preparation import Prepared
    from zimage_mcp.store import ImageStore, StoredImage


@dataclass(frozen=True)
class Outcome:
    """A finished generation: the structured result, the saved images (with bytes) and a summary line."""

    result: ImageResult
    images: list[tuple[StoredImage, bytes]]
    summary: str


def make_work(registry: Registry, store: ImageStore, metrics: Metrics, prepared: Prepared, fmt: str) -> Work:
    """The worker-thread function of one job: load (lazily), generate, then save each image atomically."""

    def work(progress: Callable[[str, int, int, str], None], should_stop: Callable[[], bool]) -> Outcome:
        started = time.perf_counter()
        backend_id = prepared.backend_id
        loaded = registry.is_loaded(backend_id)
        progress("loading", 0, 1, "weights ready" if loaded else f"loading weights for {backend_id}")
        backend = registry.backend(backend_id)
        load_s = time.perf_counter() - started
        progress("loading", 1, 1, "weights ready")
        result = backend.generate(prepared.request, progress, should_stop)
        if should_stop():
            raise GenerationCancelled("cancelled before saving")
        created = datetime.now(UTC).isoformat()
        saved: list[tuple[StoredImage, bytes]] = []
        for i, (png, seed) in enumerate(zip(result.images, result.seeds, strict=False)):
            progress("saving", i, len(result.images), f"saving image {i + 1}/{len(result.images)}")
            meta = {
                **prepared.params,
                "seed": seed,
                "width": result.width,
                "height": result.height,
                "timings": result.timings,
                "created": created,
                "notes": result.notes,
            }
            stored = store.save(png, fmt, meta)
            saved.append((stored, stored.path.read_bytes()))
        elapsed = time.perf_counter() - started
        metrics.observe_latency(prepared.variant_id, elapsed)
        timings = {"load": round(load_s, 3), **result.timings, "total": round(elapsed, 3)}
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
            notes=list(result.notes),
            output_format=fmt,
            **params,
        )
        paths = ", ".join(f"{s.path} (id {s.id}, seed {info.seed})" for (s, _), info in zip(saved, infos, strict=True))
        summary = (
            f"Saved {len(saved)} image(s) in {elapsed:.1f} s with {prepared.variant_id}, "
            f"{result.width}x{result.height}, {prepared.request.steps} steps: {paths}"
        )
        return Outcome(image_result, saved, summary)

    return work


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
