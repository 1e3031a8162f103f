"""What the registry lists in ``problems()`` instead of failing: user-file typos, broken plugins, default changes."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from zimage_mcp.registry import Registry
from zimage_mcp.registry.settings import Settings


def _settings(tmp_path: Path, toml: str = "") -> Settings:
    reg = tmp_path / "registry.toml"
    reg.write_text(textwrap.dedent(toml))
    (tmp_path / "loras").mkdir(exist_ok=True)
    return Settings.from_env({}, registry_file=reg, lora_dir=tmp_path / "loras")


@pytest.mark.parametrize(
    "toml", ['[variants.z-image-turbo]\ntitel = "x"\n', "[variants.z-image-turbo.defaults]\nstepz = 4\n"]
)
def test_a_typo_in_the_user_file_keeps_turbo_and_the_default(tmp_path: Path, toml: str) -> None:
    registry = Registry.from_settings(_settings(tmp_path, toml))
    assert registry.default_variant == "z-image-turbo"
    assert registry.resolve("turbo").spec.title == "Z-Image-Turbo"
    [problem] = registry.problems()
    assert problem.startswith(f"{tmp_path / 'registry.toml'}: [variants.z-image-turbo] ")
    assert "unknown key (allowed: " in problem and problem.endswith("(key ignored)")


def test_a_changed_default_is_a_listed_problem(tmp_path: Path) -> None:
    registry = Registry.from_settings(_settings(tmp_path, '[variants.z-image-turbo]\nplugin = "not_installed"\n'))
    assert registry.default_variant == "z-image-base"
    assert any(p.startswith("the default model is 'z-image-base', not 'z-image-turbo'") for p in registry.problems())


@pytest.fixture
def bad_dist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A distribution with three broken plugins (a misspelled hook, an import error, a raising hook) and a good one."""
    site = tmp_path / "site"
    info = site / "bad_zimage_plugins-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: bad-zimage-plugins\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[zimage_mcp]\ntypo = bad_zimage_typo\nbroken = bad_zimage_broken\nraiser = bad_zimage_raiser\n"
        "good = bad_zimage_good\n"
    )
    hook = "from zimage_mcp import hookimpl\n\n@hookimpl\ndef "
    (site / "bad_zimage_typo.py").write_text(hook + "zimage_register_variant(register):\n    pass\n")
    (site / "bad_zimage_broken.py").write_text("raise ImportError('needs torchvision')\n")
    (site / "bad_zimage_raiser.py").write_text(
        hook + "zimage_register_loras(register):\n    raise RuntimeError('cannot read my folder')\n"
    )
    (site / "bad_zimage_good.py").write_text(
        hook + "zimage_register_loras(register):\n    register('good', '/loras/good.safetensors', base='turbo')\n"
    )
    monkeypatch.syspath_prepend(str(site))


def test_broken_entry_point_plugins_do_not_stop_the_start(tmp_path: Path, bad_dist: None) -> None:
    from zimage_mcp.registry.plugin_manager import describe_plugins, plugin_manager_from_settings

    settings = _settings(tmp_path)
    pm = plugin_manager_from_settings(settings, entrypoints=True)
    registry = Registry.from_settings(settings, pm)
    assert [e.spec.id for e in registry.variants()] == ["z-image-turbo", "z-image-base", "z-image-edit", "lora:good"]
    rows = {row["name"]: row for row in describe_plugins(pm)}
    assert rows["good"]["status"] == "ok"
    assert (rows["typo"]["status"], rows["typo"]["distribution"]) == ("failed", "bad-zimage-plugins")
    assert rows["typo"]["error"] == "unknown hook 'zimage_register_variant' (did you mean zimage_register_variants?)"
    assert rows["broken"]["status"] == "failed" and rows["broken"]["error"] == "ImportError: needs torchvision"
    assert rows["raiser"]["status"] == "failed" and "RuntimeError: cannot read my folder" in rows["raiser"]["error"]
    assert pm.get_plugin("typo") is None and pm.get_plugin("raiser") is None
    problems = "\n".join(registry.problems())
    assert "plugin 'typo' failed: unknown hook 'zimage_register_variant' (did you mean" in problems
    assert "plugin 'broken' failed: ImportError: needs torchvision; it is not loaded" in problems
    assert "plugin 'raiser' failed in zimage_register_loras: RuntimeError: cannot read my folder" in problems


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_list_models_names_broken_plugins_and_typos_through_mcp(
    tmp_path: Path, bad_dist: None, anyio_backend: str
) -> None:
    """What an assistant sees: the server starts with the good plugins, list_models lists what is broken."""
    from mcp import Client

    from zimage_mcp.registry.plugin_manager import plugin_manager_from_settings
    from zimage_mcp.server import build_server

    settings = _settings(tmp_path, "[variants.z-image-turbo.defaults]\nstepz = 4\n")
    settings = Settings.from_env(
        {}, registry_file=settings.registry_file, lora_dir=settings.lora_dir, output_dir=tmp_path / "out"
    )
    registry = Registry.from_settings(settings, plugin_manager_from_settings(settings, entrypoints=True))
    async with Client(build_server(settings, registry)) as client:
        result = await client.call_tool("list_models", {})
    assert not result.is_error
    data = result.structured_content
    assert data["default_model"] == "z-image-turbo"
    problems = "\n".join(data["problems"])
    text = result.content[0].text
    for needle in (
        "plugin 'typo' failed: unknown hook 'zimage_register_variant'",
        "plugin 'broken' failed: ImportError: needs torchvision",
        "stepz: unknown key",
    ):
        assert needle in problems and needle in text, (needle, problems)
    assert "lora:good" in [v["id"] for v in data["variants"]]
