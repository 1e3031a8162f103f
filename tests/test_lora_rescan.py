"""The LoRA folder is rescanned when it changes: new, removed and edited LoRAs show up without a restart."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from zimage_mcp.contract import UnknownLoraError, UnknownVariantError
from zimage_mcp.registry import Registry
from zimage_mcp.registry.settings import Settings


def _lora(path: Path) -> None:
    save_file(
        {
            "transformer.layers.0.attention.to_q.lora_A.weight": torch.zeros(4, 64),
            "transformer.layers.0.attention.to_q.lora_B.weight": torch.zeros(64, 4),
        },
        str(path),
    )


def _touch_later(path: Path) -> None:  # coarse-mtime filesystems: make the change visible
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))


def test_new_removed_and_edited_loras_show_up_without_a_restart(tmp_path: Path) -> None:
    folder = tmp_path / "loras"
    folder.mkdir()
    _lora(folder / "first.safetensors")
    registry = Registry.from_settings(Settings.from_env({}, lora_dir=folder))
    assert [lora.name for lora in registry.loras()] == ["first"]
    with pytest.raises(UnknownLoraError):
        registry.resolve_lora("second")

    _lora(folder / "second.safetensors")
    _touch_later(folder)
    assert registry.resolve_lora("lora:second").file == str(folder / "second.safetensors")
    assert registry.resolve("lora:second").spec.base == "z-image-turbo"
    assert [e.spec.id for e in registry.variants()][-2:] == ["lora:first", "lora:second"]

    (folder / "second.toml").write_text('base = "base"\nscale = 0.5\n')  # a sidecar added
    _touch_later(folder)
    assert registry.lora_variant_target("lora:second") == ("z-image-base", registry.resolve_lora("second"))
    assert registry.resolve_lora("second").scale == 0.5

    (folder / "first.safetensors").unlink()
    _touch_later(folder)
    assert [lora.name for lora in registry.loras()] == ["second"]
    with pytest.raises(UnknownVariantError):
        registry.resolve("lora:first")

    (folder / "second.toml").write_text('bsae = "base"\n')  # a bad sidecar edited in place: listed, not raised
    _touch_later(folder / "second.toml")
    assert registry.loras() == []
    assert any("second.toml: bsae: unknown key" in p for p in registry.problems())


def test_concurrent_lookups_during_rescans_never_fail(tmp_path: Path) -> None:
    folder = tmp_path / "loras"
    folder.mkdir()
    _lora(folder / "stay.safetensors")
    registry = Registry.from_settings(Settings.from_env({}, lora_dir=folder))
    errors: list[BaseException] = []

    def look() -> None:
        try:
            for _ in range(200):
                assert registry.lora_variant_target("lora:stay") is not None
                assert registry.resolve_lora("stay").name == "stay"
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=look) for _ in range(4)]
    for t in threads:
        t.start()
    for i in range(20):
        _lora(folder / f"extra{i}.safetensors")
    for t in threads:
        t.join()
    assert errors == []
    assert len(registry.loras()) == 21
