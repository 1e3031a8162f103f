"""Turn tool arguments into a validated ``GenerationRequest`` for one variant.

Every check happens here, before any GPU work, and raises ``InvalidRequestError(field, message)``
naming the field and the allowed values. The server turns those into ``ToolError``s. The bounds
themselves are the shared rules of ``zimage_mcp.contract.rules`` (the catalogue checks defaults with
them too). Each tool argument is passed on by name: ``prepare_generate``/``prepare_edit`` ->
``build_request`` -> the ``GenerationRequest`` field of the same name.
"""

from __future__ import annotations

import math
import secrets
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from zimage_mcp.contract import (
    ControlHint,
    EditMode,
    GenerationRequest,
    InvalidRequestError,
    LoraRef,
    UnknownLoraError,
    UnknownVariantError,
    VariantSpec,
)
from zimage_mcp.contract.rules import count_problem, fit_size, guidance_problem, size_problem, steps_problem
from zimage_mcp.server.input_images import load_input, load_mask

if TYPE_CHECKING:
    from pathlib import Path

    from PIL.Image import Image

    from zimage_mcp.registry import Registry, VariantEntry
    from zimage_mcp.server.tool_models import ControlInput, LoraChoice
    from zimage_mcp.store import ImageStore

MAX_LORAS = 4
MAX_SEED = 2**32 - 1
MAX_PROMPT_CHARS = 4000
KEPT_CONTROLS = frozenset("\n\t")


INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zs", "Zl", "Zp"})


def clean_prompt(text: str, field: str = "prompt", *, required: bool = True) -> str:
    """The one definition of a clean prompt: control characters (except newline and tab) and lone
    surrogates removed; every script, emoji and joiner kept.

    A text made only of invisible characters (whitespace, zero-width spaces and joiners U+200B-U+200D,
    U+2060, U+FEFF, bidi controls and other format/control/separator characters) counts as empty:
    ``required`` refuses it naming ``field``, otherwise it becomes ``""``. The length limit
    (``MAX_PROMPT_CHARS``) is enforced by the tool schema and again in ``build_request``.
    """
    kept = "".join(c for c in text if c in KEPT_CONTROLS or unicodedata.category(c) not in ("Cc", "Cs"))
    if any(not c.isspace() and unicodedata.category(c) not in INVISIBLE_CATEGORIES for c in kept):
        return kept
    if required:
        raise InvalidRequestError(
            field,
            f"must not be empty (1-{MAX_PROMPT_CHARS} characters); it holds only "
            "invisible, whitespace or control characters",
        )
    return ""


@dataclass(frozen=True)
class EditInputs:
    """Decoded edit inputs; ``mode`` already routed."""

    mode: EditMode
    image: Image | None = None
    mask: Image | None = None
    strength: float | None = None
    control: ControlHint | None = None
    reference_images: tuple[Image, ...] = ()
    lineage: dict[str, Any] = field(default_factory=dict)


def route_edit_mode(spec: VariantSpec, *, has_reference: bool, has_control: bool, has_mask: bool) -> EditMode:
    """Pick the edit mode and check the variant supports it."""
    mode: EditMode
    if has_reference or spec.kind == "edit":
        mode = "reference"
    elif has_control:
        mode = "control"
    elif has_mask:
        mode = "inpaint"
    else:
        mode = "img2img"
    modes = spec.capabilities.edit_modes()
    if mode not in modes:
        can = ", ".join(modes) if modes else "no edits at all (text-to-image only)"
        raise InvalidRequestError("model", f"variant '{spec.id}' cannot do a {mode} edit; it supports: {can}")
    return mode


def resolve_loras(
    registry: Registry, variant_id: str, choices: Sequence[LoraChoice], base_lora: LoraRef | None
) -> tuple[LoraRef, ...]:
    if len(choices) > MAX_LORAS:
        raise InvalidRequestError("loras", f"at most {MAX_LORAS} LoRAs per request")
    refs: list[LoraRef] = [base_lora] if base_lora else []
    for choice in choices:
        try:
            spec = registry.resolve_lora(choice.name)
        except UnknownLoraError as exc:
            raise InvalidRequestError("loras", str(exc)) from None
        if any(ref.name == spec.name for ref in refs):
            raise InvalidRequestError("loras", f"LoRA '{spec.name}' is given twice")
        refs.append(LoraRef(spec.name, spec.file, choice.scale, spec.base))
    return tuple(refs)


