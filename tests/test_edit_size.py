"""An edit's output size is the one the server fitted to the variant's limits, not the engine's own guess."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from mcp import Client
from PIL import Image

from tests.server_fixtures import anyio_backend, input_dir, registry_file, settings, tiny_model_dir  # noqa: F401
from zimage_mcp.registry.settings import Settings
from zimage_mcp.server import build_server

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("size", [(1000, 750), (300, 260)])
async def test_an_odd_sized_input_is_fitted_once_within_the_limits(
    settings: Settings, input_dir: Path, size: tuple[int, int]
) -> None:
    source = input_dir / "photo.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(source)
    async with Client(build_server(settings)) as client:
        result = await client.call_tool(
            "edit_image", {"image": str(source), "prompt": "a calmer sky", "strength": 0.5, "steps": 2, "seed": 1}
        )
    assert not result.is_error, result.content[0].text
    data = result.structured_content
    image = data["images"][0]
    on_disk = Image.open(image["path"]).size
    # This registry allows exactly 256 px sides: what the server recorded, what the engine made and the file agree.
    assert (data["width"], data["height"]) == (image["width"], image["height"]) == on_disk == (256, 256)
