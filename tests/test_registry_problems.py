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
