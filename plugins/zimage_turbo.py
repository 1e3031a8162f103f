"""Built-in plugin: registers the registry.toml variants whose `plugin` is "zimage_turbo" (Z-Image-Turbo).

The variant's defaults, limits, capabilities and weights are catalogue data; this module only
binds them to the engine, which it imports lazily inside the factory.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from zimage_mcp import hookimpl

if TYPE_CHECKING:
    from zimage_mcp.catalog import Catalog
    from zimage_mcp.hookspecs import RegisterVariant
    from zimage_mcp.types import Backend, BackendContext, VariantSpec

PLUGIN = "zimage_turbo"


@hookimpl
def zimage_register_variants(register: RegisterVariant, catalog: Catalog) -> None:
    for item in catalog.variants_for(PLUGIN):
        register(item.spec, factory, aliases=item.aliases)


def factory(spec: VariantSpec, ctx: BackendContext) -> Backend:
    from zimage_engine_backend import build_backend

    return build_backend(spec, ctx)
