"""What a variant is: its capabilities, defaults, limits and weights, as declared in registry.toml or by a plugin."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

VariantKind = Literal["turbo", "base", "edit", "lora"]
EditMode = Literal["img2img", "inpaint", "control", "reference"]


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
    shift: float | None = None  # None: the checkpoint's own (its scheduler_config.json); set: the registry's
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
    """Where a variant's weights live: a Hugging Face repo id, a local folder, or ComfyUI single files.

    ``single_file`` (the DiT), ``vae_file`` (ComfyUI's ``ae.safetensors``) and ``text_encoder_file`` (the
    Qwen3 file) replace those parts of the diffusers folder; the rest (always the tokenizer) comes from
    ``path`` or the Hugging Face cache snapshot of ``repo_id``.
    """

    repo_id: str | None = None
    path: str | None = None
    single_file: str | None = None
    vae_file: str | None = None
    text_encoder_file: str | None = None
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