def build_request(
    spec: VariantSpec,
    *,
    prompt: str,
    negative_prompt: str | None,
    width: int | None,
    height: int | None,
    steps: int | None,
    guidance: float | None,
    seed: int | None,
    count: int,
    loras: tuple[LoraRef, ...],
    edit: EditInputs | None = None,
) -> GenerationRequest:
    """Fill defaults from the variant and check every bound; raises ``InvalidRequestError``."""
    limits, defaults = spec.limits, spec.defaults
    if len(prompt) > MAX_PROMPT_CHARS:
        raise InvalidRequestError("prompt", f"{len(prompt)} characters; use 1-{MAX_PROMPT_CHARS} (not truncated)")
    prompt = clean_prompt(prompt, "prompt")
    if negative_prompt is not None:
        if len(negative_prompt) > MAX_PROMPT_CHARS:
            raise InvalidRequestError("negative_prompt", f"{len(negative_prompt)} characters; use 0-{MAX_PROMPT_CHARS}")
        negative_prompt = clean_prompt(negative_prompt, "negative_prompt", required=False)
    if edit is None and not spec.capabilities.generate:
        modes = ", ".join(spec.capabilities.edit_modes())
        raise InvalidRequestError("model", f"variant '{spec.id}' only edits images ({modes}); use edit_image")
    if edit is not None and edit.image is not None and width is None and height is None:
        width, height = fit_size(*edit.image.size, limits)  # the output keeps the input's size
    width = defaults.width if width is None else width
    height = defaults.height if height is None else height
    steps = defaults.steps if steps is None else steps
    guidance = defaults.guidance if guidance is None else guidance
    for name, problem in (
        ("width", size_problem(width, limits)),
        ("height", size_problem(height, limits)),
        ("steps", steps_problem(steps, limits)),
        ("guidance", guidance_problem(guidance, limits)),
        ("count", count_problem(count, limits)),
    ):
        if problem:
            raise InvalidRequestError(name, problem)
    if seed is None:
        seed = secrets.randbelow(MAX_SEED)
    elif not 0 <= seed <= MAX_SEED:
        raise InvalidRequestError("seed", f"use 0-{MAX_SEED}")
    request = GenerationRequest(
        prompt=prompt,
        negative_prompt=defaults.negative_prompt if negative_prompt is None else negative_prompt,
        width=width,
        height=height,
        steps=steps,
        guidance=guidance,
        seed=seed,
        count=count,
        shift=defaults.shift,
        cfg_truncation=defaults.cfg_truncation,
        cfg_normalization=defaults.cfg_normalization,
        loras=loras,
    )
    if edit is None:
        return request
    return _with_edit(request, spec, edit)


def _with_edit(request: GenerationRequest, spec: VariantSpec, edit: EditInputs) -> GenerationRequest:
    strength = spec.defaults.strength if edit.strength is None else edit.strength
    if not (math.isfinite(strength) and 0.0 < strength <= 1.0):
        raise InvalidRequestError("strength", f"{strength} is out of range; use a value in (0, 1]")
    max_refs = spec.limits.max_reference_images
    if len(edit.reference_images) > max(max_refs, 0) and edit.mode == "reference":
        raise InvalidRequestError("reference_images", f"variant '{spec.id}' accepts at most {max_refs}")
    return replace(
        request,
        mode=edit.mode,
        image=edit.image,
        mask=edit.mask,
        strength=strength,
        control=edit.control,
        reference_images=edit.reference_images,
    )


@dataclass(frozen=True)
class Prepared:
    """A validated request, where it runs, and the parameters recorded with the result."""

    variant_id: str
    backend_id: str
    request: GenerationRequest
    params: dict[str, Any]
    notes: tuple[str, ...] = ()  # said with the result, e.g. a LoRA used on another base than its own


def base_notes(backend_id: str, loras: Sequence[LoraRef]) -> tuple[str, ...]:
    """A note per LoRA whose declared base (its sidecar or plugin) is not the variant it runs on: it may
    still work (Base LoRAs often do on Turbo), so it is said, not refused; a LoRA whose shapes do not fit
    is refused by the backend."""
    return tuple(
        f"LoRA '{ref.name}' was trained on {ref.base}; it ran on {backend_id}, so it may look off"
        for ref in loras
        if ref.base is not None and ref.base != backend_id
    )


def _entry_and_loras(
    registry: Registry, model: str | None, choices: Sequence[LoraChoice]
) -> tuple[VariantEntry, str, tuple[LoraRef, ...]]:
    try:
        entry = registry.resolve(model)
    except UnknownVariantError as exc:
        raise InvalidRequestError("model", str(exc)) from None
    target = registry.lora_variant_target(entry.spec.id)
    backend_id, base_lora = entry.spec.id, None
    if target is not None:
        backend_id, lora_spec = target
        base_lora = LoraRef(lora_spec.name, lora_spec.file, lora_spec.scale, lora_spec.base)
    return entry, backend_id, resolve_loras(registry, entry.spec.id, choices, base_lora)


def _params(prepared_request: GenerationRequest, variant_id: str) -> dict[str, Any]:
    """The parameters recorded with the result; ``loras`` lists every adapter applied (a ``lora:x`` model's too)."""
    r = prepared_request
    return {
        "model": variant_id,
        "prompt": r.prompt,
        "negative_prompt": r.negative_prompt,
        "width": r.width,
        "height": r.height,
        "steps": r.steps,
        "guidance": r.guidance,
        "seed": r.seed,
        "count": r.count,
        "loras": [{"name": ref.name, "scale": ref.scale} for ref in r.loras],
    }


