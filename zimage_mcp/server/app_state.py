"""What the tools share: settings, registry, store, the job queue and the metrics."""

from __future__ import annotations

from dataclasses import dataclass, field

from zimage_mcp.registry import Registry, Settings
from zimage_mcp.server.jobs import JobManager
from zimage_mcp.server.metrics import Metrics
from zimage_mcp.store import ImageStore


@dataclass
class AppState:
    """Everything the tools share. Built once per process (the HTTP lifespan runs once too)."""

    settings: Settings
    registry: Registry
    store: ImageStore
    jobs: JobManager
    metrics: Metrics = field(default_factory=Metrics)
    preload: dict[str, str] | None = None  # variant -> "ready" or its error, once [runtime] preload is done
    # True when every request comes over JSON-RPC on stdio, where a call that wants progress carries a progress
    # token in its ``_meta`` (``serve`` sets it). In memory the SDK calls the client's callback directly and the
    # request shows nothing of it, so progress is always sent there, and over HTTP too.
    progress_token_in_meta: bool = False
