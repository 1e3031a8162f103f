"""The backend protocol: what a plugin's factory builds and the server calls, and what it is built with."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

from zimage_mcp.contract.request import GenerationRequest, GenerationResult
from zimage_mcp.contract.variant import VariantSpec

Phase = Literal["queued", "loading", "encoding", "denoising", "decoding", "saving"]

ProgressCallback = Callable[[Phase, int, int, str], None]
"""``progress(phase, done, total, message)``: called from the worker thread."""

StopCheck = Callable[[], bool]
"""Returns True when the caller has cancelled; backends check it between denoising steps."""


class Backend(Protocol):
    """A loaded variant. Built lazily by a plugin factory and cached by the registry."""

    def generate(
        self, request: GenerationRequest, progress: ProgressCallback, should_stop: StopCheck
    ) -> GenerationResult:
        """Run one request. Raises ``GenerationCancelled`` if ``should_stop`` turned true."""
        ...

    def unload(self) -> None:
        """Free every device buffer this backend owns (shared components are reference counted)."""
        ...

    def vram_bytes(self) -> int:
        """Bytes of device memory the backend holds once loaded (an estimate before loading)."""
        ...


@runtime_checkable
class WarmableBackend(Protocol):
    """A backend that can compile ahead of the first request (``[runtime] preload``); optional."""

    def warm_up(self, sizes: Sequence[tuple[int, int]]) -> Iterator[str]:
        """Run its default size and ``sizes`` once, yielding a label after each unit of work."""
        ...


@runtime_checkable
class BackgroundCompiling(Protocol):
    """A backend that runs inputs it has not compiled for eagerly and compiles them later, one unit at a time,
    when the server finds the GPU idle (``BackendContext.defer_compile``); optional."""

    def compile_pending(self) -> bool:
        """Whether requests ran eagerly that a compilation unit would speed up."""
        ...

    def compile_next(self) -> str | None:
        """Run one unit of that compilation (the caller holds the GPU); its label, or None if none was left."""
        ...


@dataclass(frozen=True)
class BackendContext:
    """What a factory gets besides the spec: where things are and how to place them."""

    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:N"
    dtype: str = "bfloat16"
    vae_dtype: str = "auto"  # "auto": the model dtype on CUDA, float32 on the CPU; or a dtype name
    optimize: str = "auto"  # "auto" | "compile" | "fuse" | "off"
    offload_text_encoder: bool = False
    fp8: bool = False  # fp8 GEMM weights in the DiT (CUDA, compute capability >= 8.9)
    step_cache: float = 0.0  # first-block cache threshold; 0 = off
    compile_cache_dir: str | None = None  # base folder for torch.compile artefacts kept between runs
    compile_cache_explicit: bool = False  # set by the user ([runtime] compile_cache): wins over TORCHINDUCTOR_CACHE_DIR
    gpu_memory_limit_gb: float | None = None  # test only: emulate a smaller card (CUDA memory fraction)
    # Requests run new shapes eagerly and the backend compiles them later (BackgroundCompiling), in time the
    # server finds the GPU idle; False: the request that needs a compilation waits for it.
    defer_compile: bool = False
    hf_home: str | None = None


BackendFactory = Callable[[VariantSpec, BackendContext], Backend]
