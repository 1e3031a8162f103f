"""Pydantic models for tool arguments and structured results (they become the MCP schemas)."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from zimage_mcp.contract.rules import MAX_COUNT
from zimage_mcp.server.background_compile import compiling_backend

if TYPE_CHECKING:
    from zimage_mcp.registry import Registry

OutputFormat = Literal["png", "webp", "jpeg"]
PreviewMode = Literal["none", "thumbnail", "full"]
JobStatusName = Literal["queued", "running", "done", "failed", "cancelled"]


class LoraChoice(BaseModel):
    """One LoRA adapter for a request."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(max_length=200, description="LoRA name as listed by list_models")
    scale: float = Field(
        1.0, ge=-4.0, le=4.0, strict=True, allow_inf_nan=False, description="Adapter strength, usually 0.5-1.2"
    )


class ControlInput(BaseModel):
    """A ControlNet-style structural hint."""

    model_config = ConfigDict(extra="forbid")
    type: str = Field(max_length=64, description="Hint type, e.g. 'canny', 'depth', 'pose'")
    image: str = Field(
        max_length=4096, description="Hint image: image id, zimage://images/<id>, absolute path or file:// URI"
    )
    scale: float = Field(0.75, ge=0.0, le=2.0, strict=True, allow_inf_nan=False, description="Hint weight")


# Annotated parameter types shared by the tools (descriptions are what the calling model reads).
LoraList = Annotated[
    list[LoraChoice], Field(max_length=8, description="LoRA adapters [{name, scale}] from list_models")
]
Steps = Annotated[int | None, Field(strict=True, description="Denoising steps; omitted: the variant default (Turbo 8)")]
Guidance = Annotated[
    float | None,
    Field(strict=True, allow_inf_nan=False, description="CFG guidance; omitted: the variant default (Turbo 0)"),
]
Seed = Annotated[
    int | None,
    Field(strict=True, ge=0, le=2**32 - 1, description="Seed (0-4294967295); omitted: random (always returned)"),
]
Format = Annotated[OutputFormat, Field(description="File format saved to disk")]
PreviewArg = Annotated[PreviewMode, Field(description="Inline preview: none, thumbnail (512 px) or full")]
Wait = Annotated[
    bool, Field(strict=True, description="false: return a job_id at once and poll get_job (for ~60 s hosts)")
]
Size = Annotated[
    int | None, Field(strict=True, description="A multiple of 16 within the variant's limits, typically 256 to 2048")
]
Count = Annotated[
    int, Field(strict=True, ge=1, le=MAX_COUNT, description=f"Images to make (1-{MAX_COUNT}), seeds seed, seed+1, ...")
]
Strength = Annotated[
    float | None, Field(strict=True, gt=0, le=1, allow_inf_nan=False, description="img2img/inpaint: how much changes")
]
WaitSeconds = Annotated[
    float, Field(strict=True, ge=0, le=50, allow_inf_nan=False, description="Wait up to this long for it to finish")
]
Model = Annotated[
    str | None, Field(max_length=200, description="Variant id or alias from list_models; omitted: the default")
]


class ImageInfo(BaseModel):
    """One saved image."""

    id: str
    uri: str
    path: str
    mime_type: str
    width: int
    height: int
    seed: int
    size_bytes: int


class ImageResult(BaseModel):
    """Result of generate_image, edit_image, get_job and cancel_job."""

    status: JobStatusName
    job_id: str
    model: str
    images: list[ImageInfo] = Field(default_factory=list)
    prompt: str = ""
    negative_prompt: str = ""
    width: int = 0
    height: int = 0
    steps: int = 0
    guidance: float = 0.0
    seed: int | None = None
    seeds: list[int] = Field(default_factory=list)
    count: int = 1
    loras: list[LoraChoice] = Field(default_factory=list)
    output_format: OutputFormat = "png"
    mode: str | None = Field(None, description="edit mode: img2img, inpaint, control or reference")
    strength: float | None = None
    parent: str | None = Field(None, description="id of the image this one was edited from")
    edit: dict[str, Any] | None = Field(None, description="edit parameters (lineage)")
    timings: dict[str, float] = Field(default_factory=dict)
    elapsed_seconds: float = 0.0
    progress: float = 0.0
    total: float = 0.0
    message: str = ""
    notes: list[str] = Field(default_factory=list)
    error: str | None = None
    cancel: Literal["cancelled", "already finished", "stopping"] | None = Field(
        None,
        description="cancel_job only: cancelled (stopped, nothing more will come), already finished "
        "(the job ended first; its result is here) or stopping (stops at the next step, saves nothing)",
    )
    queue_ticket: int = Field(0, description="arrival order at the GPU queue (FIFO)")
    submitted_at: float | None = Field(None, description="when the job was queued (Unix time)")
    started_at: float | None = Field(None, description="when the job got the GPU (Unix time)")
    queue_wait_seconds: float | None = Field(None, description="seconds spent waiting for the GPU")


class VariantInfo(BaseModel):
    id: str
    title: str
    kind: str
    description: str = ""
    plugin: str = ""
    aliases: list[str] = Field(default_factory=list)
    base: str | None = None
    lora: str | None = None
    edit_modes: list[str] = Field(default_factory=list)
    capabilities: dict[str, bool] = Field(default_factory=dict)
    defaults: dict[str, Any] = Field(default_factory=dict)
    limits: dict[str, Any] = Field(default_factory=dict)
    installed: bool = False
    location: str | None = None
    source: str = ""
    how_to_install: str = ""
    loaded: bool = False
    compiling: bool = Field(
        False, description="loaded, and compiling shapes that requests ran eagerly, while the GPU is idle"
    )
    failed: str | None = None


class LoraInfo(BaseModel):
    name: str
    file: str
    base: str | None = None
    scale: float = 1.0
    trigger_words: list[str] = Field(default_factory=list)
    description: str = ""


class ModelsInfo(BaseModel):
    """Result of list_models and the zimage://models resource."""

    default_model: str | None
    variants: list[VariantInfo]
    loras: list[LoraInfo]
    failed: dict[str, str] = Field(default_factory=dict)
    problems: list[str] = Field(default_factory=list)
    output_dir: str = ""


def describe_models(registry: Registry, output_dir: str = "") -> ModelsInfo:
    """The catalogue as the model sees it: every variant with its install and load state, and the LoRAs."""
    failed = registry.failed()
    variants = []
    for entry in registry.variants():
        spec = entry.spec
        status = registry.install_status(spec.id)
        variants.append(
            VariantInfo(
                id=spec.id,
                title=spec.title,
                kind=spec.kind,
                description=spec.description,
                plugin=entry.plugin,
                aliases=list(entry.aliases),
                base=spec.base,
                lora=spec.lora,
                edit_modes=list(spec.capabilities.edit_modes()),
                capabilities=asdict(spec.capabilities),
                defaults=asdict(spec.defaults),
                limits=asdict(spec.limits),
                installed=status.installed,
                location=status.location,
                source=status.source,
                how_to_install="" if status.installed else status.how_to_install,
                loaded=registry.is_loaded(spec.id),
                compiling=compiling_backend(registry, spec.id) is not None,
                failed=failed.get(spec.id),
            )
        )
    loras = [
        LoraInfo(
            name=lora.name,
            file=lora.file,
            base=lora.base,
            scale=lora.scale,
            trigger_words=list(lora.trigger_words),
            description=lora.description,
        )
        for lora in registry.loras()
    ]
    return ModelsInfo(
        default_model=registry.default_variant,
        variants=variants,
        loras=loras,
        failed=dict(failed),
        problems=list(registry.problems()),
        output_dir=output_dir,
    )
