"""The variant registry: what plugins registered, how names resolve, and which backends are loaded.

Built once at startup by ``Registry.from_settings``: load plugins, read the catalogue, call
``zimage_register_variants`` then ``zimage_register_loras`` plugin by plugin (built-ins first; the
first registration of an id wins), then derive a ``lora:<name>`` variant per LoRA. A LoRA variant
is its base variant plus the adapter: it shares the base's backend, never a second copy.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import pluggy

from zimage_mcp.contract import (
    Backend,
    BackendFactory,
    LoraSpec,
    NotInstalledError,
    UnknownLoraError,
    UnknownVariantError,
    VariantSpec,
)
from zimage_mcp.contract.rules import weights_file_problem
from zimage_mcp.registry import hookspecs
from zimage_mcp.registry.backend_cache import BackendCache
from zimage_mcp.registry.background_preparation import BackgroundPreparation
from zimage_mcp.registry.catalog import Catalog, catalog_from_settings
from zimage_mcp.registry.device_thread import DeviceThread
from zimage_mcp.registry.entries import Duplicate, VariantEntry, folder_stamp
from zimage_mcp.registry.hub_cache import hub_cache_dir
from zimage_mcp.registry.install_status import InstallStatus, find_weights, located_spec, weights_bytes
from zimage_mcp.registry.plugin_manager import (
    check_pending,
    load_failures,
    plugin_manager_from_settings,
    prepare_plugins,
    record_failure,
)
from zimage_mcp.registry.registration_checks import checked_lora, checked_variant
from zimage_mcp.registry.settings import Settings

__all__ = ["Duplicate", "InstallStatus", "Registry", "VariantEntry"]

log = logging.getLogger(__name__)

LORA_PREFIX = "lora:"
T = TypeVar("T")


class Registry:
    """Variants and LoRAs from every plugin, with lazily built, cached backends. Thread-safe."""

    def __init__(self, settings: Settings, catalog: Catalog, pm: pluggy.PluginManager) -> None:
        self.settings = settings
        self.catalog = catalog
        self.plugin_manager = pm
        self._entries: dict[str, VariantEntry] = {}
        self._aliases: dict[str, str] = {}
        self._loras: dict[str, LoraSpec] = {}
        self._lora_plugin: dict[str, str] = {}
        self._duplicates: list[Duplicate] = []
        self._problems: list[str] = list(catalog.problems)
        budget = None if settings.vram_budget_gb is None else int(settings.vram_budget_gb * 1024**3)
        self._cache = BackendCache(budget, settings.idle_unload_seconds)
        self._hub_dir = hub_cache_dir(settings.hf_home, settings.hf_hub_cache)
        if not hasattr(pm.hook, "zimage_register_variants"):
            pm.add_hookspecs(hookspecs)
        pending = check_pending(pm)  # misspelled hooks: that plugin is left out, the others go on
        self._problems += load_failures(pm) if hasattr(pm, "records") else pending
        self._register_variants()
        self._report_unregistered_catalog_variants()
        self._lora_lock = threading.RLock()
        self.device_thread = DeviceThread()  # every backend call that touches the device runs there
        self.preparation = BackgroundPreparation(self.prepare_plugins)  # started by prepare_in_background
        self._lora_problems: list[str] = []
        self._lora_stamp = folder_stamp(self.catalog.lora_dir)
        self.default_variant: str = self._pick_default(allow_lora=False)
        self._scan_loras()
        self.default_variant = self._pick_default(allow_lora=True)

    @classmethod
    def from_settings(cls, settings: Settings, pm: pluggy.PluginManager | None = None) -> Registry:
        """Load plugins (unless ``pm`` is given), read the catalogue and run the registration hooks."""
        if pm is None:
            pm = plugin_manager_from_settings(settings)
        return cls(settings, catalog_from_settings(settings), pm)

    # -- what is registered -------------------------------------------------------------------

    def variants(self) -> list[VariantEntry]:
        """Every variant in registration order; ``lora:<name>`` variants last."""
        with self._current_loras():
            return list(self._entries.values())

    def loras(self) -> list[LoraSpec]:
        with self._current_loras():
            return list(self._loras.values())

    @contextlib.contextmanager
    def _current_loras(self) -> Iterator[None]:
        """Hold the LoRA lock, rescanning first when the LoRA folder changed (one ``scandir``): files added
        or removed show up without a restart."""
        with self._lora_lock:
            stamp = folder_stamp(self.catalog.lora_dir)
            if stamp != self._lora_stamp:
                self._lora_stamp = stamp
                for name in [n for n, e in self._entries.items() if e.spec.kind == "lora"]:
                    del self._entries[name]
                self._loras.clear()
                self._lora_plugin.clear()
                self._duplicates = [d for d in self._duplicates if d.kind != "lora"]
                self._scan_loras()
                if self.default_variant not in self._entries:  # a lora: default whose file went away
                    self.default_variant = self._pick_default(allow_lora=False)
            yield

    def _scan_loras(self) -> None:
        problems, self._problems = self._problems, []
        try:
            self._register_loras()
            self._add_lora_variants()
        finally:
            self._lora_problems, self._problems = self._problems, problems

    def duplicates(self) -> list[Duplicate]:
        return list(self._duplicates)

    def problems(self) -> list[str]:
        """Everything refused or ignored at registration, one sentence each (shown by ``list_models``)."""
        with self._current_loras():
            return [*self._problems, *self._lora_problems, *(str(d) for d in self._duplicates)]

    def resolve(self, name: str | None) -> VariantEntry:
        """The variant called ``name`` (an id, an alias or ``lora:<name>``); ``None`` or "": the default."""
        with self._current_loras():
            key = (name or self.default_variant).strip()
            for candidate in (key, key.lower()):
                if candidate in self._entries:
                    return self._entries[candidate]
                if candidate in self._aliases:
                    return self._entries[self._aliases[candidate]]
        if not self._entries:
            raise UnknownVariantError("no models are registered; see the problems listed by list_models")
        raise UnknownVariantError(f"unknown model {name!r}; valid names: {self._valid_names()}")

    def resolve_lora(self, name: str) -> LoraSpec:
        """The LoRA called ``name`` (``lora:`` prefix optional)."""
        key = name.strip().removeprefix(LORA_PREFIX)
        with self._current_loras():
            if key in self._loras:
                return self._loras[key]
        valid = ", ".join(self._loras) or f"none (put .safetensors files in {self.catalog.lora_dir})"
        raise UnknownLoraError(f"unknown LoRA {name!r}; valid LoRAs: {valid}")

    def lora_variant_target(self, variant_id: str) -> tuple[str, LoraSpec] | None:
        """For a ``lora:<name>`` variant: (base variant id, the LoRA); ``None`` for any other variant."""
        with self._current_loras():
            spec = self.resolve(variant_id).spec
            if spec.kind != "lora" or spec.base is None or spec.lora is None:
                return None
            return spec.base, self._loras[spec.lora]

    def install_status(self, variant_id: str) -> InstallStatus:
        """Whether the weights are installed and where, without loading anything or touching the network."""
        entry = self.resolve(variant_id)
        target = self.lora_variant_target(entry.spec.id)
        if target is not None:
            base_id, lora = target
            if not os.path.isfile(lora.file):
                return InstallStatus(False, None, "missing", f"LoRA file {lora.file} does not exist")
            entry = self._entries[base_id]
        return find_weights(entry.spec, self._hub_dir, entry.aliases[0] if entry.aliases else entry.spec.id)

    # -- backends -----------------------------------------------------------------------------

    def backend(self, variant_id: str) -> Backend:
        """The backend for a variant, built on first use; a LoRA variant gets its base's backend.

        Raises ``NotInstalledError`` (with how to install) or ``BackendLoadError`` (the build raised;
        only this variant is marked failed until ``reset_failed``).
        """
        entry = self.resolve(variant_id)
        target = self.lora_variant_target(entry.spec.id)
        if target is not None:
            entry = self._entries[target[0]]
        with self._cache.lock:
            if self._cache.is_loaded(entry.spec.id):
                return self._cache.get(entry.spec.id, _never, lambda: 0)
            status = self.install_status(entry.spec.id)
            if not status.installed:
                raise NotInstalledError(f"{entry.spec.id} is not installed: {status.how_to_install}")
            spec = located_spec(entry.spec, status)
            build = lambda: entry.factory(spec, self.settings.backend_context())  # noqa: E731
            return self._cache.get(entry.spec.id, build, lambda: weights_bytes(status.location))

    def is_loaded(self, variant_id: str) -> bool:
        return self.loaded_backend(variant_id) is not None

    def loaded_backend(self, variant_id: str) -> Backend | None:
        """The variant's backend if it is built (a LoRA variant's is its base's); never builds one."""
        target = self.lora_variant_target(variant_id)
        return self._cache.loaded(target[0] if target else self.resolve(variant_id).spec.id)

    def failed(self) -> dict[str, str]:
        """Variant id -> error text for backends whose build raised."""
        return self._cache.failed()

    def reset_failed(self, variant_id: str | None = None) -> None:
        """Let the next ``backend()`` call retry a failed build (``None``: every failed variant)."""
        self._cache.reset_failed(None if variant_id is None else self.resolve(variant_id).spec.id)

    def release_idle(self, now: float | None = None) -> list[str]:
        """Unload backends unused for ``settings.idle_unload_seconds`` (``time.monotonic`` clock)."""
        return self._cache.release_idle(now)

    def unload_all(self) -> None:
        self._cache.unload_all()

    def prepare_plugins(self) -> None:
        """Every plugin's ``zimage_prepare`` (``serve`` runs it in the background at start)."""
        prepare_plugins(self.plugin_manager, self.settings.backend_context())

    def prepare_in_background(self) -> None:
        """Start ``prepare_plugins`` on a thread of its own, once per registry (``BackgroundPreparation``)."""
        self.preparation.start()

    def run_on_device(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` on the device thread (``registry.device_thread``), for every call that loads
        or runs a backend: the GPU libraries' per-thread plans and handles then outlive each request."""
        return self.device_thread.call(fn, *args, **kwargs)

    # -- registration -------------------------------------------------------------------------

    def _each_plugin(
        self, hook_name: str, args: Callable[[str, list[Any]], dict[str, Any]]
    ) -> Iterator[tuple[str, list[Any]]]:
        """Call one hook plugin by plugin; yield (plugin, what it registered) for those that did not raise."""
        for impl in getattr(self.plugin_manager.hook, hook_name).get_hookimpls():
            pending: list[Any] = []
            kwargs = args(impl.plugin_name, pending)
            try:
                impl.function(*[kwargs[name] for name in impl.argnames])
            except Exception as exc:  # one broken plugin must not take the others down
                error = f"{type(exc).__name__}: {exc}"
                log.error("plugin %s raised in %s: %s", impl.plugin_name, hook_name, error, exc_info=True)
                self._problems.append(f"plugin {impl.plugin_name!r} failed in {hook_name}: {error}")
                record_failure(self.plugin_manager, impl.plugin_name, error)
                if self.plugin_manager.get_plugin(impl.plugin_name) is not None:  # its later hooks do not run
                    self.plugin_manager.unregister(name=impl.plugin_name)
                continue
            yield impl.plugin_name, pending

    def _register_variants(self) -> None:
        def args(plugin: str, pending: list[Any]) -> dict[str, Any]:
            def register(spec: VariantSpec, factory: BackendFactory, aliases: Iterable[str] = ()) -> None:
                pending.append(checked_variant(spec, factory, aliases))

            return {"register": register, "catalog": self.catalog}

        for plugin, pending in self._each_plugin("zimage_register_variants", args):
            for spec, factory, aliases in pending:
                self._add_variant(plugin, spec, factory, aliases)

    def _add_variant(self, plugin: str, spec: VariantSpec, factory: BackendFactory, aliases: tuple[str, ...]) -> None:
        if spec.id in self._entries or spec.id in self._aliases:
            owner = self._entries[self._aliases.get(spec.id, spec.id)].plugin
            self._duplicate("variant", spec.id, owner, plugin)
            return
        kept: list[str] = []
        for alias in aliases:
            if alias in self._entries or alias in self._aliases or alias in kept:
                owner = plugin if alias in kept else self._entries[self._aliases.get(alias, alias)].plugin
                self._duplicate("alias", alias, owner, plugin)
            else:
                kept.append(alias)
        self._entries[spec.id] = VariantEntry(spec, factory, plugin, tuple(kept))
        self._aliases.update(dict.fromkeys(kept, spec.id))

    def _register_loras(self) -> None:
        def args(plugin: str, pending: list[Any]) -> dict[str, Any]:
            def register(
                name: str,
                file: str | os.PathLike[str],
                base: str | None = None,
                scale: float = 1.0,
                trigger_words: Iterable[str] = (),
                description: str = "",
            ) -> None:
                pending.append(checked_lora(name, file, base, scale, trigger_words, description))

            def refuse(name: str, reason: str) -> None:
                self._problems.append(f"LoRA {name} (plugin {plugin!r}) refused: {reason}")

            return {"register": register, "refuse": refuse, "catalog": self.catalog}

        for plugin, pending in self._each_plugin("zimage_register_loras", args):
            for lora in pending:
                self._add_lora(plugin, lora)

    def _add_lora(self, plugin: str, lora: LoraSpec) -> None:
        where = f"LoRA {lora.name!r} (plugin {plugin!r})"
        refused = weights_file_problem(lora.file)
        if refused:
            self._problems.append(f"{where} refused: {lora.file}: {refused}")
        elif lora.name in self._loras:
            self._duplicate("lora", lora.name, self._lora_plugin[lora.name], plugin)
        elif lora.base is not None and self._base_id(lora.base) is None:
            self._problems.append(
                f"{where} refused: base variant {lora.base!r} does not exist; valid: {self._valid_names(loras=False)}"
            )
        else:
            base = None if lora.base is None else self._base_id(lora.base)
            self._loras[lora.name] = dataclasses.replace(lora, base=base)
            self._lora_plugin[lora.name] = plugin

    def _add_lora_variants(self) -> None:
        for lora in self._loras.values():
            base_id = lora.base or self.default_variant
            if not base_id:
                self._problems.append(f"LoRA {lora.name!r}: no base variant is registered")
                continue
            base = self._entries[base_id]
            words = f" Trigger words: {', '.join(lora.trigger_words)}." if lora.trigger_words else ""
            spec = dataclasses.replace(
                base.spec,
                id=LORA_PREFIX + lora.name,
                title=f"{base.spec.title} + {lora.name}",
                kind="lora",
                description=(lora.description or f"LoRA {lora.name} on {base_id}.") + words,
                base=base_id,
                lora=lora.name,
            )
            self._entries[spec.id] = VariantEntry(spec, base.factory, self._lora_plugin[lora.name], ())

    def _report_unregistered_catalog_variants(self) -> None:
        pm = self.plugin_manager
        for item in self.catalog.variants:
            loaded = pm.get_plugin(item.plugin) is not None or pm.is_blocked(item.plugin)
            if item.spec.id not in self._entries and not loaded and self.settings.load_plugins is None:
                where = f"{item.source}: [variants.{item.spec.id}]"
                self._problems.append(f"{where} plugin: {item.plugin!r} is not installed")

    def _pick_default(self, allow_lora: bool) -> str:
        wanted = self.settings.default_model
        if wanted:
            try:
                entry = self.resolve(wanted)
                if allow_lora or entry.spec.kind != "lora":
                    return entry.spec.id
            except UnknownVariantError as exc:
                if allow_lora:
                    self._problems.append(f"ZIMAGE_MCP_DEFAULT_MODEL: {exc}")
        picked = next((e.spec.id for e in self._entries.values() if e.spec.kind != "lora"), "")
        intended = self.catalog.default_variant
        if allow_lora and not wanted and picked and intended and picked != intended and not self._excluded(intended):
            # never change the default silently
            self._problems.append(
                f"the default model is {picked or 'none'!r}, not {intended!r}: {intended} is not registered "
                "(see the problems above); set ZIMAGE_MCP_DEFAULT_MODEL to choose one"
            )
        return picked

    def _excluded(self, vid: str) -> bool:
        """Whether the plugin of catalogue variant ``vid`` was left out on purpose (blocked or not selected)."""
        plugin = next((v.plugin for v in self.catalog.variants if v.spec.id == vid), None)
        return plugin is None or self.plugin_manager.is_blocked(plugin) or self.settings.load_plugins is not None

    def _base_id(self, name: str) -> str | None:
        vid = self._aliases.get(name.lower(), name.lower())
        entry = self._entries.get(vid)
        return vid if entry is not None and entry.spec.kind != "lora" else None

    def _duplicate(self, kind: str, name: str, winner: str, loser: str) -> None:
        dup = Duplicate(kind, name, winner, loser)
        log.warning("%s", dup)
        self._duplicates.append(dup)

    def _valid_names(self, loras: bool = True) -> str:
        names = []
        for entry in self._entries.values():
            if entry.spec.kind == "lora" and not loras:
                continue
            alias = f" (alias {', '.join(entry.aliases)})" if entry.aliases else ""
            names.append(entry.spec.id + alias)
        return ", ".join(names) or "none"


def _never() -> Backend:
    raise AssertionError("backend is cached")