def prepare_generate(
    registry: Registry,
    *,
    model: str | None,
    loras: Sequence[LoraChoice],
    prompt: str,
    negative_prompt: str | None,
    width: int | None,
    height: int | None,
    steps: int | None,
    guidance: float | None,
    seed: int | None,
    count: int,
) -> Prepared:
    """The arguments of ``generate_image`` as a checked request for the variant ``model`` names."""
    entry, backend_id, refs = _entry_and_loras(registry, model, loras)
    request = build_request(
        entry.spec,
        prompt=prompt,
        negative_prompt=negative_prompt,
        width=width,
        height=height,
        steps=steps,
        guidance=guidance,
        seed=seed,
        count=count,
        loras=refs,
    )
    return Prepared(
        entry.spec.id,
        backend_id,
        request,
        _params(request, entry.spec.id),
        notes=base_notes(backend_id, request.loras),
    )


def pick_edit_variant(registry: Registry, model: str | None, wanted: EditMode) -> str | None:
    """The variant an edit runs on when ``model`` is omitted: the default if it can, else the first that can."""
    if model is not None:
        return model
    default = registry.resolve(None)
    if wanted in default.spec.capabilities.edit_modes():
        return default.spec.id
    able = [e for e in registry.variants() if wanted in e.spec.capabilities.edit_modes()]
    installed = [e for e in able if registry.install_status(e.spec.id).installed]
    choice = (installed or able or [default])[0]
    return choice.spec.id


def _refuse_unused_for_reference(
    spec: VariantSpec, *, mask: str | None, strength: float | None, control: ControlInput | None
) -> None:
    """A reference (instruction) edit has no mask, strength or control: refuse them rather than ignore them."""
    pairs = (("mask", mask), ("strength", strength), ("control", control))
    given = [name for name, value in pairs if value is not None]
    if not given:
        return
    modes = ", ".join(spec.capabilities.edit_modes()) or "none"
    why = (
        f"variant '{spec.id}' edits by instruction (edit modes: {modes})"
        if spec.kind == "edit"
        else "reference_images make this a reference edit"
    )
    raise InvalidRequestError(
        given[0],
        f"{why}, which ignores {' and '.join(given)}. It takes image, prompt (the "
        "instruction), reference_images, seed, steps, guidance and loras; drop "
        f"{' and '.join(given)}, or choose a variant with img2img/inpaint (see list_models)",
    )


def prepare_edit(
    registry: Registry,
    store: ImageStore,
    input_dirs: tuple[Path, ...],
    *,
    image: str,
    model: str | None,
    prompt: str,
    strength: float | None,
    mask: str | None,
    control: ControlInput | None,
    reference_images: Sequence[str] | None,
    steps: int | None,
    guidance: float | None,
    seed: int | None,
    loras: Sequence[LoraChoice],
) -> Prepared:
    """The arguments of ``edit_image``: inputs loaded, the edit mode routed, one image at the input's size."""
    wanted: EditMode = "reference" if reference_images else "control" if control else "inpaint" if mask else "img2img"
    entry, backend_id, refs = _entry_and_loras(registry, pick_edit_variant(registry, model, wanted), loras)
    mode = route_edit_mode(
        entry.spec, has_reference=bool(reference_images), has_control=control is not None, has_mask=mask is not None
    )
    if mode == "reference":
        _refuse_unused_for_reference(entry.spec, mask=mask, strength=strength, control=control)
    source = load_input(image, "image", store, input_dirs)
    hint = None
    if control is not None:
        hint_image = load_input(control.image, "control.image", store, input_dirs).image
        hint = ControlHint(control.type, hint_image, control.scale)
    references = tuple(
        load_input(ref, f"reference_images[{i}]", store, input_dirs).image
        for i, ref in enumerate(reference_images or ())
    )
    edit = EditInputs(
        mode=mode,
        image=source.image,
        mask=load_mask(mask, store, input_dirs, source.image.size) if mask else None,
        strength=strength,
        control=hint,
        reference_images=references,
    )
    request = build_request(
        entry.spec,
        prompt=prompt,
        negative_prompt=None,
        width=None,
        height=None,
        steps=steps,
        guidance=guidance,
        seed=seed,
        count=1,
        loras=refs,
        edit=edit,
    )
    params = _params(request, entry.spec.id)
    params.update(
        mode=mode,
        strength=request.strength,
        parent=source.parent_id,
        edit={
            "mode": mode,
            "source": source.parent_id or str(source.path),
            "source_size": list(source.image.size),
            "strength": request.strength,
            "mask": mask,
            "control": control.model_dump() if control else None,
            "reference_images": list(reference_images or []),
        },
    )
    return Prepared(entry.spec.id, backend_id, request, params, notes=base_notes(backend_id, request.loras))
