# ruff: noqa: F811
"""MCP prompts: listed, rendered, and an unknown name answers JSON-RPC -32602 without a traceback."""

from __future__ import annotations

import logging

import pytest
from mcp import Client, MCPError

from tests.server_fixtures import anyio_backend, input_dir, registry_file, settings, tiny_model_dir  # noqa: F401
from zimage_mcp.registry.settings import Settings
from zimage_mcp.server import build_server

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["auto", "legacy"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def test_prompts_are_listed_and_rendered(settings: Settings, mode: str) -> None:
    async with Client(build_server(settings), mode=mode) as client:
        prompts = {p.name: p for p in (await client.list_prompts()).prompts}
        assert {"iterate_on_image", "product_shot", "explore_variations"} <= set(prompts)
        assert {a.name for a in prompts["iterate_on_image"].arguments if a.required} == {"image_id", "goal"}
        got = await client.get_prompt("iterate_on_image", {"image_id": "0123456789ab", "goal": "warmer light"})
        text = got.messages[0].content.text
        assert "edit_image" in text and "0123456789ab" in text and "warmer light" in text
        shot = await client.get_prompt("product_shot", {"product": "a red mug"})
        assert "generate_image" in shot.messages[0].content.text and "a red mug" in shot.messages[0].content.text


async def test_unknown_prompt_is_invalid_params(
    settings: Settings, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with Client(build_server(settings), mode=mode) as client:
        with pytest.raises(MCPError) as caught:
            await client.get_prompt("product_shoot", {})
        assert caught.value.error.code == -32602
        message = caught.value.error.message
        assert "product_shoot" in message and "iterate_on_image" in message and "did you mean 'product_shot'" in message
        with pytest.raises(MCPError) as missing:
            await client.get_prompt("iterate_on_image", {"image_id": "x"})
        assert missing.value.error.code == -32602 and "goal" in missing.value.error.message
        assert (await client.list_prompts()).prompts
    assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records if r.exc_info]
