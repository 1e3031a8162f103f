"""A LoRA used on another base than the one it declares runs, and the result says so (issue 16)."""

from __future__ import annotations

from pathlib import Path

import pytest
from mcp import Client

from tests.engine.lora_dialects import write_peft_lora
from tests.server_fixtures import (  # noqa: F401
    anyio_backend,
    input_dir,
    registry_file,
    settings,
    tiny_model_dir,
)
from zimage_mcp.registry.settings import Settings
from zimage_mcp.server import build_server

pytestmark = pytest.mark.anyio
SMALL = {"width": 256, "height": 256, "steps": 2, "seed": 3}


async def test_a_lora_declared_for_base_is_noted_on_turbo(settings: Settings) -> None:
    folder = Path(settings.lora_dir)
    folder.mkdir(parents=True, exist_ok=True)
    write_peft_lora(folder, name="base-style.safetensors")
    write_peft_lora(folder, name="turbo-style.safetensors", seed=1)
    (folder / "base-style.toml").write_text('base = "z-image-base"\n')
    (folder / "turbo-style.toml").write_text('base = "z-image-turbo"\n')
    async with Client(build_server(settings)) as client:
        other = await client.call_tool(
            "generate_image", {"prompt": "a fox", "loras": [{"name": "base-style", "scale": 1.0}], **SMALL}
        )
        own = await client.call_tool(
            "generate_image", {"prompt": "a fox", "loras": [{"name": "turbo-style", "scale": 1.0}], **SMALL}
        )
    assert not other.is_error and not own.is_error
    note = "LoRA 'base-style' was trained on z-image-base; it ran on z-image-turbo"
    assert any(n.startswith(note) for n in other.structured_content["notes"]), other.structured_content["notes"]
    assert note in other.content[0].text  # the line the assistant reads
    assert not any("trained on" in n for n in own.structured_content["notes"])
