"""The plugin manager: built-in plugins first, then installed distributions (entry-point group ``zimage_mcp``).

Built-ins are the top-level modules in ``DEFAULT_PLUGINS``, registered under their module names;
entry points whose name is already registered are skipped, so the package's own entry points for
the built-ins are no-ops. ``ZIMAGE_MCP_LOAD_PLUGINS=a,b`` loads only the plugins (or distributions)
named, built-ins included; an empty value loads none. ``ZIMAGE_MCP_BLOCK_PLUGINS=a,b`` blocks by name.
Tests never autoload entry points: ``sys._called_from_test`` (set in ``tests/conftest.py``) turns that off.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import logging
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pluggy

from zimage_mcp import __version__
from zimage_mcp.registry import hookspecs
from zimage_mcp.registry.settings import Settings

log = logging.getLogger(__name__)

ENTRYPOINT_GROUP = "zimage_mcp"
# Built-in plugin name -> module (the same pairs as the package's entry points).
DEFAULT_PLUGINS: dict[str, str] = {
    "zimage_engine": "zimage_builtins.engine_variants",
    "zimage_lora_dir": "zimage_builtins.lora_dir",
}


@dataclass
class PluginRecord:
    """What ``describe_plugins`` reports about one plugin name."""

    name: str
    distribution: str | None
    version: str | None
    status: str = "ok"  # "ok" | "failed" | "blocked"
    error: str | None = None


class PluginManager(pluggy.PluginManager):
    """pluggy's manager with our hookspecs and a record of where each plugin came from and how it fared."""

    def __init__(self) -> None:
        super().__init__("zimage_mcp")
        self.add_hookspecs(hookspecs)
        self.records: dict[str, PluginRecord] = {}
        self.blocked: set[str] = set()  # normalized plugin or distribution names


def load_plugins(
    load: Iterable[str] | None = None,
    block: Iterable[str] = (),
    *,
    entrypoints: bool | None = None,
) -> PluginManager:
    """Build a plugin manager with the built-ins and (unless under tests) installed plugins.

    ``load``: only these plugin or distribution names (``None``: all; empty: none). ``block``: names
    never registered. ``entrypoints``: scan the ``zimage_mcp`` entry-point group (``None``: yes,
    unless ``sys._called_from_test`` is set). A plugin that fails to import, or has a hookimpl that
    matches no hookspec (a misspelled hook), is recorded as failed and left out; the others load.
    """
    pm = PluginManager()
    wanted = None if load is None else {_normalize(n) for n in load}
    for name in block:
        pm.set_blocked(name)
        pm.blocked.add(_normalize(name))
    for name, module in DEFAULT_PLUGINS.items():
        if _selected(pm, name, "zimage-mcp", __version__, wanted):
            _register(pm, name, lambda module=module: importlib.import_module(module))
    if entrypoints is None:
        entrypoints = not getattr(sys, "_called_from_test", False)
    if entrypoints:
        for dist in importlib.metadata.distributions():
            for ep in dist.entry_points:
                if ep.group != ENTRYPOINT_GROUP or pm.get_plugin(ep.name) is not None:
                    continue
                if _selected(pm, ep.name, dist.metadata["Name"], dist.version, wanted):
                    _register(pm, ep.name, ep.load)
    check_pending(pm)
    return pm


def plugin_manager_from_settings(settings: Settings, *, entrypoints: bool | None = None) -> PluginManager:
    """``load_plugins`` driven by ``settings.load_plugins`` and ``settings.block_plugins``."""
    return load_plugins(settings.load_plugins, settings.block_plugins, entrypoints=entrypoints)


def load_failures(pm: pluggy.PluginManager) -> list[str]:
    """One sentence per plugin recorded as failed so far (import errors, misspelled hooks)."""
    records: dict[str, PluginRecord] = getattr(pm, "records", {})
    return [f"plugin {r.name!r} failed: {r.error}; it is not loaded" for r in records.values() if r.status == "failed"]


