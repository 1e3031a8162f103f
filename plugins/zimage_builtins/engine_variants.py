"""Built-in plugin ``zimage_engine``: the registry.toml variants that run on the in-repo engine.

Turbo, Base and Edit differ only in catalogue data (defaults, limits, capabilities, weights), so one
hook registers every ``[variants.<id>]`` table whose ``plugin`` is ``zimage_engine``. Torch-free: the
engine bridge is imported inside the factory, on the first use of a variant, never at registration
(``list_models`` runs the hooks on a cold server), or in ``zimage_prepare``, which ``serve`` runs in the
background at start.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from zimage_mcp import hookimpl

if TYPE_CHECKING:
    from zimage_mcp.contract import Backend, BackendContext, VariantSpec
    from zimage_mcp.registry.hookspecs import Catalog, RegisterVariant

PLUGIN = "zimage_engine"


def engine_factory(spec: VariantSpec, ctx: BackendContext) -> Backend:
    from zimage_builtins.engine_backend import build_backend

    return build_backend(spec, ctx)


@hookimpl
def zimage_register_variants(register: RegisterVariant, catalog: Catalog) -> None:
    for item in catalog.variants_for(PLUGIN):
        register(item.spec, engine_factory, aliases=item.aliases)


@hookimpl
def zimage_prepare(context: BackendContext) -> None:
    from zimage_builtins.engine_loading import prepare

    prepare(context)
