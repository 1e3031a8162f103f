from __future__ import annotations

import json
from pathlib import Path

import pytest

from zimage_mcp.contract import LoraSpec
from zimage_mcp.registry import Registry
from zimage_mcp.registry.settings import Settings


@pytest.fixture
def lora_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "loras"
    folder.mkdir()
    for name in ("plain", "styled", "jsony", "badkey", "badtype", "both", "orphan-base", ".hidden"):
        (folder / f"{name}.safetensors").write_bytes(b"")
    (folder / "styled.toml").write_text(
        'base = "base"\nscale = 0.7\ntrigger_words = ["sty", "led"]\ndescription = "A style"\n'
    )
    (folder / "jsony.json").write_text(json.dumps({"scale": 1, "trigger_words": "jsn"}))
    (folder / "badkey.toml").write_text("scael = 0.5\n")
    (folder / "badtype.json").write_text(json.dumps({"scale": "strong"}))
    (folder / "both.toml").write_text("scale = 1.0\n")
    (folder / "both.json").write_text("{}")
    (folder / "orphan-base.toml").write_text('base = "flux-dev"\n')
    for pickle in ("old.ckpt", "weights.pt", "adapter.bin", "model.pth"):
        (folder / pickle).write_bytes(b"")
    (folder / "notes.txt").write_text("ignored")
    (folder / "sub").mkdir()
    (folder / "sub" / "nested.safetensors").write_bytes(b"")
    return folder


def test_folder_becomes_loras(lora_dir: Path) -> None:
    registry = Registry.from_settings(Settings.from_env({}, lora_dir=lora_dir))
    loras = {lora.name: lora for lora in registry.loras()}
    assert sorted(loras) == ["jsony", "plain", "styled"]
    assert loras["plain"] == LoraSpec("plain", str(lora_dir / "plain.safetensors"))
    assert loras["styled"] == LoraSpec(
        "styled", str(lora_dir / "styled.safetensors"), "z-image-base", 0.7, ("sty", "led"), "A style"
    )
    assert (loras["jsony"].scale, loras["jsony"].trigger_words) == (1.0, ("jsn",))
    # LoRA variants sit on their base (the default variant when the sidecar names none)
    assert registry.lora_variant_target("lora:styled") == ("z-image-base", loras["styled"])
    assert registry.lora_variant_target("lora:plain") == ("z-image-turbo", loras["plain"])
    assert registry.resolve("lora:styled").spec.defaults == registry.resolve("base").spec.defaults
    hint = registry.install_status("lora:plain").how_to_install
    assert hint.endswith("run.sh cli pull turbo` or `hf download Tongyi-MAI/Z-Image-Turbo`")


def test_every_refusal_is_listed_with_its_reason(lora_dir: Path) -> None:
    registry = Registry.from_settings(Settings.from_env({}, lora_dir=lora_dir))
    problems = "\n".join(registry.problems())
    assert (
        f"{lora_dir / 'badkey.toml'}: scael: unknown key (allowed: base, scale, trigger_words, description)" in problems
    )
    assert f'{lora_dir / "badtype.json"}: scale: must be a number, got "strong"' in problems
    assert "both.json both exist; keep one sidecar" in problems
    assert (
        "LoRA 'orphan-base' (plugin 'zimage_lora_dir') refused: base variant 'flux-dev' does not exist; valid: z-image-turbo"
        in problems
    )
    for pickle in ("old.ckpt", "weights.pt", "adapter.bin", "model.pth"):
        assert f"LoRA {pickle} (plugin 'zimage_lora_dir') refused: pickle formats are never loaded" in problems
    assert "notes.txt" not in problems and "nested" not in problems and "hidden" not in problems
    assert len(registry.problems()) == 8


def test_missing_folder(tmp_path: Path) -> None:
    quiet = Registry.from_settings(Settings.from_env({}))  # the default folder need not exist
    assert quiet.loras() == [] and quiet.problems() == []
    missing = tmp_path / "nowhere"
    loud = Registry.from_settings(Settings.from_env({}, lora_dir=missing))
    assert loud.problems() == [f"LoRA {missing} (plugin 'zimage_lora_dir') refused: LoRA folder does not exist"]


def test_folder_from_registry_toml(tmp_path: Path, lora_dir: Path) -> None:
    user = tmp_path / "registry.toml"
    user.write_text('[loras]\ndir = "loras"\n')
    registry = Registry.from_settings(Settings.from_env({"ZIMAGE_MCP_REGISTRY": str(user)}))
    assert sorted(lora.name for lora in registry.loras()) == ["jsony", "plain", "styled"]
