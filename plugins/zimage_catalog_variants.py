"""Shared by the built-in variant plugins: register the registry.toml variants a plugin owns.

Torch-free: the engine bridge (``zimage_engine_backend``) is imported inside the factory, on the first
use of a variant, never at registration (``list_models`` runs the hooks on a cold server).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from zimage_mcp import hookimpl

if TYPE_CHECKING:
    from zimage_mcp.catalog import Catalog
    from zimage_mcp.hookspecs import RegisterVariant
    from zimage_mcp.types import Backend, BackendContext, VariantSpec


def engine_factory(spec: VariantSpec, ctx: BackendContext) -> Backend:
    from zimage_engine_backend import build_backend

    return build_backend(spec, ctx)


def variant_hook(plugin: str) -> Callable[..., None]:
    """A ``zimage_register_variants`` implementation for the catalogue entries with ``plugin = <plugin>``."""

    @hookimpl(specname="zimage_register_variants")
    def zimage_register_variants(register: RegisterVariant, catalog: Catalog) -> None:
        for item in catalog.variants_for(plugin):
            register(item.spec, engine_factory, aliases=item.aliases)

    return zimage_register_variants
