from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import pluggy
import pytest

import zimage_mcp
from zimage_mcp.registry import hookspecs
from zimage_mcp.registry.plugin_manager import PluginManager

HOOKS = ("zimage_register_variants", "zimage_register_loras", "zimage_prepare")
ROOT = Path(__file__).resolve().parent.parent


def test_markers_use_the_project_name() -> None:
    assert zimage_mcp.hookimpl is hookspecs.hookimpl
    assert hookspecs.hookspec.project_name == hookspecs.hookimpl.project_name == "zimage_mcp"


@pytest.mark.parametrize("name", HOOKS)
def test_every_spec_is_documented_and_registered(name: str) -> None:
    spec = getattr(hookspecs, name)
    doc = inspect.getdoc(spec) or ""
    assert "Called once" in doc
    for param in inspect.signature(spec).parameters:
        assert f":param {param}:" in doc
    assert hasattr(PluginManager().hook, name)


def test_only_the_three_hooks_exist() -> None:
    specs = [n for n, f in vars(hookspecs).items() if callable(f) and hasattr(f, "zimage_mcp_spec")]
    assert sorted(specs) == sorted(HOOKS)


def test_a_plugin_may_take_a_subset_of_the_parameters() -> None:
    class Plugin:
        @zimage_mcp.hookimpl
        def zimage_register_loras(self, register):  # type: ignore[no-untyped-def]
            pass

    PluginManager().register(Plugin())  # pluggy validates the argument names


def test_an_unknown_parameter_is_rejected() -> None:
    class Plugin:
        @zimage_mcp.hookimpl
        def zimage_register_loras(self, register, settings):  # type: ignore[no-untyped-def]
            pass

    with pytest.raises(pluggy.PluginValidationError):
        PluginManager().register(Plugin())


@pytest.mark.slow
def test_registry_side_never_imports_torch() -> None:
    code = (
        "import sys\n"
        "import zimage_mcp.registry.plugin_manager, zimage_mcp.registry.hookspecs, zimage_mcp.registry.catalog\n"
        "import zimage_mcp.registry.backend_cache, zimage_mcp.registry.install_status, zimage_mcp.registry.settings\n"
        "from zimage_mcp.registry import Registry\n"
        "from zimage_mcp.registry.settings import Settings\n"
        "r = Registry.from_settings(Settings.from_env({}))\n"
        "assert [e.spec.id for e in r.variants()][:3] == ['z-image-turbo', 'z-image-base', 'z-image-edit'], r.variants()\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
