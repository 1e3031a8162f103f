"""One generation as it crosses from the server to a backend, and what comes back."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from zimage_mcp.contract.variant import EditMode

if TYPE_CHECKING:
    from PIL.Image import Image


@dataclass(frozen=True)
class LoraRef:
    """One adapter chosen for one request: the resolved file and the scale to apply."""

    name: str
    file: str
    scale: float
    base: str | None = None  # the variant the LoRA declares it was trained on (sidecar or plugin), if any


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


@dataclass(frozen=True)
class Pixels:
    """One image as 8-bit RGB, row-major (``width * height * 3`` bytes): what the engine holds after decoding.

    The server encodes it once (with the metadata) and builds the preview from it; nothing decodes a file.
    """

    width: int
    height: int
    data: bytes
    # Optional: the same rows as PNG scanlines with the Sub filter (``height * (1 + width * 3)`` bytes: a
    # filter byte 1, then each byte minus the one 3 to its left, mod 256). A backend that can compute them
    # without holding the GIL (numpy) saves the PNG writer its only pass that holds it.
    png_rows: bytes | bytearray | None = None

    def __post_init__(self) -> None:
        if len(self.data) != self.width * self.height * 3:
            raise ValueError(f"{len(self.data)} bytes is not {self.width}x{self.height} RGB8")
        if self.png_rows is not None and len(self.png_rows) != self.height * (1 + self.width * 3):
            raise ValueError(f"{len(self.png_rows)} bytes are not {self.height} Sub-filtered rows of {self.width} px")


@dataclass
class GenerationResult:
    """What a backend hands back: the images as RGB8 pixels, the seeds used, and timings in seconds.

    An image may also be a callable that makes its ``Pixels``: the server calls it after the GPU lock is
    released, so a backend's conversion from its own image type (and any PNG row filtering, and waiting for
    the GPU to finish the image) does not hold the GPU while the next request waits. ``pixels()`` resolves
    them; a backend may add to ``timings`` until then (the server reads them after ``pixels()``).
    """

    images: list[Pixels | Callable[[], Pixels]]  # full resolution, not encoded
    seeds: list[int]
    width: int
    height: int
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # e.g. "input resized from 1000x750 to 1008x752"

    def pixels(self) -> list[Pixels]:
        """The images as ``Pixels``, each callable called once (the result keeps what it made)."""
        made = [image if isinstance(image, Pixels) else image() for image in self.images]
        for px in made:
            if not isinstance(px, Pixels):
                raise TypeError(f"a backend's image must be Pixels or make Pixels, got {type(px).__name__}")
        self.images = list(made)
        return made
