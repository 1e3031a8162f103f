"""The arguments of a plugin's ``register(...)`` calls, checked before anything is registered.

Each check raises ``RegistryError`` naming the call and the bad argument; the registry then lists
the plugin as failed and goes on with the others.
"""

from __future__ import annotations

import os
import re
from typing import Any

from zimage_mcp.contract import BackendFactory, LoraSpec, RegistryError, VariantSpec
from zimage_mcp.registry.catalog import ALIAS, KINDS, VARIANT_ID

LORA_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def checked_variant(spec: Any, factory: Any, aliases: Any) -> tuple[VariantSpec, BackendFactory, tuple[str, ...]]:
    """Validate one ``register(spec, factory, aliases)`` call; raises ``RegistryError``."""
    if not isinstance(spec, VariantSpec):
        raise RegistryError(f"register(): spec must be a VariantSpec, got {type(spec).__name__}")
    if not VARIANT_ID.fullmatch(spec.id):
        raise RegistryError(f"register(): variant id {spec.id!r} must be lowercase kebab-case (z-image-turbo)")
    if spec.kind not in KINDS:
        raise RegistryError(f"register(): {spec.id}: kind must be one of {', '.join(KINDS)}, got {spec.kind!r}")
    if not callable(factory):
        raise RegistryError(f"register(): {spec.id}: factory must be callable, got {type(factory).__name__}")
    aliases = (aliases,) if isinstance(aliases, str) else tuple(aliases or ())
    for alias in aliases:
        if not isinstance(alias, str) or not ALIAS.fullmatch(alias):
            raise RegistryError(f"register(): {spec.id}: alias {alias!r} must be lowercase letters, digits, . _ -")
    return spec, factory, aliases


def checked_lora(name: Any, file: Any, base: Any, scale: Any, trigger_words: Any, description: Any) -> LoraSpec:
    """Validate one LoRA ``register(...)`` call; raises ``RegistryError``."""
    if not isinstance(name, str) or not LORA_NAME.fullmatch(name):
        raise RegistryError(f"register(): LoRA name {name!r} must be letters, digits, '.', '_', '-'")
    if not isinstance(file, (str, os.PathLike)):
        raise RegistryError(f"register(): LoRA {name}: file must be a path, got {type(file).__name__}")
    if base is not None and not isinstance(base, str):
        raise RegistryError(f"register(): LoRA {name}: base must be a variant id, got {base!r}")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise RegistryError(f"register(): LoRA {name}: scale must be a number, got {scale!r}")
    words = (trigger_words,) if isinstance(trigger_words, str) else tuple(trigger_words or ())
    if not all(isinstance(w, str) for w in words):
        raise RegistryError(f"register(): LoRA {name}: trigger_words must be strings, got {trigger_words!r}")
    if not isinstance(description, str):
        raise RegistryError(f"register(): LoRA {name}: description must be a string, got {description!r}")
    return LoraSpec(name, os.fspath(file), base, float(scale), words, description)