def record_failure(pm: pluggy.PluginManager, name: str, error: str) -> None:
    """Mark plugin ``name`` failed (the registry calls this when a registration hook raises)."""
    records: dict[str, PluginRecord] | None = getattr(pm, "records", None)
    if records is None:
        return
    record = records.setdefault(name, PluginRecord(name, None, None))
    record.status, record.error = "failed", error


def describe_plugins(pm: pluggy.PluginManager) -> list[dict[str, Any]]:
    """One dict per plugin for ``zimage-mcp plugins``: name, distribution, version, hooks, status, error.

    Registration failures show only once a ``Registry`` has been built from ``pm``.
    """
    records: dict[str, PluginRecord] = dict(getattr(pm, "records", {}))
    for name, _ in pm.list_name_plugin():
        if name not in records:
            records[name] = PluginRecord(name, None, None)  # registered (or blocked) directly on pm
    rows = []
    for name, record in records.items():
        plugin = pm.get_plugin(name)
        hooks = sorted(h.name for h in pm.get_hookcallers(plugin) or []) if plugin is not None else []
        rows.append(
            {
                "name": name,
                "distribution": record.distribution,
                "version": record.version,
                "hooks": hooks,
                "status": "blocked" if pm.is_blocked(name) else record.status,
                "error": record.error,
            }
        )
    return rows


def _selected(pm: PluginManager, name: str, dist: str | None, version: str | None, wanted: set[str] | None) -> bool:
    if wanted is not None and _normalize(name) not in wanted and _normalize(dist or "") not in wanted:
        return False
    pm.records[name] = PluginRecord(name, dist, version)
    if pm.is_blocked(name) or _normalize(name) in pm.blocked or _normalize(dist or "") in pm.blocked:
        pm.records[name].status = "blocked"
        pm.set_blocked(name)
        return False
    return True


def _register(pm: PluginManager, name: str, load: Any) -> None:
    try:
        plugin = load()
        if pm.is_registered(plugin):  # the same module under a second entry-point name
            del pm.records[name]
            return
        pm.register(plugin, name=name)
    except Exception as exc:  # a broken plugin must not stop the others
        log.error("plugin %s failed to load: %s", name, exc, exc_info=True)
        record_failure(pm, name, f"{type(exc).__name__}: {exc}")


def prepare_plugins(pm: pluggy.PluginManager, context: Any) -> None:
    """Run every plugin's ``zimage_prepare`` (imports, device context; no weights). One that raises is logged
    and skipped: its variants stay registered, and their first load does the same work."""
    for impl in pm.hook.zimage_prepare.get_hookimpls():
        try:
            impl.function(context=context)
        except Exception as exc:  # noqa: BLE001 - preparing is an optimisation, never a reason to stop
            log.warning("plugin %s could not prepare: %s: %s", impl.plugin_name, type(exc).__name__, exc)


def check_pending(pm: pluggy.PluginManager) -> list[str]:
    """Unregister every plugin with a hookimpl that matches no hookspec (a misspelled hook), record it
    as failed, and return one problem sentence per plugin; the other plugins go on."""
    problems: list[str] = []
    callers = {name: getattr(pm.hook, name) for name in dir(pm.hook) if not name.startswith("_")}
    callers = {name: c for name, c in callers.items() if isinstance(c, pluggy.HookCaller)}
    known = sorted(name for name, c in callers.items() if c.spec is not None)
    for hook_name, caller in callers.items():
        if caller.spec is not None:
            continue
        for impl in caller.get_hookimpls():
            if impl.optionalhook or pm.get_plugin(impl.plugin_name) is None:
                continue
            close = difflib.get_close_matches(hook_name, known, n=1)
            hint = f" (did you mean {close[0]}?)" if close else f" (known hooks: {', '.join(known)})"
            error = f"unknown hook {hook_name!r}{hint}"
            log.error("plugin %s: %s; it is not loaded", impl.plugin_name, error)
            record_failure(pm, impl.plugin_name, error)
            problems.append(
                f"plugin {impl.plugin_name!r} failed: {error}; it is not loaded "
                f"(ZIMAGE_MCP_BLOCK_PLUGINS={impl.plugin_name} silences this)"
            )
            pm.unregister(name=impl.plugin_name)
    return problems


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()
