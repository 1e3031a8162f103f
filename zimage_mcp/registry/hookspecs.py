"""Hook specifications for zimage-mcp plugins.

A plugin is a module (or object) with functions decorated by ``zimage_mcp.hookimpl`` whose names
match the specs below. Built-in plugins (``plugins/zimage_*.py``) and installed distributions
(entry-point group ``zimage_mcp``) implement them the same way. Hooks are called once, when the
registry is built at server start, in registration order (built-ins first). They must be cheap:
no torch import and no weight loading; the engine is imported lazily inside the backend factory.

A plugin may accept any subset of a hook's parameters, by name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import pluggy

from zimage_mcp.registry.catalog import Catalog, CatalogVariant

if TYPE_CHECKING:
    from collections.abc import Iterable

    from zimage_mcp.contract import BackendContext, BackendFactory, VariantSpec

# What the hooks receive, importable from here so a plugin needs no other registry module.
__all__ = ["Catalog", "CatalogVariant", "RefuseLora", "RegisterLora", "RegisterVariant", "hookimpl", "hookspec"]
hookspec = pluggy.HookspecMarker("zimage_mcp")
hookimpl = pluggy.HookimplMarker("zimage_mcp")


class RegisterVariant(Protocol):
    """The ``register`` callable passed to :func:`zimage_register_variants`."""

    def __call__(self, spec: VariantSpec, factory: BackendFactory, aliases: Iterable[str] = ()) -> None: ...


class RegisterLora(Protocol):
    """The ``register`` callable passed to :func:`zimage_register_loras`."""

    def __call__(
        self,
        name: str,
        file: str,
        base: str | None = None,
        scale: float = 1.0,
        trigger_words: Iterable[str] = (),
        description: str = "",
    ) -> None: ...


class RefuseLora(Protocol):
    """The ``refuse`` callable passed to :func:`zimage_register_loras`."""

    def __call__(self, name: str, reason: str) -> None: ...


@hookspec
def zimage_register_variants(register: RegisterVariant, catalog: Catalog) -> None:
    """Register the model variants this plugin provides.

    Called once per registry build, before :func:`zimage_register_loras`.

    :param register:
        Call ``register(spec, factory, aliases=())`` once per variant.

        - ``spec`` is a :class:`zimage_mcp.contract.VariantSpec`. Its ``id`` is lowercase kebab
          (``z-image-turbo``); ``kind`` is ``"turbo"``, ``"base"`` or ``"edit"`` (``"lora"`` is
          reserved for the LoRA variants the registry derives itself).
        - ``factory(spec, ctx) -> Backend`` builds the backend. It is called lazily, the first time
          the variant is used, from a worker thread; import the engine inside it, never at module level.
          ``ctx`` is a :class:`zimage_mcp.contract.BackendContext`.
        - ``aliases`` are extra names the variant resolves from (``"turbo"``).

        ``register`` raises ``RegistryError`` for a malformed spec. A duplicate id or alias is not an
        error: the first registration wins and the duplicate is reported by the registry.
    :param catalog:
        The merged ``registry.toml`` catalogue (:class:`zimage_mcp.registry.catalog.Catalog`). The built-in
        plugins register ``catalog.variants_for("<plugin name>")``; third-party plugins may ignore it.

    If the hook raises, everything this plugin registered in this call is dropped, the error is
    logged, the plugin is listed as failed, and the other plugins still register.
    """


@hookspec
def zimage_register_loras(register: RegisterLora, refuse: RefuseLora, catalog: Catalog) -> None:
    """Register LoRA adapters this plugin provides.

    Called once per registry build, after every plugin's :func:`zimage_register_variants`.

    :param register:
        Call ``register(name, file, base=None, scale=1.0, trigger_words=(), description="")`` once
        per LoRA. ``name`` becomes the variant ``lora:<name>``; ``file`` is the path of a
        ``.safetensors`` file (not opened here); ``base`` is the variant id or alias the LoRA was
        trained on (``None``: the default variant); ``scale`` is the default strength;
        ``trigger_words`` are words the prompt should contain. A file in a pickle format
        (``.ckpt``, ``.pt``, ``.bin``, ``.pth``) or a ``base`` that does not exist refuses that LoRA
        only, with a message in the registry's ``problems()``.
    :param refuse:
        Call ``refuse(name, reason)`` for an item this plugin found but will not register (a
        malformed sidecar, a pickle file); the reason is listed by ``list_models``.
    :param catalog:
        The merged catalogue; ``catalog.lora_dir`` is the LoRA folder (``None`` when unset) and
        ``catalog.lora_dir_configured`` says whether the user set it explicitly.

    If the hook raises, this plugin's LoRAs from this call are dropped, the error is logged and the
    plugin is listed as failed.
    """


@hookspec
def zimage_prepare(context: BackendContext) -> None:
    """Get ready for a first load without loading any weights: import the engine, create the device context.

    Called once when ``serve`` starts, on a background thread, while the server already answers (not by
    ``list_models`` or the CLI; ``[runtime] prepare_at_start = false`` turns it off). Optional. Make a
    load wait for a preparation still under way rather than run beside it: some libraries (transformers'
    lazy modules) are not safe to import from two threads at once.

    :param context:
        The :class:`zimage_mcp.contract.BackendContext` the factories get (device, dtype, compile cache).

    If it raises, the error is logged as a warning and nothing else changes: the plugin's variants stay
    registered, and their first load pays for the same work.
    """
