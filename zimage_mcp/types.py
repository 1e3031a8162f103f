"""Torch-free types shared by the server, the registry and the plugins.

Nothing here imports torch, the engine or the MCP SDK. The server talks to backends only through
these dataclasses and the ``Backend`` protocol; plugins adapt the engine to them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:
    from PIL.Image import Image

VariantKind = Literal["turbo", "base", "edit", "lora"]
EditMode = Literal["img2img", "inpaint", "control", "reference"]
Phase = Literal["queued", "loading", "encoding", "denoising", "decoding", "saving"]


@dataclass(frozen=True)
class Capabilities:
    """What a variant can do; the server routes ``edit_image`` by these flags."""

    generate: bool = True
    img2img: bool = False
    inpaint: bool = False
    control: bool = False
    reference_edit: bool = False

    def edit_modes(self) -> tuple[EditMode, ...]:
        modes: list[EditMode] = []
        if self.img2img:
            modes.append("img2img")
        if self.inpaint:
            modes.append("inpaint")
        if self.control:
            modes.append("control")
        if self.reference_edit:
            modes.append("reference")
        return tuple(modes)


@dataclass(frozen=True)
class Defaults:
    """Sampling defaults used when a request leaves a field out."""

    steps: int
    guidance: float
    shift: float
    width: int = 1024
    height: int = 1024
    strength: float = 0.6
    cfg_truncation: float = 1.0
    cfg_normalization: float = 0.0
    negative_prompt: str = ""


@dataclass(frozen=True)
class Limits:
    """Bounds a request must respect; checked by the server before any GPU work."""

    min_side: int = 256
    max_side: int = 2048
    size_multiple: int = 16
    min_steps: int = 1
    max_steps: int = 100
    min_guidance: float = 0.0
    max_guidance: float = 20.0
    max_count: int = 4
    max_reference_images: int = 0


@dataclass(frozen=True)
class WeightsLocation:
    """Where a variant's weights live: a Hugging Face repo id, a local folder, or a single file."""

    repo_id: str | None = None
    path: str | None = None
    single_file: str | None = None
    published: bool = True  # False: the repo id is announced but no weights are out yet
    controlnet: str | None = None  # a Fun-ControlNet-Union folder or single file that pairs with this variant


@dataclass(frozen=True)
class VariantSpec:
    """A variant backend as declared by a plugin and/or ``registry.toml``."""

    id: str
    title: str
    kind: VariantKind
    capabilities: Capabilities
    defaults: Defaults
    limits: Limits
    weights: WeightsLocation
    description: str = ""
    base: str | None = None  # for kind == "lora": the variant id this LoRA variant sits on
    lora: str | None = None  # for kind == "lora": the LoRA name
    shares: tuple[str, ...] = ()  # component groups shared with other variants ("text_encoder", "vae")


@dataclass(frozen=True)
class LoraSpec:
    """A LoRA adapter file registered by a plugin or found in the LoRA folder."""

    name: str
    file: str
    base: str | None = None
    scale: float = 1.0
    trigger_words: tuple[str, ...] = ()
    description: str = ""


@dataclass(frozen=True)
class LoraRef:
    """One adapter chosen for one request: the resolved file and the scale to apply."""

    name: str
    file: str
    scale: float


@dataclass(frozen=True)
class ControlHint:
    """A ControlNet hint: a ready-made hint image (or one to preprocess) and its weight."""

    type: str
    image: Image
    scale: float = 0.75


@dataclass(frozen=True)
class GenerationRequest:
    """One fully resolved request. Every optional field has been filled from the variant defaults."""

    prompt: str
    negative_prompt: str
    width: int
    height: int
    steps: int
    guidance: float
    seed: int
    count: int = 1
    shift: float | None = None
    cfg_truncation: float = 1.0
    cfg_normalization: float = 0.0
    loras: tuple[LoraRef, ...] = ()
    # Edit inputs (None for text-to-image). Images are already decoded, validated and in RGB.
    mode: EditMode | None = None
    image: Image | None = None
    mask: Image | None = None  # mode "L"; white = repaint
    strength: float = 1.0
    control: ControlHint | None = None
    reference_images: tuple[Image, ...] = ()


@dataclass
class GenerationResult:
    """What a backend hands back: encoded images, the seeds used, and timings in seconds."""

    images: list[bytes]  # PNG-encoded, full resolution
    seeds: list[int]
    width: int
    height: int
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # e.g. "input resized from 1000x750 to 1008x752"


ProgressCallback = Callable[[Phase, int, int, str], None]
"""``progress(phase, done, total, message)``: called from the worker thread."""

StopCheck = Callable[[], bool]
"""Returns True when the caller has cancelled; backends check it between denoising steps."""


class Backend(Protocol):
    """A loaded variant. Built lazily by a plugin factory and cached by the registry."""

    def generate(self, request: GenerationRequest, progress: ProgressCallback, should_stop: StopCheck) -> GenerationResult:
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
    """A backend that can compile ahead of the first request (``ZIMAGE_MCP_PRELOAD``); optional."""

    def warm_up(self, sizes: Sequence[tuple[int, int]]) -> Iterator[str]:
        """Run its default size and ``sizes`` once, yielding a label after each unit of work."""
        ...


@dataclass(frozen=True)
class BackendContext:
    """What a factory gets besides the spec: where things are and how to place them."""

    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:N"
    dtype: str = "bfloat16"
    optimize: str = "auto"  # "auto" | "compile" | "fuse" | "off"
    offload_text_encoder: bool = False
    fp8: bool = False  # fp8 GEMM weights in the DiT (CUDA, compute capability >= 8.9)
    step_cache: float = 0.0  # first-block cache threshold; 0 = off
    compile_cache_dir: str | None = None  # where torch.compile keeps its artefacts between runs
    hf_home: str | None = None
    lora_specs: tuple[LoraSpec, ...] = ()


BackendFactory = Callable[[VariantSpec, BackendContext], Backend]
