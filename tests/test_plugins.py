from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from zimage_mcp import hookimpl
from zimage_mcp.contract import LoraSpec
from zimage_mcp.registry import Registry
from zimage_mcp.registry.plugin_manager import DEFAULT_PLUGINS, check_pending, describe_plugins, load_plugins
from zimage_mcp.registry.settings import Settings

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "zimage-lora-example"
BUILTIN_IDS = ["z-image-turbo", "z-image-base", "z-image-edit"]


def ids(registry: Registry) -> list[str]:
    return [e.spec.id for e in registry.variants()]


def rows(pm) -> dict[str, dict]:  # type: ignore[no-untyped-def]
    return {row["name"]: row for row in describe_plugins(pm)}


@pytest.fixture
def fake_dist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A distribution 'fake-zimage-plugin' on sys.path with two entry points: one good, one broken."""
    site = tmp_path / "site"
    info = site / "fake_zimage_plugin-1.2.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-zimage-plugin\nVersion: 1.2\n")
    (info / "entry_points.txt").write_text(
        "[zimage_mcp]\nfake_plugin = fake_zimage_plugin\nbroken_plugin = fake_zimage_broken\n"
        "zimage_engine = fake_zimage_plugin\n"  # a name the built-in already holds: skipped
    )
    (site / "fake_zimage_plugin.py").write_text(
        textwrap.dedent(
            """
            from zimage_mcp import hookimpl

            @hookimpl
            def zimage_register_loras(register):
                register("fake-lora", "/loras/fake.safetensors", base="turbo")
            """
        )
    )
    (site / "fake_zimage_broken.py").write_text("raise ImportError('needs a library that is not installed')\n")
    monkeypatch.syspath_prepend(str(site))
    for module in ("fake_zimage_plugin", "fake_zimage_broken"):
        monkeypatch.delitem(sys.modules, module, raising=False)
    return site


def test_builtins_load_first_under_their_module_names() -> None:
    pm = load_plugins()
    assert [name for name, _ in pm.list_name_plugin()] == list(DEFAULT_PLUGINS)
    row = rows(pm)["zimage_engine"]
    assert row == {
        "name": "zimage_engine",
        "distribution": "zimage-mcp",
        "version": "0.1.0",
        "hooks": ["zimage_prepare", "zimage_register_variants"],
        "status": "ok",
        "error": None,
    }
    assert rows(pm)["zimage_lora_dir"]["hooks"] == ["zimage_register_loras"]


def test_inline_plugin_is_seen_by_the_registry() -> None:
    class InlinePlugin:
        __name__ = "inline"

        @hookimpl
        def zimage_register_loras(self, register):  # type: ignore[no-untyped-def]
            register("inline-lora", "/x/inline.safetensors", base="base", scale=0.5, trigger_words="inl")

    pm = load_plugins()
    try:
        pm.register(InlinePlugin(), name="inline")
        registry = Registry.from_settings(Settings.from_env({}), pm)
        assert registry.resolve_lora("inline-lora") == LoraSpec(
            "inline-lora", "/x/inline.safetensors", "z-image-base", 0.5, ("inl",), ""
        )
        assert ids(registry) == [*BUILTIN_IDS, "lora:inline-lora"]
        assert rows(pm)["inline"]["hooks"] == ["zimage_register_loras"]
    finally:
        pm.unregister(name="inline")


def test_a_misspelled_hook_fails_that_plugin_only() -> None:
    class Typo:
        @hookimpl
        def zimage_register_variant(self, register):  # type: ignore[no-untyped-def]
            pass

    pm = load_plugins()
    pm.register(Typo(), name="typo")
    registry = Registry.from_settings(Settings.from_env({}), pm)  # no RegistryError: the server starts
    assert ids(registry) == BUILTIN_IDS and registry.default_variant == "z-image-turbo"
    error = "unknown hook 'zimage_register_variant' (did you mean zimage_register_variants?)"
    assert rows(pm)["typo"]["status"] == "failed" and rows(pm)["typo"]["error"] == error
    assert pm.get_plugin("typo") is None  # unregistered
    assert f"plugin 'typo' failed: {error}; it is not loaded" in registry.problems()
    assert check_pending(pm) == []


def test_entry_points_are_discovered(fake_dist: Path) -> None:
    pm = load_plugins(entrypoints=True)
    table = rows(pm)
    assert table["fake_plugin"]["distribution"] == "fake-zimage-plugin" and table["fake_plugin"]["version"] == "1.2"
    assert table["fake_plugin"]["status"] == "ok" and table["fake_plugin"]["hooks"] == ["zimage_register_loras"]
    assert table["broken_plugin"]["status"] == "failed"
    assert "needs a library that is not installed" in table["broken_plugin"]["error"]
    assert table["zimage_engine"]["distribution"] == "zimage-mcp"  # the built-in kept its name
    registry = Registry.from_settings(Settings.from_env({}), pm)
    assert ids(registry) == [*BUILTIN_IDS, "lora:fake-lora"]
    assert registry.lora_variant_target("lora:fake-lora") == ("z-image-turbo", registry.resolve_lora("fake-lora"))


def test_tests_never_autoload_entry_points(fake_dist: Path) -> None:
    assert getattr(sys, "_called_from_test", False)
    assert "fake_plugin" not in rows(load_plugins())


@pytest.mark.parametrize(
    ("value", "plugins", "variant_ids"),
    [
        (
            "zimage_engine,fake_plugin",
            ["zimage_engine", "fake_plugin"],
            ["z-image-turbo", "z-image-base", "z-image-edit", "lora:fake-lora"],
        ),
        ("fake-zimage-plugin", ["fake_plugin", "broken_plugin"], []),  # a distribution name loads its plugins
        ("", [], []),
    ],
)
def test_load_plugins_variable_selects(fake_dist: Path, value: str, plugins: list[str], variant_ids: list[str]) -> None:
    settings = Settings.from_env({"ZIMAGE_MCP_LOAD_PLUGINS": value})
    pm = load_plugins(settings.load_plugins, entrypoints=True)
    assert sorted(rows(pm)) == sorted(plugins)
    registry = Registry.from_settings(settings, pm)
    assert ids(registry) == variant_ids
    if not variant_ids:
        assert registry.default_variant == ""


def test_blocking_by_variable_and_by_distribution(fake_dist: Path) -> None:
    settings = Settings.from_env({"ZIMAGE_MCP_BLOCK_PLUGINS": "zimage_engine, fake-zimage-plugin"})
    pm = load_plugins(block=settings.block_plugins, entrypoints=True)
    table = rows(pm)
    assert table["zimage_engine"]["status"] == "blocked" and table["zimage_engine"]["hooks"] == []
    assert table["fake_plugin"]["status"] == table["broken_plugin"]["status"] == "blocked"
    assert table["zimage_lora_dir"]["status"] == "ok"
    registry = Registry.from_settings(settings, pm)
    assert ids(registry) == []
    assert registry.problems() == []  # a blocked plugin's catalogue variants are not a problem


def test_example_package_registers_blocks_and_describes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(EXAMPLE))
    monkeypatch.delitem(sys.modules, "zimage_lora_example", raising=False)
    import zimage_lora_example

    assert 'zimage_lora_example = "zimage_lora_example"' in (EXAMPLE / "pyproject.toml").read_text()
    pm = load_plugins()
    try:
        pm.register(zimage_lora_example, name="zimage_lora_example")
        registry = Registry.from_settings(Settings.from_env({}), pm)
        lora = registry.resolve_lora("example-style")
        assert lora.file == str(zimage_lora_example.LORA_FILE) and lora.base == "z-image-turbo" and lora.scale == 0.8
        assert registry.resolve("lora:example-style").plugin == "zimage_lora_example"
        assert not registry.install_status("lora:example-style").installed  # no file ships with the example
        assert rows(pm)["zimage_lora_example"]["status"] == "ok"
    finally:
        pm.unregister(name="zimage_lora_example")

    blocked = load_plugins(block=["zimage_lora_example"])
    assert blocked.register(zimage_lora_example, name="zimage_lora_example") is None
    registry = Registry.from_settings(Settings.from_env({}), blocked)
    assert registry.loras() == [] and "lora:example-style" not in ids(registry)
    assert rows(blocked)["zimage_lora_example"]["status"] == "blocked"
